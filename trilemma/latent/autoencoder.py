"""Phase 1 of latent diffusion: a KL-regularised convolutional autoencoder (Rombach et al. 2022, §3.1).

A VAE with a small KL weight (METHODS.md §1, §7) whose latent keeps a spatial layout::

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

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from trilemma.errors import TrilemmaError
from trilemma.nets.layers import Downsample, SelfAttention, Upsample, group_norm, zero_init
from trilemma.vae.losses import gaussian_kl, reparameterise

FACTORS = (2, 4, 8)
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0          # keeps exp(log σ²) finite (as Rombach et al.'s code)


@dataclass(frozen=True)
class AutoencoderConfig:
    """The networks of a KL autoencoder (the ``"model"`` section of an autoencoder run)."""

    image_size: int = 28
    channels: int = 1                             # image channels (1 grey, 3 RGB)
    factor: int = 4                               # spatial downsampling f: latents are (H/f) × (W/f)
    latent_channels: int = 4                      # c
    base_channels: int = 16                       # width of the full-resolution level
    channel_mults: tuple[int, ...] = (1, 2, 2, 4)  # width of level i = base · mults[i]; log2(f) + 1 are used
    num_res_blocks: int = 1                       # ResNet blocks per level (encoder and decoder)
    attention: bool = True                        # self-attention at the latent resolution

    def __post_init__(self):
        if self.factor not in FACTORS:
            raise TrilemmaError(f"--factor: expected 2, 4 or 8, got {self.factor}")
        if self.channels not in (1, 3):
            raise TrilemmaError(f"autoencoder option channels: must be 1 or 3, got {self.channels}")
        for name in ("image_size", "latent_channels", "base_channels", "num_res_blocks"):
            if getattr(self, name) < 1:
                raise TrilemmaError(f"autoencoder option {name}: must be a positive integer, got {getattr(self, name)}")
        if self.image_size % self.factor:
            raise TrilemmaError(f"image size {self.image_size} is not divisible by --factor {self.factor}: "
                                f"choose another factor or resize with --image-size "
                                f"{math.ceil(self.image_size / self.factor) * self.factor}")
        if len(self.channel_mults) < self.levels + 1 or min(self.channel_mults) < 1:
            raise TrilemmaError(f"autoencoder option channel_mults: needs {self.levels + 1} positive entries "
                                f"for --factor {self.factor}, got {list(self.channel_mults)}")

    @property
    def levels(self) -> int:
        """Number of stride-2 downsamplings L = log2(f)."""
        return int(math.log2(self.factor))

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.channel_mults[:self.levels + 1])

    @property
    def latent_size(self) -> int:
        return self.image_size // self.factor

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.latent_channels, self.latent_size, self.latent_size)


PRESETS = {
    "tiny": dict(base_channels=8, channel_mults=(1, 2, 2, 2), num_res_blocks=1, attention=False),
    "small": dict(base_channels=16, channel_mults=(1, 2, 2, 4), num_res_blocks=1),
    "base": dict(base_channels=64, channel_mults=(1, 2, 4, 4), num_res_blocks=2),
}


def preset(name: str, image_size: int, channels: int, **overrides) -> AutoencoderConfig:
    """Named sizes: ``tiny`` (tests), ``small`` (CPU runs), ``base`` (GPU); ``overrides``: factor, …"""
    if name not in PRESETS:
        raise TrilemmaError(f"--preset: unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    return replace(AutoencoderConfig(image_size=image_size, channels=channels, **PRESETS[name]), **overrides)


@dataclass(frozen=True)
class AutoencoderObjective:
    """What phase 1 minimises (the ``"autoencoder"`` section of the run's config.json)."""

    recon: Literal["l1", "l2"] = "l2"           # Σ(x − x̂)², or Σ|x − x̂| (Rombach et al., beside a perceptual loss)
    kl_weight: float = 1e-6                     # β: a VAE with a small KL weight
    disc_weight: float = 0.0                    # weight of the patch discriminator's loss (0 = no discriminator)
    disc_start: int = 0                         # steps of plain reconstruction training before D joins in
    disc_loss: Literal["hinge", "nonsaturating"] = "hinge"

    def __post_init__(self):
        if self.recon not in ("l1", "l2"):
            raise TrilemmaError(f"--recon-loss: expected 'l1' or 'l2', got {self.recon!r}")
        if not self.kl_weight >= 0:
            raise TrilemmaError(f"--kl-weight: must be >= 0, got {self.kl_weight}")
        if not self.disc_weight >= 0:
            raise TrilemmaError(f"--disc-weight: must be >= 0 (0 = no discriminator), got {self.disc_weight}")
        if self.disc_start < 0:
            raise TrilemmaError(f"--disc-start: must be >= 0, got {self.disc_start}")
        if self.disc_loss not in ("hinge", "nonsaturating"):
            raise TrilemmaError(f"--disc-loss: expected 'hinge' or 'nonsaturating', got {self.disc_loss!r}")

    @property
    def uses_disc(self) -> bool:
        return self.disc_weight > 0


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
        h = self.conv1(F.silu(self.norm1(x)))                                   # (B, C_out, H, W)
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


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
        h = self.body(self.conv_in(x))                                          # (B, w_L, H/f, W/f)
        mu, logvar = self.conv_out(F.silu(self.norm_out(h))).chunk(2, dim=1)    # (B, c, H/f, W/f) each
        return mu, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)


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
        h = self.mid(self.conv_in(z))                                           # (B, w_L, h, w)
        for i, blocks in enumerate(self.levels):
            h = blocks(h)
            if i < len(self.upsample):
                h = self.upsample[i](h, size=(2 * h.shape[-2], 2 * h.shape[-1]))
        return self.conv_out(F.silu(self.norm_out(h)))                          # (B, C, H, W)


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


# ----------------------------------------------------------------------------------------- the objective
def reconstruction_error(x: torch.Tensor, x_hat: torch.Tensor, kind: str) -> torch.Tensor:
    """Σ over pixels of |x − x̂| (``l1``) or (x − x̂)² (``l2``): (B, C, H, W) × 2 → (B,)."""
    diff = (x_hat.float() - x.float()).flatten(1)
    return diff.abs().sum(1) if kind == "l1" else diff.pow(2).sum(1)


def psnr(x: torch.Tensor, x_hat: torch.Tensor, peak: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, 10 log10(peak² / MSE) dB: (B, C, H, W) × 2 → (B,).

    ``peak`` is the data range: 2 for floats in [−1, 1], 255 for uint8 pixels.
    """
    mse = (x_hat.double() - x.double()).flatten(1).pow(2).mean(1)
    return 10 * torch.log10(peak ** 2 / mse.clamp_min(1e-20))


def autoencoder_terms(model: Autoencoder, x: torch.Tensor, objective: AutoencoderObjective,
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Per-image terms of the phase-1 loss, all (B,), plus the reconstructions ``x_hat`` (B, C, H, W).

    ``loss`` = (rec + β·KL) / D with D = C·H·W; ``rec`` = rec / D (the mean error per pixel);
    ``kl`` in nats per image; ``psnr`` of x̂ (one posterior sample) in dB on [−1, 1].
    """
    mu, logvar = model.encode(x)                                            # (B, c, h, w) each
    z = reparameterise(mu, logvar, generator)                               # z = μ + σ ⊙ ε
    x_hat = model.decode(z)                                                 # (B, C, H, W)
    rec = reconstruction_error(x, x_hat, objective.recon)                   # (B,)
    kl = gaussian_kl(mu.flatten(1).float(), logvar.flatten(1).float())      # (B,) nats
    dims = x[0].numel()
    return {"loss": (rec + objective.kl_weight * kl) / dims, "rec": rec / dims, "kl": kl,
            "psnr": psnr(x.detach(), x_hat.detach().clamp(-1, 1)).float(), "x_hat": x_hat}


@torch.no_grad()
def latent_moments(latents: torch.Tensor, batch: int = 4096) -> dict[str, float]:
    """Mean, standard deviation and scale factor s = 1/std over every element of ``latents`` (N, c, h, w).

    Accumulated in float64, so ``(latents · s).std()`` over the same set is 1 to ~1e-12.
    """
    n, total, total_sq = 0, 0.0, 0.0
    for start in range(0, len(latents), batch):
        z = latents[start:start + batch].double()
        n += z.numel()
        total += z.sum().item()
        total_sq += z.pow(2).sum().item()
    mean = total / n
    var = (total_sq - n * mean ** 2) / (n - 1)                               # unbiased, as torch.std
    std = math.sqrt(max(var, 0.0))
    if not std > 0:
        raise TrilemmaError("the autoencoder's latents are constant on the training set (std 0): "
                            "it has not learned anything; train it longer")
    return {"mean": mean, "std": std, "scale_factor": 1.0 / std}
