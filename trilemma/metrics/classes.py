"""Metrics on the classes the feature network assigns: classifier score, modes hit, divergences.

All are in float64 and use natural logarithms (nats).

- **Classifier score**: the Inception Score of Salimans et al. 2016 ("Improved
  techniques for training GANs", §4), ``exp(E_x KL(p(y|x) || p(y)))``, computed with
  trilemma's own classifier instead of Inception; mean ± std over 10 splits as in
  the paper's code. High when each sample is confidently one class and all
  classes are used; at most the number of classes.
- **Modes hit**: the number of classes that receive at least ``threshold`` of the
  samples (argmax class). A model that drops a class shows it here directly.
- **KL, JS and total variation** between the real and the generated class
  histograms (the lecture's divergences, docs/methods.md §3, on a finite space):
  ``KL(P||Q) = Σ p log(p/q)``; ``JS = ½KL(P||M) + ½KL(Q||M)``, ``M = (P+Q)/2``,
  in ``[0, log 2]``; ``TV = ½ Σ |p - q|`` in ``[0, 1]``. P is the real histogram,
  Q the generated one. KL(P||Q) is infinite when a real class gets no sample, so
  the evaluation adds ``alpha`` = 0.5 pseudo-counts to Q's counts first
  (:func:`smoothed_histogram`); JS and TV need no smoothing.
"""

from __future__ import annotations

import numpy as np
from scipy.special import xlogy


def classifier_score(probs: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """Inception Score with our classifier: mean and std of ``exp(E KL(p(y|x)||p(y)))`` over splits."""
    probs = np.asarray(probs, np.float64)
    scores = []
    for part in np.array_split(probs, min(splits, len(probs))):
        p_y = part.mean(axis=0, keepdims=True)  # (1, K) marginal
        kl = (xlogy(part, part) - xlogy(part, p_y)).sum(axis=1)  # (n,) KL(p(y|x) || p(y))
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def class_counts(probs: np.ndarray) -> np.ndarray:
    """How many samples the classifier assigns (argmax) to each class: ``(K,)`` int64."""
    probs = np.asarray(probs)
    return np.bincount(probs.argmax(axis=1), minlength=probs.shape[1]).astype(np.int64)


def histogram(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, np.float64)
    return counts / counts.sum()


def smoothed_histogram(counts: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``(counts + alpha) / (n + alpha K)``: additive (Jeffreys, alpha = ½) smoothing."""
    counts = np.asarray(counts, np.float64)
    return (counts + alpha) / (counts.sum() + alpha * len(counts))


def modes_hit(counts: np.ndarray, threshold: float) -> int:
    """Number of classes with a share of at least ``threshold`` of all samples."""
    return int((histogram(counts) >= threshold).sum())


def kl_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """``Σ p log(p/q)`` in nats; ``0 log 0 = 0``; ``inf`` where ``p > 0 = q``."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    if np.any((p > 0) & (q == 0)):
        return float("inf")
    return float((xlogy(p, p) - xlogy(p, q)).sum())


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence ``½KL(P||M) + ½KL(Q||M)``, ``M = (P+Q)/2``, in nats."""
    p, q = np.asarray(p, np.float64), np.asarray(q, np.float64)
    m = (p + q) / 2
    return 0.5 * kl_divergence(p, m) + 0.5 * kl_divergence(q, m)


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    """``½ Σ |p - q|``."""
    return float(0.5 * np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64)).sum())
