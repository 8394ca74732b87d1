"""Sharpness of images: the variance of the Laplacian (Pech-Pacheco et al. 2000, "Diatom autofocusing").

A blurred image has weak second derivatives, so its Laplacian response is small
and uniform: the variance of ∇²x over the pixels of an image measures how much
sharp detail (edges, texture) it holds. It is a property of single images, not a
distance between distributions, so it is compared with the value of real images.

    ∇²x[i, j] = x[i−1, j] + x[i+1, j] + x[i, j−1] + x[i, j+1] − 4 x[i, j]   (3×3 five-point kernel)

computed on grey levels in [0, 1] (the mean over colour channels), on interior
pixels only (no padding), population variance per image.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)


def laplacian_variance(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Var over pixels of the Laplacian of each image: uint8 (N, C, H, W) → float64 (N,)."""
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    grey = images.to(torch.float64).mean(dim=1, keepdim=True) / 255.0            # (N, 1, H, W) in [0, 1]
    lap = F.conv2d(grey, LAPLACIAN.view(1, 1, 3, 3))                            # (N, 1, H−2, W−2)
    return lap.flatten(1).var(dim=1, unbiased=False)                           # (N,)


def sharpness_summary(images: torch.Tensor | np.ndarray) -> dict[str, Any]:
    """Mean, median and standard error of the per-image Laplacian variance of a set of images."""
    v = laplacian_variance(images)
    return {"laplacian_var_mean": v.mean().item(), "laplacian_var_median": v.median().item(),
            "laplacian_var_sem": (v.std() / len(v) ** 0.5).item() if len(v) > 1 else float("nan"), "n": len(v)}
