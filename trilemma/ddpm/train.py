"""Train a pixel-space diffusion model (DDPM, Algorithm 1 of Ho et al. 2020) into a run folder.

    python: train_ddpm("runs/ddpm", data="fashion-mnist", preset="small", minutes=7)
    shell:  trilemma train ddpm --data fashion-mnist --out runs/ddpm --minutes 7

Each step of the shared loop is Algorithm 1: x_0 ~ data, t ~ U{1..T}, ε ~ N(0, I), a gradient step
on ‖target − net(√ᾱ_t x_0 + √(1 − ᾱ_t) ε, t)‖² (:func:`~trilemma.diffusion.losses.diffusion_loss`).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from trilemma.data import DataConfig, ImageDataset, load_dataset
from trilemma.ddpm.config import DiffusionConfig
from trilemma.diffusion.denoiser import Denoiser
from trilemma.diffusion.losses import diffusion_loss
from trilemma.diffusion.samplers import ddim_sample, ddim_timesteps
from trilemma.diffusion.schedule import NoiseSchedule, make_schedule
from trilemma.errors import TrilemmaError
from trilemma.nets.unet import UNet, UNetConfig, count_parameters
from trilemma.nets.unet import preset as unet_preset
from trilemma.options import build, overrides
from trilemma.train.common import TrainConfig, adamw
from trilemma.train.family import (
    Built,
    TrainSpec,
    data_config,
    read_stored,
    run_config,
    train,
    train_config,
)
from trilemma.train.loop import FitResult, Trainer, single_optimizer_step
from trilemma.viz import save_grid

PREVIEW_N = 36          # images in the periodic sample grids
PREVIEW_STEPS = 25      # DDIM steps for them
UNET_OVERRIDES = ("base_channels", "dropout")


def class_dropout(y: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Labels replaced by the null class −1 with probability ``p`` (for classifier-free guidance)."""
    drop = torch.rand(len(y), generator=generator) < p
    return torch.where(drop, torch.full_like(y, -1), y)


def new_config(values: dict[str, Any]) -> tuple[dict[str, Any], ImageDataset]:
    data = data_config(values)
    diffusion = build(DiffusionConfig, values)
    train_config(values)                                               # validate the options before the data
    dataset = load_dataset(data, "train")                              # validate the data before the run folder
    if diffusion.class_cond and not dataset.has_labels:
        raise TrilemmaError(f"--class-cond: {dataset.name} has no labels")
    model = unet_preset(values["preset"], data.image_size, data.channels, **overrides(values, UNET_OVERRIDES))
    if diffusion.class_cond:
        model = replace(model, num_classes=dataset.num_classes)
    config = run_config("ddpm", values, data, model, diffusion=diffusion)
    return config, dataset


def build_trainer(out: Path, config: dict[str, Any], dataset: ImageDataset | None, progress: bool) -> Built:
    s = read_stored(out, config, dataset, model=UNetConfig, diffusion=DiffusionConfig)
    train_, device, dataset, unet_config, diffusion = s.train, s.device, s.dataset, s["model"], s["diffusion"]
    schedule = make_schedule(diffusion.schedule)
    torch.manual_seed(train_.seed)                      # the initial weights depend on the seed only
    model = UNet(unet_config)
    opt = adamw(model.parameters(), train_)                   # fused on CUDA

    def batch(indices: torch.Tensor, generator: torch.Generator):
        x_0, y = dataset.batch(indices, generator)                       # (B, C, H, W) in [-1, 1]
        x_0 = x_0.to(device, non_blocking=True)
        if not diffusion.class_cond:
            return x_0, {}
        return x_0, {"y": class_dropout(y, diffusion.cond_drop, generator).to(device, non_blocking=True)}

    def loss_fn(net, x_0, cond, generator):
        return diffusion_loss(net, x_0, schedule, generator=generator, cond=cond, **diffusion.loss_options())

    (out / "samples").mkdir(exist_ok=True)

    def preview(ema_model, step):
        images = preview_samples(ema_model, unet_config, diffusion, schedule, device)
        save_grid(images, out / "samples" / f"step_{step:07d}.png")

    trainer = Trainer(nets={"model": model}, optimizers={"opt": opt}, batch=batch,
                      step=single_optimizer_step(model, opt, loss_fn, train_, device), preview=preview,
                      describe=f"training DDPM ({count_parameters(model) / 1e6:.2f}M parameters) on {dataset.name} "
                               f"({len(dataset)} images {'x'.join(map(str, dataset.image_shape))})")
    return Built(trainer, train_, len(dataset), device)


@torch.no_grad()
def preview_samples(ema_model, unet_config: UNetConfig, diffusion: DiffusionConfig, schedule: NoiseSchedule,
                    device) -> torch.Tensor:
    """A fixed-noise DDIM grid of the EMA model (its own generator: training RNGs are untouched)."""
    g = torch.Generator(device).manual_seed(1234)
    c = unet_config
    x_T = torch.randn((PREVIEW_N, c.in_channels, c.image_size, c.image_size), generator=g, device=device)
    cond = {"y": torch.arange(PREVIEW_N, device=device) % c.num_classes} if diffusion.class_cond else None
    denoiser = Denoiser(ema_model, diffusion.prediction, clip=(-1.0, 1.0) if diffusion.clip else None,
                        sigma_data=diffusion.data_std)
    return ddim_sample(denoiser, x_T, schedule, ddim_timesteps(schedule.T, PREVIEW_STEPS, "trailing"),
                       cond=cond, generator=g)


SPEC = TrainSpec(kind="ddpm", help="train a pixel-space diffusion model (DDPM, Algorithm 1)", desc="DDPM",
                 options=(DataConfig, TrainConfig, DiffusionConfig), overrides={UNetConfig: UNET_OVERRIDES},
                 defaults={"lr": 1e-3}, new_config=new_config, build=build_trainer)


def train_ddpm(out: str | os.PathLike, *, resume: bool = False, progress: bool = True, **options: Any) -> FitResult:
    """Train a DDPM into the run folder ``out`` (or continue it with ``resume=True``); options as the CLI's."""
    return train(SPEC, out, resume=resume, progress=progress, **options)


__all__ = ["SPEC", "train_ddpm", "preview_samples", "class_dropout"]
