"""Device and precision choice: CUDA when present, the CPU otherwise, same code."""

from __future__ import annotations

import contextlib

import torch

from trilemma.errors import TrilemmaError


def pick_device(name: str | None = None) -> torch.device:
    """``None``/"auto" -> cuda if available else cpu; otherwise the named device."""
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TrilemmaError(f"--device: unknown device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrilemmaError(f"--device {name}: CUDA is not available on this machine")
    return device


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on the given device when asked, a no-op otherwise."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast is likely to be faster than fp32 here: a CUDA GPU with bf16 support,
    or a CPU with bf16 instructions (AVX512-BF16 or AMX; without them bf16 is emulated and slow)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
