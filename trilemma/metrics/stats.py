"""Real-data statistics, computed once per (feature network, dataset, split) and cached.

Two kinds of cache entries live under ``$TRILEMMA_CACHE/stats/``, as safetensors
files named by a hash of the feature network's hash, the resolved data config,
the split and a fingerprint of its images, :data:`REFERENCE_MAX` and
:data:`STATS_CODE_VERSION`. Entries are written atomically (a killed process leaves
no partial file) and an unreadable or incomplete entry is treated as absent and
recomputed:

- **split features** (:func:`split_features`): the features and class
  probabilities of every image of a split (the whole train split is needed for
  the memorisation check);
- **reference statistics** (:func:`reference_stats`): what samples are scored
  against — the features of at most :data:`REFERENCE_MAX` images of a split (the
  whole Fashion-MNIST test split; a fixed random subset of a larger split), their
  mean and covariance in float64 (FID), their k-NN radii (precision, recall,
  density, coverage), the histogram of the classes the classifier assigns them,
  and, for the memorisation check, each reference image's distance to its nearest
  *training* image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trilemma.errors import RunError, TrilemmaError
from trilemma.metrics.features import (
    FeatureNetwork,
    canonical_data_config,
    dataset_fingerprint,
    dataset_slug,
)
from trilemma.metrics.fid import gaussian_stats
from trilemma.metrics.memorisation import nearest_distances
from trilemma.metrics.prdc import knn_radii
from trilemma.utils.io import load_tensors, save_tensors
from trilemma.utils.paths import cache_dir, stable_hash

STATS_CODE_VERSION = 1
REFERENCE_MAX = 10_000  # reference images at most (the eval default n): a fixed subset beyond
RADII_K = (3, 5)  # k of precision/recall (Kynkäänniemi) and density/coverage (Naeem)


@dataclass
class ReferenceStats:
    """Statistics of the real images samples are scored against.

    ``features`` ``(N, D)``; ``mu`` ``(D,)`` and ``sigma`` ``(D, D)`` float64;
    ``radii[k]`` ``(N,)`` distance to the k-th nearest other reference feature;
    ``class_counts`` ``(K,)`` argmax classes of the reference images (None for the
    rotation fallback); ``train_nn`` ``(N,)`` distance to the nearest training image
    (distance 0 for the train split itself is meaningless, so None there);
    ``indices`` which images of the split were used.
    """

    split: str
    features: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray
    radii: dict[int, np.ndarray]
    class_counts: np.ndarray | None
    train_nn: np.ndarray | None
    indices: np.ndarray

    @property
    def n(self) -> int:
        return len(self.features)


def _cache_file(kind: str, fn: FeatureNetwork, data_config, split: str) -> str:
    from trilemma.data import load_dataset

    images = load_dataset(data_config, split=split).images  # a changed folder split: new entry
    key = {"kind": kind, "feature_net": fn.info["hash"], "data": data_config.to_dict(), "split": split,
           "fingerprint": dataset_fingerprint(images, None), "reference_max": REFERENCE_MAX,
           "radii_k": RADII_K, "code_version": STATS_CODE_VERSION}
    folder = cache_dir("stats")
    return str(folder / f"{dataset_slug(data_config.name)}-{split}-{kind}-{stable_hash(key)}.safetensors")


def split_features(fn: FeatureNetwork, data_config, split: str, *,
                   progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Features ``(N, D)`` and probabilities ``(N, K)`` of every image of ``split``, cached."""
    from trilemma.data import load_dataset

    data_config = canonical_data_config(data_config)
    path = _cache_file("features", fn, data_config, split)
    try:
        t = load_tensors(path)
        features, probs = t["features"].double().numpy(), t["probs"].double().numpy()
        if features.ndim == 2 and probs.ndim == 2 and len(features) == len(probs) > 0:
            return features, probs
    except (RunError, KeyError):  # missing or unreadable: recompute
        pass
    images = load_dataset(data_config, split=split).images
    features, probs = fn.embed(images, progress=progress, desc=f"featurising {split} split")
    save_tensors(path, {"features": torch.from_numpy(features).float(),
                        "probs": torch.from_numpy(probs).float()})
    return features.astype(np.float32).astype(np.float64), probs.astype(np.float32).astype(np.float64)


def reference_indices(n: int) -> np.ndarray:
    """All of ``range(n)``, or a fixed random subset of :data:`REFERENCE_MAX` of them (sorted)."""
    if n <= REFERENCE_MAX:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).permutation(n)[:REFERENCE_MAX])


def reference_stats(fn: FeatureNetwork, data_config, split: str = "test", *,
                    progress: bool = True) -> ReferenceStats:
    """The cached :class:`ReferenceStats` of ``split`` under feature network ``fn``."""
    data_config = canonical_data_config(data_config)
    path = _cache_file("reference", fn, data_config, split)
    try:
        t = load_tensors(path)
        return ReferenceStats(
            split=split, features=t["features"].numpy(), mu=t["mu"].numpy(), sigma=t["sigma"].numpy(),
            radii={k: t[f"radii_{k}"].numpy() for k in RADII_K},
            class_counts=t["class_counts"].numpy() if "class_counts" in t else None,
            train_nn=t["train_nn"].numpy() if "train_nn" in t else None,
            indices=t["indices"].numpy())
    except (RunError, KeyError, ValueError):  # missing, unreadable or incomplete: recompute
        pass
    features, probs = split_features(fn, data_config, split, progress=progress)
    if len(features) <= max(RADII_K):
        raise TrilemmaError(f"the {split} split of {data_config.name} has {len(features)} images; "
                            f"scoring against it needs at least {max(RADII_K) + 1}")
    indices = reference_indices(len(features))
    features, probs = features[indices], probs[indices]
    mu, sigma = gaussian_stats(features)
    stats = ReferenceStats(
        split=split, features=features, mu=mu, sigma=sigma, radii=knn_radii(features, RADII_K),
        class_counts=(np.bincount(probs.argmax(1), minlength=probs.shape[1]) if fn.has_classes
                      else None),
        train_nn=None, indices=indices)
    if split != "train":
        train_features, _ = split_features(fn, data_config, "train", progress=progress)
        stats.train_nn = nearest_distances(features, train_features)
    tensors = {"features": torch.from_numpy(features), "mu": torch.from_numpy(mu),
               "sigma": torch.from_numpy(sigma), "indices": torch.from_numpy(indices)}
    tensors.update({f"radii_{k}": torch.from_numpy(r) for k, r in stats.radii.items()})
    if stats.class_counts is not None:
        tensors["class_counts"] = torch.from_numpy(stats.class_counts.astype(np.int64))
    if stats.train_nn is not None:
        tensors["train_nn"] = torch.from_numpy(stats.train_nn)
    save_tensors(path, tensors, {"feature_net": fn.info["hash"], "split": split})
    return stats

