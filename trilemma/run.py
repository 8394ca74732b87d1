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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from trilemma.data import DataConfig, to_uint8
from trilemma.errors import RunError, TrilemmaError
from trilemma.utils.io import load_tensors, read_json, save_tensors, tensors_metadata


@dataclass(frozen=True)
class SampleOptions:
    """How to draw samples. Diffusion runs use the sampler fields; other kinds ignore them."""

    sampler: str = "ddim"                 # ddpm, ddim, dpmpp-2m, dpmpp-2m-sde, unipc, heun, euler
    steps: int | None = None              # DDIM: default 50; DDPM: default T (respaced when fewer)
    eta: float = 0.0                      # DDIM stochasticity (0 = deterministic, 1 = DDPM-like)
    spacing: str = "trailing"             # leading, trailing, linspace (+ karras, logsnr for the solvers)
    variance: Literal["beta", "beta_tilde"] = "beta_tilde"   # DDPM σ_t²
    clip: bool | None = None              # clamp x̂₀ to [-1, 1]; None = the run's default
    guidance: float = 1.0                 # classifier-free guidance weight w
    label: int | None = None              # class-conditional runs: the class to draw
    prompt: str | None = None             # text-to-image runs
    negative: str | None = None           # text-to-image: negative prompt (replaces ∅)

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
        self.data_config = DataConfig.from_dict(config["data"])

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

    def steps_per_batch(self, options: SampleOptions) -> int:
        """Sequential network calls for one batch (the length of the progress bar per batch)."""
        return 1


def read_run_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path}: no such run folder")
    if not (path / "config.json").is_file():
        raise RunError(f"{path}: not a run folder (no config.json)")
    config = read_json(path / "config.json")
    if not isinstance(config, dict) or "kind" not in config:
        raise RunError(f"{path}/config.json: missing 'kind'")
    return config


def grid_rows(n: int) -> int:
    return max(1, math.ceil(math.sqrt(n)))


def save_weights(path: Path, module: nn.Module, step: int) -> None:
    save_tensors(path, module.state_dict(), metadata={"step": str(step), "format": "trilemma"})


def load_weights(path: Path, module: nn.Module, device: torch.device | str = "cpu") -> int:
    """Load a weights file into ``module`` (strict); returns the step it was saved at."""
    tensors = load_tensors(path, device)
    missing, unexpected = module.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise RunError(f"{path}: weights do not match the model in config.json "
                       f"(missing {len(missing)}, unexpected {len(unexpected)} tensors)")
    return int(tensors_metadata(path).get("step", -1))
