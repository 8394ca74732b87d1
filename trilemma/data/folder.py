"""A folder of images as a dataset.

Layout (compatible with Hugging Face ``imagefolder``)::

    FOLDER/
      metadata.jsonl      optional captions: {"file_name": "cat/1.png", "text": "a cat"} per line
      cat/1.png           first-level subfolders are classes (sorted by name) ...
      dog/x/2.jpg         ... and deeper files belong to their first-level folder
      3.webp              files in the root have no class (label -1) when classes exist

Files ending in .png, .jpg, .jpeg or .webp (any case) are found recursively and
taken in sorted order; hidden files and folders (``.name``) are ignored. Without
subfolders the dataset is unlabeled. Each image is converted to L or RGB,
resized so its short side is ``image_size`` and centre-cropped to a square.
Unreadable files are skipped with one :class:`DataWarning` per load.

Decoding is slow, so the decoded uint8 array of the whole folder is cached as
``.npz`` under ``cache_dir("datasets")``, keyed by a hash of the folder's path,
every file's (relative path, size, mtime), the size, channels and
:data:`CACHE_VERSION`: adding, removing or touching a file makes a new entry.

The split is per file: a file is in the test set iff a hash of (relative path,
``split_seed``) falls below ``test_fraction``, so adding files never moves the
existing ones between train and test.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from trilemma.data.config import DataConfig
from trilemma.data.dataset import DataWarning, ImageDataset
from trilemma.data.transforms import fit_square, image_to_array, to_mode
from trilemma.errors import DataError
from trilemma.utils.io import atomic_path
from trilemma.utils.paths import cache_dir, stable_hash

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
METADATA_FILE = "metadata.jsonl"
CACHE_VERSION = 1  # bump when decoding changes, to invalidate every cached folder
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def load_folder(config: DataConfig, split: str) -> ImageDataset:
    """One split of the image folder ``config.name``; ``config`` must be resolved."""
    root = Path(config.name)
    files = list_images(root)
    if not files:
        raise DataError(f"no images found in {root} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    images, kept, skipped = decode_cached(root, files, config.image_size, config.channels)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable image(s) in {root}, e.g. {skipped[0]}",
                      DataWarning, stacklevel=3)
    if not kept:
        raise DataError(f"no readable images in {root}: all {len(skipped)} failed to decode, "
                        f"e.g. {skipped[0]}")

    class_names = tuple(sorted({f.split("/")[0] for f in kept if "/" in f}))
    class_index = {c: i for i, c in enumerate(class_names)}
    labels = [class_index[f.split("/")[0]] if "/" in f else -1 for f in kept]
    captions = read_captions(root)

    in_split = [is_test_file(f, config.split_seed, config.test_fraction) == (split == "test") for f in kept]
    keep = [i for i, selected in enumerate(in_split) if selected]
    if not keep:
        raise DataError(f"the {split} split of {root} is empty ({len(kept)} images, "
                        f"test_fraction={config.test_fraction})")
    index = torch.tensor(keep, dtype=torch.int64)
    return ImageDataset(
        torch.from_numpy(images)[index],
        torch.tensor(labels, dtype=torch.int64)[index],
        class_names, config, split, root.name,
        captions=None if captions is None else [captions.get(kept[i], "") for i in keep],
    )


def list_images(root: Path) -> list[str]:
    """Relative POSIX paths of every image under ``root``, sorted; hidden entries skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(found)


def is_test_file(relative_path: str, split_seed: int, test_fraction: float) -> bool:
    """Whether a file belongs to the test split: its hash, as a number in [0, 1), < test_fraction."""
    u = int(stable_hash([relative_path, split_seed], length=16), 16) / 16**16
    return u < test_fraction


def decode_cached(root: Path, files: list[str], size: int,
                  channels: int) -> tuple[np.ndarray, list[str], list[str]]:
    """``(images (N, C, size, size) uint8, kept files, skipped files)``, from the disk cache if present."""
    stats = [os.stat(root / f) for f in files]
    key = stable_hash([str(root.resolve()), [(f, s.st_size, s.st_mtime_ns) for f, s in zip(files, stats)],
                       size, channels, CACHE_VERSION])
    path = cache_dir("datasets") / f"{root.name}-{size}px-{channels}ch-{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as cached:
            return cached["images"], cached["kept"].tolist(), cached["skipped"].tolist()
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        pass  # absent or unreadable: decode again and overwrite

    images, kept, skipped = decode_images(root, files, size, channels)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, images=images, kept=np.array(kept, dtype=str), skipped=np.array(skipped, dtype=str))
    return images, kept, skipped


def decode_images(root: Path, files: list[str], size: int,
                  channels: int) -> tuple[np.ndarray, list[str], list[str]]:
    """Decode, convert and square-crop every file (in threads: Pillow releases the GIL)."""
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        arrays = list(pool.map(lambda f: decode_image(root / f, size, channels), files))
    kept = [f for f, a in zip(files, arrays) if a is not None]
    skipped = [f for f, a in zip(files, arrays) if a is None]
    images = np.stack([a for a in arrays if a is not None]) if kept else \
        np.empty((0, channels, size, size), dtype=np.uint8)
    return images, kept, skipped


def decode_image(path: Path, size: int, channels: int) -> np.ndarray | None:
    """One image as uint8 ``(channels, size, size)``, or ``None`` if it cannot be decoded."""
    try:
        with Image.open(path) as image:
            image.draft("RGB" if channels == 3 else "L", (size, size))  # JPEG: decode at reduced scale
            upright = ImageOps.exif_transpose(image)  # camera photos: apply the EXIF rotation
            return image_to_array(fit_square(to_mode(upright, channels), size))
    except _DECODE_ERRORS:
        return None


def read_captions(root: Path) -> dict[str, str] | None:
    """``{relative path: caption}`` from ``root/metadata.jsonl``, or ``None`` if there is none."""
    path = root / METADATA_FILE
    if not path.is_file():
        return None
    captions: dict[str, str] = {}
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except UnicodeDecodeError:
                raise DataError(f"{path} line {lineno}: not UTF-8 text") from None
            except json.JSONDecodeError as e:
                raise DataError(f"{path} line {lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(entry, dict) or not isinstance(entry.get("file_name"), str) \
                    or not isinstance(entry.get("text"), str):
                raise DataError(f"{path} line {lineno}: expected an object with string "
                                f"'file_name' and 'text'")
            name = Path(entry["file_name"]).as_posix()
            if name in captions:
                raise DataError(f"{path} line {lineno}: duplicate file_name {name!r}")
            captions[name] = entry["text"]
    return captions
