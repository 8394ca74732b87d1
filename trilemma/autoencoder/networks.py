"""Phase 1 of latent diffusion: a KL-regularised convolutional autoencoder (Rombach et al. 2022, §3.1).

A VAE with a small KL weight (docs/methods.md §1, §7) whose latent keeps a spatial layout::

    encoder E: x (B, C, H, W) → q_φ(z|x) = N(μ, diag σ²),  μ, log σ² each (B, c, H/f, W/f)
    decoder D: z (B, c, H/f, W/f) → x̂ (B, C, H, W)
    loss(x) = [ rec(x, x̂) + β · KL(q_φ(z|x) ‖ N(0, I)) ] / (C·H·W),   z = μ + σ ⊙ ε,   β ≈ 1e-6

with rec = Σ (x − x̂)² (``l2``, the default) or Σ |x − x̂| (``l1``, Rombach et al.'s, who add a perceptual
loss we do not have) over the pixels; on Fashion-MNIST under a few CPU-minutes ``l2`` gave both the higher
PSNR and the lower reconstruction FID (docs/latent.md). The KL term and the reparameterisation are
the VAE's (:mod:`trilemma.vae.losses`), applied to the flattened latent.

With β this small the latent is far from N(0, I): its scale is whatever the encoder chose. The
diffusion model therefore trains on z · s, with the **scale factor** s = 1/std(μ) measured over
the training set after phase 1 (:func:`latent_moments`) and stored in the run's config.json.

Layout, for factor f = 2^L (L stride-2 convolutions), widths w_i = base · mults[i]::

    E: conv_in → [ResBlock × n, Downsample] × L → ResBlock × n → ResBlock, attention → norm, SiLU, conv → μ, log σ²
    D: conv_in → ResBlock, attention → [ResBlock × n, Upsample] × L → ResBlock × n → norm, SiLU, conv → x̂
"""

from __future__ import annotations

import torch
from torch import nn

from trilemma.autoencoder.config import AutoencoderConfig, PatchDiscConfig
from trilemma.nets.layers import Downsample, SelfAttention, Upsample, group_norm, norm_silu, zero_init
from trilemma.nets.unet import activation_layout

LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0          # keeps exp(log σ²) finite (as Rombach et al.'s code)


# ----------------------------------------------------------------------------------------- networks
class ResnetBlock(nn.Module):
    """GroupNorm → SiLU → conv → GroupNorm → SiLU → conv, plus a skip (1×1 conv when widths differ)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.norm1 = group_norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = group_norm(out_ch)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(norm_silu(self.norm1, x))                                # (B, C_out, H, W)
        return self.skip(x) + self.conv2(norm_silu(self.norm2, h))


class Encoder(nn.Module):
    """x (B, C, H, W) in [−1, 1] → μ, log σ² (B, c, H/f, W/f)."""

    def __init__(self, c: AutoencoderConfig):
        super().__init__()
        w = c.widths
        self.conv_in = nn.Conv2d(c.channels, w[0], 3, padding=1)
        blocks: list[nn.Module] = []
        width = w[0]
        for level in range(c.levels + 1):
            for _ in range(c.num_res_blocks):
                blocks.append(ResnetBlock(width, w[level]))
                width = w[level]
            if level < c.levels:
                blocks.append(Downsample(width))                                  # H → H/2
        blocks.append(ResnetBlock(width, width))
        if c.attention:
            blocks.append(SelfAttention(width, num_heads=1))
        self.body = nn.Sequential(*blocks)
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, 2 * c.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # channels-last activations on the CPU, as in the U-Net (trilemma.nets.unet.activation_layout)
        h = self.body(activation_layout(self.conv_in(activation_layout(x))))    # (B, w_L, H/f, W/f)
        mu, logvar = self.conv_out(norm_silu(self.norm_out, h)).contiguous().chunk(2, dim=1)
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)                         # (B, c, H/f, W/f) each


class Decoder(nn.Module):
    """z (B, c, H/f, W/f) → x̂ (B, C, H, W) (unbounded; clamp to [−1, 1] for an image)."""

    def __init__(self, c: AutoencoderConfig):
        super().__init__()
        w = c.widths
        width = w[c.levels]
        self.conv_in = nn.Conv2d(c.latent_channels, width, 3, padding=1)
        mid: list[nn.Module] = [ResnetBlock(width, width)]
        if c.attention:
            mid.append(SelfAttention(width, num_heads=1))
        self.mid = nn.Sequential(*mid)
        self.levels = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(c.levels + 1)):
            blocks = []
            for _ in range(c.num_res_blocks):
                blocks.append(ResnetBlock(width, w[level]))
                width = w[level]
            self.levels.append(nn.Sequential(*blocks))
            if level > 0:
                self.upsample.append(Upsample(width))                            # H → 2H
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, c.channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(activation_layout(self.conv_in(activation_layout(z))))     # (B, w_L, h, w)
        for i, blocks in enumerate(self.levels):
            h = blocks(h)
            if i < len(self.upsample):
                h = self.upsample[i](h, size=(2 * h.shape[-2], 2 * h.shape[-1]))
        return self.conv_out(norm_silu(self.norm_out, h)).contiguous()          # (B, C, H, W), NCHW


class Autoencoder(nn.Module):
    """Encoder + decoder. :meth:`encode` x → (μ, log σ²); :meth:`decode` z → x̂ (raw, unscaled latents)."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


class PatchDiscriminator(nn.Module):
    """Images (B, C, H, W) in [−1, 1] → patch logits (B, 1, H/2ⁿ, W/2ⁿ); > 0 means "real"."""

    def __init__(self, c: PatchDiscConfig):
        super().__init__()
        layers: list[nn.Module] = []
        ch_in, ch = c.channels, c.base_channels
        for i in range(c.num_layers):
            layers += [nn.Conv2d(ch_in, ch, 4, stride=2, padding=1),
                       *([group_norm(ch)] if i > 0 else []), nn.LeakyReLU(0.2)]
            ch_in, ch = ch, 2 * ch
        layers += [nn.Conv2d(ch_in, ch_in, 3, padding=1), group_norm(ch_in), nn.LeakyReLU(0.2),
                   nn.Conv2d(ch_in, 1, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
