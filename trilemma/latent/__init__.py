"""Latent diffusion (Rombach et al. 2022; METHODS.md §7): an autoencoder, then diffusion on its latents.

- ``autoencoder.py`` phase 1: :class:`AutoencoderConfig`, the convolutional :class:`Encoder`/:class:`Decoder`,
                     the per-image objective :func:`autoencoder_terms` (reconstruction + β·KL, the VAE's
                     KL and reparameterisation), :func:`latent_moments` (the scale factor).
- ``patch_disc.py``  the optional PatchGAN discriminator and its hinge / non-saturating losses.
- ``run.py``         :class:`AutoencoderRun` (encode, decode, reconstruct; kind "autoencoder"),
                     :func:`evaluate_reconstructions` (PSNR, reconstruction FID).
- ``cache.py``       the dataset's latents, encoded once per autoencoder and cached on disk.
- ``pipeline.py``    phase 2: :class:`LatentDiffusionRun` (a ``DiffusionRun`` that decodes; kind "ldm"),
                     :func:`latent_unet_preset`.

Training: :mod:`trilemma.train.autoencoder` (``trilemma train autoencoder``) and
:mod:`trilemma.train.ldm` (``trilemma train ldm --autoencoder RUN_AE``).
"""

from trilemma.latent.autoencoder import (FACTORS, Autoencoder, AutoencoderConfig, AutoencoderObjective, Decoder,
                                         Encoder, autoencoder_terms, latent_moments, preset, psnr)
from trilemma.latent.run import AutoencoderRun, evaluate_reconstructions, load_autoencoder

__all__ = ["FACTORS", "Autoencoder", "AutoencoderConfig", "AutoencoderObjective", "AutoencoderRun", "Decoder",
           "Encoder", "autoencoder_terms", "evaluate_reconstructions", "latent_moments", "load_autoencoder",
           "preset", "psnr"]
