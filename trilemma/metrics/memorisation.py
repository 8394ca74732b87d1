"""Memorisation: are samples closer to the training set than fresh real images are?

A model that copies its training images can score a perfect FID, precision and
recall, so trilemma also measures, in the feature network's space, the distance
from each sample to its nearest training image, and compares it with the same
distance for the held-out test images (which the model never saw: their
nearest-training-image distances are what "new image from the data distribution"
looks like). In the spirit of the nearest-neighbour checks of Meehan et al. 2020
("A non-parametric test to detect data-copying in generative models") and
Webster et al. 2019, reduced to three readable numbers:

- ``nn_ratio``: median sample-to-train distance over median test-to-train
  distance; ~1 for a model that generalises, 0 for a copier, > 1 for samples
  farther from the data than real images are (poor quality);
- ``copy_fraction``: the share of samples at least as close to the training set as the
  closest ``copy_quantile`` (1%) of test images are; ~0.01 by construction for
  the test set itself, 1.0 for exact copies;
- ``exact_copy_fraction``: the share of samples byte-identical to a training image.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from trilemma.metrics.prdc import CHUNK_ROWS, squared_distance_chunks


def nearest_distances(queries: np.ndarray, reference: np.ndarray,
                      chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """Distance from each query ``(N, D)`` to its nearest reference point ``(M, D)``: ``(N,)``."""
    out = np.empty(len(queries))
    for rows, d2 in squared_distance_chunks(queries, reference, chunk_rows):
        out[rows] = d2.min(1).values.sqrt().numpy()
    return out


def image_digests(images: torch.Tensor | np.ndarray) -> list[bytes]:
    """A hash of each image's bytes (exact-duplicate detection)."""
    array = np.ascontiguousarray(np.asarray(images))
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in array]


def exact_copy_fraction(samples: torch.Tensor | np.ndarray, train: torch.Tensor | np.ndarray) -> float:
    """Share of ``samples`` (uint8, same layout as ``train``) identical to some training image."""
    train_set = set(image_digests(train))
    digests = image_digests(samples)
    return sum(d in train_set for d in digests) / max(1, len(digests))


def memorisation(sample_nn: np.ndarray, test_nn: np.ndarray, *,
                 copy_quantile: float = 0.01) -> dict[str, float]:
    """Summaries of sample-to-train (``sample_nn``) against test-to-train (``test_nn``) distances."""
    threshold = float(np.quantile(test_nn, copy_quantile))
    sample_median, test_median = float(np.median(sample_nn)), float(np.median(test_nn))
    return {
        "nn_train_median": sample_median,
        "test_nn_train_median": test_median,
        "nn_ratio": sample_median / test_median if test_median > 0 else float("nan"),
        "copy_quantile": copy_quantile,
        "copy_threshold": threshold,
        "copy_fraction": float((np.asarray(sample_nn) <= threshold).mean()),
    }
