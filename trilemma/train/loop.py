"""The training loop for every model trained by one optimiser on a per-sample loss.

DDPM (and later latent and text-conditioned diffusion, the VAE and the
autoencoder) all train with this one flat loop: draw a minibatch, compute the
per-sample loss, reduce, backward, clip, step, update the EMA, log,
checkpoint. What differs between them is passed in as three small functions:

- ``batch_fn(indices, generator) -> (x, cond)``: the minibatch on the device;
- ``loss_fn(model, x, cond, generator) -> {"loss": (B,), ...}``: per-sample terms;
- ``preview(ema_model, step) -> None``: optional sample grid.

Resuming restores weights, EMA, optimiser, every RNG and the data order, so on
the CPU the losses after ``--resume`` equal those of an uninterrupted run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from trilemma.errors import TrilemmaError
from trilemma.train.common import (EMA, Budget, Checkpoint, EpochSampler, Interrupt, MetricsLog, TrainConfig,
                                   ema_decay_at, format_eta, grad_norm_and_clip, lr_at)
from trilemma.utils.device import autocast
from trilemma.viz import plot_losses

BatchFn = Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, dict[str, Any]]]
LossFn = Callable[[nn.Module, torch.Tensor, dict[str, Any], torch.Generator], dict[str, torch.Tensor]]


@dataclass
class FitResult:
    run_dir: Path
    step: int
    elapsed_s: float
    interrupted: bool
    last_loss: float


def fit(run_dir: Path, *, model: nn.Module, num_examples: int, batch_fn: BatchFn, loss_fn: LossFn,
        train: TrainConfig, device: torch.device, preview: Callable[[nn.Module, int], None] | None = None,
        resume: bool = False, progress: bool = True, desc: str = "training") -> FitResult:
    """Train ``model`` in place for the budget in ``train``; checkpoints go to ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    ema = EMA(model)
    data_gen = torch.Generator().manual_seed(train.seed)              # data order and flips (CPU)
    noise_gen = torch.Generator(device).manual_seed(train.seed + 1)   # t and ε (on the device)
    torch.manual_seed(train.seed + 2)                                 # dropout
    sampler = EpochSampler(num_examples, train.batch_size, data_gen)
    ckpt = Checkpoint(run_dir)
    generators = {"data": data_gen, "noise": noise_gen}
    step, elapsed_before = 0, 0.0
    if resume:
        info, order = ckpt.load(modules={"model": model, "ema": ema.model}, optimizers={"opt": opt},
                                generators=generators, device=device)
        step, elapsed_before = info["step"], info.get("elapsed_s", 0.0)
        sampler.load_state(order)
    log = MetricsLog(run_dir / "metrics.jsonl", resume_step=step if resume else None)
    budget = Budget(train, elapsed_before)

    def save(at_step: int) -> None:
        ckpt.save(at_step, modules={"model": model, "ema": ema.model}, optimizers={"opt": opt},
                  generators=generators, data_order=sampler.state(),
                  extra={"elapsed_s": budget.elapsed, "epoch": at_step * train.batch_size / num_examples})
        plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png")

    total = train.steps if train.steps is not None else None
    bar = tqdm(total=total, initial=step, desc=desc, unit="step", disable=not progress, dynamic_ncols=True)
    window: list[float] = []
    window_start = time.monotonic()
    last_loss = math.nan
    start_step = step
    with Interrupt() as interrupt:
        while not budget.done(step) and not interrupt.requested:
            x, cond = batch_fn(sampler.next(), data_gen)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, train.lr, train.warmup_steps, train.lr_decay, budget.progress(step))
            with autocast(device, train.bf16):
                terms = loss_fn(model, x, cond, noise_gen)
            loss = terms["loss"].float().mean()
            if not torch.isfinite(loss):
                raise TrilemmaError(f"the loss became {loss.item()} at step {step + 1}; "
                                    f"try a lower --lr (the last checkpoint is intact)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = grad_norm_and_clip(model.parameters(), train.grad_clip)
            opt.step()
            ema.update(model, ema_decay_at(step, train.ema_decay))
            step += 1
            last_loss = loss.item()
            window.append(last_loss)

            if step % train.log_every == 0 or budget.done(step):
                seconds = time.monotonic() - window_start
                row = {"step": step, "loss": sum(window) / len(window), "lr": opt.param_groups[0]["lr"],
                       "grad_norm": grad_norm, "images_per_s": len(window) * train.batch_size / max(seconds, 1e-9),
                       "elapsed_s": round(budget.elapsed, 3)}
                for key, value in terms.items():
                    if key not in ("loss", "t") and value.ndim <= 1:
                        row[key] = value.float().mean().item()
                log.write(row)
                window, window_start = [], time.monotonic()
            if total is None:
                remaining = max(0.0, budget.seconds - budget.elapsed)
                bar.set_postfix_str(f"loss={last_loss:.4f} left={format_eta(remaining)}", refresh=False)
            else:
                bar.set_postfix_str(f"loss={last_loss:.4f}", refresh=False)
            bar.update(1)
            if preview is not None and train.sample_every and step % train.sample_every == 0:
                preview(ema.model, step)
            if step % train.checkpoint_every == 0:
                save(step)
    bar.close()
    if step > start_step or not ckpt.exists():
        save(step)
    if preview is not None and not interrupt.requested:
        preview(ema.model, step)
    return FitResult(run_dir, step, budget.elapsed, interrupt.requested, last_loss)
