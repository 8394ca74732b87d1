"""Train phase 2 of latent diffusion: a DDPM on the scaled latents of an autoencoder run.

    python: train_ldm("runs/ldm", autoencoder="runs/ae", preset="small", minutes=10)
    shell:  trilemma train ldm --autoencoder runs/ae --out runs/ldm --minutes 10

The autoencoder's config.json and weights are copied into ``RUN/autoencoder/`` (the run folder
is self-contained; ``config.json["autoencoder"]`` keeps the SHA-256 of the weights). The training
set is encoded once through the latent cache (:mod:`trilemma.latent.cache`; phase 1 already
filled it), and every step is the pixel DDPM's step — :func:`~trilemma.diffusion.losses.diffusion_loss`
through :func:`~trilemma.train.loop.fit` — on z_0 = s · μ_φ(x). Preview grids are decoded.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import torch

from trilemma import __version__
from trilemma.config import from_dict, to_dict
from trilemma.data import DataConfig, ImageDataset, load_dataset
from trilemma.diffusion.losses import diffusion_loss
from trilemma.diffusion.pipeline import DiffusionConfig
from trilemma.diffusion.schedule import ScheduleConfig, make_schedule
from trilemma.errors import RunError, TrilemmaError
from trilemma.latent.cache import cached_latents
from trilemma.latent.pipeline import latent_unet_preset
from trilemma.latent.run import AUTOENCODER_DIR, AutoencoderRun, file_digest, load_autoencoder
from trilemma.nets.unet import UNet, UNetConfig, count_parameters
from trilemma.runs import read_run_config
from trilemma.train.common import TrainConfig
from trilemma.train.diffusion import prepare_run_dir, preview_samples, resume_config
from trilemma.train.loop import FitResult, fit
from trilemma.utils.device import pick_device
from trilemma.utils.io import atomic_write, write_json
from trilemma.viz import save_grid


def ldm_run_config(data: DataConfig, model: UNetConfig, diffusion: DiffusionConfig, train: TrainConfig,
                   preset: str | None, autoencoder: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "ldm", "trilemma_version": __version__, "preset": preset, "data": data.to_dict(),
            "model": to_dict(model), "diffusion": to_dict(diffusion), "train": to_dict(train),
            "autoencoder": autoencoder}


def ldm_data_config(autoencoder: AutoencoderRun, data: str | DataConfig | None,
                    overrides: dict[str, Any]) -> DataConfig:
    """The data of an ldm run: the autoencoder's unless ``data`` is given; it must have the autoencoder's shape."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if data is None:
        config = dataclasses.replace(autoencoder.data_config, **overrides)
    elif isinstance(data, DataConfig):
        config = data.resolved()
    else:
        config = DataConfig(name=data, **overrides).resolved()
    ae = autoencoder.data_config
    if (config.image_size, config.channels) != (ae.image_size, ae.channels):
        raise TrilemmaError(f"--data: {config.name} gives {config.image_size}px images with {config.channels} "
                            f"channel(s), but the autoencoder {autoencoder.path} was trained on {ae.image_size}px "
                            f"with {ae.channels}; pass --image-size {ae.image_size} --channels {ae.channels}")
    return config


def copy_autoencoder(autoencoder: AutoencoderRun, dest: Path) -> None:
    """Copy the autoencoder's config.json and weights (the file it loaded) into ``dest``, atomically."""
    write_json(dest / "config.json", autoencoder.config)
    atomic_write(dest / autoencoder.weights_path.name, autoencoder.weights_path.read_bytes())


def train_ldm(out: str | os.PathLike, autoencoder: str | os.PathLike | None = None,
              data: str | DataConfig | None = None, preset: str = "small", *, steps: int | None = None,
              minutes: float | None = None, batch_size: int = 128, lr: float = 1e-3,
              schedule: str | ScheduleConfig = "linear", prediction: str = "eps", class_cond: bool = False,
              resume: bool = False, progress: bool = True, model_overrides: dict[str, Any] | None = None,
              train_overrides: dict[str, Any] | None = None,
              data_overrides: dict[str, Any] | None = None) -> FitResult:
    """Train a latent diffusion model on ``autoencoder``'s latents into ``out`` (or continue it with ``resume``)."""
    out = Path(out)
    if resume:
        if autoencoder is not None:
            raise TrilemmaError("--autoencoder: not with --resume (the run keeps its own copy of the autoencoder)")
        dataset = None
        config = resume_config(out, "ldm", steps, minutes)
    else:
        if autoencoder is None:
            raise TrilemmaError("--autoencoder RUN_AE: required (a run folder of `trilemma train autoencoder`)")
        ae = load_autoencoder(autoencoder, device="cpu")
        data_config = ldm_data_config(ae, data, data_overrides or {})
        c, h, _ = ae.latent_shape
        model = latent_unet_preset(preset, h, c, **(model_overrides or {}))
        sched = schedule if isinstance(schedule, ScheduleConfig) else ScheduleConfig(name=schedule)
        diffusion = DiffusionConfig(schedule=sched, prediction=prediction, clip=False, class_cond=class_cond)
        train = TrainConfig(steps=steps, minutes=minutes, batch_size=batch_size, lr=lr, **(train_overrides or {}))
        dataset = load_dataset(data_config, "train")               # validate the data before creating the folder
        if class_cond:
            if not dataset.has_labels:
                raise TrilemmaError(f"--class-cond: {dataset.name} has no labels")
            model = dataclasses.replace(model, num_classes=dataset.num_classes)
        info = {"source": str(ae.path.resolve()), "weights": ae.weights_path.name, "digest": ae.weights_digest(),
                "factor": ae.model_config.factor, "latent_shape": list(ae.latent_shape),
                "scale_factor": ae.scale_factor}
        config = prepare_run_dir(out, False, ldm_run_config(data_config, model, diffusion, train, preset, info))
        copy_autoencoder(ae, out / AUTOENCODER_DIR)
    return fit_ldm(out, config, resume=resume, progress=progress, dataset=dataset)


def fit_ldm(out: Path, config: dict[str, Any], resume: bool, progress: bool = True,
            dataset: ImageDataset | None = None) -> FitResult:
    where = f"{out}/config.json"
    data_config = DataConfig.from_dict(config["data"])
    unet_config = from_dict(UNetConfig, config["model"], where)
    diffusion = from_dict(DiffusionConfig, config["diffusion"], where)
    train = from_dict(TrainConfig, config["train"], where)
    device = pick_device(train.device)
    ae_dir = out / AUTOENCODER_DIR
    ae = AutoencoderRun(ae_dir, read_run_config(ae_dir), device)
    if file_digest(ae.weights_path) != config["autoencoder"]["digest"]:
        raise RunError(f"{ae.weights_path}: not the autoencoder this run was started with (SHA-256 differs)")
    dataset = dataset or load_dataset(data_config, "train")
    cached = cached_latents(ae, dataset, progress=progress)                  # (N, c, h, w), unscaled μ
    latents = cached.latents
    flipped = cached_latents(ae, dataset, flipped=True, progress=progress).latents if data_config.hflip else None
    scale = ae.scale_factor
    schedule = make_schedule(diffusion.schedule)
    torch.manual_seed(train.seed)                      # the initial weights depend on the seed only
    model = UNet(unet_config)
    if progress:
        c, h, w = ae.latent_shape
        how = "read from the cache" if cached.reused else "encoded and cached"
        print(f"trilemma: training a latent DDPM ({count_parameters(model) / 1e6:.2f}M parameters) on {c}×{h}×{w} "
              f"latents of {dataset.name} ({len(dataset)} images, {how} in {cached.seconds:.1f} s; scale factor "
              f"{scale:.4g}) on {device}, run folder {out}", file=sys.stderr, flush=True)

    def batch_fn(indices: torch.Tensor, generator: torch.Generator):
        z = latents[indices]                                               # (B, c, h, w)
        if flipped is not None:                                            # --hflip: the mirrored image's latent
            flip = torch.rand(len(indices), generator=generator) < 0.5
            z = torch.where(flip[:, None, None, None], flipped[indices], z)
        z_0 = (z * scale).to(device, non_blocking=True)                    # unit variance on the training set
        if not diffusion.class_cond:
            return z_0, {}
        y = dataset.labels[indices]
        drop = torch.rand(len(y), generator=generator) < diffusion.cond_drop   # label dropout (for guidance)
        return z_0, {"y": torch.where(drop, torch.full_like(y, -1), y).to(device)}

    def loss_fn(net, z_0, cond, generator):
        return diffusion_loss(net, z_0, schedule, prediction=diffusion.prediction, generator=generator, cond=cond)

    (out / "samples").mkdir(exist_ok=True)

    def preview(ema_model, step):
        z = preview_samples(ema_model, unet_config, diffusion, schedule, device)   # DDIM, no clipping
        save_grid(ae.decode(z), out / "samples" / f"step_{step:07d}.png")

    return fit(out, model=model, num_examples=len(dataset), batch_fn=batch_fn, loss_fn=loss_fn, train=train,
               device=device, preview=preview, resume=resume, progress=progress, desc="latent DDPM")
