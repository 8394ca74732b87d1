"""Pictures: image grids (Pillow) and plots (matplotlib, headless)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from trilemma.utils.io import atomic_path


def as_uint8_nhwc(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Images as uint8 (N, H, W, C): accepts uint8 or [-1, 1] floats, NCHW or NHWC."""
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8:
            images = ((images.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        images = images.cpu().numpy()
    images = np.asarray(images)
    if images.dtype != np.uint8:
        images = np.clip(np.round((images.astype(np.float64) + 1) * 127.5), 0, 255).astype(np.uint8)
    if images.ndim == 3:
        images = images[..., None]
    if images.shape[1] in (1, 3) and images.shape[-1] not in (1, 3):
        images = images.transpose(0, 2, 3, 1)
    return images


def grid_array(images, nrow: int | None = None, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile N images into one (H', W', C) uint8 array, ``nrow`` images per row."""
    images = as_uint8_nhwc(images)
    n, h, w, c = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    out = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        out[y:y + h, x:x + w] = images[i]
    return out


def save_grid(images, path: str | os.PathLike, nrow: int | None = None, scale: int | None = None) -> Path:
    """Save a grid of images as a PNG (atomically); small images are upscaled for viewing."""
    from PIL import Image

    arr = grid_array(images, nrow)
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    if scale is None:
        h = as_uint8_nhwc(images).shape[1]
        scale = max(1, 96 // h) if h < 64 else 1
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """A run's ``metrics.jsonl`` rows (damaged lines skipped: :func:`trilemma.utils.io.read_metrics_rows`)."""
    from trilemma.utils.io import read_metrics_rows

    return read_metrics_rows(path)[0]


def plot_losses(metrics_path: str | os.PathLike, out_path: str | os.PathLike,
                keys: Sequence[str] = ("loss",), title: str | None = None) -> Path | None:
    """Plot the logged losses of a run (``metrics.jsonl``) against the step, with a moving average."""
    rows = read_metrics(metrics_path)
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in keys:
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if not pts:
            continue
        steps, values = map(np.asarray, zip(*pts))
        ax.plot(steps, values, alpha=0.35, lw=1, label=f"{key}")
        k = max(1, len(values) // 20)
        if k > 1:
            smooth = np.convolve(values, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1:], smooth, lw=2, label=f"{key} (moving average)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if all(v > 0 for r in rows for k, v in r.items() if k in keys):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or Path(metrics_path).parent.name)
    return save_figure(fig, out_path)


def save_trajectory(traj: dict, decode, title: str, out: str | Path, columns: int = 10) -> Path:
    """x_t (top) and x̂₀ (bottom) at ``columns`` evenly spaced steps of a sampler's trajectory.

    ``traj`` is what the samplers return with ``return_trajectory=True`` (``t``, ``x_t`` with x_T first,
    ``x0_hat``); ``decode`` maps the diffused variable to images in [-1, 1] (latents → pixels).
    """
    steps = len(traj["t"])
    pick = np.unique(np.round(np.linspace(0, steps - 1, min(columns, steps))).astype(int))
    x_t = torch.stack([decode(traj["x_t"][i + 1]).cpu() for i in pick], 1)           # (n, k, C, H, W)
    x0 = torch.stack([decode(traj["x0_hat"][i]).cpu() for i in pick], 1)
    n = x_t.shape[0]
    plt = _pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(1.1 * len(pick) + 1, 2.4 * n + 0.8))
    for ax, frames, label in zip(axes, [x_t, x0], ["x_{t-1}", "x̂₀"]):
        arr = grid_array(as_uint8_nhwc(frames.flatten(0, 1).clamp(-1, 1)), nrow=len(pick))
        ax.imshow(arr.squeeze(-1) if arr.shape[-1] == 1 else arr, cmap="gray", vmin=0, vmax=255)
        h = arr.shape[1] / len(pick)
        ax.set_xticks([(i + 0.5) * h for i in range(len(pick))], [f"t={traj['t'][i]}" for i in pick], fontsize=8)
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=12)
    fig.suptitle(title)
    return save_figure(fig, out)
