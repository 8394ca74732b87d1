"""Train a pixel-space diffusion model (DDPM, Algorithm 1 of Ho et al. 2020) into a run folder.

    python: train_ddpm("runs/ddpm", data="fashion-mnist", preset="small", minutes=7)
    shell:  trilemma train ddpm --data fashion-mnist --out runs/ddpm --minutes 7
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
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
from trilemma.nets.unet import UNet, UNetConfig, count_parameters, preset as unet_preset
from trilemma.train.common import TrainConfig
from trilemma.train.loop import FitResult, fit
from trilemma.utils.device import pick_device
from trilemma.utils.io import read_json, write_json
from trilemma.viz import save_grid

PREVIEW_N = 36          # images in the periodic sample grids
PREVIEW_STEPS = 25      # DDIM steps for them


def ddpm_run_config(data: DataConfig, model: UNetConfig, diffusion: DiffusionConfig, train: TrainConfig,
                    preset: str | None) -> dict[str, Any]:
    return {"kind": "ddpm", "trilemma_version": __version__, "preset": preset, "data": data.to_dict(),
            "model": to_dict(model), "diffusion": to_dict(diffusion), "train": to_dict(train)}


def prepare_run_dir(out: Path, resume: bool, config: dict[str, Any] | None) -> dict[str, Any]:
    """Create ``out`` for a new run (refusing to overwrite one), or read its config to resume."""
    out = Path(out)
    if resume:
        if not (out / "config.json").is_file():
            raise RunError(f"--resume: {out} is not a run folder (no config.json)")
        if not (out / "state" / "trainer.json").is_file():
            raise RunError(f"--resume: {out} has no checkpoint to resume from")
        return read_json(out / "config.json")
    if (out / "config.json").exists():
        raise RunError(f"--out: {out} already holds a run; pass --resume to continue it or choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config)
    return config


def with_budget(train: dict[str, Any], steps: int | None, minutes: float | None) -> dict[str, Any]:
    """A stored train config with the budget replaced (when resuming with a new --steps/--minutes)."""
    if steps is None and minutes is None:
        return train
    return {**train, "steps": steps, "minutes": minutes}


def resume_config(out: Path, kind: str, steps: int | None, minutes: float | None,
                  drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """The config of the ``kind`` run in ``out``, with a new budget (and ``drop`` keys removed), written back."""
    config = prepare_run_dir(out, True, None)
    if config.get("kind") != kind:
        raise RunError(f"--resume: {out} is a {config.get('kind')!r} run, not {kind}")
    config["train"] = with_budget(config["train"], steps, minutes)
    for key in drop:
        config.pop(key, None)
    write_json(Path(out) / "config.json", config)
    return config


def train_ddpm(out: str | os.PathLike, data: str | DataConfig = "fashion-mnist", preset: str = "small", *,
               steps: int | None = None, minutes: float | None = None, batch_size: int = 128,
               lr: float = 1e-3, schedule: str | ScheduleConfig = "linear", prediction: str = "eps",
               class_cond: bool = False, resume: bool = False, progress: bool = True,
               model_overrides: dict[str, Any] | None = None, train_overrides: dict[str, Any] | None = None,
               data_overrides: dict[str, Any] | None = None) -> FitResult:
    """Train a DDPM into the run folder ``out`` (or continue it with ``resume=True``)."""
    out = Path(out)
    if resume:
        dataset = None
        config = resume_config(out, "ddpm", steps, minutes)
    else:
        data_config = data if isinstance(data, DataConfig) else DataConfig(name=data, **(data_overrides or {}))
        data_config = data_config.resolved()
        sched = schedule if isinstance(schedule, ScheduleConfig) else ScheduleConfig(name=schedule)
        diffusion = DiffusionConfig(schedule=sched, prediction=prediction, class_cond=class_cond)
        train = TrainConfig(steps=steps, minutes=minutes, batch_size=batch_size, lr=lr, **(train_overrides or {}))
        # Validate the dataset before creating the run folder.
        dataset = load_dataset(data_config, "train")
        if class_cond and not dataset.has_labels:
            raise TrilemmaError(f"--class-cond: {dataset.name} has no labels")
        model = unet_preset(preset, data_config.image_size, data_config.channels, **(model_overrides or {}))
        if class_cond:
            model = replace(model, num_classes=dataset.num_classes)
        config = prepare_run_dir(out, False, ddpm_run_config(data_config, model, diffusion, train, preset))
    return fit_ddpm(out, config, resume=resume, progress=progress, dataset=dataset)


def fit_ddpm(out: Path, config: dict[str, Any], resume: bool, progress: bool = True,
             dataset: ImageDataset | None = None) -> FitResult:
    where = f"{out}/config.json"
    data_config = DataConfig.from_dict(config["data"])
    unet_config = from_dict(UNetConfig, config["model"], where)
    diffusion = from_dict(DiffusionConfig, config["diffusion"], where)
    train = from_dict(TrainConfig, config["train"], where)
    device = pick_device(train.device)
    dataset = dataset or load_dataset(data_config, "train")
    schedule = make_schedule(diffusion.schedule)
    torch.manual_seed(train.seed)                      # the initial weights depend on the seed only
    model = UNet(unet_config)
    if progress:
        print(f"trilemma: training DDPM ({count_parameters(model) / 1e6:.2f}M parameters) on {dataset.name} "
              f"({len(dataset)} images {'x'.join(map(str, dataset.image_shape))}) on {device}, run folder {out}",
              file=sys.stderr, flush=True)

    def batch_fn(indices: torch.Tensor, generator: torch.Generator):
        x_0, y = dataset.batch(indices, generator)                       # (B, C, H, W) in [-1, 1]
        x_0 = x_0.to(device, non_blocking=True)
        if not diffusion.class_cond:
            return x_0, {}
        drop = torch.rand(len(y), generator=generator) < diffusion.cond_drop   # caption/label dropout
        y = torch.where(drop, torch.full_like(y, -1), y)
        return x_0, {"y": y.to(device)}

    def loss_fn(net, x_0, cond, generator):
        return diffusion_loss(net, x_0, schedule, prediction=diffusion.prediction, generator=generator, cond=cond)

    preview_dir = out / "samples"
    preview_dir.mkdir(exist_ok=True)

    def preview(ema_model, step):
        images = preview_samples(ema_model, unet_config, diffusion, schedule, device)
        save_grid(images, preview_dir / f"step_{step:07d}.png")

    return fit(out, model=model, num_examples=len(dataset), batch_fn=batch_fn, loss_fn=loss_fn, train=train,
               device=device, preview=preview, resume=resume, progress=progress, desc="DDPM")


@torch.no_grad()
def preview_samples(ema_model, unet_config: UNetConfig, diffusion: DiffusionConfig, schedule, device):
    """A fixed-noise DDIM grid of the EMA model (its own generator: training RNGs are untouched)."""
    from trilemma.diffusion.denoiser import Denoiser
    from trilemma.diffusion.samplers import ddim_sample, ddim_timesteps

    g = torch.Generator(device).manual_seed(1234)
    c = unet_config
    x_T = torch.randn((PREVIEW_N, c.in_channels, c.image_size, c.image_size), generator=g, device=device)
    cond = None
    if diffusion.class_cond:
        cond = {"y": torch.arange(PREVIEW_N, device=device) % c.num_classes}
    denoiser = Denoiser(ema_model, diffusion.prediction, clip=(-1.0, 1.0) if diffusion.clip else None)
    return ddim_sample(denoiser, x_T, schedule, ddim_timesteps(schedule.T, PREVIEW_STEPS, "trailing"),
                       cond=cond, generator=g)
