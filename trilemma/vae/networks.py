"""The VAE's networks: a convolutional encoder q_φ(z|x) and decoder p_θ(x|z) (Kingma & Welling 2014).

Encoder: n × [Conv(4, 2, 1) + SiLU (+ 3×3 convs)] → flatten → Linear → SiLU → Linear → (μ, log σ²).
Decoder: the mirror image, ending in a transposed conv to C channels (no activation).
Shapes: B batch, C image channels, H = W image size, d latent dimension,
K bottleneck channels, s bottleneck size (H / 2ⁿ).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from trilemma.vae.config import VAEConfig, VAENetConfig

LOG_SIGMA_MIN, LOG_SIGMA_MAX = math.log(1e-3), math.log(10.0)   # keeps a learned σ in a sane range


def _convs(ch: int, n: int) -> list[nn.Module]:
    return [m for _ in range(n) for m in (nn.Conv2d(ch, ch, 3, padding=1), nn.SiLU())]


class Encoder(nn.Module):
    """x (B, C, H, W) in [−1, 1] → μ (B, d), log σ² (B, d)."""

    def __init__(self, c: VAENetConfig):
        super().__init__()
        layers: list[nn.Module] = []
        ch_in = c.channels
        for i in range(c.downsamples):
            ch = c.base_channels * 2 ** i
            layers += [nn.Conv2d(ch_in, ch, 4, stride=2, padding=1), nn.SiLU(), *_convs(ch, c.blocks_per_level)]
            ch_in = ch
        if c.downsamples == 0:                                           # tiny images: one 3×3 conv
            layers += [nn.Conv2d(ch_in, c.bottleneck_channels, 3, padding=1), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c.bottleneck_channels * c.bottleneck_size ** 2,
                                                          c.hidden_dim), nn.SiLU(),
                                  nn.Linear(c.hidden_dim, 2 * c.latent_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.head(self.features(x))                                  # (B, 2d)
        mu, logvar = h.chunk(2, dim=1)                                   # (B, d) each
        return mu, logvar


class Decoder(nn.Module):
    """z (B, d) → the decoder's output (B, C, H, W): the Gaussian mean, or the Bernoulli logits."""

    def __init__(self, c: VAENetConfig):
        super().__init__()
        self.shape = (c.bottleneck_channels, c.bottleneck_size, c.bottleneck_size)   # (K, s, s)
        self.head = nn.Sequential(nn.Linear(c.latent_dim, c.hidden_dim), nn.SiLU(),
                                  nn.Linear(c.hidden_dim, math.prod(self.shape)), nn.SiLU())
        layers: list[nn.Module] = []
        for i in reversed(range(1, c.downsamples)):
            ch = c.base_channels * 2 ** i
            layers += [*_convs(ch, c.blocks_per_level), nn.ConvTranspose2d(ch, ch // 2, 4, stride=2, padding=1),
                       nn.SiLU()]
        if c.downsamples == 0:
            layers.append(nn.Conv2d(c.bottleneck_channels, c.channels, 3, padding=1))
        else:
            layers += [*_convs(c.base_channels, c.blocks_per_level),
                       nn.ConvTranspose2d(c.base_channels, c.channels, 4, stride=2, padding=1)]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.head(z).view(len(z), *self.shape)                       # (B, K, s, s)
        return self.body(h)                                              # (B, C, H, W)


class VAE(nn.Module):
    """Encoder + decoder + (for a learned Gaussian variance) one log σ per channel.

    The interface the losses use: :meth:`encode` x → (μ, log σ²); :meth:`decode`
    z → the likelihood's parameters; :meth:`image` z → the mean image in [−1, 1].
    """

    def __init__(self, net: VAENetConfig, vae: VAEConfig):
        super().__init__()
        self.net_config, self.vae_config = net, vae
        self.encoder = Encoder(net)
        self.decoder = Decoder(net)
        if vae.likelihood == "gaussian" and vae.variance == "learned":
            self.log_sigma = nn.Parameter(torch.full((net.channels,), math.log(vae.sigma)))
        else:
            self.log_sigma = None

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean, log σ) for the Gaussian likelihood, (logits, None) for the Bernoulli."""
        out = self.decoder(z)                                            # (B, C, H, W)
        if self.vae_config.likelihood == "bernoulli":
            return out, None
        if self.log_sigma is None:
            log_sigma = torch.full((1, 1, 1, 1), math.log(self.vae_config.sigma), device=z.device)
        else:
            log_sigma = self.log_sigma.clamp(LOG_SIGMA_MIN, LOG_SIGMA_MAX).view(1, -1, 1, 1)   # (1, C, 1, 1)
        return out, log_sigma

    def image(self, z: torch.Tensor) -> torch.Tensor:
        """E[x | z] as an image in [−1, 1]: the Gaussian mean (clamped), or 2p − 1 for the Bernoulli."""
        out, _ = self.decode(z)
        if self.vae_config.likelihood == "bernoulli":
            return 2 * torch.sigmoid(out) - 1
        return out.clamp(-1, 1)
