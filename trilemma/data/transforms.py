"""Pixel conversions shared by every source.

Images are stored as uint8 ``(N, C, H, W)`` and fed to models as float32 in
``[-1, 1]``; :func:`to_float` and :func:`to_uint8` are exact inverses on all 256
values. Resizing uses Pillow everywhere (builtins and folders alike), so an image
looks the same whichever source it came from.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

RESAMPLE = Image.Resampling.BICUBIC
REDUCING_GAP = 3.0  # box-reduce first when shrinking by more than 3x: faster, no aliasing


def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 ``[0, 255]`` -> float32 ``[-1, 1]``: ``x / 127.5 - 1``."""
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"to_float expects uint8 images, got {images_uint8.dtype}")
    return images_uint8.to(torch.float32).div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float ``[-1, 1]`` -> uint8: ``round((x + 1) * 127.5)``, clamped to ``[0, 255]``."""
    return ((images.to(torch.float32) + 1.0) * 127.5).round_().clamp_(0, 255).to(torch.uint8)


def fit_square(image: Image.Image, size: int) -> Image.Image:
    """Resize so the short side is ``size``, then centre-crop to ``size x size``.

    Done in one resampling step: the centred square of side ``min(w, h)`` is the
    source box, so no intermediate image is rounded to whole pixels.
    """
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) / 2, (h - side) / 2
    if side == size and left == int(left) and top == int(top):
        return image.crop((int(left), int(top), int(left) + size, int(top) + size))
    return image.resize((size, size), RESAMPLE, box=(left, top, left + side, top + side),
                        reducing_gap=REDUCING_GAP)


class UnsupportedImage(ValueError):
    """An image decoded fine but its pixels cannot be mapped to 8 bits (the message says why)."""


EIGHT_BIT_MODES = frozenset({"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "HSV"})
ALPHA_MODES = frozenset({"LA", "PA", "RGBA", "RGBa"})
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def to_8bit(image: Image.Image) -> Image.Image:
    """Map the pixels of any decoded mode to 8 bits per channel, keeping alpha.

    - ``1``, ``L``, ``P``, ``RGB(A/X)``, ``LA``, ``PA``, ``CMYK``, ``YCbCr``, ``HSV``
      are already 8-bit and returned as they are (Pillow converts them exactly).
      A 16-bit RGB(A) or LA PNG is opened by Pillow as 8-bit already, keeping the
      high byte of each sample, i.e. ``value >> 8``.
    - ``I;16`` (16-bit grey, any byte order) -> ``L`` as ``value >> 8``; a
      ``transparency`` value becomes an alpha channel (``LA``).
    - ``I`` (32-bit integers): taken as 16-bit grey (older Pillows open 16-bit PNGs so)
      when every value is in 0..65535 -> ``value >> 8``; otherwise refused.
    - ``F`` (32-bit float): taken as intensities in [0, 1] -> ``round(255 x)``;
      refused when a value is NaN, infinite or outside [0, 1].
    - anything else (``LAB``, ``La``, ...) is refused.

    Refusals raise :class:`UnsupportedImage` (a ``ValueError``) saying why.
    """
    mode = image.mode
    if mode in EIGHT_BIT_MODES or mode in ALPHA_MODES:
        return image
    if mode in SIXTEEN_BIT_MODES:
        a = np.asarray(image).astype(np.uint16)  # (H, W), native byte order
        grey = Image.fromarray((a >> 8).astype(np.uint8))
        key = image.info.get("transparency")
        if isinstance(key, int) and not isinstance(key, bool):
            alpha = Image.fromarray(np.where(a == key, 0, 255).astype(np.uint8))
            return Image.merge("LA", (grey, alpha))
        return grey
    if mode == "I":
        a = np.asarray(image)  # (H, W) int32
        lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise UnsupportedImage(f"32-bit integer pixels outside 0..65535 (min {lo}, max {hi})")
        return Image.fromarray((a >> 8).astype(np.uint8))
    if mode == "F":
        a = np.asarray(image, dtype=np.float64)  # (H, W)
        if not np.isfinite(a).all():
            raise UnsupportedImage("floating-point pixels include NaN or infinity")
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if lo < 0.0 or hi > 1.0:
            raise UnsupportedImage(f"floating-point pixels outside [0, 1] (min {lo:g}, max {hi:g})")
        return Image.fromarray(np.rint(a * 255.0).astype(np.uint8))
    raise UnsupportedImage(f"unsupported image mode {mode!r} (save it as 8- or 16-bit grey or RGB)")


def to_mode(image: Image.Image, channels: int) -> Image.Image:
    """Convert any mode (see :func:`to_8bit`) to ``"L"`` (channels 1) or ``"RGB"`` (channels 3).

    Grey uses ITU-R 601 luminance ``L = 0.299 R + 0.587 G + 0.114 B``; CMYK is
    ``R = (255 - C)(255 - K) / 255`` etc. Alpha (an alpha band, or a palette or
    colour-key ``transparency``) is composited onto white, so transparent pixels
    become white rather than black. Raises :class:`UnsupportedImage`.
    """
    image = to_8bit(image)
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image.alpha_composite(rgba)
    return image.convert("L" if channels == 1 else "RGB")


def image_to_array(image: Image.Image) -> np.ndarray:
    """A Pillow ``L`` or ``RGB`` image as uint8 ``(C, H, W)``."""
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def resize_grey(images: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 stack ``(N, H, W)`` of square grey images to ``(N, size, size)``."""
    if images.shape[1:] == (size, size):
        return images
    out = np.empty((len(images), size, size), dtype=np.uint8)
    for i, image in enumerate(images):
        out[i] = np.asarray(fit_square(Image.fromarray(image), size))
    return out
