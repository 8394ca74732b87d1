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

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from trilemma import __version__
from trilemma.config import from_dict, to_dict
from trilemma.data import DataConfig, ImageDataset, load_dataset
from trilemma.data.config import data_key
from trilemma.errors import RunError, TrilemmaError
from trilemma.options import build, option_names
from trilemma.run import RUN_SECTIONS
from trilemma.train import distributed
from trilemma.train.common import TrainConfig
from trilemma.train.loop import FitResult, Trainer, fit
from trilemma.train.rundir import checkpoint_info, prepare_run_dir, resume_config
from trilemma.utils.device import check_bf16, deterministic_workspace, pick_device
from trilemma.utils.io import atomic_write, read_json

PRESETS = ("tiny", "small", "base")
# Options that may change when a run is resumed (everything else is the run's own, from config.json).
RESUMABLE = ("steps", "minutes", "device", "bf16", "tf32", "compile", "deterministic", "log_every", "sample_every",
             "sample_minutes", "checkpoint_every", "checkpoint_minutes")


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
    extra: tuple[type, ...] = ()                              # options outside training (may change on resume)
    presets: tuple[str, ...] = PRESETS
    drop_on_resume: tuple[str, ...] = ()                      # config.json sections that training invalidates
    on_create: Callable[[Path, dict[str, Any]], None] | None = None   # after a new run folder is created
    # The family's own entry point in place of train(spec, …) (e.g. a recipe with phases), and the run
    # folder and kind a --resume of RUN continues (None: nothing to check before the entry point runs).
    runner: Callable[..., FitResult] | None = None
    resume_folder: Callable[[Path], tuple[Path, str] | None] | None = None

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


def run_config(kind: str, values: dict[str, Any], data: DataConfig, model: Any, **sections: Any) -> dict[str, Any]:
    """The config.json of a new run: kind, version, preset, data, model, the family's sections, train.

    Dataclass sections are written with :func:`~trilemma.config.to_dict`; dicts and ``None`` as they are.
    """
    as_json = {key: to_dict(value) if dataclasses.is_dataclass(value) else value for key, value in sections.items()}
    return {"kind": kind, "trilemma_version": __version__, "preset": values["preset"], "data": data.to_dict(),
            "model": to_dict(model), **as_json, "train": to_dict(train_config(values))}


def stored_train_config(out: Path, config: dict[str, Any]) -> TrainConfig:
    return from_dict(TrainConfig, config["train"], f"{out}/config.json")


@dataclass(frozen=True)
class Stored:
    """A run folder's config read back for training: data, train options, device, training set, family sections."""

    data: DataConfig
    train: TrainConfig
    device: torch.device
    dataset: ImageDataset
    sections: dict[str, Any]

    def __getitem__(self, name: str) -> Any:
        return self.sections[name]


def read_stored(out: Path, config: dict[str, Any], dataset: ImageDataset | None, **sections: type) -> Stored:
    """Every ``build_trainer`` starts here: ``sections`` maps config.json keys to their dataclasses."""
    where = f"{out}/config.json"
    parsed = {key: from_dict(cls, config[key], where) for key, cls in sections.items()}
    train_ = stored_train_config(out, config)
    data = DataConfig.from_dict(config["data"])
    return Stored(data, train_, device_of(train_), dataset or load_dataset(data, "train"), parsed)


def train(spec: TrainSpec, out: str | os.PathLike, *, resume: bool = False, progress: bool = True,
          evaluate: bool = True, **options: Any) -> FitResult:
    """Train a new ``spec.kind`` run into ``out``, or continue it with ``resume=True``.

    ``options`` are the flat options of the family (the same names as the command-line flags, with
    ``_``): e.g. ``train(DDPM, "runs/x", data="digits", preset="tiny", steps=10, lr=1e-3)``.
    ``evaluate=False`` skips the family's ``finish`` step (test metrics after training).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process calls this; rank 0 creates (or updates) the
    run folder, fills the caches and builds first, the others then read the folder; only rank 0
    writes and runs ``finish`` (see :mod:`trilemma.train.distributed`).
    """
    out = Path(out)
    values = spec.values(options)
    if resume:
        if options.get("steps") is not None and options.get("minutes") is not None:
            raise TrilemmaError("--steps/--minutes: give one new training budget to resume with, not both")
        fixed = sorted(k for k in options if k not in RESUMABLE and k not in option_names(spec.extra)
                       and not _same_as_stored(out, k, options[k]))
        if fixed:
            raise TrilemmaError(f"--resume: {', '.join('--' + k.replace('_', '-') for k in fixed)} cannot change "
                                f"when resuming (the run keeps the options in {out}/config.json)")
    created = distributed.init()
    try:
        w = distributed.world()
        # A resume rewrites config.json with this session's changes (--device, --bf16, the budget, …)
        # before building; if this session then fails before its first checkpoint, the old file is put
        # back, so that a bad option (--device meta, --compile where it cannot work) does not stick.
        if w.distributed and not resume:                               # before the run folder is made
            distributed.local_slice(train_config(values).batch_size, w)
        restore = _ConfigRestore(out) if resume and w.is_main else None
        try:
            prepared = distributed.main_first(lambda: _prepare(spec, out, values, options, resume), w, others=False)
            if w.is_main:
                config, dataset = prepared
            else:
                config, dataset = read_json(out / "config.json"), None
            if config.get("train", {}).get("deterministic"):
                deterministic_workspace()                              # before build's first cuBLAS call
            built = distributed.main_first(lambda: spec.build(out, config, dataset, progress and w.is_main), w)
            result = fit(out, built.trainer, train=built.train, num_examples=built.num_examples,
                         device=built.device, resume=resume, progress=progress, desc=spec.desc)
        except BaseException:
            if restore is not None:
                restore()
            raise
        if evaluate and spec.finish is not None and not result.interrupted and w.is_main:
            spec.finish(out, values, progress)
        return result
    finally:
        if created:
            distributed.shutdown()


def _same_as_stored(out: Path, name: str, value: Any) -> bool:
    """Whether the run in ``out`` already has option ``name`` = ``value`` (then repeating it on resume is fine).

    The option is looked up by name in the (nested) sections of ``config.json`` (``--data`` is
    ``data.name``, ``--preset`` the header's ``preset``); a name found with two different
    values, or not at all, counts as different.
    """
    try:
        config = read_json(out / "config.json")
    except (OSError, TrilemmaError):
        return False
    if not isinstance(config, dict):
        return False
    if name == "preset":
        found = [config.get("preset")]
    elif name == "data":                                               # a folder as the run wrote it: absolute
        found = [config["data"].get("name")] if isinstance(config.get("data"), dict) else []
        try:
            value = data_key(value)
        except (TrilemmaError, TypeError):
            return False
    else:
        found = []

        def collect(section: dict[str, Any]) -> None:                 # sections nest (diffusion.schedule.T)
            for key, v in section.items():
                if key == name:
                    found.append(v)
                elif isinstance(v, dict):
                    collect(v)

        collect({k: v for k, v in config.items() if k in RUN_SECTIONS and isinstance(v, dict)})

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        if isinstance(a, bool) or isinstance(b, bool):                 # True is not the number 1 here
            return type(a) is type(b) and a == b
        return a == b

    return bool(found) and all(same(v, value) for v in found)


class _ConfigRestore:
    """The run's ``config.json`` and checkpoint step as they were; calling it puts the file back
    when no checkpoint was written since (nothing of this session's training was kept)."""

    def __init__(self, out: Path):
        self.file = out / "config.json"
        try:
            self.saved = self.file.read_bytes()
            self.step = checkpoint_info(out)["step"]
        except (OSError, TrilemmaError):
            self.saved = None                                          # _prepare refuses such a folder

    def __call__(self) -> None:
        if self.saved is None:
            return
        try:
            if checkpoint_info(self.file.parent)["step"] == self.step:
                atomic_write(self.file, self.saved)
        except (OSError, TrilemmaError):
            pass                                                       # the original error is the one to report


def _prepare(spec: TrainSpec, out: Path, values: dict[str, Any], options: dict[str, Any],
             resume: bool) -> tuple[dict[str, Any], ImageDataset | None]:
    """The run's config.json (a new run folder, or the stored one with this session's changes) and its data."""
    if resume:
        changes = {k: options[k] for k in RESUMABLE if k in options and k not in ("steps", "minutes")}
        if (out / "config.json").is_file():                             # refuse --bf16 before writing anything
            raw = read_json(out / "config.json")
            stored = raw.get("train") if isinstance(raw, dict) else None
            stored = stored if isinstance(stored, dict) else {}
            effective = {**stored, **changes}
            device = pick_device(changes["device"]) if "device" in changes else \
                _stored_device(stored.get("device", "auto"), out / "config.json")
            check_bf16(device, bool(effective.get("bf16")))
        config = resume_config(out, spec.kind, options.get("steps"), options.get("minutes"), drop=spec.drop_on_resume,
                               changes=changes)
        return config, None
    check_bf16(pick_device(values.get("device", "auto")), bool(values.get("bf16")))
    config, dataset = spec.new_config(values)
    config = prepare_run_dir(out, False, config)
    if spec.on_create is not None:
        spec.on_create(out, values)
    return config, dataset


def _stored_device(value: Any, file: Path) -> torch.device:
    """A run's stored ``train.device``, refused with a line naming the file (not ``--device``)."""
    if not isinstance(value, str):
        raise RunError(f"{file}: train.device: expected a device name such as \"cpu\", got {value!r} "
                       f"(or pass --device)")
    try:
        return pick_device(value)
    except TrilemmaError as e:
        raise RunError(f"{file}: train.device: {str(e).partition(': ')[2]} (or pass --device)") from None


def device_of(train: TrainConfig) -> torch.device:
    return pick_device(train.device)
