"""The latent cache: a dataset encoded once per autoencoder, reused by every latent-diffusion run.

Phase 2 trains on μ_φ(x) of every training image, so it encodes the dataset once and keeps the
result on disk as ``cache_dir("latents")/<dataset>-<split>[-flipped]-<key>.safetensors``
(float32 (N, c, h, w), **unscaled**: the scale factor is applied per batch). The key is a
:func:`~trilemma.utils.paths.stable_hash` of

- the SHA-256 of the autoencoder's weights file and its model config — retraining or resuming
  the autoencoder changes the weights, hence the key: the cache is invalidated, never stale;
- the resolved data config (``hflip`` aside: flipped images are a separate entry) and a
  fingerprint of the split's pixels — a changed image folder makes a new entry;
- the split, the orientation and :data:`CACHE_VERSION`.

Files are written atomically, with the key in their metadata, so a crash never leaves a half
entry and a renamed file is detected.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from tqdm.auto import tqdm

from trilemma.autoencoder.run import AutoencoderRun
from trilemma.config import to_dict
from trilemma.data import ImageDataset
from trilemma.errors import RunError
from trilemma.metrics.features import dataset_fingerprint, dataset_slug
from trilemma.utils.io import load_tensors, save_tensors, tensors_metadata
from trilemma.utils.paths import cache_dir, stable_hash

CACHE_VERSION = 1          # bump when encoding changes, to invalidate every cached entry
ENCODE_BATCH = 500


@dataclass
class CachedLatents:
    latents: torch.Tensor      # (N, c, h, w) float32 on the CPU, unscaled μ_φ(x)
    path: Path                 # the cache file
    reused: bool               # True when read from the cache, False when encoded now
    seconds: float             # time to read or to encode


def cache_key(autoencoder: AutoencoderRun, dataset: ImageDataset, flipped: bool = False) -> str:
    data = dataclasses.replace(dataset.config, hflip=False).to_dict()
    return stable_hash({"autoencoder": autoencoder.weights_digest(), "model": to_dict(autoencoder.model_config),
                        "data": data, "fingerprint": dataset_fingerprint(dataset.images, None),
                        "split": dataset.split, "flipped": flipped, "version": CACHE_VERSION})


def cache_path(autoencoder: AutoencoderRun, dataset: ImageDataset, flipped: bool = False) -> Path:
    name = f"{dataset_slug(dataset.config.name)}-{dataset.split}{'-flipped' if flipped else ''}"
    return cache_dir("latents") / f"{name}-{cache_key(autoencoder, dataset, flipped)}.safetensors"


@torch.no_grad()
def encode_dataset(autoencoder: AutoencoderRun, dataset: ImageDataset, *, flipped: bool = False,
                   batch_size: int = ENCODE_BATCH, progress: bool = True) -> torch.Tensor:
    """μ_φ(x) of every image of ``dataset`` (mirrored left-right when ``flipped``): (N, c, h, w) float32, CPU."""
    out = []
    for start in tqdm(range(0, len(dataset), batch_size), desc=f"encoding {dataset.name} ({dataset.split})",
                      unit="batch", disable=not progress, leave=False):
        x, _ = dataset.batch(torch.arange(start, min(start + batch_size, len(dataset))))   # (B, C, H, W)
        if flipped:
            x = x.flip(-1)
        out.append(autoencoder.posterior_mean(x).float().cpu())
    return torch.cat(out)


def cached_latents(autoencoder: AutoencoderRun, dataset: ImageDataset, *, flipped: bool = False,
                   progress: bool = True) -> CachedLatents:
    """The latents of ``dataset`` under ``autoencoder``: read from the cache, or encoded and cached."""
    t0 = time.perf_counter()
    path = cache_path(autoencoder, dataset, flipped)
    key = path.stem.rsplit("-", 1)[-1]
    if path.is_file():
        try:
            if tensors_metadata(path).get("key") == key:
                latents = load_tensors(path)["latents"]
                if len(latents) == len(dataset):
                    return CachedLatents(latents, path, True, time.perf_counter() - t0)
        except (RunError, SafetensorError, OSError, KeyError):   # unreadable: encoded again and overwritten
            pass
    latents = encode_dataset(autoencoder, dataset, flipped=flipped, progress=progress)
    save_tensors(path, {"latents": latents}, metadata={"key": key, "autoencoder": str(autoencoder.path),
                                                       "dataset": dataset.config.name, "split": dataset.split})
    return CachedLatents(latents, path, False, time.perf_counter() - t0)


class TrainingLatents:
    """The scaled latents z₀ = s · μ_φ(x) of a training set, as a latent run's batches draw them.

    The unscaled μ come from :func:`cached_latents` (encoded once); with ``hflip`` each image of a
    batch is replaced by its mirror's latent with probability ½ (drawn from the batch's generator),
    the latent counterpart of the pixel runs' random flips.
    """

    def __init__(self, autoencoder: AutoencoderRun, dataset: ImageDataset, hflip: bool, progress: bool = True):
        self.cached = cached_latents(autoencoder, dataset, progress=progress)
        self.latents = self.cached.latents                                           # (N, c, h, w)
        self.flipped = cached_latents(autoencoder, dataset, flipped=True, progress=progress).latents if hflip else None
        self.scale = autoencoder.scale_factor

    def batch(self, indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """z₀ of the images ``indices`` (B, c, h, w), float32 on the CPU, unit variance on the training set."""
        z = self.latents[indices]
        if self.flipped is not None:
            flip = torch.rand(len(indices), generator=generator) < 0.5
            z = torch.where(flip[:, None, None, None], self.flipped[indices], z)
        return z * self.scale
