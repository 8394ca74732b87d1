"""Building blocks of the U-Net: time embedding, ResNet block, attention, resampling.

Shapes are written beside tensor lines: B batch, C channels, H×W spatial,
N = H·W tokens, L context tokens, E embedding width.

Speed paths (each computes the same function as the plain formula, to float rounding):

* every layer keeps the memory format it is given; :class:`trilemma.nets.unet.UNet` hands
  them channels-last activations on the CPU, where oneDNN's convolutions run ~1.5–3× faster
  in that layout. Tokens for attention are then a free view, (B, H, W, C) → (B, N, C);
* :class:`GroupNorm` normalises reduced-precision (bf16 autocast) input in fp32: PyTorch's
  mixed bf16/fp32 channels-last GroupNorm kernel is ~4× slower than its fp32 one on the CPU;
* :func:`attention` spells softmax(QKᵀ/√d)·V out as two batched matmuls for bf16 on the CPU,
  where the fused (flash) kernel's backward is up to 10× slower at these sizes;
* :class:`Upsample` runs "nearest ×2, then 3×3 conv" as one stride-2 transposed convolution
  of the low-resolution input (0.44× the multiply-adds, no upsampled copy);
* :func:`norm_silu` runs SiLU(GroupNorm(x)·(1 + s) + b) and its gradient as one fused C kernel
  (:mod:`trilemma.nets.kernels`, docs/methods.md §5.7) on channels-last float32/bf16 CPU
  activations when a C compiler is there: 1.4–4× faster than the layers it replaces, in one pass
  with no float32 temporaries (the U-Net's bf16 training step ~1.75×, fp32 ~1.2×).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trilemma.nets import kernels


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (same parameters, same state-dict keys) that normalises bf16/fp16 CPU
    input in fp32 and returns the input's dtype (see the module docstring)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _reduced_precision_cpu(x):
            return super().forward(x.float()).to(x.dtype)
        return super().forward(x)


def _reduced_precision_cpu(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16)


def norm_silu(norm: nn.GroupNorm, x: torch.Tensor, scale: torch.Tensor | None = None,
              shift: torch.Tensor | None = None) -> torch.Tensor:
    """SiLU(GroupNorm(x)·(1 + scale) + shift) (scale, shift (B, C, 1, 1) optional), in x's dtype.

    On the CPU, channels-last float32/bf16 input goes to the fused kernel
    (:func:`trilemma.nets.kernels.fused_norm_silu`: differentiable once, a second derivative
    raises). Otherwise bf16/fp16 CPU input is normalised, scaled and activated in fp32 and cast
    back once at the end (one cast each way instead of two; see :class:`GroupNorm`).
    """
    if kernels.supports(x, norm):
        return kernels.fused_norm_silu(x, norm.weight, norm.bias, scale, shift, norm.num_groups, norm.eps)
    low = _reduced_precision_cpu(x)
    h = F.group_norm(x.float() if low else x, norm.num_groups, norm.weight, norm.bias, norm.eps)
    if scale is not None:
        h = h * (1 + scale) + shift
    h = F.silu(h)
    return h.to(x.dtype) if low else h


def group_norm(channels: int, max_groups: int = 32, min_group_size: int = 4) -> nn.GroupNorm:
    """GroupNorm with the most groups (≤ 32) that divide ``channels`` into groups of ≥ 4 channels.

    Groups of one channel would normalise away any per-channel bias, including
    the added time embedding, so narrow layers get fewer, larger groups.
    """
    groups = max([g for g in range(1, max_groups + 1)
                  if channels % g == 0 and channels // g >= min(min_group_size, channels)])
    return GroupNorm(groups, channels, eps=1e-6)


def to_tokens(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, C), token n = h·W + w; a free view of a channels-last tensor."""
    B, C, H, W = x.shape
    return x.permute(0, 2, 3, 1).reshape(B, H * W, C)


def from_tokens(h: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, N, C) -> (B, C, H, W) in the channels-last layout (a free view), inverse of :func:`to_tokens`."""
    B, N, C = h.shape
    return h.reshape(B, size[0], size[1], C).permute(0, 3, 1, 2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q kᵀ / √d) v (Vaswani et al. 2017, Eq. 1): (…, N, d), (…, L, d), (…, L, d_v) -> (…, N, d_v).

    ``attn_mask`` (broadcast to (…, N, L)), True = attend, as in ``F.scaled_dot_product_attention``,
    which this calls except for bf16/fp16 on the CPU: there the two matmuls are written out
    (scores and softmax in fp32), whose backward is several times faster than the fused kernel's.
    """
    if q.device.type != "cpu" or q.dtype not in (torch.bfloat16, torch.float16):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2)).float()   # (…, N, L)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf"))
    return torch.matmul(scores.softmax(dim=-1).to(v.dtype), v)                      # (…, N, d_v)


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters, so a residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer position encoding of the step t (Vaswani et al. 2017; Ho et al. 2020): (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]                                     # (B, dim/2)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv → (+ embedding) → GroupNorm → SiLU → dropout → conv, plus skip.

    The embedding enters additively (Ho et al. 2020) or, with ``scale_shift``, as
    GroupNorm(h)·(1 + s) + b (Nichol & Dhariwal 2021, "scale-shift norm").
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float = 0.0, scale_shift: bool = False):
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch if scale_shift else out_ch)
        self.norm2 = group_norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(norm_silu(self.norm1, x))                                   # (B, C_out, H, W)
        e = self.emb_proj(F.silu(emb))[:, :, None, None]                           # time (and class) embedding
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = norm_silu(self.norm2, h, scale, shift)                             # SiLU(GN(h)·(1 + s) + b)
        else:
            h = norm_silu(self.norm2, h + e)
        h = self.conv2(self.dropout(h))
        return self.skip(x) + h


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    B, N, C = x.shape
    return x.view(B, N, num_heads, C // num_heads).transpose(1, 2)                # (B, heads, N, C/heads)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H·W positions, residual (Ho et al. 2020 at 16×16)."""

    def __init__(self, channels: int, num_heads: int = 4):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention: {channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, **_) -> torch.Tensor:
        B, C, H, W = x.shape
        tokens = to_tokens(self.norm(x))                                          # (B, N, C)
        # The 1×1 convs run as linear maps on the tokens: the result is contiguous in its
        # last dimension, which PyTorch's fused (flash) attention kernel needs on the CPU.
        qkv = F.linear(tokens, self.qkv.weight.flatten(1), self.qkv.bias)           # (B, N, 3C)
        q, k, v = (_heads(z, self.num_heads) for z in qkv.chunk(3, dim=2))        # (B, heads, N, C/heads)
        h = attention(q, k, v)                                                    # (B, heads, N, C/heads)
        h = F.linear(h.transpose(1, 2).reshape(B, H * W, C), self.proj.weight.flatten(1), self.proj.bias)
        return x + from_tokens(h, (H, W))


class CrossAttention(nn.Module):
    """Queries from image tokens, keys/values from the context τ(y); padded tokens masked out."""

    def __init__(self, dim: int, context_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(context_dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q = _heads(self.q(x), self.num_heads)                                      # (B, heads, N, d)
        k, v = (_heads(z, self.num_heads) for z in self.kv(context).chunk(2, dim=2))  # (B, heads, L, d)
        attn_mask = None
        if mask is not None:
            attn_mask = mask[:, None, None, :].to(torch.bool)                     # (B, 1, 1, L), True = attend
        h = attention(q, k, v, attn_mask=attn_mask)                               # (B, heads, N, d)
        return self.out(h.transpose(1, 2).flatten(2))                             # (B, N, dim)


class TransformerBlock(nn.Module):
    """Self-attention, cross-attention to the text context, feed-forward (Rombach et al. 2022, §3.3)."""

    def __init__(self, channels: int, context_dim: int, num_heads: int = 4, ff_mult: int = 4):
        super().__init__()
        self.norm = group_norm(channels)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.ln1 = nn.LayerNorm(channels)
        self.self_qkv = nn.Linear(channels, 3 * channels, bias=False)
        self.self_out = nn.Linear(channels, channels)
        self.num_heads = num_heads
        self.ln2 = nn.LayerNorm(channels)
        self.cross = CrossAttention(channels, context_dim, num_heads)
        self.ln3 = nn.LayerNorm(channels)
        self.ff = nn.Sequential(nn.Linear(channels, ff_mult * channels), nn.GELU(),
                                nn.Linear(ff_mult * channels, channels))
        self.proj_out = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, C, H, W = x.shape
        h = to_tokens(self.proj_in(self.norm(x)))                                 # (B, N, C)
        q, k, v = (_heads(z, self.num_heads) for z in self.self_qkv(self.ln1(h)).chunk(3, dim=2))
        h = h + self.self_out(attention(q, k, v).transpose(1, 2).flatten(2))
        if context is not None:
            h = h + self.cross(self.ln2(h), context, context_mask)
        h = h + self.ff(self.ln3(h))
        return x + self.proj_out(from_tokens(h, (H, W)))


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3×3 convolution (28 → 14 → 7; odd sizes round up)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _four_taps(w: torch.Tensor, dim: int) -> torch.Tensor:
    """The 3 taps of a 3×3 kernel along ``dim`` as the 4 taps of the equivalent stride-2 transposed kernel."""
    w0, w1, w2 = w.unbind(dim)
    return torch.stack([w2, w1 + w2, w0 + w1, w0], dim)


def upsample2x_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """conv3×3(nearest_upsample_2×(x)) with padding 1, computed at the input's resolution.

    Output row 2i + a sees upsampled rows 2i+a−1, 2i+a, 2i+a+1, i.e. input rows i−1, i, i (a = 0)
    or i, i, i+1 (a = 1): each output phase is a 2-tap filter of x whose taps are sums of the
    3×3 kernel's (W₀ and W₁+W₂, or W₀+W₁ and W₂), in each of the two dimensions. That is a
    transposed convolution with stride 2, padding 1 and the 4×4 kernel whose taps along each
    dimension are (W₂, W₁+W₂, W₀+W₁, W₀) (output row o = 2i − 1 + k). Multiply-adds: 16·H·W per
    channel pair instead of 36·H·W, and no upsampled copy of x.
    x (B, C_in, H, W), weight (C_out, C_in, 3, 3) -> (B, C_out, 2H, 2W).

    The bias is added after the convolution, not passed to it: oneDNN's transposed-convolution
    backward takes ~4× longer with a bias gradient than without (about 25 ms of a 16→32 `small`
    upsampling at batch 64, fp32 and bf16), while autograd's sum for the added bias costs ~1 ms.
    """
    kernel = _four_taps(_four_taps(weight, 2), 3)                              # (C_out, C_in, 4, 4)
    y = F.conv_transpose2d(x, kernel.transpose(0, 1), None, stride=2, padding=1)
    return y if bias is None else y + bias.to(y.dtype)[:, None, None]


class Upsample(nn.Module):
    """Nearest-neighbour upsampling to the skip connection's size, then a 3×3 convolution.

    An exact doubling runs as :func:`upsample2x_conv3x3` (same result, 0.44× the multiply-adds).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        if tuple(size) == (2 * x.shape[-2], 2 * x.shape[-1]):
            return upsample2x_conv3x3(x, self.conv.weight, self.conv.bias)
        return self.conv(F.interpolate(x, size=size, mode="nearest"))
