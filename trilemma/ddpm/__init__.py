"""Pixel-space diffusion (DDPM, Ho et al. 2020; DDIM sampling; docs/methods.md §4–6).

- ``config.py`` :class:`DiffusionConfig` (schedule, prediction target, conditioning)
- ``train.py``  ``trilemma train ddpm`` (Algorithm 1 through the shared loop)
- ``run.py``    :class:`DiffusionRun` (kind "ddpm"): sampling with every sampler of :mod:`trilemma.diffusion.samplers`

The network is the shared U-Net (:mod:`trilemma.nets.unet`); the schedule, losses and samplers are the
shared diffusion maths (:mod:`trilemma.diffusion`), used by every diffusion family.
"""
