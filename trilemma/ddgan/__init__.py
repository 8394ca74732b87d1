"""Denoising diffusion GANs (Xiao et al., ICLR 2022; docs/methods.md §11): a few large diffusion steps, each a GAN.

- ``config.py``     :class:`DDGANConfig` (T, the schedule, R1 γ and lazy regularisation, z, Adam, EMA),
                    :class:`DDGANNetConfig` and its presets (tiny / small / base).
- ``diffusion.py``  :func:`ddgan_schedule` (the paper's discretised VP schedule, or a respaced trilemma one),
                    :func:`q_sample_pairs` (real pairs), :func:`posterior_sample` (x_{t−1} ~ q(x_{t−1}|x_t, x̂₀)),
                    :func:`ddgan_sample` (T generator calls).
- ``networks.py``   :class:`DDGANGenerator` x̂₀ = G(x_t, z, t) (U-Net, z by adaptive GroupNorm) and
                    :class:`DDGANDiscriminator` D(x_{t−1}, x_t, t) → logit (``arch = "unet"``), their
                    DCGAN-sized twins :class:`DCGANGenerator` / :class:`DCGANDiscriminator` (``"dcgan"``),
                    and :func:`make_generator` / :func:`make_discriminator` that pick by ``arch``.
- ``losses.py``     per-sample :func:`d_loss`, :func:`g_loss`, :func:`r1_penalty`, :func:`energy_score`, and the trainer's
                    :func:`discriminator_terms` / :func:`generator_terms`.
"""

from trilemma.ddgan.config import (
    DDGAN_SCHEDULES,
    MAX_T,
    PRESETS,
    DDGANConfig,
    DDGANNetConfig,
    preset,
)
from trilemma.ddgan.diffusion import (
    ddgan_sample,
    ddgan_schedule,
    posterior_coefficients,
    posterior_mean_var,
    posterior_sample,
    q_sample_pairs,
    sample_t,
    vp_alpha_bar,
    vp_betas,
)
from trilemma.ddgan.losses import (
    d_loss,
    discriminator_terms,
    energy_score,
    g_loss,
    generator_terms,
    r1_from_logits,
    r1_penalty,
)
from trilemma.ddgan.networks import (
    DCGANDiscriminator,
    DCGANGenerator,
    DDGANDiscriminator,
    DDGANGenerator,
    make_discriminator,
    make_generator,
)

__all__ = [
    "DCGANDiscriminator", "DCGANGenerator", "DDGAN_SCHEDULES", "MAX_T", "PRESETS", "DDGANConfig", "DDGANDiscriminator", "DDGANGenerator",
    "DDGANNetConfig", "d_loss", "ddgan_sample", "ddgan_schedule", "discriminator_terms", "energy_score", "g_loss",
    "generator_terms", "make_discriminator", "make_generator", "posterior_coefficients", "posterior_mean_var", "posterior_sample", "preset",
    "q_sample_pairs", "r1_from_logits", "r1_penalty", "sample_t", "vp_alpha_bar", "vp_betas",
]
