"""The ``"diffusion"`` section of a diffusion run's config.json: schedule, prediction target, conditioning."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from trilemma.diffusion.edm import P_MEAN, P_STD
from trilemma.diffusion.schedule import ScheduleConfig
from trilemma.errors import TrilemmaError
from trilemma.options import check_fields, in_range, opt, optional, positive


@dataclass(frozen=True)
class DiffusionConfig:
    """The diffusion process a network was trained for."""

    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    prediction: Literal["eps", "v", "edm"] = opt(
        "eps", "network target: ε (Ho et al. 2020), v (Salimans & Ho 2022) or edm (the preconditioned output of "
        "Karras et al. 2022, trained with its loss weight λ(σ); docs/methods.md §12.2)", choices=("eps", "v", "edm"))
    clip: bool = opt(True, "clamp x̂₀ to [-1, 1] while sampling (pixel space)", cli=False)
    class_cond: bool = opt(False, "condition on class labels (for sample --label)")
    loss_weight: Literal["uniform", "min-snr"] = opt(
        "uniform", "weight of each t in the loss: uniform (Algorithm 1) or min-snr (min-SNR-γ, Hang et al. 2023: "
        "the implied x₀-loss weight is min(SNR_t, γ))", choices=("uniform", "min-snr"))
    snr_gamma: float = opt(5.0, "γ of --loss-weight min-snr", check=in_range(1e-3, 1e6))
    noise_levels: Literal["uniform", "lognormal"] = opt(
        "uniform", "noise levels drawn in training: uniform (t ~ U{1..T}, Algorithm 1) or lognormal (ln σ ~ "
        "N(--p-mean, --p-std²) at fractional steps, Karras et al. 2022)", choices=("uniform", "lognormal"))
    p_mean: float = opt(P_MEAN, "mean of ln σ for --noise-levels lognormal", check=in_range(-20.0, 20.0))
    p_std: float = opt(P_STD, "standard deviation of ln σ for --noise-levels lognormal", check=in_range(1e-3, 20.0))
    sigma_data: float | None = opt(None, "σ_d of --prediction edm, the data's standard deviation (default: 0.5 for "
                                   "pixels in [-1, 1], 1 for the unit-variance latents of ldm/t2i)",
                                   check=optional(positive))
    cond_drop: float = opt(0.1, "share of training labels/captions replaced by ∅ (for classifier-free guidance)",
                           check=in_range(0.0, 1.0, hi_open=True))

    def __post_init__(self):
        check_fields(self)
        if self.prediction == "edm" and self.loss_weight != "uniform":
            raise TrilemmaError("--loss-weight: min-snr does not combine with --prediction edm, whose loss weight "
                                "is EDM's λ(σ) (use --loss-weight uniform)")

    @property
    def data_std(self) -> float:
        """σ_d of EDM preconditioning: ``sigma_data``, or 0.5 in pixel space (clipped), 1 on latents."""
        return self.sigma_data if self.sigma_data is not None else (0.5 if self.clip else 1.0)

    def loss_options(self) -> dict:
        """The keyword arguments of :func:`~trilemma.diffusion.losses.diffusion_loss` this config sets."""
        return dict(prediction=self.prediction, weighting=self.loss_weight, snr_gamma=self.snr_gamma,
                    noise_levels=self.noise_levels, p_mean=self.p_mean, p_std=self.p_std, sigma_data=self.data_std)

