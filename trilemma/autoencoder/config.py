"""Configs of the KL autoencoder (networks, objective) and of its optional patch discriminator.

The PatchGAN discriminator (Isola et al. 2017, §3.2.2) judges local texture with one logit per
overlapping patch; Rombach et al. (2022, App. G) train their autoencoders with it (after VQGAN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

from trilemma.errors import TrilemmaError
from trilemma.options import int_in, nonneg, nonneg_int, opt

FACTORS = (2, 4, 8)



@dataclass(frozen=True)
class AutoencoderConfig:
    """The networks of a KL autoencoder (the ``"model"`` section of an autoencoder run)."""

    image_size: int = 28
    channels: int = 1                             # image channels (1 grey, 3 RGB)
    factor: int = 4                               # spatial downsampling f: latents are (H/f) × (W/f)
    latent_channels: int = 4                      # c
    base_channels: int = opt(16, "width of the full-resolution level", check=int_in(1, 4096))
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

    recon: Literal["l1", "l2"] = opt("l2", "Σ(x − x̂)² or Σ|x − x̂|", flag="recon-loss", choices=("l1", "l2"))
    kl_weight: float = opt(1e-6, "β of the KL term (small: a near-deterministic code)", check=nonneg)
    disc_weight: float = opt(0.0, "weight of a patch discriminator's loss (0 = off)", check=nonneg)
    disc_start: int = opt(0, "steps before the discriminator joins in", check=nonneg_int)
    disc_loss: Literal["hinge", "nonsaturating"] = opt("hinge", "the discriminator's loss",
                                                       choices=("hinge", "nonsaturating"))

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


@dataclass(frozen=True)
class PatchDiscConfig:
    """The patch discriminator (the ``"disc"`` section of an autoencoder run that uses one)."""

    channels: int = 1             # image channels
    base_channels: int = 32       # width of the first layer, doubled at every stride-2 layer
    num_layers: int = 2           # stride-2 layers: 28 px → 7×7 patch logits, each seeing ~22 px

    def __post_init__(self):
        if self.channels not in (1, 3) or self.base_channels < 1 or self.num_layers < 1:
            raise TrilemmaError(f"patch discriminator: bad options {self}")
