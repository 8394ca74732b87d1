"""Cross-attention maps: which image positions look at which prompt token (docs/methods.md §8).

Every cross-attention layer of the U-Net computes, per head h, image position n and context key l,

    A_h[n, l] = softmax_l( q_h[n] · k_h[l] / √d  +  (0 if token l is real else −∞) ),
    q = W_q x (image tokens),  k = W_k c (the context, c = τ(y) for the default recipe),

and outputs W_o Σ_l A_h[n, l] v_h[l]. :class:`CrossAttentionRecorder` records A for every layer
and every network call during any forward pass (sampling included) *without changing the output*:
forward hooks that return nothing recompute A from the layer's own inputs and projections (the
fused ``scaled_dot_product_attention`` kernel never exposes it). The maps Hertz et al. (2022,
Prompt-to-Prompt) and Chefer et al. (2023, Attend-and-Excite) read are these A, averaged over
heads and layers (:func:`token_maps`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from trilemma.errors import TrilemmaError
from trilemma.nets.layers import CrossAttention, TransformerBlock
from trilemma.t2i.networks import context_labels


def cross_attention_weights(layer: CrossAttention, x: torch.Tensor, context: torch.Tensor,
                            mask: torch.Tensor | None) -> torch.Tensor:
    """A = softmax(q kᵀ/√d) over the context keys, padded keys excluded: (B, heads, N, L).

    ``x`` (B, N, C) are the layer's image tokens (already layer-normed, as the layer receives
    them), ``context`` (B, L, D) and ``mask`` (B, L, True = a real token) its keys' source.
    """
    B, N, C = x.shape
    heads = layer.num_heads
    d = C // heads
    q = layer.q(x).view(B, N, heads, d).transpose(1, 2)                                # (B, heads, N, d)
    k = layer.kv(context).chunk(2, dim=2)[0]
    k = k.reshape(B, context.shape[1], heads, d).transpose(1, 2)                        # (B, heads, L, d)
    scores = q.float() @ k.float().transpose(-1, -2) / math.sqrt(d)                     # (B, heads, N, L)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :].to(torch.bool), float("-inf"))
    return scores.softmax(dim=-1)


def cross_attention_output(layer: CrossAttention, weights: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """W_o Σ_l A[n, l] v[l] from recorded weights (B, heads, N, L): what the layer outputs (a check)."""
    B, heads, N, L = weights.shape
    v = layer.kv(context).chunk(2, dim=2)[1]
    v = v.reshape(B, L, heads, -1).transpose(1, 2)                                      # (B, heads, L, d)
    h = weights.to(v.dtype) @ v                                                         # (B, heads, N, d)
    return layer.out(h.transpose(1, 2).flatten(2))


@dataclass
class LayerMaps:
    """The attention of one cross-attention layer in one network call."""

    name: str                      # the layer's name in the network, e.g. "down.1.0.1.cross"
    size: tuple[int, int]          # (H, W) of the image positions at that layer
    weights: torch.Tensor          # (B, heads, H·W, L) float32 on the CPU; rows sum to 1 over L


@dataclass
class NetworkCall:
    """One forward pass of the network: its step t (B,) and the maps of every cross-attention layer."""

    t: torch.Tensor | None
    layers: list[LayerMaps] = field(default_factory=list)


class CrossAttentionRecorder:
    """``with CrossAttentionRecorder(model) as rec: model(...)`` → ``rec.calls``, one :class:`NetworkCall`
    per forward pass of ``model``, in order.

    The hooks only read: the model's outputs are bit-equal with and without the recorder. Layers
    are the :class:`~trilemma.nets.layers.CrossAttention` modules inside ``model`` (each inside a
    :class:`~trilemma.nets.layers.TransformerBlock`, which tells the spatial size).
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.calls: list[NetworkCall] = []
        self._handles: list = []
        self._sizes: dict[int, tuple[int, int]] = {}
        self.layer_names = [name for name, m in model.named_modules() if isinstance(m, CrossAttention)]

    def __enter__(self) -> CrossAttentionRecorder:
        if not self.layer_names:
            raise ValueError("the model has no cross-attention layer to record")
        self._handles.append(self.model.register_forward_pre_hook(self._on_call, with_kwargs=True))
        for name, module in self.model.named_modules():
            if isinstance(module, TransformerBlock):
                self._handles.append(module.register_forward_pre_hook(self._on_block))
            if isinstance(module, CrossAttention):
                self._handles.append(module.register_forward_hook(self._on_layer(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # ------------------------------------------------------------------ hooks (they return None: read only)
    def _on_call(self, module, args, kwargs) -> None:
        t = args[1] if len(args) > 1 else kwargs.get("t")
        self.calls.append(NetworkCall(None if t is None else t.detach().cpu()))

    def _on_block(self, block, args) -> None:
        self._sizes[id(block.cross)] = tuple(args[0].shape[-2:])

    def _on_layer(self, name: str):
        def hook(layer, args, output) -> None:
            x, context, mask = args
            with torch.no_grad():
                weights = cross_attention_weights(layer, x, context, mask)
            size = self._sizes.get(id(layer))
            if size is None:                                     # a bare CrossAttention: a square image
                side = math.isqrt(x.shape[1])
                size = (side, x.shape[1] // side)
            if not self.calls:                                   # called outside a forward of the model
                self.calls.append(NetworkCall(None))
            self.calls[-1].layers.append(LayerMaps(name, size, weights.cpu()))
        return hook


def layer_sizes(call: NetworkCall) -> list[int]:
    """The distinct heights of the layers of a call, largest first (the U-Net's cross-attention levels)."""
    return sorted({m.size[0] for m in call.layers}, reverse=True)


def token_maps(call: NetworkCall, image_size: tuple[int, int], rows: slice | list[int] | None = None,
               resolution: int | None = None) -> torch.Tensor:
    """The attention map of each context key: (B, L, H, W) = mean over layers of the bilinear upsampling of
    the mean over heads of A (``rows``: which images of the batch; ``resolution``: only the layers of that
    height). Averages of softmax rows, so at every pixel the maps still sum to 1 over the keys.
    """
    layers = [m for m in call.layers if resolution is None or m.size[0] == resolution]
    if not layers:
        raise ValueError(f"no cross-attention layer at resolution {resolution}")
    total = None
    for m in layers:
        w = m.weights if rows is None else m.weights[rows]
        B, _, N, L = w.shape
        per_key = w.mean(dim=1).transpose(1, 2).reshape(B, L, *m.size)                # (B, L, h, w)
        up = F.interpolate(per_key, size=image_size, mode="bilinear", align_corners=False)
        total = up if total is None else total + up
    return total / len(layers)


def pick_calls(n_calls: int, k: int) -> list[int]:
    """k call indices spread evenly from the first (pure noise) to the last (the image), both included."""
    if n_calls <= 0:
        return []
    k = max(1, min(k, n_calls))
    if k == 1:
        return [n_calls - 1]
    return sorted({round(i * (n_calls - 1) / (k - 1)) for i in range(k)})


# ---------------------------------------------------------------------------------------- one prompt, drawn
@dataclass
class PromptAttention:
    """The maps of one prompt along a reverse process (:func:`prompt_attention`)."""

    prompt: str
    labels: list[str]              # one per context key (word pieces; "<pooled>" for the pooled key)
    special: list[bool]            # which labels are special tokens ([CLS], [SEP], <pooled>)
    t: list[float]                 # the step of each picked network call, from noise to image
    frames: torch.Tensor           # (k, C, H, W) in [-1, 1]: x̂₀ at each picked call's step
    maps: torch.Tensor             # (k, L, H, W): attention of each key at each picked call
    mean_map: torch.Tensor         # (L, H, W): averaged over every network call of the sampler
    image: torch.Tensor            # (C, H, W) in [-1, 1]: the final image
    resolution: int | None         # only the layers of this height, or None (all)
    sizes: list[int]               # the heights of the cross-attention layers


@torch.no_grad()
def prompt_attention(run, prompt: str, options, seed: int = 0, rows: int = 5,
                     resolution: int | None = None) -> PromptAttention:
    """Sample one image of ``prompt`` from a t2i ``run`` (``options``: a SampleOptions) while recording the
    cross-attention of the conditional half of every network call, and average it per key.

    ``rows`` calls are picked evenly from the first to the last; ``resolution`` keeps only the layers of
    that height (the U-Net's own levels: pixel patches or latents, not image pixels).
    """
    options = dataclasses.replace(options, prompt=prompt)
    with CrossAttentionRecorder(run.model) as rec:
        image, traj = run.sample_batch(1, run.generator(seed), options, return_trajectory=True)
    calls = [c for c in rec.calls if c.layers]
    sizes = layer_sizes(calls[0])
    if resolution is not None and resolution not in sizes:
        raise TrilemmaError(f"--layer: {resolution} is not a cross-attention resolution of this run "
                            f"(it has {', '.join(map(str, sizes))}, or all)")
    encoder = run.encoder
    labels = context_labels(encoder.tokens(prompt), run.text.features)
    special = encoder.special_tokens() | {"<pooled>"}
    L = calls[0].layers[0].weights.shape[-1]
    if len(labels) != L:
        raise TrilemmaError(f"{prompt!r}: the tokenizer gives {len(labels)} keys, the network saw {L}")
    hw = tuple(image.shape[-2:])
    per_call = [token_maps(c, hw, rows=[0], resolution=resolution)[0] for c in calls]   # each (L, H, W)
    picked = pick_calls(len(calls), rows)
    steps = [float(s) for s in traj["t"]]

    def t_of(call: NetworkCall) -> float:
        return float(call.t.flatten()[0]) if call.t is not None else float("nan")

    frames = []
    for i in picked:
        t = t_of(calls[i])
        j = min(range(len(steps)), key=lambda s: abs(steps[s] - t)) if steps else None
        x0 = traj["x0_hat"][j][:1] if j is not None else image[:1]
        frames.append(run.decode(x0.to(run.device)).cpu().clamp(-1, 1)[0])
    return PromptAttention(prompt=prompt, labels=labels, special=[lab in special for lab in labels],
                           t=[t_of(calls[i]) for i in picked], frames=torch.stack(frames),
                           maps=torch.stack([per_call[i] for i in picked]),
                           mean_map=torch.stack(per_call).mean(0), image=image[0].cpu().clamp(-1, 1),
                           resolution=resolution, sizes=sizes)


def save_attention_figure(att: PromptAttention, out: str | os.PathLike, title: str = "") -> Path:
    """One PNG: a row per picked step (x̂₀ at that step, then one heat map per key, token text as the
    column title) and a last row (the final image, the maps averaged over every step). One colour scale."""
    from trilemma.viz import _pyplot, as_uint8_nhwc, save_figure

    plt = _pyplot()
    k, L = att.maps.shape[:2]
    n_rows, n_cols = k + 1, L + 1
    vmax = float(max(att.maps.max(), att.mean_map.max()))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.05 * n_cols + 0.9, 1.1 * n_rows + 0.9), squeeze=False)

    def show_image(ax, x):
        arr = as_uint8_nhwc(x[None])[0]
        ax.imshow(arr.squeeze(-1) if arr.shape[-1] == 1 else arr, cmap="gray", vmin=0, vmax=255)

    heat = None
    for r in range(n_rows):
        last = r == k
        show_image(axes[r, 0], att.image if last else att.frames[r])
        axes[r, 0].set_ylabel("final\n(mean of\nall steps)" if last else f"t={att.t[r]:g}",
                              rotation=0, ha="right", va="center", fontsize=8)
        maps = att.mean_map if last else att.maps[r]
        for col in range(L):
            heat = axes[r, col + 1].imshow(maps[col].numpy(), cmap="magma", vmin=0.0, vmax=vmax)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_title("x̂₀", fontsize=9)
    for col, (label, special) in enumerate(zip(att.labels, att.special)):
        axes[0, col + 1].set_title(label, fontsize=9, color="grey" if special else "black",
                                   style="italic" if special else "normal")
    fig.colorbar(heat, ax=axes, shrink=0.6, label="attention weight")
    layers = "all layers" if att.resolution is None else f"layers at {att.resolution}×{att.resolution}"
    fig.suptitle(title or f"cross-attention for {att.prompt!r} (mean over heads, {layers})", fontsize=10)
    return save_figure(fig, out)
