"""Data-parallel training over several processes (``torchrun``): the pieces the shared loop uses.

``torchrun --nproc_per_node N -m trilemma train KIND …`` starts N copies of the trainer. They form
one process group (gloo on the CPU, NCCL on CUDA: ``"cpu:gloo,cuda:nccl"`` when CUDA is present)
and train one model together, so that the result depends as little as possible on N:

- **Data.** Every rank draws the same *global* minibatch (``--batch-size``) from the shared
  :class:`~trilemma.train.common.EpochSampler` and the same CPU generator, builds it, and keeps its
  contiguous slice ``[r·B/N, (r+1)·B/N)`` (:func:`local_slice`). The data order, the checkpoints and
  ``--resume`` therefore do not depend on N.
- **Noise.** While a step runs, :class:`GlobalNoise` turns every draw of ``torch.randn/rand/randint``
  (and ``Tensor.normal_/uniform_``) from the loop's noise generator of a batch-shaped tensor
  ``(b, …)`` into a draw of the global shape ``(N·b, …)`` of which the rank keeps its slice. Every
  rank thus sees different noise, the generators of all ranks stay in lockstep (they are saved once,
  by rank 0) and the noise of sample i is the one a single process would draw.
- **Gradients** are averaged over the ranks before they are clipped or applied
  (:func:`average_gradients`, called by :func:`~trilemma.train.common.grad_norm_and_clip`, with an
  optimiser pre-step hook as a safety net for a step that does not clip), so every rank applies the
  same update: the weights stay identical without DDP wrappers and are saved without a ``module.``
  prefix. The gradient of the mean over ranks of per-rank means is the gradient of the global mean.
- **BatchNorm** layers use the statistics of the global batch (:func:`sync_batchnorm`: an
  autograd-aware all-reduce of Σx, Σx², n; works with gloo and NCCL, keeps the state-dict keys).

What is invariant to N (up to floating-point summation order): data order, per-sample noise,
gradients, BatchNorm statistics, hence the weights after any number of steps. What is not: dropout
masks (drawn from the global RNG, seeded per step and rank), and any random draw a family makes
from the noise generator that is not batch-shaped (drawn identically on every rank) or with another
generator. See docs/scaling.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.overrides import TorchFunctionMode

from trilemma.errors import TrilemmaError

TIMEOUT_ENV = "TRILEMMA_DIST_TIMEOUT_S"      # collective timeout (seconds); default 30 minutes


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (``size == 1``: not distributed)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """The current process group (initialised by :func:`init` or by the caller), else a world of one."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return World()


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init() -> bool:
    """Join the process group described by torchrun's environment (``WORLD_SIZE`` > 1).

    Returns True when this call created the group (the caller then destroys it with :func:`shutdown`).
    """
    if env_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    if not dist.is_available():
        raise TrilemmaError("torchrun: this build of PyTorch has no torch.distributed")
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        backend = "cpu:gloo,cuda:nccl"
    timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV) or 1800))
    dist.init_process_group(backend=backend, timeout=timeout)
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main_first(what: Callable[[], Any], w: World | None = None, others: bool = True) -> Any:
    """Run ``what`` on rank 0 first (it may write files and fill caches), then on the other ranks
    (``others=False``: only on rank 0; the others get None).

    An error on rank 0 is re-raised on every rank (no rank waits forever at the barrier).
    """
    w = w or world()
    if not w.distributed:
        return what()
    result, error = None, None
    if w.is_main:
        try:
            result = what()
        except Exception as e:
            error = e
    message = [None if error is None else f"{type(error).__name__}: {error}"]
    dist.broadcast_object_list(message, src=0)
    if error is not None:
        raise error
    if message[0] is not None:
        raise TrilemmaError(f"rank 0 failed: {message[0]}")
    if not w.is_main and others:
        result = what()
    return result


def barrier() -> None:
    if world().distributed:
        dist.barrier()


# ----------------------------------------------------------------------------------------------- data
def local_slice(batch_size: int, w: World) -> slice:
    """The rows of a global minibatch of ``batch_size`` that rank ``w.rank`` trains on."""
    if batch_size % w.size:
        raise TrilemmaError(f"--batch-size {batch_size}: not divisible by the {w.size} processes "
                            f"(--batch-size is the global batch)")
    b = batch_size // w.size
    return slice(w.rank * b, (w.rank + 1) * b)


def slice_batch(batch: Any, rows: slice, batch_size: int) -> Any:
    """Keep ``rows`` of every tensor in ``batch`` (nested tuples/lists/dicts) whose first dimension is the batch."""
    if isinstance(batch, torch.Tensor):
        return batch[rows] if batch.ndim and len(batch) == batch_size else batch
    if isinstance(batch, dict):
        return {k: slice_batch(v, rows, batch_size) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(slice_batch(v, rows, batch_size) for v in batch)
    return batch


_SIZED = {torch.randn, torch.rand}


class GlobalNoise(TorchFunctionMode):
    """Draws from ``generator`` of a batch-shaped tensor become the rank's slice of the global draw.

    A draw of shape ``(b, …)`` is replaced by the same draw of shape ``(N·b, …)`` (the shape a single
    process would draw for the global batch), of which rank r keeps rows ``[r·b, (r+1)·b)``. Covers
    ``torch.randn``, ``torch.rand``, ``torch.randint`` and in-place ``Tensor.normal_``/``uniform_``;
    other draws from ``generator`` pass unchanged (identical on every rank).
    """

    def __init__(self, generator: torch.Generator, w: World):
        super().__init__()
        self.generator, self.w = generator, w

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if kwargs.get("generator") is not self.generator or not self.w.distributed:
            return func(*args, **kwargs)
        if func in _SIZED or func is torch.randint:
            return self._sized(func, args, kwargs)
        if func in (torch.Tensor.normal_, torch.Tensor.uniform_) and args and args[0].ndim:
            target = args[0]
            full = torch.empty((self.w.size * len(target), *target.shape[1:]), dtype=target.dtype,
                               device=target.device)
            func(full, *args[1:], **kwargs)
            b = len(target)
            with torch.no_grad():
                target.copy_(full[self.w.rank * b:(self.w.rank + 1) * b])
            return target
        return func(*args, **kwargs)

    def _sized(self, func, args, kwargs):
        args = list(args)
        if "size" in kwargs:
            size, put = tuple(kwargs["size"]), lambda s: kwargs.__setitem__("size", s)
        elif func is torch.randint:
            i = len(args) - 1                                   # randint(high, size) / randint(low, high, size)
            size = tuple(args[i])
            put = lambda s: args.__setitem__(i, s)
        elif args and isinstance(args[0], (tuple, list, torch.Size)):
            size, put = tuple(args[0]), lambda s: args.__setitem__(0, s)
        else:                                                   # randn(b, c, …)
            size = tuple(args)
            n = len(args)

            def put(s):
                args[:n] = list(s)
        if not size:
            return func(*args, **kwargs)
        b = size[0]
        put((self.w.size * b, *size[1:]))
        out = func(*args, **kwargs)
        return out[self.w.rank * b:(self.w.rank + 1) * b]


# ------------------------------------------------------------------------------------------ gradients
def _grads(params) -> list[torch.Tensor]:
    return [p.grad for p in params if p.grad is not None]


def average_gradients(params, w: World | None = None) -> None:
    """Replace every gradient by its mean over the ranks (one flat all-reduce per device and dtype)."""
    w = w or world()
    if not w.distributed:
        return
    grads = [g for g in _grads(params) if not getattr(g, "_trilemma_averaged", False)]
    buckets: dict[tuple, list[torch.Tensor]] = {}
    for g in grads:
        buckets.setdefault((g.device, g.dtype), []).append(g)
    for bucket in buckets.values():
        flat = torch.cat([g.reshape(-1) for g in bucket])
        dist.all_reduce(flat)
        flat.div_(w.size)
        offset = 0
        for g in bucket:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n
            g._trilemma_averaged = True


def clear_averaged(params) -> None:
    for g in _grads(params):
        g._trilemma_averaged = False


def average_before_step(optimizer: torch.optim.Optimizer):
    """An optimiser pre-step hook: gradients not yet averaged (no clipping in that step) are averaged.

    Returns the hook handles (a pre- and a post-step hook; call ``.remove()`` on each).
    """
    def params():
        return [p for group in optimizer.param_groups for p in group["params"]]

    pre = optimizer.register_step_pre_hook(lambda opt, args, kwargs: average_gradients(params()))
    post = optimizer.register_step_post_hook(lambda opt, args, kwargs: clear_averaged(params()))
    return pre, post


# ------------------------------------------------------------------------------------------ BatchNorm
class _SumOverRanks(torch.autograd.Function):
    """y = Σ_ranks x; its backward is the same sum of the incoming gradients (each rank's loss uses y)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class _GlobalBatchNorm:
    """BatchNorm over the global batch: Σx, Σx², n all-reduced (autograd-aware), same buffers and keys."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = world()
        if not (self.training and w.distributed):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.ndim)]
        xf = x.float()
        n_local = xf.new_full((1,), x.numel() / x.shape[1])                  # filled on the device: no copy
        stats = torch.cat([xf.sum(dims), (xf * xf).sum(dims), n_local])
        stats = _SumOverRanks.apply(stats)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)          # biased, as BatchNorm normalises
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), m)
                unbiased = var.detach() * n / (n - 1).clamp_min(1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), m)
        shape = (1, c) + (1,) * (x.ndim - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


_GLOBAL_CLASSES: dict[type, type] = {}


def sync_batchnorm(modules) -> list[tuple[nn.Module, type]]:
    """Make every BatchNorm layer of ``modules`` use global-batch statistics; returns what to undo."""
    changed = []
    for net in modules:
        for m in net.modules():
            cls = type(m)
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and cls not in _GLOBAL_CLASSES.values() \
                    and not isinstance(m, nn.SyncBatchNorm):
                new = _GLOBAL_CLASSES.setdefault(cls, type(f"Global{cls.__name__}", (_GlobalBatchNorm, cls), {}))
                m.__class__ = new
                changed.append((m, cls))
    return changed


def undo(changed: list[tuple[nn.Module, type]]) -> None:
    for m, cls in changed:
        m.__class__ = cls


# ------------------------------------------------------------------------------------------- agreeing
def all_sum(values: torch.Tensor) -> torch.Tensor:
    """Σ over the ranks of a float64 vector (in place on its device; NCCL needs a CUDA tensor)."""
    if world().distributed:
        dist.all_reduce(values)
    return values


def step_seed(seed: int, step: int, rank: int) -> int:
    """The global RNG's seed (dropout) for ``step`` on ``rank``: resumes exactly, differs per rank."""
    return (((seed + 2) * 1_000_003 + step) * 1009 + rank) % (2 ** 63 - 1)


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside a ``torch.compile`` (``_orig_mod``) or DDP (``module``) wrapper."""
    while True:
        if hasattr(module, "_orig_mod"):
            module = module._orig_mod
        elif isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        else:
            return module


def plain_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """State-dict keys without the ``_orig_mod.`` (torch.compile) and ``module.`` (DDP) wrapper prefixes."""
    out = {}
    for key, value in state.items():
        parts = [p for p in key.split(".")]
        while parts and parts[0] in ("_orig_mod", "module"):
            parts = parts[1:]
        out[".".join(p for p in parts if p != "_orig_mod")] = value
    return out
