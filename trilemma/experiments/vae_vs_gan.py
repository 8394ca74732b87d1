"""VAE, GAN and DDPM side by side: sample grids, sharpness, and the trilemma metrics (docs/methods.md §1, §2, §9).

    trilemma experiment vae-vs-gan --data fashion-mnist --out DIR [--minutes 8] [--vae RUN --gan RUN --ddpm RUN]

Trains each model the experiment is not given (``DIR/vae``, ``DIR/gan``,
``DIR/ddpm``, same wall-clock budget each, ``small`` presets; an existing
``DIR/<model>`` run is reused), then for every model:

- a grid of samples (``DIR/samples_<model>.png``; all of them with the real
  images in ``DIR/samples.png``);
- **sharpness**: the variance of the Laplacian of each sample
  (:mod:`trilemma.experiments.sharpness`), averaged over ``--sharpness-n``
  samples, against the same number of real test images;
- the **trilemma metrics** from :func:`trilemma.metrics.evaluate_run` on ``--n``
  samples (quality: FID, KID, precision; coverage: recall, coverage, modes hit,
  class JS; speed: NFE, images/s), saved as ``RUN/eval.json`` so ``trilemma
  compare`` reuses them. The real training images are scored as a floor.

Outputs: ``DIR/report.md`` (the table, the full metrics table of ``trilemma
compare``, and the two claims of the lecture checked against the numbers —
"GAN samples are sharper than VAE samples" and "GANs cover the modes worse than
likelihood models" — stated as holding or not, whichever the numbers say),
``DIR/results.json``, ``DIR/trilemma.png``. The DDPM is sampled with
``--ddim-steps`` DDIM steps (η = 0).
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
from trilemma.experiments.sharpness import sharpness_summary
from trilemma.metrics.evaluate import MIN_IMAGES
from trilemma.registry import load_run
from trilemma.run import SampleOptions, read_run_config, weights_step
from trilemma.utils.console import say
from trilemma.utils.device import pick_device
from trilemma.utils.io import read_json, write_json
from trilemma.viz import _pyplot, grid_array, save_figure, save_grid

MODELS = ("vae", "gan", "ddpm")
NAMES = {"vae": "VAE", "gan": "GAN (DCGAN)", "ddpm": "DDPM", "real": "real images"}


@dataclass(frozen=True)
class VaeVsGanConfig:
    data: str = "fashion-mnist"
    minutes: float | None = None       # training budget per model (default 8 when --steps is not given)
    steps: int | None = None           # or: optimiser steps per model (GAN: Algorithm-1 iterations)
    preset: str = "small"
    n: int = 1000                      # samples per model for the trilemma metrics
    sharpness_n: int = 250             # samples per model (and real test images) for the sharpness
    grid_n: int = 64
    ddim_steps: int = 50
    batch_size: int = 250              # sampling batch size
    speed_batches: int = 1             # timed batches for images/s (after one warm-up batch)
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        if self.minutes is not None and self.steps is not None:
            raise TrilemmaError("give at most one of --minutes and --steps")
        for name in ("n", "sharpness_n", "grid_n", "ddim_steps", "batch_size", "speed_batches"):
            if getattr(self, name) <= 0:
                raise TrilemmaError(f"--{name.replace('_', '-')}: must be positive, got {getattr(self, name)}")
        if self.n < MIN_IMAGES:
            raise TrilemmaError(f"--n: the metrics need at least {MIN_IMAGES} samples per model, got {self.n}")

    @property
    def budget(self) -> dict[str, Any]:
        if self.steps is not None:
            return {"steps": self.steps}
        return {"minutes": self.minutes if self.minutes is not None else 8.0}


def train_missing(name: str, out: Path, cfg: VaeVsGanConfig, progress: bool) -> Path:
    """``out`` (= DIR/<model>) trained with the budget: a finished run is reused, an interrupted one continued."""
    state = run_state(out)
    if state == "started":
        raise TrilemmaError(f"{out} holds an unfinished run without a checkpoint; remove it or pass --{name} RUN")
    if state == "finished":
        say(f"vae-vs-gan: reusing the {name} run in {out}")
        return out
    fn, options = _trainer(name)
    if state == "interrupted":                     # its options are in its config.json; the budget is the same
        say(f"vae-vs-gan: continuing the interrupted {name} run in {out}")
        stop_if_interrupted(fn(out, resume=True, progress=progress, **cfg.budget))
        return out
    say(f"vae-vs-gan: training the {name} ({', '.join(f'{k} {v}' for k, v in cfg.budget.items())}) into {out}")
    stop_if_interrupted(fn(out, data=cfg.data, preset=cfg.preset, progress=progress, seed=cfg.seed,
                           device=cfg.device, **cfg.budget, **options))   # Ctrl-C: stop; a re-run continues it
    return out


def _trainer(name: str) -> tuple[Any, dict[str, Any]]:
    """The training function of model ``name`` and its options beyond data, preset, seed, device and budget."""
    if name == "vae":
        from trilemma.vae.train import train_vae

        return train_vae, dict(batch_size=128, lr=1e-3)
    if name == "gan":
        from trilemma.gan.train import train_gan

        return train_gan, dict(batch_size=64, lr=2e-4)
    from trilemma.ddpm.train import train_ddpm

    return train_ddpm, dict(batch_size=128, lr=1e-3, sample_every=1000)


def training_budget(path: Path) -> dict[str, Any]:
    """What a run was trained with: steps, minutes, batch size, preset, parameters (from its folder)."""
    config = read_run_config(path)
    trainer = read_json(path / "state" / "trainer.json") if (path / "state" / "trainer.json").is_file() else {}
    run = load_run(path, device="cpu")
    nets = {"vae": lambda: run.model, "gan": lambda: run.G, "ddpm": lambda: run.model}
    params = sum(p.numel() for p in nets[config["kind"]]().parameters()) if config["kind"] in nets else None
    return {"kind": config["kind"], "preset": config.get("preset"), "steps": trainer.get("step"),
            "minutes": None if "elapsed_s" not in trainer else trainer["elapsed_s"] / 60,
            "batch_size": config["train"]["batch_size"], "epochs": trainer.get("epoch"), "parameters": params}


def budget_text(b: dict[str, Any]) -> str:
    parts = []
    if b.get("minutes") is not None:
        parts.append(f"{b['minutes']:.1f} min")
    if b.get("steps") is not None:
        parts.append(f"{b['steps']:,} steps × {b['batch_size']}")
    if b.get("epochs") is not None:
        parts.append(f"{b['epochs']:.1f} epochs")
    if b.get("parameters") is not None:
        n = b["parameters"]
        parts.append((f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k") + " params"
                     + (" (G)" if b["kind"] == "gan" else ""))
    return ", ".join(parts) or "–"


def evaluate(path: Path, options: SampleOptions, cfg: VaeVsGanConfig, progress: bool) -> dict[str, Any]:
    """The trilemma metrics of a run (``RUN/eval.json`` reused when made at its step with the same n and sampling)."""
    from trilemma.metrics import evaluate_run
    from trilemma.metrics.evaluate import EVAL_FILE

    cached = path / EVAL_FILE
    run = load_run(path, device=cfg.device)
    if cached.is_file():
        result = read_json(cached)
        src = result.get("source", {})
        if (result.get("n") == cfg.n and src.get("sampling") == run.sampling_record(options)
                and src.get("seed") == cfg.seed and src.get("step") == weights_step(path)):
            say(f"vae-vs-gan: reusing {cached}")
            return result
    say(f"vae-vs-gan: scoring {cfg.n} samples of {path} ({run.describe(options)})")
    result = evaluate_run(run, cfg.n, options, seed=cfg.seed, batch_size=cfg.batch_size,
                          speed_batches=cfg.speed_batches, progress=progress, log=say if progress else None)
    write_json(cached, result)
    return result


def sample_options(kind: str, cfg: VaeVsGanConfig) -> SampleOptions:
    return SampleOptions(sampler="ddim", steps=cfg.ddim_steps) if kind == "ddpm" else SampleOptions()


def claims(results: dict[str, dict[str, Any]]) -> list[str]:
    """The lecture's two claims, checked against the measurements and stated either way."""
    s = {k: results[k]["sharpness"] for k in results}
    vae, gan, real = s["vae"]["laplacian_var_mean"], s["gan"]["laplacian_var_mean"], s["real"]["laplacian_var_mean"]
    z = (gan - vae) / math.hypot(s["gan"]["laplacian_var_sem"], s["vae"]["laplacian_var_sem"])
    sharper = "holds" if gan > vae and z > 3 else ("does NOT hold" if gan < vae and z < -3 else "is not decided")
    out = [f"- **\"GAN samples are sharper than VAE samples\" {sharper}** on these runs: variance of the Laplacian "
           f"{gan:.4f} (GAN) vs {vae:.4f} (VAE), real images {real:.4f}; difference {z:+.1f} standard errors. "
           f"The VAE reaches {vae / real:.0%} of the real images' sharpness, the GAN {gan / real:.0%}."]
    cov = {k: results[k]["metrics"]["coverage"] for k in MODELS}
    for other in ("vae", "ddpm"):
        lower = [m for m in ("recall", "coverage") if cov["gan"][m] < cov[other][m]]
        verdict = "holds" if len(lower) == 2 else ("holds in part" if lower else "does NOT hold")
        out.append(f"- **\"GANs cover the modes worse than likelihood models\", GAN vs {NAMES[other]}: {verdict}**: "
                   + "; ".join(f"{m} {cov['gan'][m]:.3f} (GAN) vs {cov[other][m]:.3f} ({NAMES[other]})"
                               for m in ("recall", "coverage"))
                   + f"; modes hit {cov['gan']['modes_hit']}/{cov['gan']['num_classes']} vs "
                     f"{cov[other]['modes_hit']}/{cov[other]['num_classes']}.")
    return out


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def results_table(results: dict[str, dict[str, Any]]) -> str:
    header = ["model", "training budget", "sampling", "sharpness Var(∇²x)", "÷ real", "FID ↓", "KID ↓",
              "precision ↑", "recall ↑", "coverage ↑", "modes hit", "class JS ↓", "NFE ↓", "img/s ↑"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    real = results["real"]["sharpness"]["laplacian_var_mean"]
    for key, r in results.items():
        m, sh = r["metrics"], r["sharpness"]
        q, c, sp = m["quality"], m["coverage"], m["speed"]
        modes = "–" if c["modes_hit"] is None else f"{c['modes_hit']}/{c['num_classes']}"
        lines.append("| " + " | ".join([
            NAMES[key], r.get("budget_text", "–"), r.get("sampling", "–"),
            f"{sh['laplacian_var_mean']:.4f} ± {sh['laplacian_var_sem']:.4f}", f"{sh['laplacian_var_mean'] / real:.2f}",
            _fmt(q["fid"], 2), _fmt(q["kid_mean"]), _fmt(q["precision"]), _fmt(c["recall"]), _fmt(c["coverage"]), modes,
            _fmt(c["class_js"], 4), _fmt(sp.get("nfe")), _fmt(sp.get("images_per_s"), 1)]) + " |")
    return "\n".join(lines) + "\n"


def plot_samples(grids: dict[str, torch.Tensor], results: dict[str, dict[str, Any]], path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(grids), figsize=(4.2 * len(grids), 4.9))
    for ax, (key, images) in zip(axes, grids.items()):
        arr = grid_array(images, nrow=8)
        ax.imshow(arr.squeeze(-1) if arr.shape[-1] == 1 else arr, cmap="gray", vmin=0, vmax=255)
        sh = results[key]["sharpness"]["laplacian_var_mean"]
        fid = results[key]["metrics"]["quality"]["fid"]
        ax.set_title(f"{NAMES[key]}\nsharpness {sh:.4f}" + (f", FID {fid:.1f}" if fid is not None else ""),
                     fontsize=10)
        ax.axis("off")
    return save_figure(fig, path)


def run_vae_vs_gan(cfg: VaeVsGanConfig, out: str | Path, runs: dict[str, str | None] | None = None,
                   progress: bool = True) -> dict[str, Any]:
    from trilemma.metrics import evaluate_images

    out = Path(out)
    load_dataset(cfg.data, "train")                                       # a bad --data fails before any training
    pick_device(cfg.device)
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, "vae-vs-gan", {"data": data_key(cfg.data), **cfg.budget, "preset": cfg.preset,
                                       "seed": cfg.seed})
    runs = runs or {}
    paths: dict[str, Path] = {}
    for name in MODELS:                                  # check every given run before training anything
        if runs.get(name):
            kind = read_run_config(runs[name])["kind"]
            if kind != name:
                raise TrilemmaError(f"--{name} {runs[name]}: a {kind} run, not {name}")
            paths[name] = Path(runs[name])
    for name in MODELS:
        if name not in paths:
            paths[name] = train_missing(name, out / name, cfg, progress)

    results: dict[str, dict[str, Any]] = {}
    grids: dict[str, torch.Tensor] = {}
    test = load_dataset(cfg.data, "test")
    real = test.images[torch.randperm(len(test), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.sharpness_n]]
    grids["real"] = real[:cfg.grid_n]
    train_images = load_dataset(cfg.data, "train").images[:cfg.n]
    results["real"] = {"sharpness": sharpness_summary(real), "sampling": "–",
                       "budget_text": f"training images ({cfg.n}) scored like samples",
                       "metrics": evaluate_images(train_images, cfg.data, progress=progress,
                                                  source={"kind": "images", "path": f"{cfg.data} train split"})}
    for name in MODELS:
        options = sample_options(read_run_config(paths[name])["kind"], cfg)
        run = load_run(paths[name], device=cfg.device)
        say(f"vae-vs-gan: {cfg.sharpness_n} samples of {NAMES[name]} for the grid and the sharpness")
        images = run.generate(max(cfg.sharpness_n, cfg.grid_n), seed=cfg.seed, batch_size=cfg.batch_size,
                              options=options, progress=progress)                 # uint8 (N, C, H, W)
        grids[name] = images[:cfg.grid_n]
        save_grid(grids[name], out / f"samples_{name}.png")
        budget = training_budget(paths[name])
        results[name] = {"run": str(paths[name]), "budget": budget, "budget_text": budget_text(budget),
                         "sampling": run.describe(options), "sharpness": sharpness_summary(images[:cfg.sharpness_n]),
                         "metrics": evaluate(paths[name], options, cfg, progress)}
    save_grid(grids["real"], out / "samples_real.png")
    plot_samples(grids, results, out / "samples.png")
    return write_report(results, cfg, out)


def write_report(results: dict[str, dict[str, Any]], cfg: VaeVsGanConfig, out: Path) -> dict[str, Any]:
    """``report.md``, ``results.json`` and ``trilemma.png`` from the per-model results."""
    from trilemma.metrics.report import markdown_table, plot_trilemma

    rows = [(NAMES[k], results[k]["metrics"]) for k in ("real", *MODELS)]
    plot_trilemma(rows[1:], out / "trilemma.png")
    verdicts = claims(results)
    report = "\n".join([
        f"# VAE vs GAN vs DDPM on {cfg.data}", "",
        f"Sharpness on {cfg.sharpness_n} samples per model (and {cfg.sharpness_n} real test images); trilemma "
        f"metrics on {cfg.n} samples per model against the test split (the real row: {cfg.n} training images). "
        f"DDPM sampled with {cfg.ddim_steps}-step DDIM (η = 0).", "",
        results_table(results), *verdicts, "", "## All metrics (as `trilemma compare` shows them)", "",
        markdown_table(rows)])
    (out / "report.md").write_text(report)
    write_json(out / "results.json", {"config": asdict(cfg), "claims": verdicts, "results": results})
    return {"report": report, "results": results, "claims": verdicts}


def main(args: argparse.Namespace) -> int:
    """``trilemma experiment vae-vs-gan`` (options in :func:`trilemma.experiments.add_vae_vs_gan`)."""
    keys = ("data", "minutes", "steps", "preset", "n", "sharpness_n", "ddim_steps", "batch_size", "seed", "device")
    cfg = VaeVsGanConfig(**{k: getattr(args, k) for k in keys if getattr(args, k) is not None})
    out = run_vae_vs_gan(cfg, args.out, {"vae": args.vae, "gan": args.gan, "ddpm": args.ddpm},
                         progress=not args.quiet)
    print(out["report"], end="")
    say(f"vae-vs-gan: wrote {Path(args.out) / 'report.md'}, samples.png, trilemma.png and results.json")
    return 0
