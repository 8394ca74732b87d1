"""The U-Net ε_θ(x_t, t [, y]) of DDPM (Ho et al. 2020, App. B), with one conditioning point.

Layout, for ``channel_mults = (1, 2, 2)`` on 28×28 images::

    conv_in ─► level 0 (28×28) ─► down ─► level 1 (14×14) ─► down ─► level 2 (7×7) ─► middle
                   │ skips                    │ skips                    │ skips         │
    conv_out ◄─ level 0 ◄─ up ◄──────── level 1 ◄─ up ◄──────────── level 2 ◄────────────┘

Each level has ``num_res_blocks`` ResNet blocks (plus attention where the
level's resolution is in ``attn_resolutions``) on the way down and one more on
the way up, each up block consuming one skip connection. Upsampling goes to the
skip's exact size, so odd sizes round-trip (28 → 14 → 7 → 14 → 28).

Conditioning enters in one place, :meth:`UNet.embed`: the step t (sinusoidal
embedding + MLP) plus, when ``num_classes > 0``, a learned class embedding —
index ``num_classes`` is the "no label" class used for classifier-free
guidance. With ``context_dim > 0`` the attention layers become transformer
blocks with cross-attention to a token context τ(y) (text, Rombach et al. 2022).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from trilemma.errors import TrilemmaError
from trilemma.options import check_fields, in_range, int_in, opt
from trilemma.nets.layers import (
    Downsample,
    ResBlock,
    SelfAttention,
    TransformerBlock,
    Upsample,
    group_norm,
    norm_silu,
    sinusoidal_embedding,
    zero_init,
)


def level_sizes(image_size: int, levels: int) -> tuple[int, ...]:
    """Spatial size of each of ``levels`` levels that halve the map (rounding up): image_size, ⌈/2⌉, ⌈/4⌉, …"""
    sizes = [image_size]
    for _ in range(levels - 1):
        sizes.append(math.ceil(sizes[-1] / 2))
    return tuple(sizes)


@dataclass(frozen=True)
class UNetConfig:
    """Every option of the U-Net; stored in ``config.json`` beside the weights."""

    image_size: int = opt(32, "H = W of the input", cli=False, check=int_in(1, 1024))
    in_channels: int = opt(1, "1 (grey) or 3 (RGB), or latent channels", cli=False, check=int_in(1, 1024))
    out_channels: int | None = None           # defaults to in_channels
    base_channels: int = opt(64, "width of the first level (overrides the preset's)", check=int_in(1, 4096))
    channel_mults: tuple[int, ...] = (1, 2, 2)  # width of level i = base_channels · channel_mults[i]
    num_res_blocks: int = opt(2, "ResNet blocks per level on the way down", check=int_in(1, 64))
    attn_resolutions: tuple[int, ...] = opt((7,), "comma-separated level sizes with attention blocks, e.g. 8,4",
                                            metavar="SIZES")
    num_heads: int = opt(4, "attention heads", cli=False, check=int_in(1, 64))
    dropout: float = opt(0.1, "dropout inside ResNet blocks", check=in_range(0.0, 1.0, hi_open=True))
    num_classes: int = opt(0, "> 0: class-conditional (plus a null class)", cli=False, check=int_in(0, 100_000))
    context_dim: int = opt(0, "> 0: cross-attention to a context of this width", cli=False, check=int_in(0, 65536))
    scale_shift: bool = True                  # embedding as GroupNorm scale/shift (Nichol & Dhariwal 2021)

    def __post_init__(self):
        check_fields(self)
        if self.image_size < 4:
            raise TrilemmaError(f"--image-size: the U-Net needs images of at least 4 pixels, got {self.image_size}")
        if not self.channel_mults or min(self.channel_mults) < 1:
            raise TrilemmaError("channel_mults must be a non-empty list of positive integers")
        if self.base_channels < 1 or self.num_res_blocks < 1:
            raise TrilemmaError("base_channels and num_res_blocks must be >= 1")
        if any(self.base_channels * m % self.num_heads for m in self.channel_mults):
            raise TrilemmaError(f"num_heads {self.num_heads} must divide every level's width "
                                f"({', '.join(str(self.base_channels * m) for m in self.channel_mults)})")

    @property
    def resolutions(self) -> tuple[int, ...]:
        """Spatial size of each level: image_size, ⌈/2⌉, ⌈/4⌉, …"""
        return level_sizes(self.image_size, len(self.channel_mults))


def preset(name: str, image_size: int, in_channels: int, **overrides) -> UNetConfig:
    """Named sizes: ``tiny`` (tests, smoke runs), ``small`` (the CPU demo), ``base`` (GPU; DDPM CIFAR-10).

    Attention sits at a level (not a pixel size) so that a preset fits any image size.
    """
    levels = {"tiny": dict(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attn_level=1,
                           num_heads=2, dropout=0.0),
              "small": dict(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1, attn_level=2,
                            num_heads=4, dropout=0.0),
              "base": dict(base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2, attn_level=1,
                           num_heads=1, dropout=0.1, scale_shift=False)}   # = DDPM's CIFAR-10 net
    if name not in levels:
        raise TrilemmaError(f"--preset: unknown preset {name!r} (choose from {', '.join(levels)})")
    spec = dict(levels[name])
    attn_level = spec.pop("attn_level")
    config = UNetConfig(image_size=image_size, in_channels=in_channels, **spec)
    config = replace(config, attn_resolutions=(config.resolutions[min(attn_level, len(config.resolutions) - 1)],))
    return replace(config, **overrides) if overrides else config


PRESETS = ("tiny", "small", "base")


def activation_layout(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the U-Net's activation layout: channels-last on the CPU, where oneDNN's convolutions
    run 1.2–2.8× faster (forward) and ~1.3× (backward) in it than in NCHW at these widths;
    unchanged on other devices.

    Only activations change layout: the parameters (so the state dict, the optimiser state and
    the weight files) stay contiguous NCHW, which costs nothing, since oneDNN picks the
    channels-last kernels from the input's layout.
    """
    return x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" and x.dim() == 4 else x


class UNet(nn.Module):
    """ε_θ(x_t, t, y): predicts the noise (or v, or x₀) in x_t; see the module docstring."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        ch = c.base_channels
        emb_dim = 4 * ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(c.num_classes + 1, emb_dim) if c.num_classes > 0 else None

        def attention(channels: int, resolution: int) -> nn.Module | None:
            if resolution not in c.attn_resolutions:
                return None
            if c.context_dim > 0:
                return TransformerBlock(channels, c.context_dim, c.num_heads)
            return SelfAttention(channels, c.num_heads)

        self.conv_in = nn.Conv2d(c.in_channels, ch, 3, padding=1)
        # Down path: each entry is (ResBlock, attention or None); remember skip widths.
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skip_channels = [ch]
        width = ch
        for level, (mult, res) in enumerate(zip(c.channel_mults, c.resolutions)):
            blocks = nn.ModuleList()
            for _ in range(c.num_res_blocks):
                blocks.append(nn.ModuleList([ResBlock(width, ch * mult, emb_dim, c.dropout, c.scale_shift),
                                             attention(ch * mult, res) or nn.Identity()]))
                width = ch * mult
                skip_channels.append(width)
            self.down.append(blocks)
            if level < len(c.channel_mults) - 1:
                self.downsample.append(Downsample(width))
                skip_channels.append(width)
        # Middle: ResBlock, attention, ResBlock at the lowest resolution.
        self.mid1 = ResBlock(width, width, emb_dim, c.dropout, c.scale_shift)
        self.mid_attn = (TransformerBlock(width, c.context_dim, c.num_heads) if c.context_dim > 0
                         else SelfAttention(width, c.num_heads))
        self.mid2 = ResBlock(width, width, emb_dim, c.dropout, c.scale_shift)
        # Up path: num_res_blocks + 1 blocks per level, each eating one skip.
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(len(c.channel_mults))):
            mult, res = c.channel_mults[level], c.resolutions[level]
            blocks = nn.ModuleList()
            for _ in range(c.num_res_blocks + 1):
                blocks.append(nn.ModuleList([ResBlock(width + skip_channels.pop(), ch * mult, emb_dim, c.dropout, c.scale_shift),
                                             attention(ch * mult, res) or nn.Identity()]))
                width = ch * mult
            self.up.append(blocks)
            if level > 0:
                self.upsample.append(Upsample(width))
        self.norm_out = group_norm(width)
        self.conv_out = zero_init(nn.Conv2d(width, c.out_channels or c.in_channels, 3, padding=1))

    # The one place where conditioning enters the network (besides cross-attention context).
    def embed(self, t: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """Embedding of the step t (B,) and, for class-conditional models, the label y (B,); -1 = no label."""
        emb = self.time_mlp(sinusoidal_embedding(t, self.config.base_channels))   # (B, E)
        if self.class_emb is not None:
            null = self.config.num_classes
            if y is None:
                y = torch.full_like(t, null)
            y = torch.where(y < 0, torch.full_like(y, null), y)
            emb = emb + self.class_emb(y)
        return emb

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W), t (B,) in 1..T, y (B,) labels, context (B, L, D) with mask (B, L) -> (B, C, H, W)."""
        ctx = {"context": context, "context_mask": context_mask} if self.config.context_dim > 0 else {}
        emb = self.embed(t, y)                                                      # (B, E)
        # A 1-channel x is NCHW and channels-last at once, and then conv_in answers in NCHW: switch both.
        h = activation_layout(self.conv_in(activation_layout(x)))                  # (B, ch, H, W)
        skips = [h]
        for level, blocks in enumerate(self.down):
            for res_block, attn in blocks:
                h = res_block(h, emb)
                if not isinstance(attn, nn.Identity):
                    h = attn(h, **ctx)
                skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
                skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb), **ctx), emb)
        for level, blocks in enumerate(self.up):
            for res_block, attn in blocks:
                h = res_block(torch.cat([h, skips.pop()], dim=1), emb)
                if not isinstance(attn, nn.Identity):
                    h = attn(h, **ctx)
            if level < len(self.upsample):
                h = self.upsample[level](h, size=skips[-1].shape[-2:])
        return self.conv_out(norm_silu(self.norm_out, h)).contiguous()                # NCHW, as given


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
