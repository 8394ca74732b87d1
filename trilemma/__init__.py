"""trilemma: train, sample and honestly compare generative image models.

The public API (imported lazily, so ``trilemma --help`` stays fast)::

    from trilemma import train_ddpm, load_run, SampleOptions, save_grid, load_dataset
"""

__version__ = "0.1.0"

_API = {
    "train_ddpm": "trilemma.ddpm.train",
    "load_run": "trilemma.registry",
    "SampleOptions": "trilemma.run",
    "GeneratorRun": "trilemma.run",
    "save_grid": "trilemma.viz",
    "load_dataset": "trilemma.data",
    "DataConfig": "trilemma.data",
    "make_schedule": "trilemma.diffusion",
    "ddpm_sample": "trilemma.diffusion",
    "ddim_sample": "trilemma.diffusion",
    "Denoiser": "trilemma.diffusion",
    "UNet": "trilemma.nets",
    "TrilemmaError": "trilemma.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'trilemma' has no attribute {name!r}")
