"""The two config sections of a GAN run: the DCGAN networks (``"model"``) and the game (``"gan"``)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from trilemma.errors import TrilemmaError
from trilemma.options import in_range, int_in, opt

GLoss = Literal["minimax", "nonsaturating"]


def dcgan_geometry(image_size: int) -> tuple[int, int]:
    """(s₀, n): the generator starts at s₀ × s₀ (4 ≤ s₀ ≤ 7) and doubles n times: 28 = 7·2², 32 = 4·2³, 64 = 4·2⁴."""
    size, n = image_size, 0
    while size > 7 and size % 2 == 0:
        size, n = size // 2, n + 1
    if not 4 <= size <= 7 or n == 0:
        raise TrilemmaError(f"--image-size {image_size}: the DCGAN needs s·2^n pixels with 4 ≤ s ≤ 7 and n ≥ 1 "
                            f"(e.g. 8, 14, 16, 28, 32, 56, 64)")
    return size, n


@dataclass(frozen=True)
class DCGANConfig:
    """DCGAN generator and discriminator (Radford et al. 2016) for s₀·2ⁿ pixels, 1 or 3 channels."""

    image_size: int = 28
    channels: int = 1
    z_dim: int = opt(100, "dimension of the noise z ~ N(0, I)", check=int_in(1, 65536))
    g_channels: int = 64              # G's widest-resolution width (ngf); doubles at every lower resolution
    d_channels: int = 64              # D's first width (ndf); doubles at every downsampling

    def __post_init__(self):
        dcgan_geometry(self.image_size)
        if self.channels not in (1, 3):
            raise TrilemmaError(f"DCGAN option channels: must be 1 or 3, got {self.channels}")
        for name in ("z_dim", "g_channels", "d_channels"):
            if getattr(self, name) <= 0:
                raise TrilemmaError(f"DCGAN option {name}: must be a positive integer, got {getattr(self, name)}")


@dataclass(frozen=True)
class GANConfig:
    """The game of Algorithm 1 (Goodfellow et al. 2014) and its optimiser."""

    g_loss: GLoss = opt("nonsaturating", "generator cost: minimise log(1 − D(G(z))) or −log D(G(z))",
                        choices=("minimax", "nonsaturating"))
    k: int = opt(1, "discriminator steps per generator step", check=int_in(1, 100))
    beta1: float = opt(0.5, "Adam β₁ (Radford et al. 2016)", check=in_range(0.0, 1.0, hi_open=True))
    beta2: float = opt(0.999, "Adam β₂", check=in_range(0.0, 1.0, hi_open=True))
    ema: bool = opt(False, "keep an EMA of G (decay --ema-decay) and sample from it")

    def __post_init__(self):
        if self.g_loss not in ("minimax", "nonsaturating"):
            raise TrilemmaError(f"--g-loss: expected 'minimax' or 'nonsaturating', got {self.g_loss!r}")
        if not isinstance(self.k, int) or self.k < 1:
            raise TrilemmaError(f"--k: must be a positive integer, got {self.k!r}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise TrilemmaError(f"--betas: must be in [0, 1), got ({self.beta1}, {self.beta2})")


PRESETS = {
    "tiny": dict(z_dim=16, g_channels=8, d_channels=8),
    "small": dict(z_dim=64, g_channels=32, d_channels=32),
    "base": dict(z_dim=100, g_channels=64, d_channels=64),      # = DCGAN (Radford et al. 2016)
}


def preset(name: str, image_size: int, channels: int, **overrides) -> DCGANConfig:
    """Named sizes: ``tiny`` (tests), ``small`` (CPU runs), ``base`` (the DCGAN paper's widths, GPU)."""
    if name not in PRESETS:
        raise TrilemmaError(f"--preset: unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    config = DCGANConfig(image_size=image_size, channels=channels, **PRESETS[name])
    return replace(config, **overrides) if overrides else config
