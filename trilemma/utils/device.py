"""Device and precision choice: CUDA when present, the CPU otherwise, same code."""

from __future__ import annotations

import contextlib
import os

import torch

from trilemma.errors import TrilemmaError


def pick_device(name: str | None = None) -> torch.device:
    """``None``/"auto" -> cuda if available else cpu; otherwise the named device (cpu or cuda[:N]).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) a device without an index, "cuda", means this process's
    GPU, ``cuda:LOCAL_RANK``.
    """
    if name in (None, "", "auto"):
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TrilemmaError(f"--device: unknown device {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise TrilemmaError(f"--device {name}: trilemma runs on cpu and cuda devices only, not {device.type}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrilemmaError(f"--device {name}: CUDA is not available on this machine (use --device cpu; with "
                            f"--resume it continues a run saved on a GPU)")
    if device.type == "cuda" and device.index is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    return device


def check_bf16(device: torch.device, bf16: bool) -> None:
    """``--bf16`` on a device without bf16 is refused with a one-line error (CPU: see :func:`native_bf16`)."""
    if bf16 and not native_bf16(device):
        what = ("this GPU has no bf16 support" if device.type == "cuda" else
                "this CPU has no native bf16 (AVX512-BF16 or AMX); it would be emulated and slow")
        raise TrilemmaError(f"--bf16: {what} ({describe(device)}); train without --bf16")


def describe(device: torch.device) -> str:
    """A device in words, e.g. "cuda:0 (NVIDIA H200)" or "cpu"."""
    if device.type == "cuda" and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def set_precision(device: torch.device, tf32: bool, deterministic: bool) -> None:
    """``--tf32`` (TensorFloat-32 matmuls and convolutions on CUDA) and ``--deterministic``.

    Deterministic mode: ``torch.use_deterministic_algorithms`` (warning where an op has no
    deterministic kernel), cuDNN without benchmarking, the cuBLAS workspace setting
    ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (:func:`deterministic_workspace`; effective when set
    before the first cuBLAS call, which ``trilemma.train.family.train`` does), and on CUDA the
    math kernel of ``scaled_dot_product_attention``: the flash, memory-efficient and cuDNN
    attention backwards accumulate in a nondeterministic order and only warn under
    ``use_deterministic_algorithms``.
    """
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
        for enable in (torch.backends.cuda.enable_flash_sdp, torch.backends.cuda.enable_mem_efficient_sdp,
                       torch.backends.cuda.enable_cudnn_sdp):
            enable(not deterministic)
    if deterministic:
        deterministic_workspace()
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def deterministic_workspace() -> None:
    """``CUBLAS_WORKSPACE_CONFIG=:4096:8`` unless set: cuBLAS's deterministic workspace, read once at its first call."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def resident_bytes(device: torch.device, share: float = 0.25) -> int:
    """How many bytes of training data may stay on ``device``: ``share`` of a GPU's free memory, 0 elsewhere."""
    if device.type != "cuda":
        return 0
    free, _ = torch.cuda.mem_get_info(device)
    return int(share * free)


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on the given device when asked, a no-op otherwise."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast is likely to be faster than fp32 here: a CUDA GPU with bf16 support,
    or a CPU with bf16 instructions (AVX512-BF16 or AMX; without them bf16 is emulated and slow).

    On CUDA: compute capability 8.0 or newer (Ampere on) for the device itself (``cuda:N``, or the
    current GPU); ``torch.cuda.is_bf16_supported()`` also says yes where bf16 is only emulated."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        return torch.cuda.get_device_capability(device if device.index is not None else None) >= (8, 0)
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
