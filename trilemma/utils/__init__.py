"""Small helpers shared by every part of trilemma (files, devices, seeds)."""
