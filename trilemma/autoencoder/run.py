"""A trained autoencoder loaded from its run folder: encode, decode, reconstruct, and score reconstructions.

``config.json`` has ``"kind": "autoencoder"``, ``"model"`` (:class:`AutoencoderConfig`),
``"autoencoder"`` (:class:`AutoencoderObjective`) and, once phase 1 has finished, ``"latent"``:
the moments of the latents μ_φ(x) over the training set and the **scale factor** s = 1/std.
Latents outside this module are always the *scaled* ones, z = s · μ_φ(x): the variable the
diffusion model sees. The weights are ``ema.safetensors`` (used when present) or ``model.safetensors``.

As a :class:`~trilemma.run.GeneratorRun` an autoencoder decodes z ~ N(0, I): what its latent
space gives *without* a diffusion prior — a baseline for ``trilemma eval``, not a generator.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from trilemma.autoencoder.config import AutoencoderConfig
from trilemma.autoencoder.losses import psnr
from trilemma.autoencoder.networks import Autoencoder
from trilemma.config import from_dict
from trilemma.data import ImageDataset, to_uint8
from trilemma.errors import RunError
from trilemma.metrics.evaluate import MIN_IMAGES
from trilemma.run import GeneratorRun, SampleOptions, load_weights, read_data_config, read_run_config

AUTOENCODER_DIR = "autoencoder"      # where an ldm run keeps its copy of the autoencoder


class AutoencoderRun(GeneratorRun):
    """An autoencoder run folder (kind "autoencoder")."""

    kind = "autoencoder"

    def __init__(self, path: Path, config: dict[str, Any], device: torch.device, weights: str = "auto"):
        super().__init__(path, config, device)
        self.model_config = from_dict(AutoencoderConfig, config["model"], f"{path}/config.json")
        self.model = Autoencoder(self.model_config).to(device).eval().requires_grad_(False)
        if weights == "auto":
            weights = "ema" if (self.path / "ema.safetensors").is_file() else "model"
        self.weights_path = self.path / f"{weights}.safetensors"
        if not self.weights_path.is_file():
            raise RunError(f"{path}: no {weights}.safetensors (has the run saved a checkpoint yet?)")
        self.step = load_weights(self.weights_path, self.model, device)
        self.latent_stats: dict[str, Any] | None = read_latent_stats(config.get("latent"), f"{path}/config.json")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return self.model_config.latent_shape

    @property
    def scale_factor(self) -> float:
        if not self.latent_stats:
            raise RunError(f"{self.path}: the autoencoder has no latent scale factor yet (its training did not "
                           f"finish); finish it with `trilemma train autoencoder --out {self.path} --resume`")
        return float(self.latent_stats["scale_factor"])

    def weights_digest(self) -> str:
        """SHA-256 of the weights file: the autoencoder's identity for caches and ldm runs."""
        return file_digest(self.weights_path)

    # ------------------------------------------------------------------ the latent space
    @torch.no_grad()
    def posterior_mean(self, x: torch.Tensor) -> torch.Tensor:
        """μ_φ(x), unscaled: images (B, C, H, W) in [−1, 1] → (B, c, h, w)."""
        mu, _ = self.model.encode(x.to(self.device))
        return mu

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The diffusion variable z = s · μ_φ(x): images in [−1, 1] → scaled latents (B, c, h, w)."""
        return self.posterior_mean(x) * self.scale_factor

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, c, h, w) → images (B, C, H, W) in [−1, 1]: D(z / s), clamped."""
        return self.model.decode(z.to(self.device) / self.scale_factor).clamp(-1, 1)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """x → μ_φ(x) → D(μ): images in [−1, 1], same shape (the scale cancels)."""
        return self.model.decode(self.posterior_mean(x)).clamp(-1, 1)

    # ------------------------------------------------------------------ GeneratorRun
    def nfe(self, options: SampleOptions) -> int:
        return 1                                              # one decoder evaluation per image

    def describe(self, options: SampleOptions) -> str:
        return "autoencoder: decoder of z ~ N(0, I), no diffusion prior (a baseline)"

    @torch.no_grad()
    def sample_batch(self, n: int, generator: torch.Generator, options: SampleOptions) -> torch.Tensor:
        z = torch.randn((n, *self.latent_shape), generator=generator, device=self.device)   # scaled latents
        return self.decode(z)


def read_latent_stats(latent: Any, file: str) -> dict[str, Any] | None:
    """The ``latent`` section of an autoencoder's config.json, checked: ``scale_factor`` a finite number > 0."""
    if latent is None:
        return None
    if not isinstance(latent, dict):
        raise RunError(f"{file}: latent: expected an object with the latents' moments, got {latent!r}")
    s = latent.get("scale_factor")
    if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s <= 0:
        raise RunError(f"{file}: latent.scale_factor: expected a finite number > 0 (1 / std of the latents), "
                       f"got {s!r}")
    return latent


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_autoencoder(path: Path, config: dict[str, Any], device: torch.device) -> AutoencoderRun:
    """The copy of the autoencoder inside a latent run folder (``RUN/autoencoder``), checked against the
    SHA-256 that the run's ``config.json["autoencoder"]["digest"]`` keeps."""
    ae_dir = Path(path) / AUTOENCODER_DIR
    if not (ae_dir / "config.json").is_file():
        raise RunError(f"{path}: its copy of the autoencoder ({ae_dir}) is missing; the run cannot decode")
    ae = AutoencoderRun(ae_dir, read_run_config(ae_dir), device)
    data = read_data_config(config["data"], f"{path}/config.json")
    for key in ("channels", "image_size"):
        if getattr(data, key) != getattr(ae.data_config, key):
            raise RunError(f"{path}/config.json: data.{key} is {getattr(data, key)} but its autoencoder "
                           f"({ae_dir}) was trained with {getattr(ae.data_config, key)}; restore the original file")
    if file_digest(ae.weights_path) != config["autoencoder"]["digest"]:
        raise RunError(f"{ae.weights_path}: not the autoencoder the run {path} was trained with (SHA-256 differs "
                       f"from its config.json); restore the original file")
    return ae


def load_autoencoder(path: str | Path, device: str | torch.device | None = None) -> AutoencoderRun:
    """An autoencoder run, or the copy inside a latent run (``RUN/autoencoder`` of an ldm, latent t2i or latent
    DDGAN run); anything else is a one-line error."""
    from trilemma.utils.device import pick_device

    if not str(path).strip():
        raise RunError(f"--autoencoder: expected the run folder of an autoencoder, got {str(path)!r}")
    path = Path(path)
    try:
        config = read_run_config(path)
    except RunError as e:
        raise RunError(f"--autoencoder: {e}") from None
    if config["kind"] != "autoencoder" and config.get("autoencoder"):
        path = path / AUTOENCODER_DIR
        config = read_run_config(path)
    if config["kind"] != "autoencoder":
        raise RunError(f"--autoencoder {path}: a {config['kind']!r} run, not an autoencoder run "
                       f"(train one with `trilemma train autoencoder`)")
    device = device if isinstance(device, torch.device) else pick_device(device)
    return AutoencoderRun(path, config, device)


def evaluate_reconstructions(run: AutoencoderRun, dataset: ImageDataset, *, n: int | None = None,
                             batch_size: int = 500, fid: bool = True, progress: bool = True) -> dict[str, Any]:
    """Reconstruction quality on ``dataset`` (the test split): PSNR and reconstruction FID/KID.

    Each image is reconstructed through its posterior mean, D(μ_φ(x)). **PSNR** is computed on
    the uint8 pixels, 10 log10(255² / MSE) per image, then averaged over images (dB).
    **Reconstruction FID** (rFID) scores the reconstructions of the split against that same split
    with :func:`trilemma.metrics.evaluate_images` (same feature network as every other FID here).
    """
    n = len(dataset) if n is None else min(n, len(dataset))
    recon, psnrs = [], []
    t0 = time.perf_counter()
    for start in tqdm(range(0, n, batch_size), desc="reconstructing", unit="batch", disable=not progress,
                      leave=False):
        idx = torch.arange(start, min(start + batch_size, n))
        x, _ = dataset.batch(idx)
        x_hat = to_uint8(run.reconstruct(x).cpu())                        # (B, C, H, W) uint8 (no_grad inside)
        recon.append(x_hat)
        psnrs.append(psnr(dataset.images[idx].double(), x_hat.double(), peak=255.0))
    recon_images, psnr_db = torch.cat(recon), torch.cat(psnrs)
    mse = ((recon_images.double() - dataset.images[:n].double()) ** 2).mean().item()
    result: dict[str, Any] = {
        "split": dataset.split, "n": n, "psnr_db": psnr_db.mean().item(), "psnr_db_std": psnr_db.std().item(),
        "mse_uint8": mse, "psnr_convention": "uint8 pixels, 10·log10(255²/MSE) per image, averaged",
        "reconstruct_s": round(time.perf_counter() - t0, 2), "rfid": None, "rkid": None,
    }
    if fid and n < MIN_IMAGES:
        result["rfid_skipped"] = f"only {n} {dataset.split} images; FID needs at least {MIN_IMAGES}"
    elif fid:                        # outside no_grad: the first call may train the feature network
        from trilemma.metrics import evaluate_images

        metrics = evaluate_images(recon_images, run.data_config, reference=dataset.split, progress=progress,
                                  source={"kind": "images", "path": f"reconstructions of {run.path}"})
        result.update(rfid=metrics["quality"]["fid"], rkid=metrics["quality"]["kid_mean"],
                      rfid_feature_net=metrics["feature_net"]["name"], rfid_metrics=metrics)
    return result
