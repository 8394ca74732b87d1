"""`load_dataset`: the one entry point from a name or config to an :class:`ImageDataset`."""

from __future__ import annotations

import os
from typing import Any

from trilemma.data.builtin import load_builtin
from trilemma.data.config import BUILTIN_DATASETS, TEXT_DATASETS, DataConfig
from trilemma.data.dataset import ImageDataset
from trilemma.data.folder import load_folder
from trilemma.errors import DataError

SPLITS = ("train", "test")


def load_dataset(config: DataConfig | str, split: str = "train", **overrides: Any) -> ImageDataset:
    """Load one split of a builtin dataset or an image folder.

    ``config`` is a :class:`DataConfig` or a name (builtin or folder path);
    ``overrides`` replace config fields, e.g. ``load_dataset("fashion-mnist", image_size=32)``.
    A folder split with no images (e.g. ``test`` with ``test_fraction=0``) raises
    :class:`DataError` rather than returning an empty dataset.
    """
    if split not in SPLITS:
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    if isinstance(config, str):
        config = DataConfig.from_dict({"name": config, **overrides})
    elif overrides:
        config = DataConfig.from_dict({**config.to_dict(), **overrides})
    config = config.resolved()
    if config.is_builtin:
        return load_builtin(config, split)
    if config.name in TEXT_DATASETS:
        from trilemma.data.text import load_text_dataset

        return load_text_dataset(config, split)
    if os.path.exists(config.name) and not os.path.isdir(config.name):
        raise DataError(f"--data: {config.name} is a file, not a folder of images")
    if not os.path.isdir(config.name):
        raise DataError(f"unknown dataset {config.name!r}: no such folder of images (moved or deleted?), and not "
                        f"one of {', '.join((*BUILTIN_DATASETS, *TEXT_DATASETS))}")
    return load_folder(config, split)


def list_datasets() -> list[str]:
    """The builtin dataset names (any folder of images works too)."""
    return list(BUILTIN_DATASETS)
