"""Sampling speed: network evaluations per image, images per second, peak memory.

- **NFE** (network function evaluations per image) is the model's own count
  (``run.nfe(options)``: 1000 for ancestral DDPM, 50 for 50-step DDIM, 1 for a GAN
  or VAE decoder), the device-independent speed axis of the trilemma (Xiao et al.
  2022).
- **Images per second**: the sampler is timed on ``repeats`` whole batches after
  ``warmup`` untimed ones (allocator, caches, lazy init); the result is the median
  of ``batch_size / seconds`` over the timed batches, which a single slow batch
  (another process on a shared CPU) cannot move much. CUDA is synchronised
  before each clock read.
- **Peak memory** during the timed batches: on CUDA ``torch.cuda.max_memory_allocated``
  (tensors only, after ``reset_peak_memory_stats``); on the CPU the process's peak
  resident set size, read from the kernel's high-water mark ``VmHWM`` after resetting
  it through ``/proc/self/clear_refs`` where Linux allows that, otherwise the
  maximum of ``VmRSS`` polled every 2 ms by a thread. The result says which
  (``memory_measure``). CPU numbers include the Python process (weights,
  interpreter, libraries); ``memory_above_baseline_mb`` subtracts what was
  resident just before the timed batches.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch

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
            self.measure = "cpu: peak process RSS (VmHWM, reset before timing)"
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


def time_sampler(sample_batch: Callable[[], object], batch_size: int, device: torch.device, *,
                 warmup: int = 1, repeats: int = 5) -> dict:
    """Time ``sample_batch()`` (one batch of ``batch_size`` images); see the module docstring."""
    device = torch.device(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        sample_batch()
    sync()
    seconds = []
    with PeakMemory(device) as memory:
        for _ in range(repeats):
            t0 = time.perf_counter()
            sample_batch()
            sync()
            seconds.append(time.perf_counter() - t0)
    peak = memory.peak_mb
    return {
        "images_per_s": statistics.median(batch_size / s for s in seconds),
        "batch_size": batch_size,
        "timed_batches": repeats,
        "warmup_batches": warmup,
        "batch_seconds": [round(s, 4) for s in seconds],
        "peak_memory_mb": None if peak is None else round(peak, 1),
        "memory_above_baseline_mb": (None if peak is None or memory.baseline_mb is None
                                     else round(max(peak - memory.baseline_mb, 0.0), 1)),
        "memory_measure": memory.measure,
        "device": str(device),
    }


def run_speed(run, options, *, batch_size: int = 256, seed: int = 0, warmup: int = 1,
              repeats: int = 5) -> dict:
    """Speed of ``run`` sampling with ``options``: ``nfe`` plus :func:`time_sampler`'s fields.

    ``run`` follows :mod:`trilemma.runs` (``sample_batch(n, generator, options)``,
    ``nfe(options)``, ``device``).
    """
    device = torch.device(run.device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        timing = time_sampler(lambda: run.sample_batch(batch_size, generator, options), batch_size,
                              device, warmup=warmup, repeats=repeats)
    return {"nfe": int(run.nfe(options)), **timing}
