"""Fused CPU kernels, built on first use with the system C compiler and called through ctypes.

One kernel so far: :func:`fused_norm_silu`, SiLU(GroupNorm(x)·(1 + s) + b) and its gradient in
one pass over channels-last activations (``norm_silu.c`` says how). :func:`trilemma.nets.layers.norm_silu`
(the U-Net's and the autoencoder's ResNet blocks) and the DDGAN generator's adaptive GroupNorm use it
where it applies and fall back to the plain PyTorch layers everywhere else, so the kernel changes
speed, never results beyond float rounding.

The library is compiled once per source, compiler and CPU (``-O3 -march=native -fopenmp``) into
``$TRILEMMA_CACHE/kernels/`` (written atomically, so concurrent first uses are safe). Without a
C compiler (``cc``, or ``$CC``), when the build fails or the cache is not writable, or with
``TRILEMMA_KERNELS=0``, :func:`available` is False and nothing changes but speed.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from trilemma.errors import CacheError
from trilemma.utils.paths import cache_dir

__all__ = ["available", "fused_norm_silu", "supports", "supports_input"]

_SOURCE = Path(__file__).with_name("norm_silu.c")
_FLAGS = ["-O3", "-march=native", "-fno-trapping-math", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC", "-std=c11"]
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_tried = False


def _cpu_signature() -> str:
    """What ``-march=native`` depends on: the CPU model and its feature flags (Linux), else the platform."""
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
        keep = [line for line in info if line.startswith(("model name", "flags"))][:2]
        return "\n".join(keep)
    except OSError:
        return platform.processor() + platform.machine()


def _build() -> ctypes.CDLL | None:
    try:
        return _compile_and_load()
    except (OSError, AttributeError, subprocess.SubprocessError, CacheError):   # no compiler, failed build, no cache
        return None


def _compile_and_load() -> ctypes.CDLL | None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        return None
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + version.encode() + " ".join(_FLAGS).encode() + _cpu_signature().encode())
    target = cache_dir("kernels") / f"norm_silu-{key.hexdigest()[:16]}.so"
    if not target.exists():
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            built = Path(tmp) / target.name
            subprocess.run([compiler, *_FLAGS, str(_SOURCE), "-o", str(built), "-lm"], check=True,
                           capture_output=True, timeout=300)
            os.replace(built, target)                      # atomic: a concurrent build wins or loses whole
    lib = ctypes.CDLL(str(target))
    p, i64, f32, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
    lib.norm_silu_forward.argtypes = [p, p, i32, i64, i64, i64, i64, p, p, p, p, f32, p, p, i32]
    lib.norm_silu_backward.argtypes = [p, p, p, i32, i64, i64, i64, i64, p, p, p, p, p, p, p, p, p, p, i32]
    lib.norm_silu_forward.restype = lib.norm_silu_backward.restype = ctypes.c_int      # 1: out of memory
    return lib


def _library() -> ctypes.CDLL | None:
    global _lib, _tried
    if not _tried:
        with _lock:
            if not _tried:
                if os.environ.get("TRILEMMA_KERNELS", "1") != "0":
                    _lib = _build()
                _tried = True
    return _lib


def available() -> bool:
    """True when the fused kernels are built (or can be) and not switched off by ``TRILEMMA_KERNELS=0``."""
    return _library() is not None


_DTYPES = {torch.float32: 0, torch.bfloat16: 1}


def supports_input(x: torch.Tensor) -> bool:
    """Whether :func:`fused_norm_silu` takes ``x``: a channels-last float32/bf16 CPU activation, in eager
    mode (under ``torch.compile`` Inductor fuses the plain layers itself), with the kernel built."""
    return (x.device.type == "cpu" and x.dim() == 4 and x.dtype in _DTYPES and x.shape[1] > 1
            and x.is_contiguous(memory_format=torch.channels_last)
            and not torch.compiler.is_compiling() and available())


def supports(x: torch.Tensor, norm: torch.nn.GroupNorm) -> bool:
    """:func:`supports_input`, for an affine GroupNorm ``norm`` (its weight and bias are γ and β)."""
    return norm.affine and supports_input(x)


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _per_sample(v: torch.Tensor | None, N: int, C: int) -> torch.Tensor | None:
    """A (N, C, 1, 1) scale or shift as a contiguous float32 (N, C) tensor."""
    return None if v is None else v.detach().float().expand(N, C, 1, 1).reshape(N, C).contiguous()


class _NormSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, scale, shift, groups: int, eps: float):
        lib = _library()
        N, C, H, W = x.shape
        gamma, beta = weight.detach().float().contiguous(), bias.detach().float().contiguous()
        s, b = _per_sample(scale, N, C), _per_sample(shift, N, C)
        y = torch.empty_like(x, memory_format=torch.channels_last)
        mean = torch.empty(N, groups, dtype=torch.float32)
        rstd = torch.empty(N, groups, dtype=torch.float32)
        if lib.norm_silu_forward(x.data_ptr(), y.data_ptr(), _DTYPES[x.dtype], N, H * W, C, groups,
                                 gamma.data_ptr(), beta.data_ptr(), _ptr(s), _ptr(b), eps, mean.data_ptr(),
                                 rstd.data_ptr(), torch.get_num_threads()):
            raise MemoryError(f"fused norm-SiLU kernel: no memory for its scratch ({5 * C} floats per thread)")
        ctx.save_for_backward(x, gamma, beta, s, b, mean, rstd)
        ctx.meta = (groups, weight.dtype, None if scale is None else (scale.shape, scale.dtype),
                    None if shift is None else (shift.shape, shift.dtype))
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        lib = _library()
        x, gamma, beta, s, b, mean, rstd = ctx.saved_tensors
        groups, w_dtype, scale_meta, shift_meta = ctx.meta
        N, C, H, W = x.shape
        dy = dy.to(x.dtype).contiguous(memory_format=torch.channels_last)
        dx = torch.empty_like(x, memory_format=torch.channels_last)
        dgamma_n = torch.empty(N, C, dtype=torch.float32)
        dbeta_n = torch.empty(N, C, dtype=torch.float32)
        ds = torch.empty(N, C, dtype=torch.float32) if s is not None else None
        db = torch.empty(N, C, dtype=torch.float32) if b is not None else None
        if lib.norm_silu_backward(x.data_ptr(), dy.data_ptr(), dx.data_ptr(), _DTYPES[x.dtype], N, H * W, C,
                                  groups, gamma.data_ptr(), beta.data_ptr(), _ptr(s), _ptr(b), mean.data_ptr(),
                                  rstd.data_ptr(), _ptr(ds), _ptr(db), dgamma_n.data_ptr(), dbeta_n.data_ptr(),
                                  torch.get_num_threads()):
            raise MemoryError(f"fused norm-SiLU kernel: no memory for its scratch ({(8 + H * W) * C} floats per "
                              f"thread)")

        def back(v, meta):     # the (N, C) gradient in the scale's (or shift's) own shape and dtype
            if v is None:
                return None
            shape, dtype = meta
            return v.reshape(N, C, 1, 1).sum_to_size(shape).to(dtype)

        return (dx, dgamma_n.sum(0).to(w_dtype), dbeta_n.sum(0).to(w_dtype), back(ds, scale_meta),
                back(db, shift_meta), None, None)


def fused_norm_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor | None,
                    shift: torch.Tensor | None, groups: int, eps: float) -> torch.Tensor:
    """SiLU(GroupNorm(x)·(1 + scale) + shift) for a channels-last (B, C, H, W) float32/bf16 CPU ``x``,
    GroupNorm's ``weight``, ``bias`` (C,), optional ``scale``, ``shift`` broadcastable to (B, C, 1, 1);
    returns x's dtype, channels-last. Differentiable once (a second derivative raises). Check
    :func:`supports` first."""
    return _NormSiLU.apply(x, weight, bias, scale, shift, groups, eps)
