"""A trained VAE loaded from its run folder: sample from the prior, reconstruct, encode, interpolate.

``config.json`` has ``"kind": "vae"``, ``"model"`` (:class:`VAENetConfig`) and
``"vae"`` (:class:`VAEConfig`); the weights are ``ema.safetensors`` (used when
present) or ``model.safetensors``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from trilemma.config import from_dict
from trilemma.data import ImageDataset
from trilemma.errors import RunError, TrilemmaError
from trilemma.run import GeneratorRun, SampleOptions, load_weights
from trilemma.vae.config import VAEConfig, VAENetConfig
from trilemma.vae.losses import binarise, elbo_terms
from trilemma.vae.networks import VAE


class VAERun(GeneratorRun):
    """A VAE run folder (kind "vae"). Generation: z ~ N(0, I), x = E[x | z] (the decoder's mean)."""

    kind = "vae"

    def __init__(self, path: Path, config: dict[str, Any], device: torch.device, weights: str = "auto"):
        super().__init__(path, config, device)
        where = f"{path}/config.json"
        self.net_config = from_dict(VAENetConfig, config["model"], where)
        self.vae_config = from_dict(VAEConfig, config["vae"], where)
        self.model = VAE(self.net_config, self.vae_config).to(device).eval().requires_grad_(False)
        if weights == "auto":
            weights = "ema" if (self.path / "ema.safetensors").is_file() else "model"
        if not (self.path / f"{weights}.safetensors").is_file():
            raise RunError(f"{path}: no {weights}.safetensors (has the run saved a checkpoint yet?)")
        self.step = load_weights(self.path / f"{weights}.safetensors", self.model, device)

    def nfe(self, options: SampleOptions) -> int:
        return 1                                            # one decoder evaluation per image

    def describe(self, options: SampleOptions) -> str:
        return "VAE: decoder mean of z ~ N(0, I)"

    @torch.no_grad()
    def sample_batch(self, n: int, generator: torch.Generator, options: SampleOptions) -> torch.Tensor:
        z = torch.randn((n, self.net_config.latent_dim), generator=generator, device=self.device)   # z ~ p(z)
        return self.model.image(z)                                                                   # (n, C, H, W)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The representation μ_φ(x): images (B, C, H, W) in [−1, 1] → (B, d)."""
        mu, _ = self.model.encode(x.to(self.device))
        return mu

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x → μ_φ(x) → E[x | z = μ]: images in [−1, 1], same shape."""
        return self.model.image(self.encode(x))

    @torch.no_grad()
    def interpolate(self, x_a: torch.Tensor, x_b: torch.Tensor, steps: int) -> torch.Tensor:
        """Decode the straight line between the codes of two images: (steps, C, H, W), ends included.

        x_a, x_b: single images (C, H, W) in [−1, 1]; z(t) = (1 − t) μ(x_a) + t μ(x_b).
        """
        if steps < 2:
            raise TrilemmaError(f"--steps: an interpolation needs at least 2 images, got {steps}")
        mu = self.encode(torch.stack([x_a, x_b]))                         # (2, d)
        t = torch.linspace(0, 1, steps, device=self.device)[:, None]      # (steps, 1)
        return self.model.image((1 - t) * mu[0] + t * mu[1])


@torch.no_grad()
def evaluate_elbo(model: VAE, config: VAEConfig, dataset: ImageDataset, device: torch.device, *,
                  batch_size: int = 500, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """The −ELBO of ``dataset`` (the test split), averaged over its images: nats per image and bits/dim.

    One z ~ q(z|x) per image (an unbiased estimate of the mean −ELBO), the KL in
    closed form; Bernoulli runs binarise every image once with ``seed``.
    """
    g = torch.Generator(device).manual_seed(seed)
    data_g = torch.Generator().manual_seed(seed)
    model.eval()
    sums = {"neg_elbo": 0.0, "recon": 0.0, "kl": 0.0}
    for start in tqdm(range(0, len(dataset), batch_size), desc="test −ELBO", unit="batch", disable=not progress,
                      leave=False):
        x, _ = dataset.batch(torch.arange(start, min(start + batch_size, len(dataset))))
        if config.likelihood == "bernoulli":
            x = binarise(x, data_g)
        terms = elbo_terms(model, x.to(device), config, g)
        for key in sums:
            sums[key] += terms[key].double().sum().item()
    n = len(dataset)
    dims = math.prod(dataset.image_shape)
    neg_elbo = sums["neg_elbo"] / n
    if config.likelihood == "bernoulli":
        convention = "Bernoulli on stochastically binarised pixels (test set binarised once, seed %d)" % seed
    elif config.discretised:
        convention = "discretised Gaussian over the 256 pixel levels (a probability of the 8-bit image)"
    else:
        convention = "continuous Gaussian density on [-1, 1] pixels (not a probability; can be negative)"
    return {"split": dataset.split, "n": n, "dims": dims, "neg_elbo_nats": neg_elbo,
            "recon_nats": sums["recon"] / n, "kl_nats": sums["kl"] / n,
            "bits_per_dim": neg_elbo / (dims * math.log(2)), "likelihood": config.likelihood,
            "convention": convention, "samples_per_image": 1, "seed": seed}
