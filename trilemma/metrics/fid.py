"""Fréchet distance between Gaussians fitted to two feature sets (FID).

Heusel et al. 2017, "GANs trained by a two time-scale update rule converge to a
local Nash equilibrium", eq. (6):

    FID = ||mu_1 - mu_2||² + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^{1/2})

computed in float64. The trace of the matrix square root is taken without forming
``sqrtm(S_1 S_2)`` (which is not symmetric and makes ``scipy.linalg.sqrtm`` return
complex noise): ``S_1 S_2`` is similar to the symmetric PSD matrix
``A = S_1^{1/2} S_2 S_1^{1/2}``, so ``tr((S_1 S_2)^{1/2}) = sum_i sqrt(lambda_i(A))``,
with ``S_1^{1/2}`` and ``lambda(A)`` from symmetric eigendecompositions (tiny
negative eigenvalues from rounding are clipped to 0).
"""

from __future__ import annotations

import numpy as np


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of ``features`` ``(N, D)``, float64."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need features (N >= 2, D), got shape {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (negative eigenvalues clipped)."""
    eigvals, eigvecs = np.linalg.eigh((sigma + sigma.T) / 2)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """``tr((S_1 S_2)^{1/2})`` via the eigenvalues of ``S_1^{1/2} S_2 S_1^{1/2}``."""
    root1 = psd_sqrt(sigma1)
    a = root1 @ sigma2 @ root1
    eigvals = np.linalg.eigvalsh((a + a.T) / 2)
    return float(np.sqrt(np.clip(eigvals, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein) distance² between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    return max(float(value), 0.0)  # rounding can leave -1e-12 for identical inputs


def fid(real_features: np.ndarray, fake_features: np.ndarray) -> float:
    """FID between two feature sets ``(N, D)`` and ``(M, D)``."""
    return frechet_distance(*gaussian_stats(real_features), *gaussian_stats(fake_features))
