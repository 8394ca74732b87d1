"""The captioned datasets behind ``load_dataset("shapes" | "fashion-mnist-captions" | "mnist-5k-captions")``.

:mod:`trilemma.data.load` hands these names here; each returns an
:class:`~trilemma.data.ImageDataset` whose ``captions`` hold one string per image.
Any folder with a ``metadata.jsonl`` (``file_name``, ``text``) is captioned by the
data layer itself (the Hugging Face imagefolder convention).
"""

from __future__ import annotations

from trilemma.errors import DataError


def load_text_dataset(config, split: str):
    """One split of a captioned dataset named in ``trilemma.data.config.TEXT_DATASETS``."""
    if config.name == "shapes":
        from trilemma.data.shapes import load_shapes

        return load_shapes(config, split)
    if config.name in ("fashion-mnist-captions", "mnist-5k-captions"):
        from trilemma.data.captions import load_captioned

        return load_captioned(config, split)
    raise DataError(f"unknown captioned dataset {config.name!r}")


def require_captions(dataset) -> None:
    """Fail in one line unless the dataset has captions (text-to-image training needs them)."""
    if dataset.captions is None:
        raise DataError(f"--data: {dataset.name} has no captions; use shapes, fashion-mnist-captions, "
                        f"mnist-5k-captions or a folder with a metadata.jsonl of file_name and text")
    if not any(c.strip() for c in dataset.captions):
        raise DataError(f"--data: every caption of {dataset.name} is empty")
