"""trilemma: train, sample and honestly compare generative image models."""

__version__ = "0.1.0"
