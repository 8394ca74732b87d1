"""Kernel Inception Distance (KID): unbiased MMD² with a cubic polynomial kernel.

Bińkowski et al. 2018, "Demystifying MMD GANs", §4 / Appendix: with
``k(x, y) = (x·y / D + 1)^3`` and samples ``X`` (real), ``Y`` (fake) of size ``m``,

    MMD²_u = 1/(m(m-1)) Σ_{i≠j} k(x_i, x_j) + 1/(m(m-1)) Σ_{i≠j} k(y_i, y_j)
             - 2/m² Σ_{i,j} k(x_i, y_j)

(the lecture's MMD² = E k(x,x') + E k(y,y') - 2 E k(x,y), §3 of docs/methods.md, with
the diagonal terms dropped so the estimate is unbiased: it can be slightly
negative when both samples come from one distribution). Like the reference
implementation, it is averaged over random subsets (drawn without replacement
from an explicit seed) and reported as mean ± standard deviation over subsets.
"""

from __future__ import annotations

import numpy as np


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, coef0: float = 1.0) -> np.ndarray:
    """``(x·y / D + coef0)^degree`` for every pair: ``(N, M)``, float64."""
    base = np.asarray(x, np.float64) @ np.asarray(y, np.float64).T / x.shape[1] + coef0
    out = base.copy()
    for _ in range(degree - 1):  # repeated products: much faster than np.power's pow()
        out *= base
    return out


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² of two equal-size samples ``(m, D)`` under the cubic polynomial kernel."""
    m = len(x)
    if len(y) != m or m < 2:
        raise ValueError(f"need two samples of the same size >= 2, got {len(x)} and {len(y)}")
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2.0 * k_xy.mean())


def kid(real_features: np.ndarray, fake_features: np.ndarray, *, num_subsets: int = 100,
        subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID mean and standard deviation over ``num_subsets`` random subsets.

    ``subset_size`` is clipped to the smaller sample size.
    """
    m = min(subset_size, len(real_features), len(fake_features))
    rng = np.random.default_rng(seed)
    values = np.array([
        mmd2_unbiased(real_features[rng.choice(len(real_features), m, replace=False)],
                      fake_features[rng.choice(len(fake_features), m, replace=False)])
        for _ in range(num_subsets)
    ])
    return float(values.mean()), float(values.std())
