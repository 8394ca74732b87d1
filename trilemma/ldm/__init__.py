"""Phase 2 of latent diffusion (Rombach et al. 2022; docs/methods.md §7): a DDPM on an autoencoder's latents.

- ``config.py`` :func:`latent_unet_preset` (the U-Net fitted to the latent size)
- ``train.py``  ``trilemma train ldm --autoencoder RUN_AE``
- ``run.py``    :class:`LatentDiffusionRun` (a ``DiffusionRun`` that decodes; kind "ldm")
"""
