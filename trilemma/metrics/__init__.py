"""Quality, coverage, memorisation and speed of any generator, measured the same way, offline.

Layout (one small file per metric family, each citing the paper it reproduces):

- ``features.py``     the per-dataset feature network (CNN classifier; rotation-prediction
                      fallback for unlabelled folders), trained deterministically and cached.
- ``stats.py``        cached real-data statistics (features, mean/covariance, k-NN radii).
- ``fid.py``          Fréchet distance (Heusel et al. 2017).
- ``kid.py``          kernel distance, unbiased MMD² with a cubic kernel (Bińkowski et al. 2018).
- ``prdc.py``         precision/recall (Kynkäänniemi et al. 2019), density/coverage (Naeem et al. 2020).
- ``classes.py``      classifier score (Salimans et al. 2016), modes hit, KL/JS/TV of class histograms.
- ``memorisation.py`` nearest-training-image distances against the test set's own.
- ``speed.py``        NFE, images per second, peak memory.
- ``evaluate.py``     the registry :data:`METRICS` and :func:`evaluate_images` / :func:`evaluate_run`
                      (``repeats``: several sample sets, mean ± sd, :func:`combine_repeats`).
"""

from trilemma.metrics.classes import classifier_score, js_divergence, kl_divergence, modes_hit, total_variation
from trilemma.metrics.evaluate import (
                                      DEFAULT_N,
                                      METRICS,
                                      REPEATED,
                                      SCHEMA,
                                      SCHEMA_VERSION,
                                      EvalSettings,
                                      as_image_batch,
                                      combine_repeats,
                                      evaluate_images,
                                      evaluate_run,
)
from trilemma.metrics.features import DEFAULT_RECIPE, FEATURE_CODE_VERSION, FeatureNetwork, get_feature_network
from trilemma.metrics.fid import fid, frechet_distance, gaussian_stats
from trilemma.metrics.kid import kid, mmd2_unbiased
from trilemma.metrics.memorisation import exact_copy_fraction, memorisation, nearest_distances
from trilemma.metrics.prdc import knn_radii, prdc, recall_breakdown
from trilemma.metrics.speed import generate_timed, time_sampler
from trilemma.metrics.stats import ReferenceStats, reference_stats, split_features

__all__ = [
    "DEFAULT_N", "DEFAULT_RECIPE", "FEATURE_CODE_VERSION", "METRICS", "REPEATED", "SCHEMA", "SCHEMA_VERSION",
    "EvalSettings", "FeatureNetwork", "ReferenceStats",
    "as_image_batch", "classifier_score", "combine_repeats", "evaluate_images", "evaluate_run", "exact_copy_fraction",
    "fid", "frechet_distance", "gaussian_stats", "get_feature_network", "js_divergence", "kid",
    "kl_divergence", "knn_radii", "memorisation", "mmd2_unbiased", "modes_hit", "nearest_distances",
    "prdc", "recall_breakdown", "reference_stats", "generate_timed", "split_features", "time_sampler", "total_variation",
]
