"""A folder of images as a dataset.

Layout (compatible with Hugging Face ``imagefolder``)::

    FOLDER/
      metadata.jsonl      optional captions: {"file_name": "cat/1.png", "text": "a cat"} per line
      cat/1.png           first-level subfolders are classes (sorted by name) ...
      dog/x/2.jpg         ... and deeper files belong to their first-level folder
      3.webp              files in the root have no class (label -1) when classes exist

Files ending in .png, .jpg, .jpeg or .webp (any case) are found recursively and
taken in sorted order; hidden files and folders (``.name``) are ignored. Without
subfolders the dataset is unlabeled. Each image is converted to L or RGB (any
mode and bit depth, see :func:`~trilemma.data.transforms.to_8bit`), resized so
its short side is ``image_size`` and centre-cropped to a square.

Hostile input: unreadable files (empty, truncated, corrupt, not images, modes that
cannot be mapped to 8 bits, more than :data:`~trilemma.data.imagefile.MAX_PIXELS`
pixels, not regular files) are skipped and counted, in one :class:`DataWarning`
per load naming up to three with their reason. A ``metadata.jsonl`` line that is
not an object of strings is a :class:`DataError` naming the line; file names that
match no image are a warning ("names N missing files"), or an error when none
matches. A folder whose decoded images would not fit in memory is refused before
decoding (:func:`~trilemma.utils.validate.check_memory`).

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
from PIL import Image

from trilemma.data.config import DataConfig
from trilemma.data.dataset import DataWarning, ImageDataset
from trilemma.data.imagefile import try_read_image
from trilemma.errors import CacheError, DataError
from trilemma.utils.io import atomic_path
from trilemma.utils.paths import cache_dir, stable_hash
from trilemma.utils.validate import check_memory

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
METADATA_FILE = "metadata.jsonl"
CACHE_VERSION = 2  # bump when decoding changes, to invalidate every cached folder (2: 16-bit, F, I, CMYK)
SKIP_EXAMPLES = 3  # unreadable files named in the warning


def load_folder(config: DataConfig, split: str) -> ImageDataset:
    """One split of the image folder ``config.name``; ``config`` must be resolved."""
    root = Path(config.name)
    files = list_images(root)
    if not files:
        raise DataError(f"no images found in {root} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    captions = read_captions(root)  # before decoding: a broken metadata.jsonl fails fast
    if captions is not None:
        check_caption_names(root, captions, files)
    size, channels = config.image_size, config.channels
    check_memory(2 * len(files) * channels * size * size,  # the decoded arrays, then their stack
                 f"decoding {len(files)} images of {channels}x{size}x{size} from {root}", "--image-size",
                 error=DataError)
    images, kept, skipped = decode_cached(root, files, size, channels)
    if skipped:
        examples = "; ".join(f"{name} ({reason})" for name, reason in skipped[:SKIP_EXAMPLES])
        more = f"; and {len(skipped) - SKIP_EXAMPLES} more" if len(skipped) > SKIP_EXAMPLES else ""
        warnings.warn(f"skipped {len(skipped)} unreadable image(s) in {root}, e.g. {examples}{more}",
                      DataWarning, stacklevel=3)
    if not kept:
        name, reason = skipped[0]
        raise DataError(f"no readable images in {root}: all {len(skipped)} failed to decode, "
                        f"e.g. {name} ({reason})")

    class_names = tuple(sorted({f.split("/")[0] for f in kept if "/" in f}))
    class_index = {c: i for i, c in enumerate(class_names)}
    labels = [class_index[f.split("/")[0]] if "/" in f else -1 for f in kept]

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
                  channels: int) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    """``(images (N, C, size, size) uint8, kept files, skipped (file, reason))``, cached on disk.

    The cache is an optimisation only: an unwritable or damaged cache (or one that
    does not match ``files``) means decoding again, never an error.
    """
    key = stable_hash([str(root.resolve()), [[f, *_stamp(root / f)] for f in files],
                       size, channels, CACHE_VERSION])
    try:
        path = cache_dir("datasets") / f"{root.name}-{size}px-{channels}ch-{key}.npz"
    except (OSError, CacheError):
        path = None  # TRILEMMA_CACHE is not a creatable folder: no cache
    if path is not None:
        cached = _read_cache(path, files, size, channels)
        if cached is not None:
            return cached

    images, kept, skipped = decode_images(root, files, size, channels)
    if path is not None:
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.savez(f, images=images, kept=np.array(kept, dtype=str),
                         skipped=np.array([name for name, _ in skipped], dtype=str),
                         reasons=np.array([reason for _, reason in skipped], dtype=str))
        except OSError:
            pass  # a full or read-only cache folder only costs the next load a decode
    return images, kept, skipped


def _stamp(path: Path) -> tuple[int, int]:
    """``(size, mtime_ns)`` of a file for the cache key; ``(-1, 0)`` if it cannot be stat'ed."""
    try:
        info = os.stat(path)
    except OSError:
        return -1, 0
    return info.st_size, info.st_mtime_ns


def _read_cache(path: Path, files: list[str], size: int,
                channels: int) -> tuple[np.ndarray, list[str], list[tuple[str, str]]] | None:
    """A cache entry if it is readable and consistent with ``files``; ``None`` otherwise."""
    try:
        with np.load(path, allow_pickle=False) as cached:
            images, kept = cached["images"], cached["kept"].tolist()
            skipped = list(zip(cached["skipped"].tolist(), cached["reasons"].tolist(), strict=True))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    if images.dtype != np.uint8 or images.shape != (len(kept), channels, size, size) \
            or sorted(kept + [name for name, _ in skipped]) != files:
        return None
    return images, kept, skipped


def decode_images(root: Path, files: list[str], size: int,
                  channels: int) -> tuple[np.ndarray, list[str], list[tuple[str, str]]]:
    """Decode, convert and square-crop every file (in threads: Pillow releases the GIL).

    Returns ``(images, kept, skipped)`` where ``skipped`` pairs each unreadable file
    with the reason (:func:`~trilemma.data.imagefile.try_read_image`).
    """
    workers = min(8, os.cpu_count() or 1)
    with warnings.catch_warnings(), ThreadPoolExecutor(workers) as pool:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused by MAX_PIXELS instead
        results = list(pool.map(lambda f: try_read_image(root / f, channels, size), files))
    kept = [f for f, (a, _) in zip(files, results) if a is not None]
    skipped = [(f, reason) for f, (a, reason) in zip(files, results) if a is None]
    images = np.stack([a for a, _ in results if a is not None]) if kept else \
        np.empty((0, channels, size, size), dtype=np.uint8)
    return images, kept, skipped


def read_captions(root: Path) -> dict[str, str] | None:
    """``{relative path: caption}`` from ``root/metadata.jsonl``, or ``None`` if there is none.

    Each non-blank line must be a JSON object with string ``file_name`` (relative to
    ``root``; ``./`` and doubled slashes are normalised) and string ``text``; anything
    else is a :class:`DataError` naming the line.
    """
    path = root / METADATA_FILE
    if not path.is_file():
        return None
    captions: dict[str, str] = {}
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if lines and lines[0].startswith(b"\xef\xbb\xbf"):
        lines[0] = lines[0][3:]  # a UTF-8 byte-order mark
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path} line {lineno}"
        try:
            entry = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            raise DataError(f"{where}: not UTF-8 text") from None
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg})") from None
        except RecursionError:
            raise DataError(f"{where}: JSON nested too deeply") from None
        if not isinstance(entry, dict):
            raise DataError(f"{where}: expected an object with string 'file_name' and 'text', "
                            f"got a JSON {_json_type(entry)}")
        for field in ("file_name", "text"):
            if field not in entry:
                raise DataError(f"{where}: expected an object with string 'file_name' and 'text', "
                                f"'{field}' is missing")
            if not isinstance(entry[field], str):
                raise DataError(f"{where}: expected an object with string 'file_name' and 'text', "
                                f"'{field}' is a JSON {_json_type(entry[field])}")
        if not entry["file_name"].strip() or "\0" in entry["file_name"]:
            raise DataError(f"{where}: 'file_name' must name an image file, got {entry['file_name']!r}")
        name = Path(entry["file_name"]).as_posix()
        if name in captions:
            raise DataError(f"{where}: duplicate file_name {name!r}")
        captions[name] = entry["text"]
    return captions


def check_caption_names(root: Path, captions: dict[str, str], files: list[str]) -> None:
    """Every ``file_name`` of ``metadata.jsonl`` should be one of the folder's images.

    None of them is: :class:`DataError` (the captions are surely meant for other
    paths); only some: one :class:`DataWarning`. Both say "names N missing files".
    """
    listed = set(files)
    missing = sorted(name for name in captions if name not in listed)
    if not missing:
        return
    example = f"e.g. {missing[0]!r} (file_name must be an image's path relative to {root})"
    if len(missing) == len(captions):
        raise DataError(f"{root / METADATA_FILE} names {len(missing)} missing files and none of the "
                        f"{len(files)} images, {example}")
    warnings.warn(f"{root / METADATA_FILE} names {len(missing)} missing files, {example}; "
                  f"their captions are ignored", DataWarning, stacklevel=4)


def _json_type(value: object) -> str:
    return {dict: "object", list: "array", str: "string", int: "number", float: "number",
            bool: "boolean", type(None): "null"}.get(type(value), type(value).__name__)
