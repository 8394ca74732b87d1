"""Train a DCGAN with Algorithm 1 (Goodfellow et al. 2014) into a run folder.

    python: train_gan("runs/gan", data="fashion-mnist", preset="small", minutes=8, g_loss="nonsaturating")
    shell:  trilemma train gan --data fashion-mnist --out runs/gan --minutes 8 --g-loss nonsaturating --k 1

A GAN is two networks and two optimisers, so it has its own flat loop here
rather than ``train.loop.fit``; it reuses the same pieces (Budget, Interrupt,
MetricsLog, EpochSampler, EMA, Checkpoint) and writes the same run folder:
``model.safetensors`` = G, ``disc.safetensors`` = D, ``ema.safetensors`` = the
EMA of G (``--ema``), ``state/`` with both Adam states, every RNG and the data
order, so ``--resume`` continues bit for bit on the CPU. One *step* of the
budget is one iteration of Algorithm 1: k discriminator steps and one
generator step (k minibatches of real images).
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from trilemma import __version__
from trilemma.config import from_dict, to_dict
from trilemma.data import DataConfig, ImageDataset, load_dataset
from trilemma.errors import TrilemmaError
from trilemma.gan.algorithm import algorithm1_iteration
from trilemma.gan.config import DCGANConfig, GANConfig, preset as gan_preset
from trilemma.gan.losses import GENERATOR_COSTS
from trilemma.gan.networks import Discriminator, Generator
from trilemma.nets.unet import count_parameters
from trilemma.train.common import (EMA, Budget, Checkpoint, EpochSampler, Interrupt, MetricsLog, TrainConfig,
                                   ema_decay_at, format_eta, lr_at)
from trilemma.train.diffusion import prepare_run_dir, resume_config
from trilemma.train.loop import FitResult
from trilemma.utils.device import pick_device
from trilemma.viz import plot_losses, save_grid

PREVIEW_N = 64


def gan_run_config(data: DataConfig, model: DCGANConfig, gan: GANConfig, train: TrainConfig,
                   preset: str | None) -> dict[str, Any]:
    return {"kind": "gan", "trilemma_version": __version__, "preset": preset, "data": data.to_dict(),
            "model": to_dict(model), "gan": to_dict(gan), "train": to_dict(train)}


def train_gan(out: str | os.PathLike, data: str | DataConfig = "fashion-mnist", preset: str = "small", *,
              steps: int | None = None, minutes: float | None = None, batch_size: int = 64, lr: float = 2e-4,
              g_loss: str = "nonsaturating", k: int = 1, betas: tuple[float, float] = (0.5, 0.999),
              ema: bool = False, resume: bool = False, progress: bool = True,
              model_overrides: dict[str, Any] | None = None, train_overrides: dict[str, Any] | None = None,
              data_overrides: dict[str, Any] | None = None) -> FitResult:
    """Train a DCGAN into the run folder ``out`` (or continue it with ``resume=True``)."""
    out = Path(out)
    if resume:
        dataset = None
        config = resume_config(out, "gan", steps, minutes)
    else:
        data_config = data if isinstance(data, DataConfig) else DataConfig(name=data, **(data_overrides or {}))
        data_config = data_config.resolved()
        gan = GANConfig(g_loss=g_loss, k=k, beta1=betas[0], beta2=betas[1], ema=ema)
        train = TrainConfig(steps=steps, minutes=minutes, batch_size=batch_size, lr=lr,
                            **{"warmup_steps": 0, "grad_clip": 0.0, **(train_overrides or {})})
        model = gan_preset(preset, data_config.image_size, data_config.channels, **(model_overrides or {}))
        dataset = load_dataset(data_config, "train")               # validate the data before creating the folder
        config = prepare_run_dir(out, False, gan_run_config(data_config, model, gan, train, preset))
    return fit_gan(out, config, resume=resume, progress=progress, dataset=dataset)


def fit_gan(out: Path, config: dict[str, Any], resume: bool, progress: bool = True,
            dataset: ImageDataset | None = None) -> FitResult:
    where = f"{out}/config.json"
    data_config = DataConfig.from_dict(config["data"])
    model_config = from_dict(DCGANConfig, config["model"], where)
    gan = from_dict(GANConfig, config["gan"], where)
    train = from_dict(TrainConfig, config["train"], where)
    device = pick_device(train.device)
    dataset = dataset or load_dataset(data_config, "train")
    if len(dataset) < train.batch_size:
        raise TrilemmaError(f"--batch-size {train.batch_size}: larger than the {len(dataset)} training images")

    torch.manual_seed(train.seed)                                        # initial weights depend on the seed only
    G, D = Generator(model_config).to(device), Discriminator(model_config).to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=train.lr, betas=(gan.beta1, gan.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=train.lr, betas=(gan.beta1, gan.beta2))
    ema = EMA(G) if gan.ema else None
    data_gen = torch.Generator().manual_seed(train.seed)                 # data order and flips (CPU)
    noise_gen = torch.Generator(device).manual_seed(train.seed + 1)      # z (on the device)
    sampler = EpochSampler(len(dataset), train.batch_size, data_gen)
    generators = {"data": data_gen, "noise": noise_gen}
    modules = {"model": G, "disc": D, **({"ema": ema.model} if ema else {})}
    optimizers = {"opt_g": opt_g, "opt_d": opt_d}
    ckpt = Checkpoint(out)
    step, elapsed_before = 0, 0.0
    if resume:
        info, order = ckpt.load(modules=modules, optimizers=optimizers, generators=generators, device=device)
        step, elapsed_before = info["step"], info.get("elapsed_s", 0.0)
        sampler.load_state(order)
    log = MetricsLog(out / "metrics.jsonl", resume_step=step if resume else None)
    budget = Budget(train, elapsed_before)
    if progress:
        print(f"trilemma: training DCGAN (G {count_parameters(G) / 1e6:.2f}M, D {count_parameters(D) / 1e6:.2f}M "
              f"parameters; {gan.g_loss} generator cost, k = {gan.k}) on {dataset.name} ({len(dataset)} images "
              f"{'x'.join(map(str, dataset.image_shape))}) on {device}, run folder {out}",
              file=sys.stderr, flush=True)

    def real_batch() -> torch.Tensor:
        x, _ = dataset.batch(sampler.next(), data_gen)                   # (m, C, H, W) in [-1, 1]
        return x.to(device, non_blocking=True)

    def noise(m: int) -> torch.Tensor:
        return torch.randn((m, model_config.z_dim), generator=noise_gen, device=device)   # z ~ N(0, I)

    z_preview = torch.randn((PREVIEW_N, model_config.z_dim), generator=torch.Generator().manual_seed(1234))
    (out / "samples").mkdir(exist_ok=True)

    @torch.no_grad()
    def preview(at_step: int) -> None:
        net = ema.model if ema else G
        was_training = net.training
        net.eval()
        save_grid(net(z_preview.to(device)), out / "samples" / f"step_{at_step:07d}.png")
        net.train(was_training)

    def save(at_step: int) -> None:
        ckpt.save(at_step, modules=modules, optimizers=optimizers, generators=generators, data_order=sampler.state(),
                  extra={"elapsed_s": budget.elapsed, "epoch": at_step * gan.k * train.batch_size / len(dataset)})
        plot_losses(out / "metrics.jsonl", out / "loss.png", keys=("loss_d", "loss_g"),
                    title=f"{out.name}: D and G ({gan.g_loss}) losses")

    G.train(), D.train()
    cost = GENERATOR_COSTS[gan.g_loss]
    total = train.steps
    bar = tqdm(total=total, initial=step, desc="GAN", unit="step", disable=not progress, dynamic_ncols=True)
    window: list[dict[str, float]] = []
    window_start = time.monotonic()
    last = {"loss_g": math.nan}
    start_step = step
    with Interrupt() as interrupt:
        while not budget.done(step) and not interrupt.requested:
            for opt in (opt_g, opt_d):
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, train.lr, train.warmup_steps, train.lr_decay, budget.progress(step))
            last = algorithm1_iteration(G, D, opt_g, opt_d, real_batch=real_batch, noise=noise, k=gan.k,
                                        generator_cost=cost, grad_clip=train.grad_clip)
            if not (math.isfinite(last["loss_d"]) and math.isfinite(last["loss_g"])):
                raise TrilemmaError(f"the GAN losses became {last['loss_d']}, {last['loss_g']} at step {step + 1}; "
                                    f"try a lower --lr (the last checkpoint is intact)")
            if ema:
                ema.update(G, ema_decay_at(step, train.ema_decay))
            step += 1
            window.append(last)

            if step % train.log_every == 0 or budget.done(step):
                seconds = time.monotonic() - window_start
                row = {"step": step, **{key: sum(w[key] for w in window) / len(window) for key in window[0]},
                       "lr": opt_g.param_groups[0]["lr"],
                       "images_per_s": len(window) * gan.k * train.batch_size / max(seconds, 1e-9),
                       "elapsed_s": round(budget.elapsed, 3)}
                log.write(row)
                window, window_start = [], time.monotonic()
            postfix = f"D={last['loss_d']:.3f} G={last['loss_g']:.3f} D(G(z))={last['d_fake']:.2f}"
            if total is None:
                postfix += f" left={format_eta(max(0.0, budget.seconds - budget.elapsed))}"
            bar.set_postfix_str(postfix, refresh=False)
            bar.update(1)
            if train.sample_every and step % train.sample_every == 0:
                preview(step)
            if step % train.checkpoint_every == 0:
                save(step)
    bar.close()
    if step > start_step or not ckpt.exists():
        save(step)
    if not interrupt.requested:
        preview(step)
    return FitResult(out, step, budget.elapsed, interrupt.requested, last["loss_g"])
