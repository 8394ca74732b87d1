"""The ``"diffusion"`` section of a diffusion run's config.json: schedule, prediction target, conditioning."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from trilemma.diffusion.schedule import ScheduleConfig
from trilemma.options import check_fields, in_range, opt


@dataclass(frozen=True)
class DiffusionConfig:
    """The diffusion process a network was trained for."""

    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    prediction: Literal["eps", "v"] = opt("eps", "network target: ε (Ho et al. 2020) or v (Salimans & Ho 2022)",
                                          choices=("eps", "v"))
    clip: bool = opt(True, "clamp x̂₀ to [-1, 1] while sampling (pixel space)", cli=False)
    class_cond: bool = opt(False, "condition on class labels (for sample --label)")
    cond_drop: float = opt(0.1, "share of training labels/captions replaced by ∅ (for classifier-free guidance)",
                           check=in_range(0.0, 1.0, hi_open=True))

    def __post_init__(self):
        check_fields(self)

