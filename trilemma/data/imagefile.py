"""Reading one image file, safely: any bytes in, uint8 pixels or one clear error out.

Image folders come from anywhere, so every file is treated as hostile input:

- The header is read first and the image refused, before any pixel is decoded,
  when it has no pixels or more than :data:`MAX_PIXELS` (a decompression bomb:
  a few kilobytes of PNG can claim 100,000 x 100,000 pixels). Pillow's own
  ``DecompressionBombError``/``Warning`` are caught too.
- Anything Pillow raises while parsing the bytes (``OSError``, ``SyntaxError``,
  ``struct.error``, ``zlib.error``, ``EOFError``, ...) means "not a readable
  image": it is a property of the file, not a bug in trilemma.
- Pixels of every mode and bit depth are mapped to 8 bits by
  :func:`~trilemma.data.transforms.to_mode` (16-bit as ``value >> 8``; alpha over
  white); modes that cannot be mapped are refused.

:func:`read_image` raises :class:`~trilemma.errors.DataError` ``"<path>: <reason>"``;
:func:`try_read_image` returns the reason instead, for folders that skip and count
unreadable files.
"""

from __future__ import annotations

import os
import re
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from trilemma.data.transforms import (
    UnsupportedImage,
    fit_square,
    image_to_array,
    to_mode,
)
from trilemma.errors import DataError

MAX_PIXELS = 64_000_000  # width x height above this is refused before decoding (64 megapixels)


def read_image(path: str | os.PathLike, channels: int, size: int | None = None) -> np.ndarray:
    """One image file as uint8 ``(channels, H, W)``; square ``(channels, size, size)`` if ``size``.

    ``channels`` is 1 (ITU-R 601 luminance) or 3 (RGB). With ``size`` the image is
    resized so its short side is ``size`` and centre-cropped (:func:`fit_square`);
    without, it keeps its own size. The EXIF orientation is applied.
    Raises :class:`DataError` naming the file for anything that is not a readable
    image within :data:`MAX_PIXELS`.
    """
    with warnings.catch_warnings():  # our own MAX_PIXELS check replaces Pillow's warning
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        array, reason = try_read_image(path, channels, size)
    if array is None:
        raise DataError(f"{path}: {reason}")
    return array


def try_read_image(path: str | os.PathLike, channels: int,
                   size: int | None = None) -> tuple[np.ndarray | None, str]:
    """``(array, "")`` as :func:`read_image` returns it, or ``(None, reason)`` if unreadable.

    Thread-safe (used by a thread pool); it leaves warnings alone, so callers
    silence ``Image.DecompressionBombWarning`` around it (images that would
    trigger it are refused here anyway).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if size is not None and size < 1:
        raise ValueError(f"size must be positive, got {size!r}")
    path = Path(path)
    try:
        info = os.stat(path)
    except OSError as e:
        return None, f"cannot read ({e.strerror or e})"
    if not stat.S_ISREG(info.st_mode):
        return None, "not a regular file"
    if info.st_size == 0:
        return None, "empty file (0 bytes)"
    try:
        image = open_image(path, channels, size)
    except _Unreadable as e:
        return None, str(e)
    try:
        converted = to_mode(image, channels)
    except UnsupportedImage as e:
        return None, str(e)
    except (ValueError, TypeError, OSError) as e:  # Pillow refusing odd metadata, e.g. a bad transparency
        return None, f"cannot convert its {image.mode} pixels ({_short(e, path)})"
    if size is not None:
        converted = fit_square(converted, size)
    return image_to_array(converted), ""


class _Unreadable(Exception):
    """Internal: Pillow could not decode the file (message: the reason)."""


def open_image(path: Path, channels: int, size: int | None) -> Image.Image:
    """Decode ``path`` fully (upright, EXIF rotation applied); raise :class:`_Unreadable`."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width < 1 or height < 1:
                raise _Unreadable(f"has no pixels ({width}x{height})")
            if width * height > MAX_PIXELS:
                raise _Unreadable(f"{width}x{height} pixels is more than the limit of "
                                  f"{MAX_PIXELS / 1e6:g} megapixels (a decompression bomb?)")
            if size is not None:  # JPEG: decode at a reduced scale when that is still >= size
                image.draft("RGB" if channels == 3 else "L", (size, size))
            image.load()
            return ImageOps.exif_transpose(image)  # a new, loaded image (camera photos: rotate)
    except _Unreadable:
        raise
    except Image.DecompressionBombError as e:  # Pillow refuses > 2 * Image.MAX_IMAGE_PIXELS in open()
        found = re.search(r"\((\d+) pixels\)", str(e))
        what = f"{int(found[1]) / 1e6:g} megapixels" if found else "too many pixels"
        raise _Unreadable(f"{what} is more than Pillow's limit of {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:g} "
                          f"megapixels (a decompression bomb?)") from None
    except UnidentifiedImageError:
        raise _Unreadable("not an image Pillow can read") from None
    except OSError as e:
        if e.errno is None:  # Pillow's own decoding errors ("image file is truncated", ...)
            raise _Unreadable(f"corrupt or truncated image ({_short(e, path)})") from None
        raise _Unreadable(f"cannot read ({e.strerror or e})") from None
    except Exception as e:  # noqa: BLE001 - any failure to parse untrusted bytes means an unreadable file
        raise _Unreadable(f"corrupt or truncated image ({type(e).__name__}: {_short(e, path)})") from None


def _short(error: BaseException, path: Path) -> str:
    """An exception's message on one short line, without the (already shown) path."""
    message = " ".join(str(error).replace(str(path), "").split())
    return (message[:117] + "...") if len(message) > 120 else (message or "no details")
