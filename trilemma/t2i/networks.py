"""The text path between the frozen encoder τ(y) and the U-Net's cross-attention (docs/methods.md §8).

A t2i run's network is ε_θ(x_t, t, c(τ(y))): the U-Net (:class:`~trilemma.nets.unet.UNet`) with
cross-attention to a context c, made from the frozen, cached token states τ(y) (B, L, D) by a
small recipe (``config.json["text"]``; every step but the pooling is trainable):

    features   "tokens"          c = τ(y)                                   (B, L, D), the default
               "pooled"          c = [τ̄]     τ̄ = Σ_l m_l τ_l / Σ_l m_l      (B, 1, D): one key, the mean
                                                                             of the real tokens (the sentence
                                                                             embedding of all-MiniLM-L6-v2)
               "tokens+pooled"   c = [τ̄; τ(y)]                               (B, 1 + L, D)
    positions  c_l ← c_l + P_l   a learned (zero-initialised) embedding of the position l in c
    layers     N pre-norm transformer layers on c (self-attention over the real tokens, feed-forward;
               Vaswani et al. 2017), every residual branch zero-initialised

Every step starts as the identity (zero initialisation), so a recipe changes what the network
*can* learn, not where training starts; with the defaults (tokens, no positions, 0 layers) the
network is the plain U-Net, bit for bit and key for key (old runs load unchanged). The pooling is
a deterministic function of the cached token states, so the frozen part stays cached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trilemma.nets.unet import UNet, UNetConfig
from trilemma.t2i.config import T2IConfig

TEXT_HEADS = (8, 6, 4, 2, 1)   # the text layers use the first of these that divides the encoder width


def pooled_tokens(context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """τ̄ = the mean of the real token states: (B, L, D), (B, L) → (B, 1, D)."""
    if mask is None:
        return context.mean(dim=1, keepdim=True)
    m = mask.to(context.dtype)[..., None]                                        # (B, L, 1)
    return (context * m).sum(dim=1, keepdim=True) / m.sum(dim=1, keepdim=True).clamp_min(1.0)


def text_features(context: torch.Tensor, mask: torch.Tensor | None,
                  features: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The context c (and its mask) the cross-attention sees, from τ(y): see the module docstring."""
    if features == "tokens":
        return context, mask
    pooled = pooled_tokens(context, mask)
    one = torch.ones(context.shape[0], 1, dtype=torch.bool, device=context.device)
    if features == "pooled":
        return pooled, one
    if features == "tokens+pooled":
        full = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device) if mask is None else mask
        return torch.cat([pooled, context], dim=1), torch.cat([one, full.to(torch.bool)], dim=1)
    raise ValueError(f"unknown text features {features!r}")


def context_labels(tokens: list[str], features: str) -> list[str]:
    """The name of each key of the context c, given the prompt's word pieces (what the maps are over)."""
    return {"tokens": tokens, "pooled": ["<pooled>"], "tokens+pooled": ["<pooled>", *tokens]}[features]


class TextLayer(nn.Module):
    """One pre-norm transformer layer on the context: c ← c + SA(LN c), c ← c + FF(LN c); padding masked."""

    def __init__(self, width: int, ff_mult: int = 4):
        super().__init__()
        self.num_heads = next(h for h in TEXT_HEADS if width % h == 0)
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        self.ff = nn.Sequential(nn.Linear(width, ff_mult * width), nn.GELU(), nn.Linear(ff_mult * width, width))
        for last in (self.out, self.ff[-1]):                    # each branch starts at zero: the layer is the identity
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, c: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, L, D = c.shape
        q, k, v = (z.view(B, L, self.num_heads, D // self.num_heads).transpose(1, 2)
                   for z in self.qkv(self.ln1(c)).chunk(3, dim=2))               # (B, heads, L, d)
        attn_mask = None if mask is None else mask[:, None, None, :].to(torch.bool)
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)          # (B, heads, L, d)
        c = c + self.out(h.transpose(1, 2).reshape(B, L, D))
        return c + self.ff(self.ln2(c))


class TextAdapter(nn.Module):
    """τ(y) → c: features, learned positions, trainable layers (the module docstring's recipe)."""

    def __init__(self, width: int, text: T2IConfig):
        super().__init__()
        self.features = text.features
        length = text.max_length + (1 if text.features == "tokens+pooled" else 0)
        self.positions = nn.Parameter(torch.zeros(length, width)) if text.positions else None
        self.layers = nn.ModuleList(TextLayer(width) for _ in range(text.layers))

    def forward(self, context: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        c, mask = text_features(context, mask, self.features)
        if self.positions is not None:
            c = c + self.positions[:c.shape[1]]
        for layer in self.layers:
            c = layer(c, mask)
        return c, mask


def uses_adapter(text: T2IConfig) -> bool:
    """True when the recipe puts anything between τ(y) and the U-Net (the defaults put nothing)."""
    return text.features != "tokens" or text.positions or text.layers > 0


class TextUNet(UNet):
    """The U-Net with a text adapter before its cross-attention: ε_θ(x_t, t, c(τ(y))).

    Its state dict is the U-Net's plus ``text.*``; the U-Net's weights are initialised first, so a
    seed gives the same U-Net with or without an adapter.
    """

    def __init__(self, config: UNetConfig, text: T2IConfig):
        super().__init__(config)
        self.text = TextAdapter(config.context_dim, text)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        if context is not None:
            context, context_mask = self.text(context, context_mask)
        return super().forward(x, t, y, context=context, context_mask=context_mask)


def t2i_network(config: UNetConfig, text: T2IConfig) -> UNet:
    """The network of a t2i run: the plain U-Net for the default recipe, else :class:`TextUNet`."""
    return TextUNet(config, text) if uses_adapter(text) else UNet(config)


def describe_recipe(text: T2IConfig) -> str:
    """", features tokens+pooled, positions, 2 text layers" (empty for the default recipe)."""
    parts = ([f"features {text.features}"] if text.features != "tokens" else []) + \
            (["learned positions"] if text.positions else []) + \
            ([f"{text.layers} text layer{'s' * (text.layers > 1)}"] if text.layers else [])
    return "".join(", " + p for p in parts)
