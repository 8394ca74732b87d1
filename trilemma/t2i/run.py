"""A trained text-to-image model: a diffusion run whose conditioning is a prompt (docs/methods.md §8).

    τ(y) = frozen text encoder (:mod:`trilemma.t2i.encoder`), per-token states + padding mask
    ε_θ(x_t, t, τ(y))            the U-Net, with cross-attention to τ(y) in its transformer blocks
    ε̃ = ε_θ(x_t, t, ∅) + w · (ε_θ(x_t, t, y) − ε_θ(x_t, t, ∅))     classifier-free guidance

:class:`TextDiffusionRun` *is* a :class:`~trilemma.ddpm.run.DiffusionRun`: same
schedule, samplers and :class:`~trilemma.diffusion.denoiser.Denoiser` (which batches the
conditional and unconditional halves); it only overrides :meth:`conditioning` (encode
``options.prompt``, and ``options.negative`` in place of ∅) and :meth:`decode`.

Where diffusion happens (``config.json["text"]`` and ``["autoencoder"]``):

- **pixels**, optionally in p × p patches (``patch``): the U-Net sees the image
  rearranged space-to-depth, (C, H, W) → (C·p², H/p, W/p) (``pixel_unshuffle``). This is
  a permutation of the pixels, so the forward process, the loss and the samplers are exactly
  those of pixel space; only the network works at 1/p the resolution (≈3× faster on a CPU
  for p = 2, as patch embeddings in U-ViT / DiT / Simple Diffusion);
- **latents** of an autoencoder run (``--autoencoder RUN_AE``, :mod:`trilemma.autoencoder`):
  z = s · μ_φ(x), decoded by D(z / s); the run keeps its own copy in ``RUN/autoencoder/``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from trilemma.config import from_dict
from trilemma.ddpm.run import DiffusionRun
from trilemma.diffusion.samplers import DEFAULT_STEPS, check_sampling, solver_nfe
from trilemma.errors import RunError, TrilemmaError
from trilemma.run import SampleOptions
from trilemma.t2i.config import T2IConfig
from trilemma.t2i.encoder import TextEncoder, get_encoder
from trilemma.t2i.networks import t2i_network


class PixelSpace:
    """Pixels in p × p patches: x (B, C, H, W) ↔ z (B, C·p², H/p, W/p), exactly invertible."""

    def __init__(self, patch: int):
        self.patch = patch

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_unshuffle(x, self.patch) if self.patch > 1 else x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(z, self.patch) if self.patch > 1 else z

    def describe(self) -> str:
        return "pixels" if self.patch == 1 else f"pixels in {self.patch}×{self.patch} patches"


def pixel_shape(image_size: int, channels: int, patch: int) -> tuple[int, int, int]:
    """Shape (C·p², H/p, W/p) the U-Net sees in pixel space."""
    if image_size % patch:
        raise TrilemmaError(f"--patch {patch}: the image size {image_size} is not a multiple of it")
    return channels * patch * patch, image_size // patch, image_size // patch


def load_space(path: Path, config: dict[str, Any], text: T2IConfig, device: torch.device):
    """The run's PixelSpace, or its autoencoder (checked against the SHA-256 in config.json)."""
    if not config.get("autoencoder"):
        return PixelSpace(text.patch)
    from trilemma.autoencoder.run import run_autoencoder

    return run_autoencoder(path, config, device)


def prompt_list(prompt: str | Sequence[str] | None, n: int) -> list[str]:
    """``n`` prompts from one prompt, a sequence of exactly n, or None (∅)."""
    if prompt is None:
        return [""] * n
    if isinstance(prompt, str):
        return [prompt] * n
    prompts = list(prompt)
    if len(prompts) != n:
        raise TrilemmaError(f"got {len(prompts)} prompts for a batch of {n} images")
    if not all(isinstance(p, str) for p in prompts):
        raise TrilemmaError("prompts must be strings")
    return prompts


def text_conditioning(encoder: TextEncoder, prompts: Sequence[str], negative: str | None,
                      device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(cond, uncond) network inputs: τ(prompts), and τ(negative) — ∅ = τ("") by default — for each image.

    Both are padded to the same length, so the Denoiser can batch them together.
    """
    n = len(prompts)
    context, mask = encoder.encode([*prompts, negative or ""])                  # (n + 1, L, D), (n + 1, L)
    context, mask = context.to(device), mask.to(device)
    cond = {"context": context[:n], "context_mask": mask[:n]}
    uncond = {"context": context[n:].expand(n, -1, -1), "context_mask": mask[n:].expand(n, -1)}
    return cond, uncond


class TextDiffusionRun(DiffusionRun):
    """A text-to-image run folder (kind "t2i"), loaded for sampling and editing.

    ``options.prompt`` is one prompt for the whole batch, a sequence with one prompt per image,
    or ``None``: then each image gets a caption drawn (with the sampling generator) from the
    run's dataset (its test split), so ``trilemma sample`` / ``eval`` see the caption distribution.
    ``options.negative`` replaces ∅ in guidance.
    """

    kind = "t2i"

    def __init__(self, path: Path, config: dict[str, Any], device: torch.device, weights: str = "auto"):
        self.text = from_dict(T2IConfig, config["text"], f"{path}/config.json")
        super().__init__(path, config, device, weights)
        if self.unet_config.context_dim <= 0:
            raise RunError(f"{path}/config.json: a t2i run's U-Net needs context_dim > 0")
        self.space = load_space(self.path, config, self.text, device)
        self._captions: list[str] | None = None

    def build_model(self) -> torch.nn.Module:
        """The network of the run's text recipe: the U-Net, plus the text layers of trilemma.t2i.networks."""
        return t2i_network(self.unet_config, self.text)

    @property
    def encoder(self) -> TextEncoder:
        return get_encoder(self.text.encoder, "cpu", self.text.max_length)   # prompts are cached; CPU is enough

    # ------------------------------------------------------------------ hooks of DiffusionRun
    def decode(self, x_0: torch.Tensor) -> torch.Tensor:
        return self.space.decode(x_0)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (B, C, H, W) → the diffused variable (patches or scaled latents)."""
        return self.space.encode(images.to(self.device))

    def check_options(self, options: SampleOptions) -> None:
        if options.label is not None:
            raise TrilemmaError("--label: a text-to-image run takes a prompt, not a class label")
        check_sampling(options.sampler, options.steps, options.eta, options.variance, options.spacing)

    def conditioning(self, n: int, options: SampleOptions) -> tuple[dict, dict]:
        self.check_options(options)
        return text_conditioning(self.encoder, prompt_list(options.prompt, n), options.negative, self.device)

    def dataset_captions(self) -> list[str]:
        """The captions prompts are drawn from when none is given: the test split's (else the train split's)."""
        if self._captions is None:
            from trilemma.data import load_dataset
            from trilemma.errors import DataError

            try:
                dataset = load_dataset(self.data_config, "test")
            except DataError:
                dataset = load_dataset(self.data_config, "train")
            captions = [c for c in dataset.captions or [] if c.strip()]
            if not captions:
                raise RunError(f"{self.path}: its dataset has no captions to draw prompts from; give a prompt")
            self._captions = captions
        return self._captions

    def sample_batch(self, n: int, generator: torch.Generator, options: SampleOptions, **kwargs):
        if options.prompt is None:
            captions = self.dataset_captions()
            idx = torch.randint(len(captions), (n,), generator=generator, device=generator.device).tolist()
            options = dataclasses.replace(options, prompt=tuple(captions[i] for i in idx))
        return super().sample_batch(n, generator, options, **kwargs)

    def nfe(self, options: SampleOptions) -> int:
        """Network evaluations per image: the sampler's (Heun 2N − 1, docs/methods.md §10.6), ×2 with guidance (§8.2)."""
        per_image = (self.steps_per_batch(options) if options.sampler in ("ddpm", "ddim")
                     else solver_nfe(options.sampler, options.steps or DEFAULT_STEPS))
        return per_image * (1 if options.guidance == 1.0 else 2)

    def describe(self, options: SampleOptions) -> str:
        where = self.space.describe() if isinstance(self.space, PixelSpace) else "autoencoder latents"
        prompt = "dataset captions" if options.prompt is None else (
            repr(options.prompt) if isinstance(options.prompt, str) else f"{len(options.prompt)} prompts")
        return f"{super().describe(options)} on {where}, guidance w={options.guidance:g}, {prompt}"
