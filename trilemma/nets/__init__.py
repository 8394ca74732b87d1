"""Networks: the diffusion U-Net and its building blocks."""

from trilemma.nets.unet import PRESETS, UNet, UNetConfig, count_parameters, preset

__all__ = ["UNet", "UNetConfig", "preset", "PRESETS", "count_parameters"]
