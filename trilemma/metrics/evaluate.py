"""Score images (or a run) on quality, coverage, memorisation and speed: one stable JSON dict.

:func:`evaluate_images` featurises the images with the dataset's feature network
(:mod:`trilemma.metrics.features`), loads the cached real statistics
(:mod:`trilemma.metrics.stats`) and runs every metric of :data:`METRICS`, a
registry of small functions, each returning ``{section: {key: value}}``.
:func:`evaluate_run` samples a run first and adds its speed. The result always
has every key of :data:`SCHEMA` (``null`` when a metric does not apply, e.g.
class metrics under the rotation fallback); docs/metrics.md explains each key.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trilemma.errors import TrilemmaError
from trilemma.metrics import classes
from trilemma.metrics.features import FeatureNetwork, canonical_data_config, get_feature_network
from trilemma.metrics.fid import frechet_distance, gaussian_stats
from trilemma.metrics.kid import kid
from trilemma.metrics.memorisation import exact_copy_fraction, memorisation, nearest_distances
from trilemma.metrics.prdc import prdc
from trilemma.metrics.speed import generate_timed
from trilemma.metrics.stats import ReferenceStats, reference_stats, split_features

SCHEMA_VERSION = "trilemma.eval/1"
DEFAULT_N = 10_000
MIN_IMAGES = 10  # fewer leaves k-NN radii (k = 5) and covariances meaningless

# Every key of a result, by section, in the order the docs list them.
SCHEMA: dict[str, tuple[str, ...]] = {
    "quality": ("fid", "kid_mean", "kid_std", "precision", "density",
                "classifier_score_mean", "classifier_score_std"),
    "coverage": ("recall", "coverage", "modes_hit", "num_classes", "modes_threshold",
                 "class_kl", "class_js", "class_tv", "class_histogram", "real_class_histogram"),
    "memorisation": ("nn_train_median", "test_nn_train_median", "nn_ratio", "copy_quantile",
                     "copy_threshold", "copy_fraction", "exact_copy_fraction"),
    "speed": ("nfe", "images_per_s", "batch_size", "timed_batches", "warmup_batches",
              "batch_seconds", "peak_memory_mb", "memory_above_baseline_mb", "memory_measure",
              "device"),
}


@dataclass(frozen=True)
class EvalSettings:
    """The knobs of every metric; written into each result as ``settings``."""

    k_precision_recall: int = 3  # Kynkäänniemi et al. 2019
    k_density_coverage: int = 5  # Naeem et al. 2020
    kid_subsets: int = 100  # Bińkowski et al. 2018 reference code
    kid_subset_size: int = 1000
    seed: int = 0  # KID subsets
    classifier_score_splits: int = 10  # Salimans et al. 2016
    modes_threshold_scale: float = 0.25  # a class is hit with >= scale / K of the samples
    kl_alpha: float = 0.5  # pseudo-counts added to the generated histogram for KL
    copy_quantile: float = 0.01  # memorisation: the closest 1% of test images set the bar

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Inputs:
    """What every metric function sees."""

    images: torch.Tensor  # (M, C, H, W) uint8 samples
    features: np.ndarray  # (M, D) float64
    probs: np.ndarray | None  # (M, K) class probabilities; None under the rotation fallback
    reference: ReferenceStats
    train_features: np.ndarray  # (N_train, D)
    train_images: torch.Tensor  # (N_train, C, H, W) uint8
    settings: EvalSettings


METRICS: dict[str, Callable[[Inputs], dict[str, dict[str, Any]]]] = {}


EVAL_FILE = "eval.json"  # the latest `trilemma eval` of a run, inside the run folder

# The scalar metrics that several sampling seeds (``repeats``) average: the result holds their mean over
# the seeds, ``repeats.values`` the per-seed values and ``repeats.sd`` their standard deviation.
REPEATED: dict[str, tuple[str, ...]] = {
    "quality": ("fid", "kid_mean", "precision", "density", "classifier_score_mean"),
    "coverage": ("recall", "coverage", "class_kl", "class_js", "class_tv"),
    "memorisation": ("nn_train_median", "nn_ratio", "copy_fraction", "exact_copy_fraction"),
}


def metric(name: str):
    """Register a metric function ``Inputs -> {section: {key: value}}`` under ``name``."""
    def register(fn):
        METRICS[name] = fn
        return fn
    return register


@metric("fid")
def fid_metric(x: Inputs) -> dict:
    """FID (Heusel et al. 2017) against the cached reference mean and covariance."""
    mu, sigma = gaussian_stats(x.features)
    return {"quality": {"fid": frechet_distance(mu, sigma, x.reference.mu, x.reference.sigma)}}


@metric("kid")
def kid_metric(x: Inputs) -> dict:
    """KID (Bińkowski et al. 2018), mean and std over subsets."""
    s = x.settings
    mean, std = kid(x.reference.features, x.features, num_subsets=s.kid_subsets,
                    subset_size=s.kid_subset_size, seed=s.seed)
    return {"quality": {"kid_mean": mean, "kid_std": std}}


@metric("prdc")
def prdc_metric(x: Inputs) -> dict:
    """Precision/recall (Kynkäänniemi et al. 2019), density/coverage (Naeem et al. 2020)."""
    s = x.settings
    r = prdc(x.reference.features, x.features, k_pr=s.k_precision_recall,
             k_dc=s.k_density_coverage, real_radii=x.reference.radii)
    return {"quality": {"precision": r["precision"], "density": r["density"]},
            "coverage": {"recall": r["recall"], "coverage": r["coverage"]}}


@metric("classes")
def class_metrics(x: Inputs) -> dict:
    """Classifier score (Salimans et al. 2016), modes hit, KL/JS/TV of class histograms."""
    if x.probs is None or x.reference.class_counts is None:
        return {}
    s = x.settings
    score_mean, score_std = classes.classifier_score(x.probs, s.classifier_score_splits)
    counts, real_counts = classes.class_counts(x.probs), x.reference.class_counts
    p_real, q_gen = classes.histogram(real_counts), classes.histogram(counts)
    threshold = s.modes_threshold_scale / len(counts)
    return {
        "quality": {"classifier_score_mean": score_mean, "classifier_score_std": score_std},
        "coverage": {
            "modes_hit": classes.modes_hit(counts, threshold),
            "num_classes": len(counts),
            "modes_threshold": threshold,
            "class_kl": classes.kl_divergence(p_real, classes.smoothed_histogram(counts, s.kl_alpha)),
            "class_js": classes.js_divergence(p_real, q_gen),
            "class_tv": classes.total_variation(p_real, q_gen),
            "class_histogram": q_gen.round(6).tolist(),
            "real_class_histogram": p_real.round(6).tolist(),
        },
    }


@metric("memorisation")
def memorisation_metric(x: Inputs) -> dict:
    """Nearest-training-image distances of samples against those of test images."""
    if x.reference.train_nn is None:  # scored against the train split itself
        return {}
    sample_nn = nearest_distances(x.features, x.train_features)
    result = memorisation(sample_nn, x.reference.train_nn, copy_quantile=x.settings.copy_quantile)
    result["exact_copy_fraction"] = exact_copy_fraction(x.images, x.train_images)
    return {"memorisation": result}


def as_image_batch(images: torch.Tensor | np.ndarray, image_shape: tuple[int, int, int],
                   what: str = "images") -> torch.Tensor:
    """uint8 ``(N, C, H, W)`` from uint8 ``(N, C, H, W)``, ``(N, H, W, C)`` or grey ``(N, H, W)``.

    Raises :class:`TrilemmaError` naming ``what`` when the dtype or shape does not
    match the dataset's ``image_shape`` ``(C, H, W)``.
    """
    c, h, w = image_shape
    array = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.dtype != np.uint8:
        raise TrilemmaError(f"{what}: expected uint8 pixels 0..255, got dtype {array.dtype}")
    if array.ndim == 3 and c == 1:
        array = array[:, None]
    if array.ndim != 4:
        raise TrilemmaError(f"{what}: expected images shaped (N, {c}, {h}, {w}) or "
                            f"(N, {h}, {w}, {c}), got {array.shape}")
    if array.shape[1:] == (c, h, w):
        pass
    elif array.shape[1:] == (h, w, c):
        array = array.transpose(0, 3, 1, 2)
    else:
        raise TrilemmaError(f"{what}: images of shape {array.shape[1:]} do not match the dataset's "
                            f"(C, H, W) = {(c, h, w)} (or (H, W, C) = {(h, w, c)})")
    if len(array) < MIN_IMAGES:
        raise TrilemmaError(f"{what}: got {len(array)} images; the metrics need at least {MIN_IMAGES}")
    return torch.from_numpy(np.ascontiguousarray(array))


def empty_result() -> dict[str, Any]:
    return {section: dict.fromkeys(keys) for section, keys in SCHEMA.items()}


def evaluate_images(images: torch.Tensor | np.ndarray, data_config, *, reference: str = "test",
                    settings: EvalSettings | None = None, feature_net: FeatureNetwork | None = None,
                    source: dict[str, Any] | None = None, progress: bool = True,
                    log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Score uint8 ``images`` against the ``reference`` split of ``data_config``'s dataset.

    ``images``: uint8 ``(N, C, H, W)`` (torch or numpy) or ``(N, H, W, C)``.
    ``feature_net``: defaults to :func:`get_feature_network` of the dataset
    (trained and cached on first use). ``source``: recorded as ``result["source"]``.
    Returns the result dict documented in docs/metrics.md (every key of :data:`SCHEMA`).
    """
    from trilemma import __version__
    from trilemma.data import load_dataset

    t_start = time.perf_counter()
    settings = settings or EvalSettings()
    data_config = canonical_data_config(data_config)
    shape = (data_config.channels, data_config.image_size, data_config.image_size)
    images = as_image_batch(images, shape)
    fn = feature_net or get_feature_network(data_config, progress=progress, log=log)
    ref = reference_stats(fn, data_config, reference, progress=progress)
    train_features, _ = split_features(fn, data_config, "train", progress=progress)
    train_images = load_dataset(data_config, split="train").images

    t0 = time.perf_counter()
    features, probs = fn.embed(images, progress=progress, desc="featurising samples")
    featurise_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    inputs = Inputs(images, features, probs if fn.has_classes else None, ref, train_features,
                    train_images, settings)
    result: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "trilemma_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "n": len(images),
        "source": source or {"kind": "images"},
        "reference": {"dataset": data_config.name, "split": reference, "n": ref.n,
                      "data_config": data_config.to_dict()},
        "feature_net": dict(fn.info),
        **empty_result(),
        "repeats": None,
    }
    for compute in METRICS.values():
        for section, values in compute(inputs).items():
            result[section].update(values)
    metrics_s = time.perf_counter() - t0
    result["settings"] = settings.to_dict()
    result["timing"] = {"sample_s": None, "featurise_s": round(featurise_s, 2),
                        "metrics_s": round(metrics_s, 2),
                        "total_s": round(time.perf_counter() - t_start, 2)}
    return result


def evaluate_run(run, n: int = DEFAULT_N, options=None, *, seed: int = 0, repeats: int = 1,
                 batch_size: int = 256, settings: EvalSettings | None = None, speed_batches: int = 3,
                 progress: bool = True, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Sample ``n`` images from ``run``, timing the sampler on the way, and score them.

    ``run`` follows :mod:`trilemma.run` (``sample_batch``, ``nfe``, ``generator``,
    ``data_config``, ``device``...); ``options`` is a ``SampleOptions`` (default:
    the run's defaults). The images are those ``run.generate(n, seed=seed,
    batch_size=batch_size)`` gives; speed comes from the same batches
    (:func:`~trilemma.metrics.speed.generate_timed`; ``speed_batches`` extra timed
    batches only when ``n`` is under two batches). Adds ``speed`` and the run as
    ``source`` to :func:`evaluate_images`' result.

    ``repeats`` > 1 scores that many independent sets of ``n`` images, with the sampling seeds
    ``seed``, ``seed + 1``, …, and combines them with :func:`combine_repeats`: each metric of
    :data:`REPEATED` is the mean over the sets (still a score *at n*: FID's bias depends on n, its
    sampling noise shrinks as 1/√repeats), with the per-seed values and their standard deviation
    under ``repeats``.
    """
    if repeats < 1:
        raise TrilemmaError(f"repeats: must be at least 1, got {repeats}")
    if repeats > 1:
        results = []
        for i in range(repeats):
            if log is not None:
                log(f"sampling seed {seed + i} ({i + 1} of {repeats})")
            results.append(evaluate_run(run, n, options, seed=seed + i, batch_size=batch_size, settings=settings,
                                        speed_batches=speed_batches, progress=progress, log=log))
        return combine_repeats(results)
    from trilemma.run import SampleOptions

    t_start = time.perf_counter()
    options = options if options is not None else SampleOptions()
    images, speed = generate_timed(run, n, options, seed=seed, batch_size=batch_size,
                                   progress=progress, fallback_batches=speed_batches)
    sample_s = time.perf_counter() - t_start
    source = {
        "kind": "run",
        "path": str(run.path),
        "run_kind": run.kind,
        "step": getattr(run, "step", None),        # the weights' training step (compare re-scores a later one)
        "sampling": run.sampling_record(options),
        "seed": seed,
        "nfe": speed["nfe"],
    }
    result = evaluate_images(images, run.data_config, settings=settings, source=source,
                             progress=progress, log=log)
    result["speed"].update(speed)
    result["timing"]["sample_s"] = round(sample_s, 2)
    result["timing"]["total_s"] = round(time.perf_counter() - t_start, 2)
    return result


def repeat_sets(result: dict[str, Any]) -> int:
    """How many sample sets a result was scored on (1 without ``repeats``)."""
    return len((result.get("repeats") or {}).get("seeds") or [None])


def repeat_sd(result: dict[str, Any], key: str) -> float | None:
    """The sd over the sample sets of metric ``key`` (``"quality.fid"`` …); ``None`` for one set."""
    return ((result.get("repeats") or {}).get("sd") or {}).get(key)


def combine_repeats(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from the scores of several sets of samples of one model (:func:`evaluate_run`'s ``repeats``).

    The first set's result, with each metric of :data:`REPEATED` replaced by its mean over the sets,
    ``speed.images_per_s`` by the median of the sets' throughputs (timings are not averaged: one slow
    set should not move them), the timings summed, and
    ``repeats = {"seeds": [...], "values": {"quality.fid": [...], ...}, "sd": {"quality.fid": ..., ...}}``
    (sample standard deviations, ddof = 1). Keys not averaged (histograms, KID's and the classifier
    score's own spreads, modes hit, the speed's batch timings) are the first set's.
    """
    if len(results) < 2:
        return results[0]
    ns = {r["n"] for r in results}
    if len(ns) > 1:
        raise TrilemmaError(f"repeats: the sets were scored at different n ({sorted(ns)})")
    out = copy.deepcopy(results[0])
    values: dict[str, list[float]] = {}
    for section, keys in REPEATED.items():
        for key in keys:
            xs = [r[section][key] for r in results]
            if any(x is None for x in xs):
                continue
            values[f"{section}.{key}"] = [float(x) for x in xs]
            out[section][key] = float(np.mean(xs))
    speeds = [r["speed"]["images_per_s"] for r in results]
    if all(v is not None for v in speeds):
        values["speed.images_per_s"] = [float(v) for v in speeds]
        out["speed"]["images_per_s"] = float(np.median(speeds))
    for key in ("sample_s", "featurise_s", "metrics_s", "total_s"):
        parts = [r["timing"][key] for r in results]
        out["timing"][key] = None if any(v is None for v in parts) else round(sum(parts), 2)
    seeds = [r["source"].get("seed") for r in results]
    out["source"]["seeds"] = seeds
    out["repeats"] = {"seeds": seeds, "values": values,
                      "sd": {k: float(np.std(v, ddof=1)) for k, v in values.items()}}
    return out
