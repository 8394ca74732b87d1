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


def to_mode(image: Image.Image, channels: int) -> Image.Image:
    """Convert to ``"L"`` (channels 1, ITU-R 601 luminance) or ``"RGB"`` (channels 3).

    Transparent pixels are composited onto white rather than left black.
    """
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
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
