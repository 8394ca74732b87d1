"""Generative adversarial networks (Goodfellow et al. 2014; DCGAN, Radford et al. 2016; docs/methods.md §2).

- ``config.py``    :class:`DCGANConfig` (networks), :class:`GANConfig` (generator cost, k, Adam β, EMA), presets.
- ``networks.py``  DCGAN :class:`Generator` and :class:`Discriminator` for 28, 32, 64 … pixels, 1 or 3 channels.
- ``losses.py``    the costs from logits: :func:`discriminator_loss`, :func:`minimax_generator_cost`,
                   :func:`nonsaturating_generator_cost`.
- ``algorithm.py`` :func:`algorithm1_iteration`: k discriminator steps, then one generator step.
- ``run.py``       :class:`GANRun` (sampling, z-interpolation).

Training: :func:`trilemma.gan.train.train_gan` (``trilemma train gan``).
"""

from trilemma.gan.config import PRESETS, DCGANConfig, GANConfig, dcgan_geometry, preset
from trilemma.gan.losses import (
                                 GENERATOR_COSTS,
                                 discriminator_accuracy,
                                 discriminator_loss,
                                 minimax_generator_cost,
                                 nonsaturating_generator_cost,
)
from trilemma.gan.networks import Discriminator, Generator
from trilemma.gan.train import algorithm1_iteration

__all__ = ["PRESETS", "DCGANConfig", "GANConfig", "dcgan_geometry", "preset", "Generator", "Discriminator",
           "GENERATOR_COSTS", "discriminator_accuracy", "discriminator_loss", "minimax_generator_cost",
           "nonsaturating_generator_cost", "algorithm1_iteration"]
