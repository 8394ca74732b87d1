"""The generative learning trilemma, measured: six models under one wall-clock budget (docs/methods.md §9, §11).

    trilemma experiment trilemma --data fashion-mnist --minutes 8 --out DIR [--preset small] [--n 1000]

Trains, on the same data and each with the same budget (``--minutes`` of wall clock, or ``--steps``
for tests): a VAE (``DIR/vae``), a DCGAN (``DIR/gan``), a pixel DDPM (``DIR/ddpm``), a latent DDPM
(``DIR/ae`` + ``DIR/ldm``), a denoising diffusion GAN in pixel space (``DIR/ddgan``, T = 4, the
paper's method) and one on the same autoencoder's latents (``DIR/lddgan``, T = 4). A latent arm's
budget includes its autoencoder: the autoencoder gets a third of the minutes and the latent model
the rest (``--minutes`` minus the autoencoder's training time as its loop measured it; encoding
the training set into the latent cache and the autoencoder's scale-factor pass are not counted).
Both latent arms share the one autoencoder, so each is charged for it in full.
With ``--steps`` every network, the autoencoder included, gets that many steps.

Every model is then scored by :func:`trilemma.metrics.evaluate_run` with the same ``--n``, seed and
batch size against the test split (FID, KID, precision, recall, coverage, NFE, images/s); the
DDPM twice, with 50-step DDIM and with the library's default sampler at 10 network evaluations
(``--sampler auto``: UniPC on Karras' σ grid there, the best few-step solver measured in
docs/sampling.md); the latent DDPM with 50-step DDIM. The training images are
scored as a floor. ``--repeats K`` scores each model on K sets of ``--n`` samples (sampling seeds
``--seed`` … ``--seed + K − 1``): the table shows mean ± sd, and each DDGAN-vs-GAN FID claim says whether
the difference is beyond twice its standard error.

Outputs: ``DIR/trilemma.md`` (one row per model, and the paper's claims for DDGAN checked against
the numbers), ``DIR/results.json``, ``DIR/trilemma.png`` (FID against images/s on log axes,
colour = recall, marker size = coverage, with a sample grid per model beside it) and
``DIR/samples_<row>.png``. Ctrl-C stops the experiment after the run in training has saved its
checkpoint. Re-running reuses finished runs and continues interrupted ones (a
checkpoint short of the run's budget, as Ctrl-C leaves it: :func:`trilemma.experiments.run_state`),
only with the same data, budget, preset and seed, recorded in ``DIR/settings.json`` (else it is
refused), and reuses finished evaluations (``DIR/evals/<row>.json``, when made at the run's step with
the same n and seed, and for the diffusion rows the same sampling options).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from trilemma.data import load_dataset
from trilemma.errors import TrilemmaError
from trilemma.experiments import check_settings, data_key, run_state, stop_if_interrupted
from trilemma.metrics.report import metric_cell
from trilemma.metrics.evaluate import MIN_IMAGES
from trilemma.registry import load_run
from trilemma.run import SampleOptions, read_run_config, weights_step
from trilemma.utils.console import say
from trilemma.utils.device import pick_device
from trilemma.utils.io import read_json, write_json
from trilemma.viz import _pyplot, grid_array, save_figure, save_grid

# Run folders in training order; the latent arms are "ae" then "ldm" and "lddgan".
RUNS = ("vae", "gan", "ddpm", "ae", "ldm", "ddgan", "lddgan")
LATENT = ("ldm", "lddgan")     # trained on the latents of DIR/ae, within the budget left by it
DDGANS = ("ddgan", "lddgan")   # the rows whose claims (Xiao et al. 2022) are checked
DIFFUSION_ROWS = ("ddpm-ddim", "ddpm-fast", "ldm")   # the rows whose sampling options matter
# Rows of the table: key -> (run folder, label).
ROWS = {"vae": ("vae", "VAE"), "gan": ("gan", "GAN (DCGAN)"), "ddpm-ddim": ("ddpm", "DDPM, DDIM"),
        "ddpm-fast": ("ddpm", "DDPM, fast solver"), "ldm": ("ldm", "latent DDPM, DDIM"),
        "ddgan": ("ddgan", "DDGAN"), "lddgan": ("lddgan", "latent DDGAN")}
MIN_MINUTES = 0.25             # per model: below it the autoencoder's first steps can use up a latent arm
AE_SHARE = 1 / 3               # of the latent arm's minutes, for the autoencoder
LDDGAN_LR, LDDGAN_LR_D = 6.4e-4, 1e-3     # the latent DDGAN's G and D learning rates (see train_run)
LDDGAN_D_STEPS = 2                         # and its D updates per G update
LDDGAN_DIV_WEIGHT = 1.0                    # and the weight of G's diversity term (its cap: the default 0.5)
LDDGAN_WIDTHS = {"small": {"base_channels": 16, "d_channels": 16}}   # per preset: G and D at half the preset's width
LDDGAN_DECAY = {"lr_decay": "cosine", "lr_final": 0.25}   # both rates by a cosine to a quarter over the budget,
LDDGAN_DECAY_MINUTES = 50                                 # when the latent DDGAN's own --minutes are at least this
LDDGAN_T_WEIGHTS = {4: (3.0, 2.0, 2.0, 1.0)}              # per T: the training draws of t, P(t = 1..T) ∝ these


def lddgan_options(preset: str, minutes: float | None = None, T: int = 4) -> dict[str, Any]:
    """The latent DDGAN's training options beyond the shared ones, for the experiment's ``preset``.

    G's and D's learning rates, 2 D updates per G update and the diversity term at every preset; at
    ``small`` (the CPU preset) also G and D at half the preset's widths; and when the latent DDGAN's
    own budget is at least ``LDDGAN_DECAY_MINUTES`` of wall clock (``minutes``; the experiment's
    ``--minutes`` less the autoencoder's), both rates decayed by a cosine to a quarter of their values
    over it. Measured on Fashion-MNIST latents (docs/ddgan.md): half widths make about 2.2× the
    iterations and gave lower FIDs after 20, 40 and 50 minutes (two seeds) and after 80 (FID 23.3 and
    22.7 against the full widths' 26.4; one score at n = 2000 carries a sampling noise of ±1–1.5, and
    one run's checkpoints differ by as much again). The decay to a quarter (a decay to zero lost its
    gains by the end) gave FID 15.6 ± 1.2 and 16.4 ± 1.5 after 80 minutes of its own (five sampling
    seeds, two training seeds) against 24.3 and 22.2 with constant rates and the DCGAN's 21.0 after
    90, and 22.5 and 25.7 against about 27 after 50; after 20 it was no better (43.9 and 36.5 against
    36.9 and 39.0), so shorter budgets keep the constant rates. The other presets keep their widths
    (``tiny`` is for tests, ``base`` for a GPU, where none of this was measured).

    At ``T`` = 4 (the experiment's default) t is drawn with P(t = 1..4) = (3, 2, 2, 1)/8 instead of
    uniformly, so more of both players' updates go to the last step, which alone sets the samples'
    recall (bench/ddgan_steps.py): FID 28.1 against 40.5 after 20 minutes, and 18.8 ± 1.0 and 19.7 ± 1.5
    (two training seeds, three sampling seeds) against 22.8 ± 1.4 after 50 minutes with the decay,
    recall 0.61–0.65 against 0.60 (docs/ddgan.md, "The last step sets the recall"). Other T draw
    uniformly (not measured).
    """
    decay = LDDGAN_DECAY if minutes is not None and minutes >= LDDGAN_DECAY_MINUTES else {}
    t_weights = {"t_weights": LDDGAN_T_WEIGHTS[T]} if T in LDDGAN_T_WEIGHTS else {}
    return {"lr": LDDGAN_LR, "lr_d": LDDGAN_LR_D, "d_steps": LDDGAN_D_STEPS, "div_weight": LDDGAN_DIV_WEIGHT,
            **t_weights, **decay, **LDDGAN_WIDTHS.get(preset, {})}


@dataclass(frozen=True)
class TrilemmaConfig:
    data: str = "fashion-mnist"
    minutes: float | None = None       # wall-clock training budget per model (default 8 when --steps is not given)
    steps: int | None = None           # or: optimiser steps per network (GAN, DDGAN: iterations of D and G)
    preset: str = "small"
    n: int = 1000                      # samples per model for the metrics
    repeats: int = 1                   # sets of n samples per model (sampling seeds seed, seed + 1, …): mean ± sd
    ddim_steps: int = 50
    fast_sampler: str = "auto"         # the default sampler at fast_steps NFE (UniPC, Karras grid, at 10)
    fast_steps: int = 10               # network evaluations of the fast solver
    ddgan_T: int = 4
    grid_n: int = 36
    batch_size: int = 250              # sampling batch size (and the images/s batch)
    speed_batches: int = 1
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        if self.minutes is not None and self.steps is not None:
            raise TrilemmaError("give at most one of --minutes and --steps")
        if self.minutes is not None and not self.minutes > 0:
            raise TrilemmaError(f"--minutes: must be positive, got {self.minutes}")
        for name in ("n", "repeats", "ddim_steps", "fast_steps", "grid_n", "batch_size", "speed_batches"):
            if getattr(self, name) <= 0:
                raise TrilemmaError(f"--{name.replace('_', '-')}: must be positive, got {getattr(self, name)}")
        if self.preset not in ("tiny", "small", "base"):
            raise TrilemmaError(f"--preset: must be tiny, small or base, got {self.preset!r}")
        if self.n < MIN_IMAGES:
            raise TrilemmaError(f"--n: the metrics need at least {MIN_IMAGES} samples per model, got {self.n}")
        if self.minutes is not None and self.minutes < MIN_MINUTES:
            raise TrilemmaError(f"--minutes: at least {MIN_MINUTES} per model (the latent arms share it between "
                                f"an autoencoder and a latent model), got {self.minutes:g}")

    def training_settings(self) -> dict[str, Any]:
        """What the runs of an experiment folder were trained with (see :func:`check_settings`)."""
        budget = {"steps": self.steps} if self.steps is not None else {"minutes": self.budget_minutes}
        return {"data": data_key(self.data), **budget, "preset": self.preset, "ddgan_T": self.ddgan_T,
                "seed": self.seed}

    @property
    def budget_minutes(self) -> float:
        return 8.0 if self.minutes is None else self.minutes

    def budget(self, name: str, ae_minutes: float | None = None) -> dict[str, Any]:
        """The training budget of run ``name``: steps, or minutes (the latent arm's split, see the module)."""
        if self.steps is not None:
            return {"steps": self.steps}
        if name == "ae":
            return {"minutes": self.budget_minutes * AE_SHARE}
        if name in LATENT:
            left = self.budget_minutes - (ae_minutes or 0.0)
            if left <= 0:
                raise TrilemmaError(f"the autoencoder used {ae_minutes:.2f} of the {self.budget_minutes} minutes")
            return {"minutes": left}
        return {"minutes": self.budget_minutes}

    def sampling(self, row: str) -> SampleOptions:
        if row not in DIFFUSION_ROWS:
            return SampleOptions()                 # one pass (VAE, GAN) or T generator calls (DDGAN)
        if row == "ddpm-fast":
            return SampleOptions(sampler=self.fast_sampler, steps=self.fast_steps)
        return SampleOptions(sampler="ddim", steps=self.ddim_steps)


# ----------------------------------------------------------------------------------------- training
def train_run(name: str, out: Path, cfg: TrilemmaConfig, progress: bool) -> Path:
    """Train ``DIR/<name>`` with its budget: reuse a finished run, continue an interrupted one."""
    path = out / name
    state = run_state(path)
    if state == "finished":
        say(f"trilemma: reusing the {name} run in {path}")
        return path
    if state == "started":
        raise TrilemmaError(f"{path} holds a run of an earlier attempt that stopped before its first checkpoint; "
                            f"remove it to train it again")
    ae_minutes = None
    if name in LATENT and cfg.steps is None:
        ae_minutes = read_json(out / "ae" / "state" / "trainer.json")["elapsed_s"] / 60
    budget = cfg.budget(name, ae_minutes)
    shown = ", ".join(f"{k} {v:.3g}" for k, v in budget.items())
    fn, options = trainer_of(name, out, cfg, budget)
    if state == "interrupted":                     # the options are in its config.json; the budget is the same
        say(f"trilemma: continuing the interrupted {name} run in {path} ({shown})")
        result = fn(path, resume=True, progress=progress, **budget)
    else:
        say(f"trilemma: training the {name} ({shown}) into {path}")
        result = fn(path, preset=cfg.preset, progress=progress, seed=cfg.seed, device=cfg.device, **budget, **options)
    stop_if_interrupted(result)                    # Ctrl-C: stop the experiment here; a re-run continues the run
    return path


def trainer_of(name: str, out: Path, cfg: TrilemmaConfig, budget: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The training function of run ``name`` and its options beyond preset, seed, device and budget."""
    if name == "vae":
        from trilemma.vae.train import train_vae

        return train_vae, dict(data=cfg.data, batch_size=128, lr=1e-3)
    if name == "gan":
        from trilemma.gan.train import train_gan

        return train_gan, dict(data=cfg.data, batch_size=64, lr=2e-4)
    if name == "ddpm":
        from trilemma.ddpm.train import train_ddpm

        return train_ddpm, dict(data=cfg.data, batch_size=128, lr=1e-3)
    if name == "ae":
        from trilemma.autoencoder.phase import autoencoder_factor
        from trilemma.autoencoder.train import train_autoencoder

        return train_autoencoder, dict(data=cfg.data, factor=autoencoder_factor(cfg.data),
                                       eval_n=min(cfg.n, 1000))   # + scale, rFID
    if name == "ldm":
        from trilemma.ldm.train import train_ldm

        return train_ldm, dict(autoencoder=out / "ae", batch_size=128, lr=1e-3)
    from trilemma.ddgan.train import train_ddgan

    # Pixel space: the paper's settings. Latent space (6-minute pilots on Fashion-MNIST latents,
    # docs/ddgan.md): G's lr 4× the paper's (6.4e-4, the best of 1×, 2×, 4×, 8×), 2 D updates per G
    # update (better than 1 and 3 at equal minutes) and D's lr 1e-3 (better than 5e-4 and 2e-3); 20- and
    # 40-minute pilots: the diversity term μ = 1, τ = 0.5 (FID 34.6 against 46.0 at 40 minutes, two seeds),
    # then with it G and D at half the `small` widths (FID 36.3 against 51.3 at 20 minutes, 23.0 against
    # 26.4 at 80, two seeds against one); 50- and 80-minute runs: the cosine decay to a quarter of the
    # rates (15.6 and 16.4 against 24.3 and 22.2 after 80, five sampling seeds each; no gain after 20);
    # 20- and 50-minute runs: t drawn with weights 3, 2, 2, 1 (FID 18.8 and 19.7 against 22.8 after 50).
    space = ({"autoencoder": out / "ae", **lddgan_options(cfg.preset, budget.get("minutes"), cfg.ddgan_T)}
             if name == "lddgan"
             else {"data": cfg.data})
    return train_ddgan, dict(T=cfg.ddgan_T, **space)


def training_budget(path: Path) -> dict[str, Any]:
    """What a run was trained with: steps, minutes, batch size, epochs, parameters of the sampling network."""
    config = read_run_config(path)
    state = read_json(path / "state" / "trainer.json")
    run = load_run(path, device="cpu")
    net = getattr(run, "G", None) if getattr(run, "G", None) is not None else getattr(run, "model", None)
    return {"kind": config["kind"], "preset": config.get("preset"), "steps": state.get("step"),
            "minutes": state.get("elapsed_s", 0.0) / 60, "batch_size": config["train"]["batch_size"],
            "epochs": state.get("epoch"),
            "parameters": None if net is None else sum(p.numel() for p in net.parameters())}


def budget_text(budgets: list[dict[str, Any]]) -> str:
    """``8.0 min, 1,234 steps × 64 (5.3 epochs), 1.2M params``; a latent arm as autoencoder + DDPM."""
    parts = []
    for b in budgets:
        n = b["parameters"]
        size = "" if n is None else f", {n / 1e6:.2f}M params" if n >= 1e6 else f", {n / 1e3:.0f}k params"
        epochs = "" if b.get("epochs") is None else f" ({b['epochs']:.1f} ep.)"
        parts.append(f"{b['kind']} {b['minutes']:.1f} min, {b['steps']:,} steps × {b['batch_size']}{epochs}{size}")
    return " + ".join(parts)


# ----------------------------------------------------------------------------------------- scoring
def evaluate(row: str, path: Path, out: Path, cfg: TrilemmaConfig, progress: bool) -> dict[str, Any]:
    """The metrics of a row, cached as ``DIR/evals/<row>.json`` (reused for the run's same step, with the same n,
    seed and repeats, and for the diffusion rows the same sampling options: the VAE, GAN and DDGAN rows
    ignore them, so a change of the library's sampler defaults does not re-score those)."""
    from trilemma.metrics import evaluate_run
    from trilemma.metrics.evaluate import repeat_sets

    options = cfg.sampling(row)
    cached = out / "evals" / f"{row}.json"
    if cached.is_file():
        result = read_json(cached)
        src = result.get("source", {})
        same_sampling = row not in DIFFUSION_ROWS or src.get("sampling") == options.to_dict()
        if (result.get("n") == cfg.n and same_sampling and src.get("seed") == cfg.seed
                and repeat_sets(result) == cfg.repeats and src.get("step") == weights_step(path)):
            say(f"trilemma: reusing {cached}")
            return result
    run = load_run(path, device=cfg.device)
    sets = f"{cfg.repeats} sets of " if cfg.repeats > 1 else ""
    say(f"trilemma: scoring {sets}{cfg.n} samples of {path} ({run.describe(options)})")
    result = evaluate_run(run, cfg.n, options, seed=cfg.seed, repeats=cfg.repeats, batch_size=cfg.batch_size,
                          speed_batches=cfg.speed_batches, progress=progress, log=say if progress else None)
    write_json(cached, result)
    return result


def evaluate_floor(out: Path, cfg: TrilemmaConfig, progress: bool) -> dict[str, Any]:
    """The training images scored like samples (``DIR/evals/real.json``)."""
    from trilemma.metrics import evaluate_images

    cached = out / "evals" / "real.json"
    if cached.is_file() and read_json(cached).get("n") == cfg.n:
        return read_json(cached)
    images = load_dataset(cfg.data, "train").images[:cfg.n]
    result = evaluate_images(images, cfg.data, progress=progress,
                             source={"kind": "images", "path": f"{cfg.data} train split"})
    write_json(cached, result)
    return result


# ----------------------------------------------------------------------------------------- report
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else f"{value:,}" if isinstance(value, int) else str(value)


def results_table(results: dict[str, dict[str, Any]]) -> str:
    header = ["model", "sampling", "FID ↓", "KID ↓", "precision ↑", "recall ↑", "coverage ↑", "NFE ↓", "img/s ↑",
              "training budget"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in results.values():
        m = r["metrics"]
        q, c, sp = m["quality"], m["coverage"], m["speed"]
        lines.append("| " + " | ".join([
            r["label"], r["sampling"], metric_cell(m, "quality", "fid", 2), _fmt(q["kid_mean"], 4),
            metric_cell(m, "quality", "precision"), metric_cell(m, "coverage", "recall"),
            metric_cell(m, "coverage", "coverage"),
            _fmt(sp.get("nfe")), _fmt(sp.get("images_per_s"), 1),
            r["budget_text"]]) + " |")
    return "\n".join(lines) + "\n"


def noise_note(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Whether two rows' mean FIDs differ by more than twice the standard error of the difference
    (``""`` unless both were scored on several sample sets)."""
    from trilemma.metrics.evaluate import repeat_sd, repeat_sets

    sd_a, sd_b = repeat_sd(a, "quality.fid"), repeat_sd(b, "quality.fid")
    if sd_a is None or sd_b is None:
        return ""
    k_a, k_b = repeat_sets(a), repeat_sets(b)
    se = math.sqrt(sd_a ** 2 / k_a + sd_b ** 2 / k_b)    # standard error of the difference of the two means
    diff = abs(a["quality"]["fid"] - b["quality"]["fid"])
    return (f" (mean ± sd over sampling seeds; the difference, {diff:.2f}, is "
            f"{'within' if diff < 2 * se else 'beyond'} twice its standard error, {2 * se:.2f}: this measures "
            f"the sampling noise of these two trained models, not the spread between training runs)")


def claims(results: dict[str, dict[str, Any]]) -> list[str]:
    """DDGAN's claims (Xiao et al. 2022, Table 1 / Fig. 1) checked against these numbers, stated either way.

    For each DDGAN row (pixel space, and latent space): better FID than the GAN, better mode coverage
    (recall and coverage) than the GAN, and ≥ 10× the sampling speed of the DDPM with DDIM.
    """
    m = {k: r["metrics"] for k, r in results.items()}
    gan, ddim = m["gan"], m["ddpm-ddim"]
    out = []
    for row in (r for r in DDGANS if r in m):
        dd, name = m[row], results[row]["label"]
        fid_dd, fid_gan = dd["quality"]["fid"], gan["quality"]["fid"]
        out.append(f"- **{name} ({dd['speed']['nfe']} NFE) {'beats' if fid_dd < fid_gan else 'does NOT beat'} the GAN "
                   f"on FID**: {metric_cell(dd, 'quality', 'fid', 2)} vs {metric_cell(gan, 'quality', 'fid', 2)}"
                   f"{noise_note(dd, gan)}.")
        better = [k for k in ("recall", "coverage") if (dd["coverage"][k] or 0) > (gan["coverage"][k] or 0)]
        verdict = "holds" if len(better) == 2 else "holds in part" if better else "does NOT hold"
        out.append(f"- **\"{name} covers the modes better than the GAN\" {verdict}**: " + "; ".join(
            f"{k} {dd['coverage'][k]:.3f} ({name}) vs {gan['coverage'][k]:.3f} (GAN)" for k in ("recall", "coverage"))
            + ".")
        fast, slow = dd["speed"].get("images_per_s"), ddim["speed"].get("images_per_s")
        if fast and slow:
            ratio = fast / slow
            out.append(f"- **{name} samples {ratio:.1f}× as fast as the DDPM with {ddim['speed']['nfe']}-step DDIM** "
                       f"({fast:.1f} vs {slow:.1f} images/s; the ≥ 10× claim "
                       f"{'holds' if ratio >= 10 else 'does NOT hold'}); its FID {fid_dd:.2f} vs the DDPM's "
                       f"{ddim['quality']['fid']:.2f}.")
    return out


def plot(results: dict[str, dict[str, Any]], grids: dict[str, torch.Tensor], floor: dict[str, Any] | None,
         path: Path) -> Path:
    """FID (log) against images/s (log), colour = recall, size = coverage; one sample grid per model beside it."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plt = _pyplot()
    keys = list(results)
    cols = 3
    rows = math.ceil(len(keys) / cols)
    fig = plt.figure(figsize=(8 + 2.6 * cols, max(5.5, 2.9 * rows)))
    spec = fig.add_gridspec(rows, 1 + cols, width_ratios=[3.2] + [1] * cols)
    ax = fig.add_subplot(spec[:, 0])
    placed = [k for k in keys if results[k]["metrics"]["speed"].get("images_per_s")
              and results[k]["metrics"]["quality"]["fid"] is not None]
    xs = [results[k]["metrics"]["speed"]["images_per_s"] for k in placed]
    ys = [max(results[k]["metrics"]["quality"]["fid"], 1e-3) for k in placed]
    recall = [results[k]["metrics"]["coverage"]["recall"] or 0.0 for k in placed]
    sizes = [60 + 440 * (results[k]["metrics"]["coverage"]["coverage"] or 0.0) for k in placed]
    sc = ax.scatter(xs, ys, c=recall, s=sizes, cmap="viridis", vmin=0, vmax=1, edgecolors="black",
                    linewidths=0.8, zorder=3)
    fig.colorbar(sc, ax=ax, label="recall (colour)", fraction=0.05, pad=0.02)
    for k, x, y in zip(placed, xs, ys):
        ax.annotate(f"{results[k]['label']}\n({results[k]['metrics']['speed']['nfe']} NFE)", (x, y),
                    textcoords="offset points", xytext=(8, 5), fontsize=8)
    if floor is not None and floor["quality"]["fid"] is not None:
        y = max(floor["quality"]["fid"], 1e-3)
        ax.axhline(y, ls="--", lw=1, color="grey", zorder=1)
        ax.annotate("training images (floor)", (0.01, y), xycoords=("axes fraction", "data"),
                    textcoords="offset points", xytext=(0, 3), fontsize=8, color="dimgrey")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    if xs:
        ax.set_xlim(min(xs) / 3, max(xs) * 6)
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("images per second (log scale, faster →)")
    ax.set_ylabel("FID (log scale, lower is better)")
    ax.grid(alpha=0.3, which="both")
    ax.set_title("The generative learning trilemma: quality vs sampling speed\n"
                 "colour = recall, marker size = coverage", fontsize=10)
    for i, k in enumerate(keys):
        g = fig.add_subplot(spec[i // cols, 1 + i % cols])
        arr = grid_array(grids[k], nrow=6)
        g.imshow(arr.squeeze(-1) if arr.shape[-1] == 1 else arr, cmap="gray", vmin=0, vmax=255)
        fid = results[k]["metrics"]["quality"]["fid"]
        nfe = results[k]["metrics"]["speed"].get("nfe")
        g.set_title(f"{results[k]['label']}\n{nfe} NFE, FID {_fmt(fid, 1)}", fontsize=8)
        g.axis("off")
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------- the experiment
def run_trilemma(cfg: TrilemmaConfig, out: str | Path, progress: bool = True) -> dict[str, Any]:
    out = Path(out)
    load_dataset(cfg.data, "train")                                       # a bad --data fails before any training
    pick_device(cfg.device)                                               # and so does a bad --device
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, "trilemma", cfg.training_settings())
    paths = {name: train_run(name, out, cfg, progress) for name in RUNS}
    budgets = {name: training_budget(paths[name]) for name in RUNS}

    results: dict[str, dict[str, Any]] = {}
    grids: dict[str, torch.Tensor] = {}
    for row, (name, label) in ROWS.items():
        options = cfg.sampling(row)
        metrics = evaluate(row, paths[name], out, cfg, progress)
        run = load_run(paths[name], device=cfg.device)
        grids[row] = run.generate(cfg.grid_n, seed=cfg.seed, batch_size=cfg.grid_n, options=options, progress=False)
        save_grid(grids[row], out / f"samples_{row}.png")
        arm = [budgets["ae"], budgets[name]] if name in LATENT else [budgets[name]]
        results[row] = {"label": label, "run": str(paths[name]), "sampling": run.describe(options),
                        "budget": arm, "budget_text": budget_text(arm), "metrics": metrics}
    floor = evaluate_floor(out, cfg, progress)
    plot(results, grids, floor, out / "trilemma.png")
    verdicts = claims(results)
    budget = (f"{cfg.steps} steps per network" if cfg.steps is not None else
              f"{cfg.budget_minutes:g} minutes of wall clock per model (latent arm: autoencoder "
              f"{cfg.budget_minutes * AE_SHARE:.2f} min + the latent DDPM or DDGAN the rest)")
    fq, fc = floor["quality"], floor["coverage"]
    report = "\n".join([
        f"# The trilemma on {cfg.data}", "",
        (f"Budget: {budget}; `{cfg.preset}` presets; device {pick_device(cfg.device)}. Metrics on {cfg.n} samples "
         f"per model (seed {cfg.seed}, batch {cfg.batch_size}) against the test split; images/s is the median over "
         f"the sampling batches after the first."
         + (f" Each model was scored on {cfg.repeats} sets of {cfg.n} samples (sampling seeds {cfg.seed}–"
            f"{cfg.seed + cfg.repeats - 1}): FID, precision, recall and coverage are their mean ± sd."
            if cfg.repeats > 1 else "")), "",
        results_table(results),
        (f"Floor (the first {cfg.n} training images scored like samples): FID {_fmt(fq['fid'], 2)}, precision "
         f"{_fmt(fq['precision'])}, recall {_fmt(fc['recall'])}, coverage {_fmt(fc['coverage'])}."), "",
        *verdicts, ""])
    (out / "trilemma.md").write_text(report)
    write_json(out / "results.json", {"config": asdict(cfg), "claims": verdicts, "floor": floor, "results": results})
    return {"report": report, "results": results, "claims": verdicts}


def main(args: argparse.Namespace) -> int:
    """``trilemma experiment trilemma`` (options in :func:`trilemma.cli.experiment.add_trilemma`)."""
    keys = ("data", "minutes", "steps", "preset", "n", "repeats", "ddim_steps", "batch_size", "seed", "device")
    cfg = TrilemmaConfig(**{k: getattr(args, k) for k in keys if getattr(args, k, None) is not None})
    out = run_trilemma(cfg, args.out, progress=not args.quiet)
    print(out["report"], end="")
    say(f"trilemma: wrote {Path(args.out) / 'trilemma.md'}, trilemma.png and results.json")
    return 0
