"""Phase 1 of latent diffusion (Rombach et al. 2022; docs/methods.md §7): a KL-regularised autoencoder.

- ``config.py``   :class:`AutoencoderConfig` (+ presets), :class:`AutoencoderObjective`, :class:`PatchDiscConfig`
- ``networks.py`` the convolutional :class:`Encoder`/:class:`Decoder`, :class:`Autoencoder`, the optional
                  PatchGAN :class:`PatchDiscriminator`
- ``losses.py``   per-image objective :func:`autoencoder_terms` (reconstruction + β·KL), PSNR, the
                  discriminator's hinge / non-saturating losses, :func:`latent_moments` (the scale factor)
- ``train.py``    ``trilemma train autoencoder`` (the shared loop; one or two optimisers)
- ``run.py``      :class:`AutoencoderRun` (encode, decode, reconstruct; kind "autoencoder")
- ``cache.py``    the dataset's latents, encoded once per autoencoder and cached on disk
"""

from trilemma.autoencoder.config import FACTORS, AutoencoderConfig, AutoencoderObjective, preset
from trilemma.autoencoder.losses import autoencoder_terms, latent_moments, psnr
from trilemma.autoencoder.networks import Autoencoder, Decoder, Encoder
from trilemma.autoencoder.run import AutoencoderRun, evaluate_reconstructions, load_autoencoder

__all__ = ["FACTORS", "Autoencoder", "AutoencoderConfig", "AutoencoderObjective", "AutoencoderRun", "Decoder",
           "Encoder", "autoencoder_terms", "evaluate_reconstructions", "latent_moments", "load_autoencoder",
           "preset", "psnr"]
