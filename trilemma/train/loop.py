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

import contextlib
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from trilemma.data.dataset import resident
from trilemma.errors import TrilemmaError
from trilemma.train.common import (EMA, Budget, Checkpoint, EpochSampler, Interrupt, MetricsLog, TrainConfig, adamw,
                                   ema_decay_at, format_eta, grad_norm_and_clip, lr_at)
from trilemma.train.distributed import (GlobalNoise, World, all_sum, average_before_step, local_slice, slice_batch,
                                        step_seed, sync_batchnorm, undo, world)
from trilemma.utils.device import autocast, check_bf16, resident_bytes, set_precision
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
        progress: the share of the budget spent before the current step, in [0, 1] (steps, or
            wall-clock time with ``--minutes``); the loop sets it before each ``step``, which may
            read it (the DDGAN's fading reconstruction weight).
        eager: names of ``nets`` that ``--compile`` leaves uncompiled: those whose loss needs a
            second derivative (an R1 penalty), which ``torch.compile``'s autograd does not support.
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
    progress: float = 0.0
    eager: tuple[str, ...] = ()


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
    opt = adamw(model.parameters(), train)
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


class _Clock:
    """A wall-clock cadence (``--checkpoint-minutes``, ``--sample-minutes``; 0 = off)."""

    def __init__(self, minutes: float):
        self.seconds = minutes * 60.0
        self.last = time.monotonic()

    def due(self) -> bool:
        return self.seconds > 0 and time.monotonic() - self.last >= self.seconds

    def reset(self) -> None:
        self.last = time.monotonic()


# the flags every process contributes at a log step (summed over the processes: > 0 means "some rank")
_FLAGS = ("interrupt", "out_of_time", "save_due", "preview_due")


def _agree(window: _Window, flags: dict[str, bool], elapsed: float, device: torch.device,
           w: World) -> tuple[dict[str, float], dict[str, bool], float, float]:
    """The window's means over every process, the flags of any process, the mean elapsed time and the
    mean window duration: one all-reduce under torchrun, and the one host sync of a log step."""
    keys = sorted(window.sums)
    comm = device if (w.distributed and device.type == "cuda") else torch.device("cpu")
    values = [window.sums[k] for k in keys]
    tensors = [v.detach().to(comm, torch.float64).reshape(()) if isinstance(v, torch.Tensor)
               else torch.tensor(float(v), dtype=torch.float64, device=comm) for v in values]
    extra = [float(flags[f]) for f in _FLAGS] + [elapsed, time.monotonic() - window.started]
    vec = torch.cat([torch.stack(tensors) if tensors else torch.zeros(0, dtype=torch.float64, device=comm),
                     torch.tensor(extra, dtype=torch.float64, device=comm)])
    total = all_sum(vec).tolist()                                        # the one host sync
    steps = max(window.steps, 1) * w.size
    means = {k: v / steps for k, v in zip(keys, total)}
    tail = total[len(keys):]
    agreed = {f: tail[i] > 0 for i, f in enumerate(_FLAGS)}
    return means, agreed, tail[-2] / w.size, tail[-1] / w.size


def fit(run_dir: Path, trainer: Trainer, *, train: TrainConfig, num_examples: int, device: torch.device,
        resume: bool = False, progress: bool = True, desc: str = "training") -> FitResult:
    """Train ``trainer``'s networks in place for the budget in ``train``; checkpoints go to ``run_dir``.

    Under torchrun (a process group is initialised) every process calls ``fit`` with the same
    arguments; see :mod:`trilemma.train.distributed` for what is shared and docs/scaling.md.
    """
    run_dir = Path(run_dir)
    w = world()
    main = w.is_main
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    check_bf16(device, train.bf16)
    set_precision(device, train.tf32, train.deterministic)
    rows = local_slice(train.batch_size, w) if w.distributed else None
    for net in trainer.nets.values():
        net.to(device).train()
    model = trainer.nets["model"]
    ema = EMA(model) if trainer.ema else None                            # before compiling: a plain copy
    nets = {**trainer.nets, **({"ema": ema.model} if ema else {})}
    restore_bn = sync_batchnorm(trainer.nets.values()) if w.distributed else []
    hooks = [h for opt in trainer.optimizers.values() for h in average_before_step(opt)] if w.distributed else []
    if train.compile:
        for name, net in trainer.nets.items():
            if name not in trainer.eager:
                net.compile()                                            # in place: state-dict keys unchanged
    data_gen = torch.Generator().manual_seed(train.seed)              # data order and flips (CPU)
    noise_gen = torch.Generator(device).manual_seed(train.seed + 1)   # t, ε, z (on the device)
    sampler = EpochSampler(num_examples, train.batch_size, data_gen)
    ckpt = Checkpoint(run_dir)
    generators = {"data": data_gen, "noise": noise_gen}
    step, elapsed_before = 0, 0.0
    if resume:
        saved_on = ckpt.info().get("device")
        restore = generators
        if saved_on is not None and torch.device(saved_on).type != device.type:
            restore = {"data": data_gen}                                 # a CPU and a CUDA generator differ
            if main:
                print(f"trilemma: resuming on {device} a checkpoint saved on {saved_on}: the weights, optimiser "
                      f"and data order continue; the noise generator restarts from the seed and step",
                      file=sys.stderr, flush=True)
        info, order = ckpt.load(modules=nets, optimizers=trainer.optimizers, generators=restore, device=device)
        step, elapsed_before = info["step"], info.get("elapsed_s", 0.0)
        if restore is not generators:
            noise_gen.manual_seed(step_seed(train.seed + 1, step, 0))
        sampler.load_state(order)
    log = MetricsLog(run_dir / "metrics.jsonl", resume_step=step if resume else None) if main else None
    budget = Budget(train, elapsed_before)
    sampling_net = ema.model if ema else model
    examples_per_step = trainer.draws_per_step * train.batch_size
    if progress and main and trainer.describe:
        on = f"{device}" + (f" × {w.size} processes" if w.distributed else "")
        print(f"trilemma: {trainer.describe} on {on}, run folder {run_dir}", file=sys.stderr, flush=True)
    noise_mode = (lambda: GlobalNoise(noise_gen, w)) if w.distributed else contextlib.nullcontext

    def draw() -> Batch:
        batch = trainer.batch(sampler.next(), data_gen)                  # the global minibatch …
        return batch if rows is None else slice_batch(batch, rows, train.batch_size)   # … this rank's rows

    def save(at_step: int) -> None:
        if not main:
            return
        ckpt.save(at_step, modules=nets, optimizers=trainer.optimizers, generators=generators,
                  data_order=sampler.state(),
                  extra={"elapsed_s": budget.elapsed, "epoch": at_step * examples_per_step / num_examples,
                         "device": str(device), "world_size": w.size})
        keys, title = trainer.plot
        plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png", keys=keys, title=title)

    def check_finite(means: dict[str, float], at_step: int) -> None:
        bad = {k: v for k, v in means.items() if k.startswith("loss") and not math.isfinite(v)}
        if bad:
            what = ", ".join(f"{k} = {v}" for k, v in bad.items())
            kept = (f"the last checkpoint, step {last_saved}, is intact" if ckpt.exists() else
                    "no checkpoint was saved yet")
            raise TrilemmaError(f"the training loss became non-finite by step {at_step} ({what}); "
                                f"try a lower --lr ({kept})")

    bar = tqdm(total=train.steps, initial=step, desc=desc, unit="step", disable=not (progress and main),
               dynamic_ncols=True)
    window = _Window()
    last_loss = math.nan
    last_saved = step
    save_clock, preview_clock = _Clock(train.checkpoint_minutes), _Clock(train.sample_minutes)
    stopped = interrupted = False
    try:
        with Interrupt() as interrupt, resident(device, resident_bytes(device)):
            while not stopped:
                if train.steps is not None and step >= train.steps:
                    break
                if not w.distributed and (budget.done(step) or interrupt.requested):   # one process: any step
                    interrupted = interrupt.requested
                    break
                trainer.progress = budget.progress(step)
                for opt in trainer.optimizers.values():
                    for group in opt.param_groups:
                        group["lr"] = group.get("lr_scale", 1.0) * lr_at(   # lr_scale: a per-group ratio (DDGAN's D)
                            step, train.lr, train.warmup_steps, train.lr_decay, trainer.progress, train.lr_final)
                torch.manual_seed(step_seed(train.seed, step, w.rank))     # dropout: exact on resume, per rank
                with noise_mode():
                    terms = trainer.step(draw, noise_gen)
                if ema is not None:
                    ema.update(model, ema_decay_at(step, train.ema_decay))
                step += 1
                window.add(terms)
                must_save = bool(train.checkpoint_every) and step % train.checkpoint_every == 0
                must_preview = trainer.preview is not None and train.sample_every and step % train.sample_every == 0
                last = train.steps is not None and step >= train.steps
                if (step % train.log_every == 0 or last or must_save or must_preview
                        or (not w.distributed and budget.done(step))):
                    flags = {"interrupt": interrupt.requested, "out_of_time": budget.done(step),
                             "save_due": save_clock.due(), "preview_due": preview_clock.due()}
                    means, agreed, elapsed, seconds = _agree(window, flags, budget.elapsed, device, w)
                    check_finite(means, step)                            # the same verdict on every rank
                    if w.distributed:                                    # every rank stops at this same step
                        budget.agreed = elapsed
                        interrupted = agreed["interrupt"]
                        stopped = interrupted or agreed["out_of_time"]
                    must_save = must_save or agreed["save_due"]
                    must_preview = must_preview or (trainer.preview is not None and agreed["preview_due"])
                    last_loss = means.get("loss", last_loss)
                    row = {"step": step, **means,
                           "lr": next(iter(trainer.optimizers.values())).param_groups[0]["lr"],
                           "images_per_s": window.steps * examples_per_step / max(seconds, 1e-9),
                           "elapsed_s": round(elapsed, 3)}
                    if main:
                        log.write(row)
                    window = _Window()
                    postfix = " ".join(f"{k}={v:.4f}" for k, v in means.items() if k.startswith("loss"))
                    if train.steps is None:
                        postfix += f" left={format_eta(max(0.0, budget.seconds - budget.elapsed))}"
                    bar.set_postfix_str(postfix, refresh=False)
                bar.update(1)
                if must_preview:
                    if main:
                        trainer.preview(sampling_net, step)
                    preview_clock.reset()
                if must_save:
                    save(step)
                    last_saved = step
                    save_clock.reset()
            bar.close()
            if window.steps:                                             # steps since the last log line
                check_finite(_agree(window, dict.fromkeys(_FLAGS, False), budget.elapsed, device, w)[0], step)
            if main and (step > last_saved or not ckpt.exists()):
                save(step)
            if main and trainer.preview is not None and not interrupted:
                trainer.preview(sampling_net, step)
            signal_name = interrupt.signal_name
    finally:
        for hook in hooks:
            hook.remove()
        undo(restore_bn)
    return FitResult(run_dir, step, budget.elapsed, interrupted, last_loss, signal_name if interrupted else None)
