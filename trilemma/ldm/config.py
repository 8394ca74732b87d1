"""The U-Net of a latent diffusion run, fitted to the latent size (docs/methods.md §7)."""

from __future__ import annotations

from dataclasses import replace

from trilemma.errors import TrilemmaError
from trilemma.nets.unet import UNetConfig
from trilemma.nets.unet import preset as unet_preset

MIN_LEVEL_SIZE = 4      # the U-Net's levels stop once they would be smaller than this



def latent_unet_preset(name: str, latent_size: int, latent_channels: int, **overrides) -> UNetConfig:
    """The U-Net preset ``name`` fitted to small latents: levels below 4×4 are dropped.

    The pixel presets halve the image 1–3 times (28 → 14 → 7); a 7×7 latent would go down to
    2×2, where a 3×3 convolution sees mostly padding. So levels are kept while their size is at
    least 4 (7 → 4; 14 → 7 → 4; 8 → 4; 16 → 8 → 4) and attention moves to the lowest kept level
    when its level was dropped. Widths, blocks and heads are the preset's.
    """
    if latent_size < MIN_LEVEL_SIZE:
        raise TrilemmaError(f"latents of {latent_size}×{latent_size} are too small for the U-Net (it needs at least "
                            f"{MIN_LEVEL_SIZE}×{MIN_LEVEL_SIZE}): use a smaller --factor or a larger --image-size")
    config = unet_preset(name, latent_size, latent_channels)
    keep = sum(1 for size in config.resolutions if size >= MIN_LEVEL_SIZE)
    mults = config.channel_mults[:keep]
    kept = replace(config, channel_mults=mults).resolutions
    attn = tuple(sorted({r if r in kept else kept[-1] for r in config.attn_resolutions}))
    config = replace(config, channel_mults=mults, attn_resolutions=attn)
    return replace(config, **overrides) if overrides else config

