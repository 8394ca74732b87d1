"""Train phase 2 of latent diffusion: a DDPM on the scaled latents of an autoencoder run.

    python: train_ldm("runs/ldm", autoencoder="runs/ae", preset="small", minutes=10)
    shell:  trilemma train ldm --autoencoder runs/ae --out runs/ldm --minutes 10

The autoencoder's config.json and weights are copied into ``RUN/autoencoder/`` (the run folder
is self-contained; ``config.json["autoencoder"]`` keeps the SHA-256 of the weights). The training
set is encoded once through the latent cache (:mod:`trilemma.autoencoder.cache`; phase 1 already
filled it), and every step is the pixel DDPM's step — :func:`~trilemma.diffusion.losses.diffusion_loss`
through :func:`~trilemma.train.loop.fit` — on z_0 = s · μ_φ(x). Preview grids are decoded.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trilemma.autoencoder.cache import TrainingLatents
from trilemma.autoencoder.run import AUTOENCODER_DIR, AutoencoderRun, load_autoencoder, run_autoencoder
from trilemma.data import DataConfig, ImageDataset, load_dataset
from trilemma.ddpm.config import DiffusionConfig
from trilemma.ddpm.train import UNET_OVERRIDES, class_dropout, preview_samples
from trilemma.diffusion.losses import diffusion_loss
from trilemma.diffusion.schedule import make_schedule
from trilemma.errors import TrilemmaError
from trilemma.ldm.config import latent_unet_preset
from trilemma.nets.unet import UNet, UNetConfig, count_parameters
from trilemma.options import build, opt, overrides
from trilemma.train.common import TrainConfig, adamw
from trilemma.train.family import Built, TrainSpec, read_stored, run_config, train
from trilemma.train.loop import FitResult, Trainer, single_optimizer_step
from trilemma.utils.io import atomic_write, write_json
from trilemma.viz import save_grid


def ldm_data_config(autoencoder: AutoencoderRun, data: str | DataConfig | None,
                    overrides: dict[str, Any]) -> DataConfig:
    """The data of an ldm run: the autoencoder's unless ``data`` is given; it must have the autoencoder's shape."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if data is None:
        config = dataclasses.replace(autoencoder.data_config, **overrides)
        if not config.is_named and not os.path.isdir(config.name):
            raise TrilemmaError(f"{autoencoder.path / 'config.json'}: data.name: the autoencoder's dataset "
                                f"{config.name!r} is neither a dataset name nor a folder here; pass --data")
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


@dataclass(frozen=True)
class LatentSource:
    """Where the latents come from (a creation-time option; the run keeps its own copy)."""

    autoencoder: str | None = opt(None, "run folder of `trilemma train autoencoder` (required for a new run; "
                                  "--data defaults to its dataset)", metavar="RUN_AE")


def autoencoder_info(ae: AutoencoderRun) -> dict[str, Any]:
    """The ``"autoencoder"`` section of a latent run's config.json (with the weights' SHA-256)."""
    return {"source": str(ae.path.resolve()), "weights": ae.weights_path.name, "digest": ae.weights_digest(),
            "factor": ae.model_config.factor, "latent_shape": list(ae.latent_shape), "scale_factor": ae.scale_factor}


def new_config(values: dict[str, Any]) -> tuple[dict[str, Any], ImageDataset]:
    if values.get("autoencoder") is None:
        raise TrilemmaError("--autoencoder RUN_AE: required (a run folder of `trilemma train autoencoder`)")
    ae = load_autoencoder(values["autoencoder"], device="cpu")
    data = ldm_data_config(ae, values.get("data"), {k: values.get(k) for k in ("image_size", "channels", "hflip")})
    c, h, _ = ae.latent_shape
    model = latent_unet_preset(values["preset"], h, c, **overrides(values, UNET_OVERRIDES))
    diffusion = build(DiffusionConfig, values, clip=False)
    dataset = load_dataset(data, "train")                      # validate the data before creating the folder
    if diffusion.class_cond:
        if not dataset.has_labels:
            raise TrilemmaError(f"--class-cond: {dataset.name} has no labels")
        model = dataclasses.replace(model, num_classes=dataset.num_classes)
    config = run_config("ldm", values, data, model, diffusion=diffusion, autoencoder=autoencoder_info(ae))
    return config, dataset


def keep_autoencoder_copy(out: Path, values: dict[str, Any]) -> None:
    """``on_create`` of a latent run (ldm, latent t2i, latent DDGAN): the new run keeps its own copy of the
    ``--autoencoder`` it was given (checked by SHA-256 whenever it is loaded); nothing without one."""
    if values.get("autoencoder") is not None:
        copy_autoencoder(load_autoencoder(values["autoencoder"], device="cpu"), out / AUTOENCODER_DIR)


def build_trainer(out: Path, config: dict[str, Any], dataset: ImageDataset | None, progress: bool) -> Built:
    s = read_stored(out, config, dataset, model=UNetConfig, diffusion=DiffusionConfig)
    train_, device, dataset, unet_config, diffusion = s.train, s.device, s.dataset, s["model"], s["diffusion"]
    data_config = s.data
    ae = run_autoencoder(out, config, device)
    latents = TrainingLatents(ae, dataset, data_config.hflip, progress)        # z₀ = s · μ_φ(x), μ encoded once
    schedule = make_schedule(diffusion.schedule)
    torch.manual_seed(train_.seed)                      # the initial weights depend on the seed only
    model = UNet(unet_config)
    opt_ = adamw(model.parameters(), train_)                   # fused on CUDA

    def batch_fn(indices: torch.Tensor, generator: torch.Generator):
        z_0 = latents.batch(indices, generator).to(device, non_blocking=True)   # (B, c, h, w), unit variance
        if not diffusion.class_cond:
            return z_0, {}
        return z_0, {"y": class_dropout(dataset.labels[indices], diffusion.cond_drop,
                                           generator).to(device, non_blocking=True)}

    def loss_fn(net, z_0, cond, generator):
        return diffusion_loss(net, z_0, schedule, generator=generator, cond=cond, **diffusion.loss_options())

    (out / "samples").mkdir(exist_ok=True)

    def preview(ema_model, step):
        z = preview_samples(ema_model, unet_config, diffusion, schedule, device)   # DDIM, no clipping
        save_grid(ae.decode(z), out / "samples" / f"step_{step:07d}.png")

    c, h, w = ae.latent_shape
    how = "read from the cache" if latents.cached.reused else "encoded and cached"
    trainer = Trainer(nets={"model": model}, optimizers={"opt": opt_}, batch=batch_fn,
                      step=single_optimizer_step(model, opt_, loss_fn, train_, device), preview=preview,
                      describe=f"training a latent DDPM ({count_parameters(model) / 1e6:.2f}M parameters) on "
                               f"{c}×{h}×{w} latents of {dataset.name} ({len(dataset)} images, {how} in "
                               f"{latents.cached.seconds:.1f} s; scale factor {latents.scale:.4g})")
    return Built(trainer, train_, len(dataset), device)


SPEC = TrainSpec(kind="ldm", desc="latent DDPM",
                 help="latent diffusion, phase 2: a DDPM on the latents of an autoencoder run (the dataset is "
                      "encoded once and cached)",
                 options=(DataConfig, TrainConfig, DiffusionConfig, LatentSource),
                 overrides={UNetConfig: UNET_OVERRIDES}, defaults={"lr": 1e-3, "data": None},
                 new_config=new_config, build=build_trainer, on_create=keep_autoencoder_copy)


def train_ldm(out: str | os.PathLike, *, resume: bool = False, progress: bool = True, **options: Any) -> FitResult:
    """Train a latent diffusion model on ``autoencoder``'s latents into ``out`` (or continue it with ``resume``)."""
    return train(SPEC, out, resume=resume, progress=progress, **options)
