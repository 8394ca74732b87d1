"""The lecture's claims, each reproduced by one command (``trilemma experiment NAME``).

- ``gan_gradients.py`` Arjovsky & Bottou (2017): the original generator cost's gradient vanishes.
- ``vae_vs_gan.py``    VAE, GAN and DDPM side by side: sharpness and the trilemma metrics.
- ``sharpness.py``     the variance of the Laplacian, a per-image sharpness measure.
- ``latent_vs_pixel.py`` latent vs pixel diffusion under one training budget; the autoencoder factor sweep.
- ``demo.py``          the recipe of ``trilemma demo``: an autoencoder, then a latent DDPM, in one budget.

Their command-line options are declared in :mod:`trilemma.cli.experiment`; each experiment module's
``main(args)`` does the work.
Options left unset fall back to the defaults of the experiment's config dataclass.
"""

from __future__ import annotations




