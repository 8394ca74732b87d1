"""The one training loop of trilemma: every family (DDPM, VAE, GAN, autoencoder, latent, text, DDGAN) uses it.

A family supplies a :class:`Trainer`: its networks, its optimisers, how to build a minibatch and
one ``step`` function. The loop owns everything else, once:

- seeding (the data-order generator on the CPU, the noise generator on the device, dropout),
- the data order (a fresh permutation per epoch, :class:`~trilemma.train.common.EpochSampler`),
- the budget (``--steps`` or ``--minutes``, counted across resumes) and the learning-rate schedule
  of every optimiser,
- the EMA of the sampled network,
- checkpoints (atomic, step-tagged) and exact resume (weights, EMA, optimisers, every RNG and the
  data order: on the CPU the losses after ``--resume`` equal those of an uninterrupted run),
- Ctrl-C and SIGTERM (save, then stop), a non-finite loss (stop, the last checkpoint intact),
- ``metrics.jsonl``, ``loss.png``, previews and the progress bar.

``step(draw, noise)`` does one optimiser update (or several: k discriminator updates per generator
update) and returns a dict of tensors, per sample or scalar, with at least ``"loss"``. It calls
``draw()`` once per minibatch it needs. The loop reads those values only on logging steps, so
steps in between never wait for the device.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
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

Batch = tuple[torch.Tensor, dict[str, Any]]
BatchFn = Callable[[torch.Tensor, torch.Generator], Batch]
LossFn = Callable[[nn.Module, torch.Tensor, dict[str, Any], torch.Generator], dict[str, torch.Tensor]]
StepFn = Callable[[Callable[[], Batch], torch.Generator], dict[str, torch.Tensor]]


@dataclass
class Trainer:
    """What a model family hands to :func:`fit`.

    Args:
        nets: the networks, saved as ``RUN/<name>.safetensors``; ``"model"`` is the one that samples.
        optimizers: every optimiser (their learning rates follow the shared schedule).
        batch: ``batch(indices, data_generator) -> (x, cond)``, the minibatch on the device.
        step: one training iteration (see the module docstring).
        ema: keep an EMA of ``nets["model"]`` (saved as ``ema.safetensors``, used for sampling).
        draws_per_step: minibatches ``step`` draws (k + 1 … for a GAN; for images/s and epochs).
        preview: ``preview(sampling_net, step)`` draws a grid (optional).
        plot: the metrics keys drawn in ``loss.png`` and its title.
        describe: the line printed when training starts.
    """

    nets: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    batch: BatchFn
    step: StepFn
    ema: bool = True
    draws_per_step: int = 1
    preview: Callable[[nn.Module, int], None] | None = None
    plot: tuple[tuple[str, ...], str | None] = (("loss",), None)
    describe: str = ""
    state: dict[str, Any] = field(default_factory=dict)


@dataclass
class FitResult:
    run_dir: Path
    step: int
    elapsed_s: float
    interrupted: bool
    last_loss: float
    signal: str | None = None


def single_optimizer_step(model: nn.Module, opt: torch.optim.Optimizer, loss_fn: LossFn, train: TrainConfig,
                          device: torch.device) -> StepFn:
    """The step of a model trained by one optimiser on a per-sample loss (Algorithm 1 of Ho et al. …).

    loss = mean over the batch of ``loss_fn(...)["loss"]``; backward; clip; optimiser step.
    """
    def step(draw: Callable[[], Batch], noise: torch.Generator) -> dict[str, torch.Tensor]:
        x, cond = draw()
        with autocast(device, train.bf16):
            terms = loss_fn(model, x, cond, noise)
        loss = terms["loss"].float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        terms["grad_norm"] = grad_norm_and_clip(model.parameters(), train.grad_clip)
        opt.step()
        return terms
    return step


def one_network_trainer(model: nn.Module, batch: BatchFn, loss_fn: LossFn, train: TrainConfig, device: torch.device,
                        preview: Callable[[nn.Module, int], None] | None = None, **kwargs: Any) -> Trainer:
    """The :class:`Trainer` of one network, AdamW and a per-sample loss (DDPM, VAE, latent, text, …)."""
    opt = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    return Trainer(nets={"model": model}, optimizers={"opt": opt}, batch=batch,
                   step=single_optimizer_step(model, opt, loss_fn, train, device), preview=preview, **kwargs)


class _Window:
    """Running sums of the logged terms between two log lines (on the device: no sync per step)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.started = time.monotonic()

    def add(self, terms: dict[str, Any]) -> None:
        for key, value in terms.items():
            if key == "t":
                continue
            if isinstance(value, torch.Tensor):
                if value.ndim > 1:
                    continue
                value = value.detach().float().mean()
            elif not isinstance(value, (int, float)):
                continue
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.steps += 1

    def means(self) -> dict[str, float]:
        return {key: float(value) / self.steps for key, value in self.sums.items()}


def fit(run_dir: Path, trainer: Trainer, *, train: TrainConfig, num_examples: int, device: torch.device,
        resume: bool = False, progress: bool = True, desc: str = "training") -> FitResult:
    """Train ``trainer``'s networks in place for the budget in ``train``; checkpoints go to ``run_dir``."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for net in trainer.nets.values():
        net.to(device).train()
    model = trainer.nets["model"]
    ema = EMA(model) if trainer.ema else None
    nets = {**trainer.nets, **({"ema": ema.model} if ema else {})}
    data_gen = torch.Generator().manual_seed(train.seed)              # data order and flips (CPU)
    noise_gen = torch.Generator(device).manual_seed(train.seed + 1)   # t, ε, z (on the device)
    torch.manual_seed(train.seed + 2)                                 # dropout
    sampler = EpochSampler(num_examples, train.batch_size, data_gen)
    ckpt = Checkpoint(run_dir)
    generators = {"data": data_gen, "noise": noise_gen}
    step, elapsed_before = 0, 0.0
    if resume:
        info, order = ckpt.load(modules=nets, optimizers=trainer.optimizers, generators=generators, device=device)
        step, elapsed_before = info["step"], info.get("elapsed_s", 0.0)
        sampler.load_state(order)
    log = MetricsLog(run_dir / "metrics.jsonl", resume_step=step if resume else None)
    budget = Budget(train, elapsed_before)
    sampling_net = ema.model if ema else model
    examples_per_step = trainer.draws_per_step * train.batch_size
    if progress and trainer.describe:
        print(f"trilemma: {trainer.describe} on {device}, run folder {run_dir}", file=sys.stderr, flush=True)

    def draw() -> Batch:
        return trainer.batch(sampler.next(), data_gen)

    def save(at_step: int) -> None:
        ckpt.save(at_step, modules=nets, optimizers=trainer.optimizers, generators=generators,
                  data_order=sampler.state(),
                  extra={"elapsed_s": budget.elapsed, "epoch": at_step * examples_per_step / num_examples})
        keys, title = trainer.plot
        plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png", keys=keys, title=title)

    def check_finite(means: dict[str, float], at_step: int) -> None:
        bad = {k: v for k, v in means.items() if k.startswith("loss") and not math.isfinite(v)}
        if bad:
            what = ", ".join(f"{k} = {v}" for k, v in bad.items())
            raise TrilemmaError(f"the training loss became non-finite by step {at_step} ({what}); "
                                f"try a lower --lr (the last checkpoint, step {last_saved}, is intact)")

    bar = tqdm(total=train.steps, initial=step, desc=desc, unit="step", disable=not progress, dynamic_ncols=True)
    window = _Window()
    last_loss = math.nan
    start_step = last_saved = step
    with Interrupt() as interrupt:
        while not budget.done(step) and not interrupt.requested:
            for opt in trainer.optimizers.values():
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, train.lr, train.warmup_steps, train.lr_decay, budget.progress(step))
            terms = trainer.step(draw, noise_gen)
            if ema is not None:
                ema.update(model, ema_decay_at(step, train.ema_decay))
            step += 1
            window.add(terms)
            must_save = step % train.checkpoint_every == 0
            must_preview = trainer.preview is not None and train.sample_every and step % train.sample_every == 0
            if step % train.log_every == 0 or budget.done(step) or must_save or must_preview:
                means = window.means()                                   # the one host sync
                check_finite(means, step)
                last_loss = means.get("loss", last_loss)
                seconds = time.monotonic() - window.started
                row = {"step": step, **means, "lr": next(iter(trainer.optimizers.values())).param_groups[0]["lr"],
                       "images_per_s": window.steps * examples_per_step / max(seconds, 1e-9),
                       "elapsed_s": round(budget.elapsed, 3)}
                log.write(row)
                window = _Window()
                postfix = " ".join(f"{k}={v:.4f}" for k, v in means.items() if k.startswith("loss"))
                if train.steps is None:
                    postfix += f" left={format_eta(max(0.0, budget.seconds - budget.elapsed))}"
                bar.set_postfix_str(postfix, refresh=False)
            bar.update(1)
            if must_preview:
                trainer.preview(sampling_net, step)
            if must_save:
                save(step)
                last_saved = step
    bar.close()
    if window.steps:                                                     # steps since the last log line
        check_finite(window.means(), step)
    if step > start_step or not ckpt.exists():
        save(step)
    if trainer.preview is not None and not interrupt.requested:
        trainer.preview(sampling_net, step)
    return FitResult(run_dir, step, budget.elapsed, interrupt.requested, last_loss, interrupt.signal_name)
