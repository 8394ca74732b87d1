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
    loss_weight: Literal["uniform", "min-snr"] = opt(
        "uniform", "weight of each t in the loss: uniform (Algorithm 1) or min-snr (min-SNR-γ, Hang et al. 2023: "
        "the implied x₀-loss weight is min(SNR_t, γ))", choices=("uniform", "min-snr"))
    snr_gamma: float = opt(5.0, "γ of --loss-weight min-snr", check=in_range(1e-3, 1e6))
    cond_drop: float = opt(0.1, "share of training labels/captions replaced by ∅ (for classifier-free guidance)",
                           check=in_range(0.0, 1.0, hi_open=True))

    def __post_init__(self):
        check_fields(self)

