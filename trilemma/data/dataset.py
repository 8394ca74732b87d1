"""`ImageDataset`: one split of a dataset, held in memory as uint8.

Every source (builtins and folders) ends up here. The whole split lives in one
contiguous uint8 tensor ``(N, C, H, W)``; :meth:`ImageDataset.batch` is the
training hot path: index, optionally flip, convert once to float in ``[-1, 1]``.

Inside :func:`resident` (the training loop opens it on a GPU) a split's images are copied once to
the device and :meth:`ImageDataset.batch` indexes them there, so a minibatch costs no host-to-device
copy; the indices and the flips are still drawn on the CPU from the same generator, so the data
order and the images are exactly those of the CPU path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextvars import ContextVar

import torch

from trilemma.data.config import DataConfig
from trilemma.data.transforms import to_float

# (device, the largest number of bytes to copy there) while training; None: batches stay on the CPU
_RESIDENT: ContextVar[tuple[torch.device, int] | None] = ContextVar("trilemma_resident", default=None)


@contextlib.contextmanager
def resident(device: torch.device, max_bytes: int) -> Iterator[None]:
    """While open, datasets of at most ``max_bytes`` keep their images on ``device`` (see the module docstring)."""
    token = _RESIDENT.set((torch.device(device), int(max_bytes)))
    try:
        yield
    finally:
        _RESIDENT.reset(token)


class DataWarning(UserWarning):
    """Data was loaded, but not all of it (e.g. unreadable files were skipped)."""


class ImageDataset:
    """One split (``"train"`` or ``"test"``) of a dataset.

    Attributes:
        images: ``(N, C, H, W)`` uint8, contiguous.
        labels: ``(N,)`` int64 class index, ``-1`` where an image has no label.
        class_names: name of each class index; ``()`` when unlabeled.
        captions: one string per image (``""`` if none) from a folder's
            ``metadata.jsonl``; ``None`` when the source has no captions.
        config: the resolved :class:`DataConfig` that produced this split.
        split: ``"train"`` or ``"test"``.
        name: human-readable name, e.g. ``"fashion-mnist"`` or the folder's name.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str],
                 config: DataConfig, split: str, name: str,
                 captions: Sequence[str] | None = None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (len(images),):
            raise ValueError(f"labels must have shape ({len(images)},), got {tuple(labels.shape)}")
        if captions is not None and len(captions) != len(images):
            raise ValueError(f"got {len(captions)} captions for {len(images)} images")
        self.images = images.contiguous()
        self.labels = labels.to(torch.int64)
        self.class_names = tuple(class_names)
        self.captions = list(captions) if captions is not None else None
        self.config = config
        self.split = split
        self.name = name
        self._on_device: dict[torch.device, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        return (f"ImageDataset({self.name!r}, split={self.split!r}, n={len(self)}, "
                f"shape=({c}, {h}, {w}), classes={self.num_classes})")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return c, h, w

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_labels(self) -> bool:
        return self.num_classes > 0

    def batch(self, indices: torch.Tensor,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images as float32 in ``[-1, 1]`` ``(B, C, H, W)`` and their int64 labels ``(B,)``.

        With ``config.hflip`` each image is mirrored left-right with probability 1/2,
        drawn from ``generator`` (a CPU generator; the global one if ``None``).
        Inside :func:`resident` the images come back on its device (the labels stay on the CPU).
        """
        indices = as_index(indices)
        images = self._images_for(_RESIDENT.get())
        x = images[indices.to(images.device, non_blocking=True)]  # (B, C, H, W) uint8, a fresh copy
        if self.config.hflip:
            flip = torch.rand(len(indices), generator=generator) < 0.5  # (B,), drawn on the CPU
            flip = flip.to(x.device, non_blocking=True)[:, None, None, None]
            x = torch.where(flip, x.flip(-1), x)                         # no boolean indexing: no host sync
        return to_float(x), self.labels[indices]

    def _images_for(self, where: tuple[torch.device, int] | None) -> torch.Tensor:
        """The images on the resident device when one is open, the split fits and it is not the CPU."""
        if where is None or where[0].type == "cpu" or self.images.nbytes > where[1]:
            return self.images
        device = where[0]
        if device not in self._on_device:
            self._on_device = {device: self.images.to(device)}
        return self._on_device[device]

    def subset(self, indices: torch.Tensor | Sequence[int]) -> ImageDataset:
        """A new dataset holding only ``indices`` (or a boolean mask), same config, split and classes."""
        indices = as_index(indices)
        captions = None if self.captions is None else [self.captions[i] for i in indices.tolist()]
        return ImageDataset(self.images[indices], self.labels[indices], self.class_names,
                            self.config, self.split, self.name, captions)


def as_index(indices: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Integer indices or a boolean mask as an int64 CPU tensor of indices."""
    indices = torch.as_tensor(indices, device="cpu")
    if indices.dtype == torch.bool:
        return indices.nonzero().squeeze(1)
    return indices.to(torch.int64)
