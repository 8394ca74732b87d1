"""Image-to-image with a prompt: SDEdit (Meng et al. 2022; docs/methods.md §8).

    z_0  = E(x)                                   (the run's space: patches or scaled latents)
    t₀   = round(strength · T)
    z_t₀ = √ᾱ_t₀ z_0 + √(1 − ᾱ_t₀) ε              (the forward process in closed form, q_sample)
    then the reverse process from t₀ to 0 with the prompt (and guidance), and x = D(z_0)

strength 0 returns D(E(x)) (the input itself in pixel space); strength 1 starts from
(almost) pure noise, i.e. plain text-to-image. The reverse process is the shared sampler,
given a timestep sequence that ends at t₀: DDIM on ⌈strength · steps⌉ steps τ_1 < … < τ_S = t₀
(``ddim_timesteps(t₀, S, "trailing")``), or DDPM on the schedule respaced to those steps
(all t₀ steps when ``--steps`` is not given).
"""

from __future__ import annotations

import dataclasses
import math

import torch

from trilemma.diffusion.samplers import ddim_sample, ddim_timesteps, ddpm_sample
from trilemma.errors import TrilemmaError
from trilemma.run import SampleOptions

DEFAULT_STEPS = 50


def edit_timesteps(T: int, strength: float, sampler: str, steps: int | None) -> list[int]:
    """Increasing steps in 1..t₀ ending exactly at t₀ = round(strength · T) (empty when t₀ = 0)."""
    if not 0.0 <= strength <= 1.0:
        raise TrilemmaError(f"--strength: must be in [0, 1], got {strength}")
    t0 = round(strength * T)
    if t0 == 0:
        return []
    if sampler == "ddpm" and steps is None:
        return list(range(1, t0 + 1))
    S = min(t0, max(1, math.ceil((steps or DEFAULT_STEPS) * strength)))
    return [int(t) for t in ddim_timesteps(t0, S, "trailing")]


@torch.no_grad()
def edit_images(run, images: torch.Tensor, prompt: str, strength: float, options: SampleOptions | None = None,
                generator: torch.Generator | None = None, callback=None) -> torch.Tensor:
    """SDEdit ``images`` (B, C, H, W) in [-1, 1] towards ``prompt``; returns images in [-1, 1] on the run's device.

    ``run`` is a :class:`~trilemma.t2i.run.TextDiffusionRun`; ``options`` sets the sampler,
    steps, η, guidance and negative prompt (its ``prompt`` is replaced by ``prompt``).
    """
    options = dataclasses.replace(options or SampleOptions(), prompt=prompt)
    if tuple(images.shape[1:]) != run.image_shape:
        raise TrilemmaError(f"the input image is {tuple(images.shape[1:])}, the run makes {run.image_shape}")
    taus = edit_timesteps(run.schedule.T, strength, options.sampler, options.steps)
    z_0 = run.encode(images)                                                   # (B, c, h, w)
    if not taus:
        return run.decode(z_0)                                                 # strength 0: the input, D(E(x))
    generator = generator or run.generator(0)
    t0 = taus[-1]
    eps = torch.randn(z_0.shape, generator=generator, device=z_0.device, dtype=z_0.dtype)
    z_t0 = run.schedule.q_sample(z_0, torch.full((len(z_0),), t0, device=z_0.device, dtype=torch.long), eps)
    cond, uncond = run.conditioning(len(z_0), options)
    denoiser = run.denoiser(options, uncond)
    if options.sampler == "ddim":
        z = ddim_sample(denoiser, z_t0, run.schedule, taus, eta=options.eta, cond=cond, generator=generator,
                        callback=callback)
    elif options.sampler == "ddpm":
        z = ddpm_sample(denoiser, z_t0, run.schedule.respace(taus), variance=options.variance, cond=cond,
                        generator=generator, callback=callback)
    else:
        raise TrilemmaError(f"--sampler: expected 'ddpm' or 'ddim', got {options.sampler!r}")
    return run.decode(z)


def load_image(path, image_size: int, channels: int) -> torch.Tensor:
    """An image file as (1, C, H, W) in [-1, 1], converted and centre-cropped like the dataset's images."""
    from PIL import Image, UnidentifiedImageError

    from trilemma.data import to_float
    from trilemma.data.transforms import fit_square, image_to_array, to_mode

    try:
        with Image.open(path) as image:
            array = image_to_array(fit_square(to_mode(image, channels), image_size))
    except FileNotFoundError:
        raise TrilemmaError(f"{path}: no such image file") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise TrilemmaError(f"{path}: not a readable image ({e})") from None
    return to_float(torch.from_numpy(array.copy()))[None]
