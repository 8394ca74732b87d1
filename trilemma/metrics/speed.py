"""Sampling speed: network evaluations per image, images per second, peak memory.

- **NFE** (network function evaluations per image) is the model's own count
  (``run.nfe(options)``: 1000 for ancestral DDPM, 50 for 50-step DDIM, 1 for a GAN
  or VAE decoder), the device-independent speed axis of the trilemma (Xiao et al.
  2022).
- **Images per second**: every full batch of the evaluation's own sampling is
  timed except the first (the warm-up: allocator, caches, lazy init), so speed
  costs no extra sampling (:func:`generate_timed`); the result is the median of
  ``batch_size / seconds`` over the timed batches, which a single slow batch
  (another process on a shared CPU) cannot move much. CUDA is synchronised
  before each clock read.
- **Peak memory** while sampling: on CUDA ``torch.cuda.max_memory_allocated``
  (tensors only, after ``reset_peak_memory_stats``); on the CPU the process's peak
  resident set size, read from the kernel's high-water mark ``VmHWM`` after resetting
  it through ``/proc/self/clear_refs`` where Linux allows that, otherwise the
  maximum of ``VmRSS`` polled every 2 ms by a thread. The result says which
  (``memory_measure``). CPU numbers include the Python process (weights,
  interpreter, libraries); ``memory_above_baseline_mb`` subtracts what was
  resident just before sampling.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

PROC_STATUS = Path("/proc/self/status")
PROC_CLEAR_REFS = Path("/proc/self/clear_refs")
POLL_SECONDS = 0.002


def proc_status_kb(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (e.g. ``VmRSS``), or None off Linux."""
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's ``VmHWM`` to the current RSS (Linux >= 4.0); True if it worked."""
    try:
        PROC_CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return proc_status_kb("VmHWM") is not None


class PeakMemory:
    """Context manager: peak memory in MB while the block ran, and how it was measured."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.peak_mb: float | None = None
        self.baseline_mb: float | None = None
        self.measure = "unavailable"
        self._polled_kb = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._use_hwm = False

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_mb = torch.cuda.memory_allocated(self.device) / 2**20
            self.measure = "cuda: torch.cuda.max_memory_allocated (tensors)"
            return self
        rss = proc_status_kb("VmRSS")
        if rss is None:
            return self
        self.baseline_mb = rss / 1024
        self._use_hwm = reset_peak_rss()
        if self._use_hwm:
            self.measure = "cpu: peak process RSS (VmHWM, reset before sampling)"
        else:
            self.measure = f"cpu: peak process RSS (VmRSS polled every {POLL_SECONDS * 1000:.0f} ms)"
            self._polled_kb = rss
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._polled_kb = max(self._polled_kb, proc_status_kb("VmRSS") or 0)
            self._stop.wait(POLL_SECONDS)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._use_hwm:
            self.peak_mb = (proc_status_kb("VmHWM") or 0) / 1024
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak_mb = self._polled_kb / 1024


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so a clock read after it is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timing_result(batch_size: int, seconds: list[float], warmup: int, memory: PeakMemory,
                  device: torch.device) -> dict:
    peak = memory.peak_mb
    return {
        "images_per_s": statistics.median(batch_size / s for s in seconds),
        "batch_size": batch_size,
        "timed_batches": len(seconds),
        "warmup_batches": warmup,
        "batch_seconds": [round(s, 4) for s in seconds],
        "peak_memory_mb": None if peak is None else round(peak, 1),
        "memory_above_baseline_mb": (None if peak is None or memory.baseline_mb is None
                                     else round(max(peak - memory.baseline_mb, 0.0), 1)),
        "memory_measure": memory.measure,
        "device": str(device),
    }


def time_sampler(sample_batch: Callable[[], object], batch_size: int, device: torch.device, *,
                 warmup: int = 1, repeats: int = 5) -> dict:
    """Time ``sample_batch()`` (one batch of ``batch_size`` images); see the module docstring."""
    device = torch.device(device)
    for _ in range(warmup):
        sample_batch()
    sync(device)
    seconds = []
    with PeakMemory(device) as memory:
        for _ in range(repeats):
            t0 = time.perf_counter()
            sample_batch()
            sync(device)
            seconds.append(time.perf_counter() - t0)
    return timing_result(batch_size, seconds, warmup, memory, device)


@torch.no_grad()
def generate_timed(run, n: int, options, *, seed: int = 0, batch_size: int = 256,
                   progress: bool = True, fallback_batches: int = 3) -> tuple[torch.Tensor, dict]:
    """Draw ``n`` images from ``run`` and time the sampler on the way: ``(images, speed)``.

    The images are those of ``run.generate(n, seed=seed, batch_size=batch_size)``:
    the same generator (``run.generator(seed)``) drawn through the same batches.
    Every full batch after the first (the warm-up) is timed, so measuring speed
    costs nothing extra; a sample too small for that (``n < 2 * batch_size``) is
    followed by ``fallback_batches`` timed batches of ``min(n, batch_size)`` images,
    drawn after the kept images (a 12-image evaluation does not sample 768 to time
    itself; ``speed["batch_size"]`` records the size timed).
    ``images``: uint8 ``(n, C, H, W)`` on the CPU. ``speed``: ``nfe`` plus
    :func:`time_sampler`'s fields.
    """
    from trilemma.data import to_uint8

    device = torch.device(run.device)
    generator = (run.generator(seed) if hasattr(run, "generator")
                 else torch.Generator(device=device).manual_seed(seed))
    nfe = int(run.nfe(options))
    out, seconds = [], []
    with PeakMemory(device) as memory, tqdm(total=n, desc=f"sampling ({nfe} network evaluations/image)",
                                            unit="img", disable=not progress, leave=False) as bar:
        for i, start in enumerate(range(0, n, batch_size)):
            b = min(batch_size, n - start)
            t0 = time.perf_counter()
            x = run.sample_batch(b, generator, options)  # (b, C, H, W) in [-1, 1]
            sync(device)
            if i > 0 and b == batch_size:
                seconds.append(time.perf_counter() - t0)
            out.append(to_uint8(x.float().cpu()))
            bar.update(b)
    images = torch.cat(out)
    if seconds:
        speed = timing_result(batch_size, seconds, 1, memory, device)
    else:
        timed = min(n, batch_size)
        speed = time_sampler(lambda: run.sample_batch(timed, generator, options), timed,
                             device, warmup=0, repeats=fallback_batches)
    return images, {"nfe": nfe, **speed}
