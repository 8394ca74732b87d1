"""Run folders: the one on-disk format every trainer writes and every command reads.

A run folder holds ``config.json`` (with a ``kind``: "ddpm", "vae", "gan", …)
and safetensors weights beside it; nothing else is needed to sample or
evaluate. :func:`load_run` reads the folder and returns the kind's
:class:`GeneratorRun`, whose :meth:`~GeneratorRun.generate` gives images the
same way for every model family, so metrics, grids and comparisons never care
which family made them.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from trilemma.config import Section, from_dict
from trilemma.data import DataConfig, to_uint8
from trilemma.errors import RunError, TrilemmaError
from trilemma.utils.io import load_tensors, read_json, save_tensors, tensors_metadata
from trilemma.utils.validate import check_memory


@dataclass(frozen=True)
class SampleOptions:
    """How to draw samples. Diffusion runs use the sampler fields; other kinds ignore them."""

    sampler: str = "auto"                 # ddpm, ddim, dpmpp-2m, dpmpp-2m-sde, unipc, heun, euler, or auto:
                                          # unipc below 20 steps, dpmpp-2m-sde from 20 (docs/sampling.md)
    steps: int | None = None              # network evaluations: default 50; DDPM: default T (respaced when fewer)
    eta: float | None = None              # DDIM/euler/SDE stochasticity; None: the sampler's default (0; SDE 1)
    spacing: str | None = None            # leading, trailing, linspace (+ karras, logsnr for the solvers);
                                          # None: the sampler's default (samplers.default_spacing)
    variance: Literal["beta", "beta_tilde"] = "beta_tilde"   # DDPM σ_t²
    clip: bool | None = None              # clamp x̂₀ to [-1, 1]; None = the run's default
    guidance: float = 1.0                 # classifier-free guidance weight w
    label: int | None = None              # class-conditional runs: the class to draw
    prompt: str | None = None             # text-to-image runs
    negative: str | None = None           # text-to-image: negative prompt (replaces ∅)

    def __post_init__(self):
        """Resolve ``auto`` and the defaults here, so runs, reports and caches see what is really used."""
        from trilemma.diffusion.samplers import AUTO, SAMPLERS, auto_sampler, default_eta, default_spacing

        if self.sampler == AUTO:
            object.__setattr__(self, "sampler", auto_sampler(self.steps))
        known = self.sampler in SAMPLERS                # an unknown name is refused where it is used
        if self.eta is None:
            object.__setattr__(self, "eta", default_eta(self.sampler))
        if self.spacing is None:
            object.__setattr__(self, "spacing", default_spacing(self.sampler, self.steps) if known else "trailing")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class GeneratorRun:
    """A trained model loaded from a run folder, ready to draw images.

    Subclasses set ``kind`` and implement :meth:`sample_batch` and :meth:`nfe`.
    """

    kind: str = "?"

    def __init__(self, path: Path, config: dict[str, Any], device: torch.device):
        self.path = Path(path)
        self.config = config
        self.device = device
        self.data_config = read_data_config(config["data"], getattr(config, "file", f"{path}/config.json"))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c = self.data_config
        return (c.channels, c.image_size, c.image_size)

    def sample_batch(self, n: int, generator: torch.Generator, options: SampleOptions) -> torch.Tensor:
        """One batch of ``n`` images, floats in [-1, 1], (n, C, H, W) on ``self.device``."""
        raise NotImplementedError

    def nfe(self, options: SampleOptions) -> int:
        """Network evaluations per image under ``options``."""
        raise NotImplementedError

    def describe(self, options: SampleOptions) -> str:
        return self.kind

    def generator(self, seed: int) -> torch.Generator:
        return torch.Generator(self.device).manual_seed(seed)

    def generate(self, n: int, *, seed: int = 0, batch_size: int = 256, options: SampleOptions | None = None,
                 progress: bool = True) -> torch.Tensor:
        """``n`` images as uint8 (n, C, H, W) on the CPU; the same seed and batch size give the same images.

        The progress bar counts network evaluations (sampler steps) over all batches.
        """
        from tqdm.auto import tqdm

        options = options or SampleOptions()
        if n <= 0:
            raise TrilemmaError(f"--n: must be a positive integer, got {n}")
        if batch_size <= 0:
            raise TrilemmaError(f"--batch-size: must be a positive integer, got {batch_size}")
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**63:
            raise TrilemmaError(f"--seed: must be an integer in [0, 2**63-1] (as on the command line), got {seed!r}")
        seed = int(seed)                                                  # numpy integers too
        check_memory(sampling_bytes(n, min(batch_size, n), self.image_shape), f"sampling {n} images of "
                     f"{'x'.join(map(str, self.image_shape))}", "--n")
        g = self.generator(seed)
        batches = [min(batch_size, n - start) for start in range(0, n, batch_size)]
        steps = self.steps_per_batch(options)
        out = []
        with tqdm(total=len(batches) * steps, desc=f"sampling {n} images, {self.describe(options)}",
                  unit="step", disable=not progress, leave=False) as bar:
            for b in batches:
                if self.reports_steps:
                    images = self.sample_batch(b, g, options, callback=lambda *_: bar.update(1))
                else:
                    images = self.sample_batch(b, g, options)
                    bar.update(steps)
                out.append(to_uint8(images.float().cpu()))
        return torch.cat(out)

    # Runs whose sample_batch takes a per-step ``callback`` (diffusion) set this to True.
    reports_steps: bool = False
    # Diffusion runs read the sampler fields of SampleOptions (sampler, steps, eta, …); the others
    # (VAE, GAN, DDGAN, autoencoder) draw the same way whatever they say.
    uses_sampler: bool = False
    # Runs that can be asked for a class (--label): class-conditional diffusion runs (they check it).
    takes_label: bool = False

    def check_options(self, options: SampleOptions) -> None:
        """Refuse options that this run would silently ignore (``--label`` on a run without classes)."""
        if options.label is not None and not self.takes_label:
            raise TrilemmaError(f"--label: {self.path} is a {self.kind} run, which draws no particular class")
        if options.guidance != 1.0 and not self.uses_sampler:
            raise TrilemmaError(f"--guidance: {self.path} is a {self.kind} run, which has no guidance")

    def sampling_record(self, options: SampleOptions) -> dict[str, Any]:
        """The sampling options as results record them: all of them for diffusion runs, none for the others."""
        return options.to_dict() if self.uses_sampler else {}

    def steps_per_batch(self, options: SampleOptions) -> int:
        """Sequential network calls for one batch (the length of the progress bar per batch)."""
        return 1


# The top-level keys a run's config.json may hold: the header, then the sections of every family.
RUN_HEADER = ("kind", "trilemma_version", "preset")
RUN_SECTIONS = ("data", "model", "train", "diffusion", "gan", "vae", "autoencoder", "disc", "latent", "text",
                "ddgan", "evaluation")


def read_run_config(path: str | Path) -> dict[str, Any]:
    """The ``config.json`` of the run folder ``path``, checked, as a :class:`~trilemma.config.Section`.

    Refused with a one-line :class:`RunError` naming the file (and the key): a path that is not a
    folder, no ``config.json``, not JSON, not an object, no or a non-text ``kind``, unknown top-level
    keys, a section that is not an object, a ``data`` section that does not read. A section the
    family then asks for and the file lacks raises ``RunError "<file>: no '<name>' section"``
    (see :class:`~trilemma.config.Section`), and :func:`trilemma.config.from_dict` names file and
    field for wrong values.
    """
    path = Path(path)
    if not path.exists():
        raise RunError(f"{path}: no such run folder")
    if not path.is_dir():
        raise RunError(f"{path}: not a run folder (not a folder; a run folder holds config.json and weights)")
    file = path / "config.json"
    if not file.is_file():
        raise RunError(f"{path}: not a run folder (no config.json)")
    raw = read_json(file)
    if not isinstance(raw, dict):
        raise RunError(f"{file}: expected a JSON object, got {type(raw).__name__}")
    kind = raw.get("kind")
    if not isinstance(kind, str) or not kind:
        raise RunError(f"{file}: 'kind' must name the kind of run (e.g. \"ddpm\"), got {kind!r}")
    unknown = sorted(set(raw) - set(RUN_HEADER) - set(RUN_SECTIONS), key=str)
    if unknown:
        raise RunError(f"{file}: unknown top-level key(s) {', '.join(map(repr, unknown))} "
                       f"(known: {', '.join(RUN_HEADER + RUN_SECTIONS)})")
    for key in ("trilemma_version", "preset"):
        if key in raw and not isinstance(raw[key], str):
            raise RunError(f"{file}: '{key}' must be a string, got {raw[key]!r}")
    for key in RUN_SECTIONS:
        if key in raw and raw[key] is not None and not isinstance(raw[key], dict):
            raise RunError(f"{file}: section '{key}' must be an object, got {type(raw[key]).__name__}")
    if raw.get("data") is not None:
        data = read_data_config(raw["data"], file)
        check_model_shape(raw, data, file)
    return Section.wrap(raw, str(file))


def check_model_shape(raw: dict[str, Any], data: DataConfig, file: str | Path) -> None:
    """The model section's input shape agrees with the data (pixel runs) or the latents (latent runs).

    An edited ``data.channels`` or ``data.image_size`` would otherwise reach the network as a
    shape error from deep inside a convolution, or silently sample at the wrong size.
    """
    model = raw.get("model")
    if not isinstance(model, dict):
        return
    ae = raw.get("autoencoder")
    if raw.get("kind") != "autoencoder" and isinstance(ae, dict) and "digest" in ae:      # a latent run
        shape = ae.get("latent_shape")
        if not (isinstance(shape, list) and len(shape) == 3 and all(type(v) is int for v in shape)):
            raise RunError(f"{file}: autoencoder.latent_shape: expected [channels, height, width], got {shape!r}")
        expected = {"channels": ("autoencoder.latent_shape[0]", shape[0]),
                    "image_size": ("autoencoder.latent_shape[1]", shape[1])}
    else:                                              # pixels, in p × p patches for a t2i run's U-Net
        text = raw.get("text")
        p = text.get("patch", 1) if isinstance(text, dict) else 1
        if type(p) is not int or p < 1:
            return                                     # the family's reader names this field
        size = None if data.image_size is None else data.image_size // p
        channels = None if data.channels is None else data.channels * p * p
        expected = {"channels": ("data.channels" + (f" × text.patch² ({p}²)" if p > 1 else ""), channels),
                    "image_size": ("data.image_size" + (f" / text.patch ({p})" if p > 1 else ""), size)}
    for key, what in (("in_channels", "channels"), ("channels", "channels"), ("image_size", "image_size")):
        name, want = expected[what]
        have = model.get(key)
        if key in model and want is not None and type(have) is int and have != want:
            raise RunError(f"{file}: {name} is {want} but model.{key} is {have} (the weights are for {have}); "
                           f"the file contradicts itself, restore the original")


def read_data_config(section: Any, file: str | Path) -> DataConfig:
    """The ``data`` section of a run's config.json as a :class:`DataConfig`; errors name the file."""
    try:
        return DataConfig.from_dict(dict(section) if isinstance(section, dict) else section)
    except (TrilemmaError, TypeError, ValueError) as e:
        raise RunError(f"{file}: data: {e}") from None


def read_section(path: str | Path, config: dict[str, Any], name: str, cls: type):
    """Section ``name`` of a run's config (from :func:`read_run_config`) as the dataclass ``cls``.

    Errors (missing section, unknown or wrongly typed fields, values the checks refuse) are one
    :class:`RunError` line naming ``<path>/config.json`` and the field.
    """
    file = f"{Path(path) / 'config.json'}"
    if name not in config or config[name] is None:
        raise RunError(f"{file}: no '{name}' section")
    try:
        return from_dict(cls, config[name], file, _name=name)
    except RunError:
        raise
    except TrilemmaError as e:
        raise RunError(str(e)) from None


def sampling_bytes(n: int, batch_size: int, image_shape: tuple[int, int, int]) -> float:
    """A lower bound on the memory that drawing ``n`` images in batches of ``batch_size`` needs.

    The uint8 results twice (the batches and their concatenation) and a float32 batch in a few copies
    (x_t, the prediction, x̂₀, the update); the network's activations come on top.
    """
    c, h, w = image_shape
    pixels = c * h * w
    return 2.0 * n * pixels + 8.0 * batch_size * pixels * 4


def grid_rows(n: int) -> int:
    return max(1, math.ceil(math.sqrt(n)))


def save_weights(path: Path, module: nn.Module, step: int) -> None:
    save_tensors(path, module.state_dict(), metadata={"step": str(step), "format": "trilemma"})


def weights_step(run_dir: str | Path) -> int | None:
    """The training step of a run folder's weights (``ema.safetensors``, else ``model.safetensors``), read
    from the file's metadata without loading it; ``None`` when neither file says."""
    for stem in ("ema", "model"):
        path = Path(run_dir) / f"{stem}.safetensors"
        if path.is_file():
            try:
                return int(tensors_metadata(path).get("step", ""))
            except (ValueError, TrilemmaError):
                return None
    return None


def load_weights(path: Path, module: nn.Module, device: torch.device | str = "cpu") -> int:
    """Load a weights file into ``module`` (strict); returns the step it was saved at."""
    tensors = load_tensors(path, device)
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise RunError(f"{path}: weights do not match the model in config.json (missing {len(missing)}, "
                       f"unexpected {len(unexpected)} tensors, e.g. {(missing or unexpected)[0]!r}): "
                       f"weights of another run or another kind of run?")
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise RunError(f"{path}: weights do not match the model in config.json ({name!r} is "
                           f"{tuple(tensor.shape)}, the model needs {tuple(expected[name].shape)}): "
                           f"weights of another run?")
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise RunError(f"{path}: weights do not match the model in config.json "
                       f"({str(e).splitlines()[0]})") from None
    step = tensors_metadata(path).get("step", "-1")
    try:
        return int(step)
    except ValueError:
        raise RunError(f"{path}: its metadata 'step' is not an integer ({step[:20]!r})") from None
