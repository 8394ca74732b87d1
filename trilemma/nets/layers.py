"""Building blocks of the U-Net: time embedding, ResNet block, attention, resampling.

Shapes are written beside tensor lines: B batch, C channels, H×W spatial,
N = H·W tokens, L context tokens, E embedding width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int, max_groups: int = 32, min_group_size: int = 4) -> nn.GroupNorm:
    """GroupNorm with the most groups (≤ 32) that divide ``channels`` into groups of ≥ 4 channels.

    Groups of one channel would normalise away any per-channel bias, including
    the added time embedding, so narrow layers get fewer, larger groups.
    """
    groups = max([g for g in range(1, max_groups + 1)
                  if channels % g == 0 and channels // g >= min(min_group_size, channels)])
    return nn.GroupNorm(groups, channels, eps=1e-6)


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
        h = self.conv1(F.silu(self.norm1(x)))                                      # (B, C_out, H, W)
        e = self.emb_proj(F.silu(emb))[:, :, None, None]                           # time (and class) embedding
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(F.silu(h)))
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
        tokens = self.norm(x).reshape(B, C, H * W).transpose(1, 2)                 # (B, N, C)
        # The 1×1 convs run as linear maps on the tokens: the result is contiguous in its
        # last dimension, which PyTorch's fused (flash) attention kernel needs on the CPU.
        qkv = F.linear(tokens, self.qkv.weight.flatten(1), self.qkv.bias)           # (B, N, 3C)
        q, k, v = (_heads(z, self.num_heads) for z in qkv.chunk(3, dim=2))        # (B, heads, N, C/heads)
        h = F.scaled_dot_product_attention(q, k, v)                               # (B, heads, N, C/heads)
        h = F.linear(h.transpose(1, 2).reshape(B, H * W, C), self.proj.weight.flatten(1), self.proj.bias)
        return x + h.transpose(1, 2).reshape(B, C, H, W)


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
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)          # (B, heads, N, d)
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
        h = self.proj_in(self.norm(x)).flatten(2).transpose(1, 2)                 # (B, N, C)
        q, k, v = (_heads(z, self.num_heads) for z in self.self_qkv(self.ln1(h)).chunk(3, dim=2))
        h = h + self.self_out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))
        if context is not None:
            h = h + self.cross(self.ln2(h), context, context_mask)
        h = h + self.ff(self.ln3(h))
        h = h.transpose(1, 2).reshape(B, C, H, W)
        return x + self.proj_out(h)


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3×3 convolution (28 → 14 → 7; odd sizes round up)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour upsampling to the skip connection's size, then a 3×3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))
