"""`DataConfig`: which images to train on, at what size, and how to split them.

A config is a frozen dataclass written into every run's ``config.json`` (via
:meth:`DataConfig.to_dict`), so a run folder alone is enough to reload the exact
same data. Invalid values and unknown keys raise :class:`~trilemma.errors.DataError`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from trilemma.options import opt
from trilemma.errors import DataError

BUILTIN_DATASETS: tuple[str, ...] = ("fashion-mnist", "mnist-5k", "digits")

# Native (image_size, channels) of each source; anything else is a folder of images.
NATIVE_SHAPE: dict[str, tuple[int, int]] = {
    "fashion-mnist": (28, 1),
    "mnist-5k": (28, 1),
    "digits": (8, 1),
}
FOLDER_NATIVE_SHAPE: tuple[int, int] = (32, 3)
MAX_IMAGE_SIZE = 1024  # image_size above this is refused (a 1024x1024 RGB image is 3 MiB as uint8)
# Captioned datasets made by trilemma.text (loaded through load.py): name -> native (image_size, channels).
TEXT_DATASETS: dict[str, tuple[int, int]] = {
    "shapes": (32, 3),
    "fashion-mnist-captions": (28, 1),
    "mnist-5k-captions": (28, 1),
}


@dataclass(frozen=True)
class DataConfig:
    """Which dataset to load and how.

    ``name`` is a builtin name (:data:`BUILTIN_DATASETS`) or a path to a folder of
    images; a builtin name wins over a same-named folder (write ``./digits`` for
    the folder).
    """

    name: str = opt(help="fashion-mnist, mnist-5k, digits, or a folder of images", flag="data")
    image_size: int | None = opt(None, "resize/crop images to this size (default: native: 28 fashion-mnist/"
                                 "mnist-5k, 8 digits, 32 folders)")
    channels: int | None = opt(None, "1 (grey) or 3 (RGB) (default: native); 1->3 repeats, 3->1 luminance",
                               choices=(1, 3))
    hflip: bool = opt(False, "random horizontal flips")
    test_fraction: float = opt(0.1, "share of a folder or mnist-5k held out as the test split "
                               "(fashion-mnist has an official split)", cli=False)
    split_seed: int = opt(0, "seed of the train/test split (not of training)", cli=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise DataError(f"data option 'name' must be a dataset name or folder path, got {self.name!r}")
        if self.image_size is not None and (not _is_int(self.image_size)
                                            or not 1 <= self.image_size <= MAX_IMAGE_SIZE):
            raise DataError(f"data option 'image_size' must be an integer in [1, {MAX_IMAGE_SIZE}], "
                            f"got {self.image_size!r}")
        if self.channels is not None and (not _is_int(self.channels) or self.channels not in (1, 3)):
            raise DataError(f"data option 'channels' must be 1 or 3, got {self.channels!r}")
        if not isinstance(self.hflip, bool):
            raise DataError(f"data option 'hflip' must be true or false, got {self.hflip!r}")
        if isinstance(self.test_fraction, bool) or not isinstance(self.test_fraction, (int, float)) \
                or not 0.0 <= self.test_fraction < 1.0:
            raise DataError(f"data option 'test_fraction' must be in [0, 1), got {self.test_fraction!r}")
        if not _is_int(self.split_seed) or self.split_seed < 0:
            raise DataError(f"data option 'split_seed' must be an integer >= 0, got {self.split_seed!r}")
        if "\0" in self.name:
            raise DataError(f"data option 'name' must be a dataset name or folder path, got {self.name!r}")

    @property
    def is_builtin(self) -> bool:
        return self.name in BUILTIN_DATASETS

    @property
    def is_named(self) -> bool:
        """A dataset by name (built-in or captioned), not a folder."""
        return self.is_builtin or self.name in TEXT_DATASETS

    def resolved(self) -> DataConfig:
        """This config with ``image_size`` and ``channels`` set to the source's native values.

        A folder path also becomes absolute, so a run's ``config.json`` still finds
        the folder when read from another working directory.
        """
        size, channels = {**NATIVE_SHAPE, **TEXT_DATASETS}.get(self.name, FOLDER_NATIVE_SHAPE)
        name = self.name if self.is_named else os.path.abspath(os.path.expanduser(self.name))
        return dataclasses.replace(
            self,
            name=name,
            image_size=size if self.image_size is None else self.image_size,
            channels=channels if self.channels is None else self.channels,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataConfig:
        """Inverse of :meth:`to_dict`; unknown or missing keys raise :class:`DataError`."""
        if not isinstance(d, dict):
            raise DataError(f"data options must be a JSON object, got {type(d).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise DataError(f"unknown data option(s) {', '.join(unknown)}: expected {', '.join(known)}")
        if "name" not in d:
            raise DataError("data option 'name' is missing")
        return cls(**d)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def data_key(name: str) -> str:
    """A dataset as records keep it: a name, or a folder as an absolute path (``DataConfig.resolved``)."""
    return DataConfig(name=name).resolved().name
