"""Precision and recall (Kynkäänniemi et al. 2019), density and coverage (Naeem et al. 2020).

Each real feature ``x_j`` gets a ball of radius ``r_k(x_j)``, the distance to its
k-th nearest *other* real feature; the union of the balls estimates the real
manifold (likewise for fakes ``y_i``). With ``1[...]`` the indicator,

- precision (Kynkäänniemi et al. 2019, eq. 1-2, k = 3): the share of fakes inside
  the real manifold, ``mean_i 1[∃j: |y_i - x_j| <= r_k(x_j)]``  — quality;
- recall (same paper, k = 3): the share of reals inside the fake manifold,
  ``mean_j 1[∃i: |x_j - y_i| <= r_k(y_i)]``  — coverage;
- density (Naeem et al. 2020, "Reliable fidelity and diversity metrics for
  generative models", eq. 3, k = 5): how many real balls hold each fake, on average,
  ``1/(kM) Σ_i Σ_j 1[|y_i - x_j| <= r_k(x_j)]``; about 1 for a perfect model,
  unbounded, and robust to real outliers  — quality;
- coverage (same paper, eq. 4, k = 5): the share of real balls holding at least
  one fake, ``mean_j 1[min_i |x_j - y_i| <= r_k(x_j)]``  — coverage.

Balls are closed (``<=``) as in Kynkäänniemi et al.; the NAVER ``prdc`` package
uses ``<``, which differs only on exact ties. Distances are Euclidean, in float64,
computed in row chunks so 10k x 10k never holds the full matrix (a chunk of
1,024 rows by 10k columns is 80 MB).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

CHUNK_ROWS = 1024


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``(N, M)`` from ``a`` ``(N, D)`` to ``b`` ``(M, D)``.

    ``|a|² + |b|² - 2 a·b`` in one ``addmm``, clipped at 0 against rounding.
    """
    sq = torch.addmm((b * b).sum(1)[None, :], a, b.T, beta=1.0, alpha=-2.0)  # |b|² - 2 a·b
    return sq.add_((a * a).sum(1)[:, None]).clamp_(min=0.0)


def squared_distance_chunks(a: np.ndarray, b: np.ndarray,
                            chunk_rows: int = CHUNK_ROWS) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(rows, squared_distances[rows])`` blocks of the ``a``-to-``b`` matrix, float64.

    Every comparison below is done on squared distances (against squared radii), so
    the square root is only taken of the few numbers that are returned.
    """
    a_t = torch.as_tensor(np.asarray(a, np.float64))
    b_t = torch.as_tensor(np.asarray(b, np.float64))
    for start in range(0, len(a_t), chunk_rows):
        rows = slice(start, min(start + chunk_rows, len(a_t)))
        yield rows, squared_distances(a_t[rows], b_t)


def knn_radii(features: np.ndarray, ks: tuple[int, ...] | int,
              chunk_rows: int = CHUNK_ROWS) -> dict[int, np.ndarray]:
    """Distance from each point to its k-th nearest other point, for each ``k`` in ``ks``.

    The point itself (at distance 0) is excluded by taking the (k+1)-th smallest
    distance, as in both papers' code; duplicates of a point still count.
    """
    ks = (ks,) if isinstance(ks, int) else tuple(ks)
    if len(features) <= max(ks):
        raise ValueError(f"need more than k = {max(ks)} points for k-NN radii, got {len(features)}")
    radii = {k: np.empty(len(features)) for k in ks}
    for rows, d2 in squared_distance_chunks(features, features, chunk_rows):
        nearest = torch.topk(d2, max(ks) + 1, dim=1, largest=False).values  # (rows, kmax+1), sorted
        for k in ks:
            radii[k][rows] = nearest[:, k].sqrt().numpy()
    return radii


def prdc(real_features: np.ndarray, fake_features: np.ndarray, *, k_pr: int = 3, k_dc: int = 5,
         real_radii: dict[int, np.ndarray] | None = None,
         chunk_rows: int = CHUNK_ROWS) -> dict[str, float]:
    """Precision, recall (k = ``k_pr``), density and coverage (k = ``k_dc``) in one pass.

    ``real_radii``: cached :func:`knn_radii` of the real features (must hold both
    ``k_pr`` and ``k_dc``); computed when ``None``.
    """
    if real_radii is None or k_pr not in real_radii or k_dc not in real_radii:
        real_radii = knn_radii(real_features, (k_pr, k_dc), chunk_rows)
    r2_real_pr = torch.as_tensor(real_radii[k_pr]) ** 2  # (N,) squared radii
    r2_real_dc = torch.as_tensor(real_radii[k_dc]) ** 2  # (N,)
    r2_fake_pr = torch.as_tensor(knn_radii(fake_features, k_pr, chunk_rows)[k_pr]) ** 2  # (M,)
    n_real, n_fake = len(real_features), len(fake_features)

    in_real_manifold = torch.zeros(n_fake, dtype=torch.bool)  # precision, per fake
    real_balls_holding = torch.zeros(n_fake, dtype=torch.float64)  # density, per fake
    in_fake_manifold = torch.zeros(n_real, dtype=torch.bool)  # recall, per real
    nearest_fake = torch.full((n_real,), float("inf"), dtype=torch.float64)  # coverage, per real
    for rows, d2 in squared_distance_chunks(fake_features, real_features, chunk_rows):  # (m, N)
        in_real_manifold[rows] = (d2 <= r2_real_pr[None, :]).any(1)
        real_balls_holding[rows] = (d2 <= r2_real_dc[None, :]).sum(1).double()
        in_fake_manifold |= (d2 <= r2_fake_pr[rows, None]).any(0)
        nearest_fake = torch.minimum(nearest_fake, d2.min(0).values)
    return {
        "precision": float(in_real_manifold.double().mean()),
        "recall": float(in_fake_manifold.double().mean()),
        "density": float(real_balls_holding.sum() / (k_dc * n_fake)),
        "coverage": float((nearest_fake <= r2_real_dc).double().mean()),
    }


def recall_breakdown(real_features: np.ndarray, fake_features: np.ndarray, *, k: int = 3,
                     real_radii: dict[int, np.ndarray] | None = None,
                     chunk_rows: int = CHUNK_ROWS) -> dict[str, float]:
    """Where recall comes from: the fakes inside the real manifold, or the fakes outside it.

    Recall counts a real point as covered when it lies in *any* fake's k-NN ball, and a fake far
    from the data (an "outlier", one that precision does not count) tends to have a large ball;
    Naeem et al. 2020 give this weakness of recall (its manifold is built from the fakes) as a reason
    for coverage. This splits the recall of :func:`prdc` into

    - ``recall_from_inliers``: the share of reals inside the ball of a fake that is itself inside
      the real manifold (a fake precision counts);
    - ``recall_from_outliers_only``: the share of reals covered by outlier balls and by no inlier's;
      the two add up to ``recall``;
    - ``outlier_share``: the share of fakes outside the real manifold, ``1 - precision``;
    - ``radius_inliers``, ``radius_outliers``: the median fake k-NN radius of each group, in units of
      the median real k-NN radius (``nan`` for an empty group).
    """
    if real_radii is None or k not in real_radii:
        real_radii = knn_radii(real_features, k, chunk_rows)
    r_real, r_fake = real_radii[k], knn_radii(fake_features, k, chunk_rows)[k]
    r2_real, r2_fake = torch.as_tensor(r_real) ** 2, torch.as_tensor(r_fake) ** 2
    inlier = torch.zeros(len(fake_features), dtype=torch.bool)
    by_inlier = torch.zeros(len(real_features), dtype=torch.bool)
    by_outlier = torch.zeros(len(real_features), dtype=torch.bool)
    for rows, d2 in squared_distance_chunks(fake_features, real_features, chunk_rows):  # (m, N)
        inlier[rows] = (d2 <= r2_real[None, :]).any(1)
        in_ball = d2 <= r2_fake[rows, None]            # (m, N): real j inside fake i's ball
        by_inlier |= in_ball[inlier[rows]].any(0)
        by_outlier |= in_ball[~inlier[rows]].any(0)
    scale = float(np.median(r_real))
    inl = inlier.numpy()

    def median_radius(mask: np.ndarray) -> float:
        return float(np.median(r_fake[mask]) / scale) if mask.any() else float("nan")

    return {
        "recall": float((by_inlier | by_outlier).double().mean()),
        "recall_from_inliers": float(by_inlier.double().mean()),
        "recall_from_outliers_only": float((by_outlier & ~by_inlier).double().mean()),
        "outlier_share": float(1.0 - inlier.double().mean()),
        "radius_inliers": median_radius(inl),
        "radius_outliers": median_radius(~inl),
    }
