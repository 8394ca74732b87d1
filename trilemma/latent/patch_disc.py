"""An optional patch discriminator for sharper reconstructions (off by default).

PatchGAN (Isola et al. 2017, "Image-to-image translation with conditional adversarial networks",
§3.2.2): a small fully convolutional D that gives one logit per overlapping patch of the image
rather than one per image, so it judges local texture — what an L1/L2 loss blurs away. Rombach et
al. (2022, App. G) train their autoencoders with it (after Esser et al. 2021, VQGAN).

    D: [Conv(4, 2, 1) (+ GroupNorm) + LeakyReLU(0.2)] × n → Conv(3), GroupNorm, LeakyReLU → Conv(3) → logits

GroupNorm instead of pix2pix's BatchNorm keeps every image's logits independent of its batch.
Losses are per image (the mean over its patches), from logits l:

    hinge (Lim & Ye 2017; VQGAN):   L_D = relu(1 − l_real) + relu(1 + l_fake),   L_G = −l_fake
    non-saturating (Goodfellow et al. 2014): the GAN family's pair in :mod:`trilemma.gan.losses`
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trilemma.errors import TrilemmaError
from trilemma.gan.losses import discriminator_loss, nonsaturating_generator_cost
from trilemma.nets.layers import group_norm


@dataclass(frozen=True)
class PatchDiscConfig:
    """The patch discriminator (the ``"disc"`` section of an autoencoder run that uses one)."""

    channels: int = 1             # image channels
    base_channels: int = 32       # width of the first layer, doubled at every stride-2 layer
    num_layers: int = 2           # stride-2 layers: 28 px → 7×7 patch logits, each seeing ~22 px

    def __post_init__(self):
        if self.channels not in (1, 3) or self.base_channels < 1 or self.num_layers < 1:
            raise TrilemmaError(f"patch discriminator: bad options {self}")


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


def _per_image(values: torch.Tensor) -> torch.Tensor:
    return values.flatten(1).mean(1)                                        # (B, 1, h, w) → (B,)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """relu(1 − l_real) + relu(1 + l_fake), averaged over each image's patches: → (B,)."""
    return _per_image(F.relu(1 - real_logits)) + _per_image(F.relu(1 + fake_logits))


def hinge_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """−l_fake, averaged over each image's patches: → (B,)."""
    return -_per_image(fake_logits)


def nonsaturating_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """−log D(x) − log(1 − D(x̂)) per patch (the GAN family's discriminator loss), averaged per image."""
    return _per_image(discriminator_loss(real_logits, fake_logits))


def nonsaturating_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """−log D(x̂) per patch, averaged per image."""
    return _per_image(nonsaturating_generator_cost(fake_logits))


# name -> (discriminator loss, generator loss), both per image
DISC_LOSSES = {"hinge": (hinge_d_loss, hinge_g_loss), "nonsaturating": (nonsaturating_d_loss, nonsaturating_g_loss)}
