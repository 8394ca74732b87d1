"""The speed axis of the trilemma: FID against network evaluations for every sampler (docs/methods.md §9, §10).

    trilemma experiment steps RUN --nfe 4,6,8,10,15,20,50 --n 2000 --out DIR \\
        [--samplers ddim,dpmpp-2m,…] [--spacing karras] [--seed 0] [--batch-size 250] [--device auto]

For every sampler (default: ddim, dpmpp-2m, dpmpp-2m-sde, unipc, heun, euler) at every NFE
budget, the trilemma metrics of :func:`trilemma.metrics.evaluate_run` on ``--n`` samples (FID,
KID, precision, recall, coverage, images/s), plus the reference the solvers try to match
cheaply: DDPM ancestral sampling on all T steps (Algorithm 2, T network evaluations; "DDPM-1000"
for the usual T). Every cell uses the same seed, so every sampler starts from the same noise
x_T (the stochastic ones then draw their own noise from the same generator).

``--nfe`` counts network evaluations (``--steps`` of ``trilemma sample``; docs/methods.md §10.6).
Heun spends two per step but one on its last step, so it walks N = ⌊(NFE + 1)/2⌋ steps and uses
2N − 1 evaluations: exactly NFE when NFE is odd, NFE − 1 when it is even (4 → 3, 6 → 5, 10 → 9,
50 → 49). Each row records both the budget and the evaluations used; the plot puts Heun at the
evaluations it used. η is each sampler's default (0 for ddim/euler, 1 for dpmpp-2m-sde).
Without ``--spacing`` every sampler walks its default time steps (trailing whole steps for ddim and
the DDPM reference; for the solvers the karras grid from 8 NFE, trailing below: the defaults of
``trilemma sample``); a ``--spacing`` applies to every sampler, except that ddim walks whole steps,
so with karras/logsnr it stays on ``trailing``. Each row records the spacing it used.

Every cell is cached in ``DIR/cells/<sampler>_<nfe>.json`` together with the key it was made
under (the SHA-256 of the run's sampling weights, n, seed, batch size and the sampling options);
a re-run computes only the cells whose key is missing or different, so adding a sampler or an NFE
costs only the new cells. Outputs: ``DIR/steps.md`` (the FID-vs-NFE table and the full table),
``DIR/steps.json``, ``DIR/steps.png`` (FID vs NFE, log x, one line per sampler, DDPM-T as a
horizontal line).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from trilemma.ddpm.run import DiffusionRun
from trilemma.diffusion.samplers import (
    SAMPLERS,
    SOLVER_SPACINGS,
    SPACINGS,
    solver_nfe,
    solver_points,
)
from trilemma.errors import TrilemmaError
from trilemma.metrics.features import file_sha256
from trilemma.registry import load_run
from trilemma.run import SampleOptions
from trilemma.utils.console import say
from trilemma.utils.io import read_json, write_json
from trilemma.viz import _pyplot, save_figure

DEFAULT_SAMPLERS = ("ddim", "dpmpp-2m", "dpmpp-2m-sde", "unipc", "heun", "euler")
DEFAULT_NFE = (4, 6, 8, 10, 15, 20, 50)
CELLS_DIR = "cells"
CACHE_VERSION = 1
METRIC_KEYS = (("quality", "fid"), ("quality", "kid_mean"), ("quality", "kid_std"), ("quality", "precision"),
               ("coverage", "recall"), ("coverage", "coverage"), ("speed", "images_per_s"))


@dataclass(frozen=True)
class StepsConfig:
    nfe: tuple[int, ...] = DEFAULT_NFE           # network-evaluation budgets (--steps of `trilemma sample`)
    samplers: tuple[str, ...] = DEFAULT_SAMPLERS
    n: int = 2000                                # samples per cell for the metrics
    seed: int = 0                                # the same for every cell: the same x_T
    batch_size: int = 250                        # sampling batch size
    spacing: str | None = None                   # time steps of every sampler (None: each one's default;
                                                 # ddim: whole steps only)
    reference: bool = True                       # also DDPM on all T steps
    speed_batches: int = 1                       # timed batches for images/s when n < 2 batches
    device: str = "auto"

    def __post_init__(self):
        object.__setattr__(self, "nfe", tuple(sorted({int(k) for k in self.nfe})))
        object.__setattr__(self, "samplers", tuple(dict.fromkeys(self.samplers)))
        if not self.nfe or min(self.nfe) < 1:
            raise TrilemmaError(f"--nfe: positive network-evaluation counts, got {self.nfe}")
        if not self.samplers:
            raise TrilemmaError("--samplers: give at least one sampler")
        for s in self.samplers:
            if s not in SAMPLERS:
                raise TrilemmaError(f"--samplers: unknown sampler {s!r}; expected some of {', '.join(SAMPLERS)}")
        if self.spacing is not None and self.spacing not in SOLVER_SPACINGS:
            raise TrilemmaError(f"--spacing: expected one of {', '.join(SOLVER_SPACINGS)}, got {self.spacing!r}")
        for name in ("n", "batch_size", "speed_batches"):
            if getattr(self, name) <= 0:
                raise TrilemmaError(f"--{name.replace('_', '-')}: must be positive, got {getattr(self, name)}")


def cell_options(sampler: str, nfe: int | None, spacing: str | None) -> SampleOptions:
    """The sampling of one cell: ``nfe`` evaluations (None: all T steps, for DDPM), the sampler's default η.

    ``spacing`` None: the sampler's default (:func:`~trilemma.diffusion.samplers.default_spacing`).
    """
    if sampler in ("ddpm", "ddim") and spacing is not None and spacing not in SPACINGS:
        spacing = "trailing"                     # whole steps only
    return SampleOptions(sampler=sampler, steps=nfe, spacing=spacing)          # η: the sampler's default


def nfe_used(sampler: str, nfe: int) -> int:
    """Network evaluations a budget of ``nfe`` really spends (Heun: 2⌊(nfe + 1)/2⌋ − 1)."""
    return solver_nfe(sampler, nfe) if sampler not in ("ddpm", "ddim") else nfe


def weights_file(run: DiffusionRun) -> Path:
    """The weights the run samples with: ``ema.safetensors`` when present, else ``model.safetensors``."""
    ema = run.path / "ema.safetensors"
    return ema if ema.is_file() else run.path / "model.safetensors"


def cell_key(weights_sha256: str, options: SampleOptions, cfg: StepsConfig) -> dict[str, Any]:
    """Everything a cell's numbers depend on; a cached cell is reused only under an equal key."""
    return {"version": CACHE_VERSION, "weights_sha256": weights_sha256, "n": cfg.n, "seed": cfg.seed,
            "batch_size": cfg.batch_size, "sampling": options.to_dict()}


def cell_path(out: Path, sampler: str, nfe: int | None, T: int) -> Path:
    return out / CELLS_DIR / f"{sampler}_{T if nfe is None else nfe}.json"


def read_cell(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The cached result at ``path`` if it was made under ``key``, else None."""
    if not path.is_file():
        return None
    try:
        cell = read_json(path)
    except (TrilemmaError, ValueError, OSError):
        return None
    return cell["result"] if isinstance(cell, dict) and cell.get("key") == key and "result" in cell else None


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """The table's numbers from a full :func:`evaluate_run` result."""
    return {key: result[section].get(key) for section, key in METRIC_KEYS}


def measure_cell(run: DiffusionRun, options: SampleOptions, key: dict[str, Any], path: Path, cfg: StepsConfig,
                 progress: bool) -> tuple[dict[str, Any], bool]:
    """(the cell's evaluation, whether it came from the cache): evaluate and cache it unless cached."""
    from trilemma.metrics import evaluate_run

    cached = read_cell(path, key)
    if cached is not None:
        return cached, True
    result = evaluate_run(run, cfg.n, options, seed=cfg.seed, batch_size=cfg.batch_size,
                          speed_batches=cfg.speed_batches, progress=progress, log=say if progress else None)
    write_json(path, {"key": key, "result": result})
    return result, False


def _row(name: str, sampler: str, nfe: int | None, used: int, steps: int, options: SampleOptions,
         result: dict[str, Any], cached: bool) -> dict[str, Any]:
    return {"name": name, "sampler": sampler, "nfe": nfe, "nfe_used": used, "steps": steps,
            "sampling": options.to_dict(), "cached": cached, **summarise(result)}


def run_steps(run_path: str | Path, cfg: StepsConfig, out: str | Path, progress: bool = True) -> dict[str, Any]:
    """Measure every (sampler, NFE) cell and the DDPM-T reference; write steps.md, steps.json and steps.png."""
    out = Path(out)
    run = load_run(run_path, device=cfg.device)
    if not isinstance(run, DiffusionRun):
        raise TrilemmaError(f"{run_path}: {'an' if run.kind[0] in 'aeiou' else 'a'} {run.kind} run; `experiment "
                            f"steps` needs a diffusion run (ddpm, ldm or t2i)")
    T = run.schedule.T
    for nfe in cfg.nfe:                                         # refuse impossible budgets before any work
        for sampler in cfg.samplers:
            try:
                run.timesteps(cell_options(sampler, nfe, cfg.spacing))
            except TrilemmaError as e:                          # a sampler's --steps is this command's --nfe
                message = str(e)
                raise TrilemmaError(f"--nfe {nfe}: {sampler}: {message.partition(': ')[2] or message}") from None
    (out / CELLS_DIR).mkdir(parents=True, exist_ok=True)
    sha = file_sha256(weights_file(run))
    plan = [(s, k) for s in cfg.samplers for k in cfg.nfe] + ([("ddpm", None)] if cfg.reference else [])
    rows: list[dict[str, Any]] = []
    reference = None
    computed = 0
    for i, (sampler, nfe) in enumerate(plan, 1):
        options = cell_options(sampler, nfe, cfg.spacing)
        key = cell_key(sha, options, cfg)
        path = cell_path(out, sampler, nfe, T)
        used = T if nfe is None else nfe_used(sampler, nfe)
        name = f"DDPM-{T}" if nfe is None else sampler
        label = f"{name} ({T} steps)" if nfe is None else f"{sampler} at NFE {nfe}" + (
            f" (uses {used})" if used != nfe else "")
        if progress:
            say(f"steps: [{i}/{len(plan)}] {label}: "
                + ("cached" if read_cell(path, key) is not None else f"sampling {cfg.n} images"))
        result, cached = measure_cell(run, options, key, path, cfg, progress)
        computed += not cached
        steps = T if nfe is None else (solver_points(sampler, nfe) if sampler not in ("ddpm", "ddim") else nfe)
        row = _row(name, sampler, nfe, used, steps, options, result, cached)
        if progress:
            say(f"steps: [{i}/{len(plan)}] {label}: FID {_fmt(row['fid'], 2)}, "
                f"{_fmt(row['images_per_s'], 1)} images/s" + (" (cached)" if cached else ""))
        if nfe is None:
            reference = row
        else:
            rows.append(row)
    return write_report(run, cfg, out, rows, reference, sha, computed)


# ----------------------------------------------------------------------------------------- report
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def fid_table(rows: list[dict[str, Any]], reference: dict[str, Any] | None, nfes: tuple[int, ...]) -> str:
    """Samplers × NFE budgets, FID in each cell (Heun's cells name the evaluations it used)."""
    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    by = {(r["sampler"], r["nfe"]): r for r in rows}
    header = ["sampler \\ NFE", *map(str, nfes)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for s in samplers:
        cells = []
        for k in nfes:
            r = by.get((s, k))
            if r is None:
                cells.append("")
                continue
            cells.append(_fmt(r["fid"], 2) + (f" ({r['nfe_used']})" if r["nfe_used"] != k else ""))
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    if reference is not None:
        lines.append(f"| {reference['name']} (NFE {reference['nfe_used']}) | "
                     + " | ".join([_fmt(reference["fid"], 2)] + [""] * (len(nfes) - 1)) + " |")
    return "\n".join(lines) + "\n"


def full_table(rows: list[dict[str, Any]], reference: dict[str, Any] | None) -> str:
    header = ["sampler", "NFE budget", "NFE used", "steps", "FID ↓", "KID ↓", "precision ↑", "recall ↑",
              "coverage ↑", "img/s ↑"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows + ([reference] if reference is not None else []):
        kid = "–" if r["kid_mean"] is None else f"{r['kid_mean']:.4f} ± {r['kid_std'] or 0:.4f}"
        lines.append("| " + " | ".join([
            r["name"], "–" if r["nfe"] is None else str(r["nfe"]), str(r["nfe_used"]), str(r["steps"]),
            _fmt(r["fid"], 2), kid, _fmt(r["precision"]), _fmt(r["recall"]), _fmt(r["coverage"]),
            _fmt(r["images_per_s"], 1)]) + " |")
    return "\n".join(lines) + "\n"


def best_at(rows: list[dict[str, Any]], max_nfe: int) -> dict[str, Any] | None:
    """The row with the lowest FID among those using at most ``max_nfe`` evaluations."""
    ok = [r for r in rows if r["nfe_used"] <= max_nfe and r["fid"] is not None]
    return min(ok, key=lambda r: r["fid"]) if ok else None


def plot_fid_vs_nfe(rows: list[dict[str, Any]], reference: dict[str, Any] | None, path: Path, title: str) -> Path:
    """FID against the evaluations used, log x and log y, one line per sampler; DDPM-T as a horizontal line.

    Log y: FIDs span orders of magnitude (a diverging 3-NFE cell next to a few points above DDPM-T),
    and equal ratios to the reference are then equal distances.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for s in dict.fromkeys(r["sampler"] for r in rows):
        pts = sorted((r["nfe_used"], r["fid"]) for r in rows if r["sampler"] == s and r["fid"] is not None)
        if pts:
            ax.plot(*zip(*pts), marker="o", label=s)
    if reference is not None and reference["fid"] is not None:
        ax.axhline(reference["fid"], color="black", linestyle="--",
                   label=f"{reference['name']} (NFE {reference['nfe_used']})")
    ax.set_xscale("log")
    if all(r["fid"] is None or r["fid"] > 0 for r in rows) and (reference is None or not reference["fid"]
                                                              or reference["fid"] > 0):
        ax.set_yscale("log")
    ticks = sorted({r["nfe"] for r in rows})                   # the budgets (Heun's points sit just left of them)
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("network evaluations per image (NFE)")
    ax.set_ylabel("FID ↓")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def _spacing_text(spacing: str | None) -> str:
    if spacing is None:
        return "each sampler's default spacing (the solvers: karras from 8 NFE, trailing below; ddim: trailing)"
    return f"{spacing} spacing" + ("" if spacing in SPACINGS else " (ddim: trailing whole steps)")


def write_report(run: DiffusionRun, cfg: StepsConfig, out: Path, rows: list[dict[str, Any]],
                 reference: dict[str, Any] | None, sha: str, computed: int) -> dict[str, Any]:
    data = run.data_config.name
    title = f"{run.path.name} ({run.kind}, {data}): FID of {cfg.n} samples vs NFE"
    plot_fid_vs_nfe(rows, reference, out / "steps.png", title)
    best = best_at(rows, 10)
    summary = []
    if best is not None:
        gap = ""
        if reference is not None and reference["fid"] is not None:
            gap = (f" ({best['fid'] - reference['fid']:+.2f} against {reference['name']}'s "
                   f"{_fmt(reference['fid'], 2)})")
        summary.append(f"Best at ≤ 10 NFE: **{best['sampler']}** at {best['nfe_used']} evaluations, "
                       f"FID {_fmt(best['fid'], 2)}{gap}.")
    report = "\n".join([
        f"# FID vs network evaluations: {run.path}", "",
        (f"{cfg.n} samples per cell from the same seed ({cfg.seed}), batch size {cfg.batch_size}, "
        f"{_spacing_text(cfg.spacing)}, each sampler's default η; metrics against the "
        f"{data} test split (docs/metrics.md). Weights SHA-256 {sha[:16]}…. "
        "A number in brackets is the evaluations Heun really used (2N − 1 ≤ NFE)."), "",
        *summary, "", "## FID ↓ by sampler and NFE", "", fid_table(rows, reference, cfg.nfe),
        "## All metrics", "", full_table(rows, reference)])
    (out / "steps.md").write_text(report)
    payload = {"config": {**asdict(cfg), "nfe": list(cfg.nfe), "samplers": list(cfg.samplers)},
               "run": str(run.path), "kind": run.kind, "data": data, "T": run.schedule.T, "weights_sha256": sha,
               "rows": rows, "reference": reference, "computed_cells": computed}
    write_json(out / "steps.json", payload)
    return {"report": report, **payload}


def _csv(value: str, cast, what: str) -> tuple:
    try:
        items = tuple(cast(v.strip()) for v in str(value).split(",") if v.strip())
    except ValueError:
        raise TrilemmaError(f"--{what}: expected a comma-separated list, got {value!r}") from None
    if not items:
        raise TrilemmaError(f"--{what}: empty list")
    return items


def main(args: argparse.Namespace) -> int:
    """``trilemma experiment steps`` (options in :func:`trilemma.cli.experiment.add_steps`)."""
    values: dict[str, Any] = {k: getattr(args, k) for k in ("n", "seed", "batch_size", "spacing", "device")
                              if getattr(args, k, None) is not None}
    if args.nfe is not None:
        values["nfe"] = _csv(args.nfe, int, "nfe")
    if args.samplers is not None:
        values["samplers"] = _csv(args.samplers, str, "samplers")
    cfg = replace(StepsConfig(), reference=not args.no_reference, **values)
    result = run_steps(args.run, cfg, args.out, progress=not args.quiet)
    print(result["report"], end="")
    say(f"steps: wrote {Path(args.out) / 'steps.md'}, steps.json and steps.png "
        f"({result['computed_cells']} cells computed, the rest from {Path(args.out) / CELLS_DIR})")
    return 0
