"""The variational autoencoder (Kingma & Welling 2014; docs/methods.md §1).

- ``config.py``   :class:`VAENetConfig` (the networks), :class:`VAEConfig` (likelihood, variance, β), presets.
- ``networks.py`` the convolutional :class:`Encoder`, :class:`Decoder` and the :class:`VAE` holding both.
- ``losses.py``   per-sample maths: :func:`reparameterise`, :func:`gaussian_kl`, the likelihoods, :func:`elbo_terms`.
- ``run.py``      :class:`VAERun` (sample, reconstruct, encode, interpolate) and :func:`evaluate_elbo`.

Training: :func:`trilemma.vae.train.train_vae` (``trilemma train vae``).
"""

from trilemma.vae.config import PRESETS, VAEConfig, VAENetConfig, preset
from trilemma.vae.losses import (
                                 bernoulli_log_likelihood,
                                 binarise,
                                 discretised_gaussian_log_likelihood,
                                 elbo_terms,
                                 gaussian_kl,
                                 gaussian_log_likelihood,
                                 log_likelihood,
                                 reparameterise,
)
from trilemma.vae.networks import VAE, Decoder, Encoder

__all__ = ["PRESETS", "VAEConfig", "VAENetConfig", "preset", "VAE", "Encoder", "Decoder", "binarise",
           "bernoulli_log_likelihood", "discretised_gaussian_log_likelihood", "elbo_terms", "gaussian_kl",
           "gaussian_log_likelihood", "log_likelihood", "reparameterise"]
