"""DCGAN generator and discriminator (Radford et al. 2016), for any s₀·2ⁿ image size (28, 32, 64 …).

G: z (B, z_dim) → 1×1 → ConvT(s₀) → s₀×s₀ → n × [ConvT(4, 2, 1), BN, ReLU] → tanh → (B, C, H, W).
D: the mirror image, n × [Conv(4, 2, 1), BN (not on the first), LeakyReLU(0.2)] → Conv(s₀) → one logit (B,).
Weights start from N(0, 0.02), BN scales from N(1, 0.02), as in the paper.
"""

from __future__ import annotations

import torch
from torch import nn

from trilemma.gan.config import DCGANConfig, dcgan_geometry


def dcgan_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class Generator(nn.Module):
    """x = G(z): noise (B, z_dim) → images (B, C, H, W) in [−1, 1]."""

    def __init__(self, c: DCGANConfig):
        super().__init__()
        s0, n = dcgan_geometry(c.image_size)
        ch = c.g_channels * 2 ** (n - 1)
        layers: list[nn.Module] = [nn.ConvTranspose2d(c.z_dim, ch, s0, 1, 0, bias=False),     # 1×1 → s₀×s₀
                                   nn.BatchNorm2d(ch), nn.ReLU(True)]
        for _ in range(n - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, c.channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.z_dim = c.z_dim
        dcgan_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])                      # (B, z_dim, 1, 1) → (B, C, H, W)


class Discriminator(nn.Module):
    """The logit l = log D(x)/(1 − D(x)) of "x is real": images (B, C, H, W) → (B,)."""

    def __init__(self, c: DCGANConfig):
        super().__init__()
        s0, n = dcgan_geometry(c.image_size)
        ch = c.d_channels
        layers: list[nn.Module] = [nn.Conv2d(c.channels, ch, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for _ in range(n - 1):
            layers += [nn.Conv2d(ch, 2 * ch, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * ch), nn.LeakyReLU(0.2, True)]
            ch *= 2
        layers.append(nn.Conv2d(ch, 1, s0, 1, 0, bias=False))      # s₀×s₀ → 1×1
        self.net = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).flatten()                              # (B,)
