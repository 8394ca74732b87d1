"""A trainable model family, declared once, and the one function that trains any of them.

Each family's ``train.py`` declares a :class:`TrainSpec`: its kind, the config classes whose
fields are its options (see :mod:`trilemma.options`), its defaults for the shared ones, and three
functions — ``new_config`` (options → the ``config.json`` of a new run), ``build`` (a run folder's
config → a :class:`~trilemma.train.loop.Trainer`) and optionally ``finish`` (after training: the
VAE's test ELBO, the autoencoder's reconstructions). :func:`train` does the rest the same way for
every family: run folder, resume, the shared loop, the finish step. The CLI's ``trilemma train
<kind>`` subcommands are generated from the same specs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from trilemma.config import from_dict
from trilemma.data import DataConfig, ImageDataset
from trilemma.errors import TrilemmaError
from trilemma.options import build, option_names
from trilemma.train.common import TrainConfig
from trilemma.train.loop import FitResult, Trainer, fit
from trilemma.train.rundir import prepare_run_dir, resume_config
from trilemma.utils.device import pick_device

PRESETS = ("tiny", "small", "base")
# Options that may change when a run is resumed (everything else is the run's own, from config.json).
RESUMABLE = ("steps", "minutes", "device", "bf16", "log_every", "sample_every", "checkpoint_every")


@dataclass(frozen=True)
class Built:
    """What ``TrainSpec.build`` returns: the trainer and how to run it."""

    trainer: Trainer
    train: TrainConfig
    num_examples: int
    device: torch.device


@dataclass(frozen=True)
class TrainSpec:
    """One trainable family (see the module docstring)."""

    kind: str
    help: str
    options: tuple[type, ...]                                 # config classes whose fields are options
    new_config: Callable[[dict[str, Any]], tuple[dict[str, Any], ImageDataset | None]]
    build: Callable[[Path, dict[str, Any], ImageDataset | None, bool], Built]
    desc: str = "training"                                    # the progress bar's label
    overrides: dict[type, tuple[str, ...]] = field(default_factory=dict)   # preset fields users may override
    defaults: dict[str, Any] = field(default_factory=dict)    # this family's defaults for shared options
    finish: Callable[[Path, dict[str, Any], bool], Any] | None = None
    extra: tuple[type, ...] = ()                              # run-time options that are not stored
    presets: tuple[str, ...] = PRESETS
    drop_on_resume: tuple[str, ...] = ()                      # config.json sections that training invalidates
    on_create: Callable[[Path, dict[str, Any]], None] | None = None   # after a new run folder is created

    @property
    def all_defaults(self) -> dict[str, Any]:
        return {"preset": "small", "data": "fashion-mnist", **self.defaults}

    def option_names(self) -> set[str]:
        return option_names((*self.options, *self.extra), self.overrides) | {"preset"}

    def values(self, options: dict[str, Any]) -> dict[str, Any]:
        """The flat options of a call: this family's defaults, then ``options`` (unknown names refused)."""
        unknown = sorted(set(options) - self.option_names())
        if unknown:
            raise TrilemmaError(f"train {self.kind}: unknown option(s) {', '.join(unknown)} "
                                f"(known: {', '.join(sorted(self.option_names()))})")
        values = {**self.all_defaults, **options}
        if values["preset"] not in self.presets:
            raise TrilemmaError(f"--preset: must be one of {', '.join(self.presets)}, got {values['preset']!r}")
        return values


def data_config(values: dict[str, Any]) -> DataConfig:
    """The resolved :class:`DataConfig` of a flat option dict (``data`` names the dataset)."""
    return build(DataConfig, values).resolved()


def train_config(values: dict[str, Any]) -> TrainConfig:
    return build(TrainConfig, values)


def stored_train_config(out: Path, config: dict[str, Any]) -> TrainConfig:
    return from_dict(TrainConfig, config["train"], f"{out}/config.json")


def train(spec: TrainSpec, out: str | os.PathLike, *, resume: bool = False, progress: bool = True,
          evaluate: bool = True, **options: Any) -> FitResult:
    """Train a new ``spec.kind`` run into ``out``, or continue it with ``resume=True``.

    ``options`` are the flat options of the family (the same names as the command-line flags, with
    ``_``): e.g. ``train(DDPM, "runs/x", data="digits", preset="tiny", steps=10, lr=1e-3)``.
    ``evaluate=False`` skips the family's ``finish`` step (test metrics after training).
    """
    out = Path(out)
    values = spec.values(options)
    if resume:
        fixed = sorted(k for k in options if k not in RESUMABLE and k not in option_names(spec.extra))
        if fixed:
            raise TrilemmaError(f"--resume: {', '.join('--' + k.replace('_', '-') for k in fixed)} cannot change "
                                f"when resuming (the run keeps the options in {out}/config.json)")
        config = resume_config(out, spec.kind, options.get("steps"), options.get("minutes"), drop=spec.drop_on_resume,
                               changes={k: options[k] for k in RESUMABLE if k in options and k not in
                                        ("steps", "minutes")})
        dataset = None
    else:
        config, dataset = spec.new_config(values)
        config = prepare_run_dir(out, False, config)
        if spec.on_create is not None:
            spec.on_create(out, values)
    built = spec.build(out, config, dataset, progress)
    result = fit(out, built.trainer, train=built.train, num_examples=built.num_examples, device=built.device,
                 resume=resume, progress=progress, desc=spec.desc)
    if evaluate and spec.finish is not None and not result.interrupted:
        spec.finish(out, values, progress)
    return result


def device_of(train: TrainConfig) -> torch.device:
    return pick_device(train.device)
