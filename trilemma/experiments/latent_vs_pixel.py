"""Latent vs pixel diffusion under the same training budget: what the latent space buys (docs/methods.md §7).

    trilemma experiment latent-vs-pixel --data fashion-mnist --out DIR [--minutes 15] [--ae-minutes 5]

Two arms, each given ``--minutes`` of wall-clock training:

- **pixel**: a DDPM on the images (``DIR/pixel``, U-Net preset ``--preset``);
- **latent**: an autoencoder with factor ``--factor`` (``DIR/ae-f4``, ``--ae-minutes``), the
  training set encoded once (the latent cache), then a DDPM on its latents (``DIR/ldm``) for
  whatever is left: autoencoder training and encoding count against the arm's budget.

Both are sampled with ``--ddim-steps`` DDIM steps (η = 0) and scored on ``--n`` samples
(FID, KID, precision, recall, coverage, :func:`trilemma.metrics.evaluate_images`), next to
the autoencoder's reconstructions of the test set (the ceiling any latent model can reach)
and the decoder of Gaussian latents (the latent space without a diffusion prior). Every
phase is timed twice — wall clock and the process's CPU time — because wall-clock rates on
a shared machine measure the neighbours as much as the model; with one thread the CPU-time
rates are what the hardware delivers to this process. Ctrl-C stops the experiment once the phase in
training has saved its checkpoint; running the same command again continues that phase and adds up
its clocks (kept in ``phase_fit.json`` until the phase is recorded).

Also measured: the **autoencoder factor sweep** (``--sweep-factors``, each trained for
``--ae-minutes``: PSNR and reconstruction FID), and a **speed sweep over image sizes**
(``--speed-sizes``): CPU-time training and 50-step sampling rates of the pixel U-Net at
H×W against the latent U-Net at H/f×W/f plus the decoder, on random inputs — where the
latent space starts to pay for itself.

Outputs: ``DIR/report.md`` (the tables, the commands, the budget), ``DIR/results.json``,
``DIR/samples.png`` (real | pixel | latent | reconstructions), ``DIR/sweep.png``.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from trilemma.autoencoder.config import preset as ae_preset
from trilemma.autoencoder.networks import Autoencoder
from trilemma.data import load_dataset, to_uint8
from trilemma.errors import TrilemmaError
from trilemma.experiments import check_settings, data_key, run_state, stop_if_interrupted
from trilemma.ldm.config import latent_unet_preset
from trilemma.metrics.evaluate import MIN_IMAGES
from trilemma.nets.unet import UNet, count_parameters
from trilemma.nets.unet import preset as unet_preset
from trilemma.registry import load_run
from trilemma.run import SampleOptions, read_run_config
from trilemma.train.rundir import checkpoint_info
from trilemma.utils.console import say
from trilemma.utils.device import pick_device
from trilemma.utils.io import read_json, write_json
from trilemma.viz import _pyplot, grid_array, save_figure, save_grid

BATCH, LR = 128, 1e-3           # both diffusion models: the ddpm trainer's defaults


@dataclass(frozen=True)
class LatentVsPixelConfig:
    data: str = "fashion-mnist"
    minutes: float | None = None        # wall-clock training budget per arm (default 15), autoencoder included
    ae_minutes: float | None = None     # of which the autoencoder gets (default a third of the budget)
    steps: int | None = None            # or: diffusion steps per arm (tests)
    ae_steps: int | None = None         # and autoencoder steps
    preset: str = "small"
    factor: int = 4                     # the latent arm's autoencoder
    latent_channels: int = 4
    sweep_factors: tuple[int, ...] = (2, 4)
    n: int = 2000                       # samples per model for the metrics
    ddim_steps: int = 50
    batch_size: int = 250               # sampling batch size
    speed_sizes: tuple[int, ...] = (28, 32, 64)
    speed_batch: int = 16
    seed: int = 0
    device: str = "auto"
    recon_n: int | None = None          # test images reconstructed per autoencoder (default all)

    def __post_init__(self):
        if self.steps is not None and self.minutes is not None:
            raise TrilemmaError("give at most one of --minutes and --steps")
        if (self.steps is None) != (self.ae_steps is None) and self.steps is not None:
            raise TrilemmaError("--steps needs --ae-steps (the autoencoder's steps)")
        if self.steps is None and self.ae_steps is not None:
            raise TrilemmaError("--ae-steps goes with --steps; with --minutes use --ae-minutes")
        if self.ae_minutes is not None and self.ae_minutes >= self.budget_minutes:
            raise TrilemmaError(f"--ae-minutes {self.ae_minutes} leaves no time of the {self.budget_minutes}-minute "
                                f"budget for the latent diffusion model")
        if self.factor not in self.sweep_factors:
            raise TrilemmaError(f"--factor {self.factor} must be one of --sweep-factors {list(self.sweep_factors)}")
        for name in ("n", "ddim_steps", "batch_size", "speed_batch"):
            if getattr(self, name) <= 0:
                raise TrilemmaError(f"--{name.replace('_', '-')}: must be positive, got {getattr(self, name)}")
        if self.n < MIN_IMAGES:
            raise TrilemmaError(f"--n: the metrics need at least {MIN_IMAGES} samples per model, got {self.n}")

    @property
    def budget_minutes(self) -> float:
        return 15.0 if self.minutes is None else self.minutes

    @property
    def autoencoder_minutes(self) -> float:
        return self.budget_minutes / 3 if self.ae_minutes is None else self.ae_minutes


@dataclass
class Clock:
    """Wall-clock and CPU (``time.process_time``) seconds of a phase."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    _t: tuple[float, float] = field(default=(0.0, 0.0), repr=False)

    def __enter__(self):
        self._t = (time.perf_counter(), time.process_time())
        return self

    def __exit__(self, *exc):
        self.wall_s += time.perf_counter() - self._t[0]
        self.cpu_s += time.process_time() - self._t[1]
        return False

    def to_dict(self) -> dict[str, float]:
        return {"wall_s": round(self.wall_s, 2), "cpu_s": round(self.cpu_s, 2)}


# ----------------------------------------------------------------------------------------- training
FIT_FILE = "phase_fit.json"   # a phase's training so far: step, elapsed_s and its clocks, summed over sessions


def fit_phase(out: Path, what: str, budget: dict[str, Any], fn: Callable[..., Any], progress: bool,
              options: dict[str, Any]) -> dict[str, Any]:
    """Train ``out`` with ``fn`` (a trainer: new run with ``options``, or continue an interrupted one).

    Returns ``{"step", "elapsed_s", "wall_s", "cpu_s"}``: the training's step and loop time, and the
    phase's wall and CPU clocks summed over the sessions that trained it, also kept in
    ``out/phase_fit.json`` (the caller removes it once its ``phase.json`` is written). On
    Ctrl-C/SIGTERM the trainer saves its checkpoint, the file records the clocks so far and
    :class:`~trilemma.errors.Interrupted` stops the experiment; a re-run continues the run and adds its
    clocks, or, when the training had finished (stopped later, e.g. while encoding), takes the file as
    it is. A run stopped without the file (a killed process) cannot be timed honestly and is refused
    with what to remove.
    """
    state = run_state(out)
    file = out / FIT_FILE
    before = read_json(file) if file.is_file() else None
    if state == "finished" and before is not None and before["step"] == checkpoint_info(out).get("step"):
        return before
    if state == "interrupted" and before is not None:
        say(f"latent-vs-pixel: continuing the interrupted {what} in {out} ({_budget_text(budget)})")
        with Clock() as clock:
            result = fn(out, resume=True, progress=progress, **budget)
    elif state == "none":
        say(f"latent-vs-pixel: training {what} ({_budget_text(budget)}) into {out}")
        before = {"wall_s": 0.0, "cpu_s": 0.0}
        with Clock() as clock:
            result = fn(out, progress=progress, **options, **budget)
    else:
        raise TrilemmaError(f"{out} holds a run of an earlier attempt that was not stopped by Ctrl-C (its CPU "
                            f"time is unknown); remove it to train it again")
    fit = {"step": result.step, "elapsed_s": result.elapsed_s, "wall_s": before["wall_s"] + clock.wall_s,
           "cpu_s": before["cpu_s"] + clock.cpu_s}
    write_json(file, fit)
    stop_if_interrupted(result)
    return fit


def train_autoencoder_phase(out: Path, factor: int, cfg: LatentVsPixelConfig, progress: bool) -> dict[str, Any]:
    """Train (or reuse) the autoencoder ``out``, encode the training set, score the reconstructions.

    Returns the clocks of its training cost — fitting, then encoding the training set into the
    latent cache — and not of the reconstruction metrics (which find the latents cached).
    """
    from trilemma.autoencoder.cache import cached_latents
    from trilemma.autoencoder.run import load_autoencoder
    from trilemma.autoencoder.train import RECON_FILE, finish_autoencoder, train_autoencoder

    info_path = out / "phase.json"
    if info_path.is_file() and (out / RECON_FILE).is_file():
        say(f"latent-vs-pixel: reusing the autoencoder in {out}")
        return read_json(info_path)
    budget = {"steps": cfg.ae_steps} if cfg.ae_steps is not None else {"minutes": cfg.autoencoder_minutes}
    fit = fit_phase(out, f"the f = {factor} autoencoder", budget, train_autoencoder, progress,
                    dict(data=cfg.data, preset=cfg.preset, factor=factor, latent_channels=cfg.latent_channels,
                         evaluate=False, seed=cfg.seed, device=cfg.device, sample_every=0))
    with Clock() as encode_clock:
        run = load_autoencoder(out, device=cfg.device)
        cached_latents(run, load_dataset(run.data_config, "train"), progress=progress)
    finish_autoencoder(out, {"eval_n": cfg.recon_n}, progress)          # scale factor, PSNR, rFID (latents cached)
    info = {"steps": fit["step"], "batch_size": read_run_config(out)["train"]["batch_size"],
            "fit_wall_s": fit["elapsed_s"], "fit_cpu_s": fit["cpu_s"],
            "encode_wall_s": encode_clock.wall_s, "encode_cpu_s": encode_clock.cpu_s,
            "train_wall_s": fit["elapsed_s"] + encode_clock.wall_s, "train_cpu_s": fit["cpu_s"] + encode_clock.cpu_s}
    write_json(info_path, info)
    (out / FIT_FILE).unlink(missing_ok=True)
    return info


def train_diffusion_phase(name: str, out: Path, cfg: LatentVsPixelConfig, budget: dict[str, Any],
                          progress: bool, autoencoder: Path | None = None) -> dict[str, Any]:
    """Train (or reuse) the pixel DDPM or the latent DDPM ``out`` with ``budget``; its clocks.

    The CPU clock covers the whole training call: loading the data (or the cached latents), the
    loop, and one 36-image preview grid at the end (a few seconds in a 15-minute run).
    """
    info_path = out / "phase.json"
    if info_path.is_file():
        say(f"latent-vs-pixel: reusing the {name} run in {out}")
        return read_json(info_path)
    options = dict(preset=cfg.preset, batch_size=BATCH, lr=LR, seed=cfg.seed, device=cfg.device, sample_every=0)
    if autoencoder is None:
        from trilemma.ddpm.train import train_ddpm as fn

        options["data"] = cfg.data
    else:
        from trilemma.ldm.train import train_ldm as fn

        options["autoencoder"] = autoencoder
    fit = fit_phase(out, f"the {name} DDPM", budget, fn, progress, options)
    info = {"steps": fit["step"], "batch_size": BATCH, "train_wall_s": fit["elapsed_s"], "train_cpu_s": fit["cpu_s"],
            "call_wall_s": fit["wall_s"]}
    write_json(info_path, info)
    (out / FIT_FILE).unlink(missing_ok=True)
    return info


def _budget_text(budget: dict[str, Any]) -> str:
    return f"{budget['steps']} steps" if "steps" in budget else f"{budget['minutes']:.2f} min"


# ----------------------------------------------------------------------------------------- scoring
def sample_and_score(path: Path, cfg: LatentVsPixelConfig, progress: bool) -> dict[str, Any]:
    """``cfg.n`` samples (DDIM, ``cfg.ddim_steps``), timed on both clocks, scored; cached as DIR/<run>/scores.json."""
    from trilemma.metrics import evaluate_images

    cache = path / "scores.json"
    if cache.is_file():
        cached = read_json(cache)
        if cached.get("n") == cfg.n and cached.get("ddim_steps") == cfg.ddim_steps and cached.get("seed") == cfg.seed:
            return cached
    run = load_run(path, device=cfg.device)
    options = SampleOptions(sampler="ddim", steps=cfg.ddim_steps)
    say(f"latent-vs-pixel: sampling {cfg.n} images of {path.name} ({run.describe(options)})")
    with torch.no_grad(), Clock() as clock:
        images = run.generate(cfg.n, seed=cfg.seed, batch_size=cfg.batch_size, options=options, progress=progress)
    metrics = evaluate_images(images, run.data_config, progress=progress,
                              source={"kind": "run", "path": str(path), "run_kind": run.kind,
                                      "sampling": options.to_dict(), "seed": cfg.seed, "nfe": run.nfe(options)})
    save_grid(images[:64], path / "samples" / f"ddim{cfg.ddim_steps}.png")
    result = {"n": cfg.n, "ddim_steps": cfg.ddim_steps, "seed": cfg.seed, "describe": run.describe(options),
              "nfe": run.nfe(options), "sample": clock.to_dict(),
              "sample_images_per_s_wall": cfg.n / clock.wall_s, "sample_images_per_s_cpu": cfg.n / clock.cpu_s,
              "metrics": metrics}
    write_json(cache, result)
    return result


def score_images(images: torch.Tensor, data: str, what: str, progress: bool) -> dict[str, Any]:
    from trilemma.metrics import evaluate_images

    return {"metrics": evaluate_images(images, data, progress=progress, source={"kind": "images", "path": what})}


# ----------------------------------------------------------------------------------------- speed sweep
def _cpu_seconds(fn: Callable[[], Any], reps: int) -> float:
    """Median CPU seconds of ``fn()`` over ``reps`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return sorted(times)[len(times) // 2]


def speed_sweep(cfg: LatentVsPixelConfig, progress: bool) -> list[dict[str, Any]]:
    """CPU-time rates of pixel vs latent diffusion at several image sizes, on random inputs and weights.

    Per size s (1 channel at 28, 3 channels otherwise): training images/s of the ``cfg.preset``
    U-Net on s×s images against the latent U-Net on s/f×s/f latents (the encoder's cost per
    image, paid once thanks to the cache, is listed apart), and 50-step DDIM sampling images/s:
    batch / (50 · t_U-Net + t_decoder). Only the network work is timed; it is what differs.
    """
    rows = []
    B = cfg.speed_batch
    torch.manual_seed(cfg.seed)
    for size in cfg.speed_sizes:
        channels = 1 if size == 28 else 3
        if size % cfg.factor:
            continue
        s_lat = size // cfg.factor
        nets = {"pixel": (UNet(unet_preset(cfg.preset, size, channels)), (channels, size, size)),
                "latent": (UNet(latent_unet_preset(cfg.preset, s_lat, cfg.latent_channels)),
                           (cfg.latent_channels, s_lat, s_lat))}
        ae = Autoencoder(ae_preset(cfg.preset, size, channels, factor=cfg.factor,
                                   latent_channels=cfg.latent_channels)).eval()
        row: dict[str, Any] = {"image": f"{size}×{size}×{channels}", "factor": cfg.factor, "batch": B,
                               "latent": f"{s_lat}×{s_lat}×{cfg.latent_channels}"}
        for name, (net, shape) in nets.items():
            opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
            x, t = torch.randn(B, *shape), torch.randint(1, 1000, (B,))

            def train_step():
                loss = (net(x, t) - x).pow(2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            train_s = _cpu_seconds(train_step, 2)
            with torch.no_grad():
                net.eval()
                forward_s = _cpu_seconds(lambda: net(x, t), 2)
                net.train()
            row[f"{name}_params"] = count_parameters(net)
            row[f"{name}_train_img_s"] = B / train_s
            row[f"{name}_forward_s"] = forward_s
        with torch.no_grad():
            z = torch.randn(B, cfg.latent_channels, s_lat, s_lat)
            row["decode_s"] = _cpu_seconds(lambda: ae.decode(z), 2)
            row["encode_img_s"] = B / _cpu_seconds(lambda: ae.encode(torch.randn(B, channels, size, size)), 2)
        row["pixel_sample_img_s"] = B / (cfg.ddim_steps * row["pixel_forward_s"])
        row["latent_sample_img_s"] = B / (cfg.ddim_steps * row["latent_forward_s"] + row["decode_s"])
        row["train_speedup"] = row["latent_train_img_s"] / row["pixel_train_img_s"]
        row["sample_speedup"] = row["latent_sample_img_s"] / row["pixel_sample_img_s"]
        rows.append(row)
        if progress:
            say(f"latent-vs-pixel: speed at {row['image']}: training ×{row['train_speedup']:.1f}, "
                f"sampling ×{row['sample_speedup']:.1f} in latent space ({row['latent']})")
    return rows


# ----------------------------------------------------------------------------------------- report
def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def main_table(rows: dict[str, dict[str, Any]], ddim_steps: int) -> str:
    header = ["model", "training budget (wall)", "diffusion training", "train img/s wall (CPU)",
              f"sample img/s @ DDIM-{ddim_steps} wall (CPU)", "NFE", "FID ↓", "KID ↓", "precision ↑",
              "recall ↑", "coverage ↑"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for name, r in rows.items():
        q, c = r["metrics"]["quality"], r["metrics"]["coverage"]
        lines.append("| " + " | ".join([name, r.get("budget", "–"), r.get("training", "–"),
                                        r.get("train_rate", "–"), r.get("sample_rate", "–"), _fmt(r.get("nfe")),
                                        _fmt(q["fid"], 2),
                                        _fmt(q["kid_mean"]), _fmt(q["precision"]), _fmt(c["recall"]),
                                        _fmt(c["coverage"])]) + " |")
    return "\n".join(lines) + "\n"


def sweep_table(sweep: dict[int, dict[str, Any]]) -> str:
    header = ["factor f", "latent c×h×w", "numbers ÷ pixels", "autoencoder training", "test PSNR (dB) ↑",
              "reconstruction FID ↓", "reconstruction KID ↓", "scale factor s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for f, r in sorted(sweep.items()):
        rec, phase = r["recon"], r["phase"]
        lines.append("| " + " | ".join([str(f), "×".join(map(str, rec["latent_shape"])),
                                        f"1/{rec['compression']:.1f}",
                                        f"{phase['steps']:,} steps, {phase['fit_wall_s'] / 60:.1f} min",
                                        _fmt(rec["psnr_db"], 2), _fmt(rec["rfid"], 2), _fmt(rec["rkid"]),
                                        _fmt(rec["scale_factor"], 4)]) + " |")
    return "\n".join(lines) + "\n"


def speed_table(rows: list[dict[str, Any]], ddim_steps: int) -> str:
    header = ["image", "latent (f)", "U-Net params pixel / latent", "train img/s pixel", "train img/s latent",
              "encoder img/s (once)", f"sample img/s pixel (DDIM-{ddim_steps})", "sample img/s latent (+ decoder)",
              "train ×", "sample ×"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        lines.append("| " + " | ".join([
            r["image"], f"{r['latent']} ({r['factor']})",
            f"{r['pixel_params'] / 1e6:.2f}M / {r['latent_params'] / 1e6:.2f}M",
            _fmt(r["pixel_train_img_s"], 1), _fmt(r["latent_train_img_s"], 1), _fmt(r["encode_img_s"], 0),
            _fmt(r["pixel_sample_img_s"], 2), _fmt(r["latent_sample_img_s"], 2),
            f"{r['train_speedup']:.1f}", f"{r['sample_speedup']:.1f}"]) + " |")
    return "\n".join(lines) + "\n"


def commands(cfg: LatentVsPixelConfig, out: Path, ldm_budget: dict[str, Any]) -> str:
    """The experiment's command line, and the equivalent one per phase."""
    def budget(b: dict[str, Any]) -> str:
        return f"--steps {b['steps']}" if "steps" in b else f"--minutes {b['minutes']:.2f}"

    ae = {"steps": cfg.ae_steps} if cfg.ae_steps is not None else {"minutes": cfg.autoencoder_minutes}
    px = {"steps": cfg.steps} if cfg.steps is not None else {"minutes": cfg.budget_minutes}
    main_budget = f"--steps {cfg.steps} --ae-steps {cfg.ae_steps}" if cfg.steps is not None else \
        f"--minutes {cfg.budget_minutes:g} --ae-minutes {cfg.autoencoder_minutes:g}"
    lines = [f"OMP_NUM_THREADS=1 trilemma experiment latent-vs-pixel --data {cfg.data} --out {out} {main_budget} "
             f"--preset {cfg.preset} --factor {cfg.factor} --sweep-factors {' '.join(map(str, cfg.sweep_factors))} "
             f"--n {cfg.n} --ddim-steps {cfg.ddim_steps}", "", "# is, phase by phase:"]
    for f in cfg.sweep_factors:
        lines.append(f"trilemma train autoencoder --data {cfg.data} --preset {cfg.preset} --factor {f} "
                     f"--latent-channels {cfg.latent_channels} {budget(ae)} --out {out}/ae-f{f}")
    lines += [f"trilemma train ldm --autoencoder {out}/ae-f{cfg.factor} --preset {cfg.preset} --batch-size {BATCH} "
              f"--lr {LR:g} {budget(ldm_budget)} --out {out}/ldm   # the rest of the arm's budget",
              f"trilemma train ddpm --data {cfg.data} --preset {cfg.preset} --batch-size {BATCH} --lr {LR:g} "
              f"{budget(px)} --out {out}/pixel"]
    lines += [f"trilemma eval {out}/{r} --n {cfg.n} --sampler ddim --steps {cfg.ddim_steps}" for r in ("pixel", "ldm")]
    return "```bash\n" + "\n".join(lines) + "\n```\n"


def plot_samples(grids: dict[str, torch.Tensor], path: Path) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(grids), figsize=(4.2 * len(grids), 4.6))
    for ax, (title, images) in zip(axes, grids.items()):
        arr = grid_array(images, nrow=8)
        ax.imshow(arr.squeeze(-1) if arr.shape[-1] == 1 else arr, cmap="gray", vmin=0, vmax=255)
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    return save_figure(fig, path)


def run_latent_vs_pixel(cfg: LatentVsPixelConfig, out: str | Path, progress: bool = True) -> dict[str, Any]:
    out = Path(out)
    load_dataset(cfg.data, "train")                                       # a bad --data fails before any training
    pick_device(cfg.device)
    out.mkdir(parents=True, exist_ok=True)
    budget = ({"steps": cfg.steps, "ae_steps": cfg.ae_steps} if cfg.steps is not None else
              {"minutes": cfg.budget_minutes, "ae_minutes": cfg.autoencoder_minutes})
    check_settings(out, "latent-vs-pixel", {"data": data_key(cfg.data), **budget, **{k: getattr(cfg, k) for k in (
        "preset", "factor", "latent_channels", "seed")}})
    total = cfg.budget_minutes

    # -- the latent arm: autoencoder (+ encoding), then the latent DDPM with the rest of the budget
    sweep: dict[int, dict[str, Any]] = {}
    for f in [cfg.factor] + [f for f in cfg.sweep_factors if f != cfg.factor]:
        ae_dir = out / f"ae-f{f}"
        phase = train_autoencoder_phase(ae_dir, f, cfg, progress)
        sweep[f] = {"run": str(ae_dir), "phase": phase, "recon": read_json(ae_dir / "recon.json")}
        if f == cfg.factor:
            ae_phase = phase
            if cfg.steps is not None:
                ldm_budget: dict[str, Any] = {"steps": cfg.steps}
            else:
                left = total - phase["train_wall_s"] / 60
                if left <= 0:
                    raise TrilemmaError(f"the autoencoder used {phase['train_wall_s'] / 60:.1f} of the {total} minutes")
                ldm_budget = {"minutes": left}
            ldm = train_diffusion_phase("latent", out / "ldm", cfg, ldm_budget, progress, autoencoder=ae_dir)
    # -- the pixel arm
    pixel_budget = {"steps": cfg.steps} if cfg.steps is not None else {"minutes": total}
    pixel = train_diffusion_phase("pixel", out / "pixel", cfg, pixel_budget, progress)

    # -- scores
    scores = {"pixel": sample_and_score(out / "pixel", cfg, progress),
              "latent": sample_and_score(out / "ldm", cfg, progress)}
    ae_run = load_run(out / f"ae-f{cfg.factor}", device=cfg.device)
    with torch.no_grad():
        gaussian = ae_run.generate(cfg.n, seed=cfg.seed, batch_size=cfg.batch_size, progress=False)
    test, train_set = load_dataset(cfg.data, "test"), load_dataset(cfg.data, "train")
    train_images, n_train = train_set.images[:cfg.n], len(train_set)
    recon = sweep[cfg.factor]["recon"]
    floor = score_images(train_images, cfg.data, f"{cfg.data} train split", progress)
    baseline = score_images(gaussian, cfg.data, "decoder of z ~ N(0, I)", progress)

    def rates(phase: dict[str, Any], images: float) -> str:
        return f"{images / phase['train_wall_s']:.1f} ({images / phase['train_cpu_s']:.1f})"

    def sample_rate(s: dict[str, Any]) -> str:
        return f"{s['sample_images_per_s_wall']:.2f} ({s['sample_images_per_s_cpu']:.2f})"

    px_images, ldm_images = pixel["steps"] * pixel["batch_size"], ldm["steps"] * ldm["batch_size"]
    rows = {
        "pixel DDPM": {**scores["pixel"], "budget": f"{pixel['train_wall_s'] / 60:.1f} min DDPM",
                       "training": f"{pixel['steps']:,} steps × {BATCH} ({px_images / n_train:.2f} epochs)",
                       "train_rate": rates(pixel, px_images), "sample_rate": sample_rate(scores["pixel"])},
        f"latent DDPM (f = {cfg.factor})": {
            **scores["latent"],
            "budget": f"{ae_phase['fit_wall_s'] / 60:.1f} min AE + {ae_phase['encode_wall_s']:.0f} s encoding + "
                      f"{ldm['train_wall_s'] / 60:.1f} min DDPM",
            "training": f"{ldm['steps']:,} steps × {BATCH} ({ldm_images / n_train:.2f} epochs)",
            "train_rate": rates(ldm, ldm_images) + " DDPM only",
            "sample_rate": sample_rate(scores["latent"])},
        f"AE f = {cfg.factor} reconstructions of the test set (ceiling)": {
            "metrics": recon["rfid_metrics"], "budget": f"{ae_phase['fit_wall_s'] / 60:.1f} min AE",
            "training": f"{ae_phase['steps']:,} steps × {ae_phase['batch_size']}"},
        f"AE f = {cfg.factor} decoder of z ~ N(0, I) (no diffusion)": {**baseline, "nfe": 1},
        f"real training images ({cfg.n}, floor)": floor,
    }
    speed = speed_sweep(cfg, progress) if cfg.speed_sizes else []

    grids = {"real (test)": test.images[:64], "pixel DDPM": None, f"latent DDPM f={cfg.factor}": None,
             f"AE f={cfg.factor} reconstructions": None}
    pixel_run, ldm_run = load_run(out / "pixel", device=cfg.device), load_run(out / "ldm", device=cfg.device)
    options = SampleOptions(sampler="ddim", steps=cfg.ddim_steps)
    with torch.no_grad():
        grids["pixel DDPM"] = pixel_run.generate(64, seed=cfg.seed, options=options, progress=False)
        grids[f"latent DDPM f={cfg.factor}"] = ldm_run.generate(64, seed=cfg.seed, options=options, progress=False)
        x_test = test.batch(torch.arange(64))[0]
        grids[f"AE f={cfg.factor} reconstructions"] = to_uint8(ae_run.reconstruct(x_test).cpu())
    plot_samples(grids, out / "samples.png")
    recon_grid = {"test images": test.images[:32]}
    for f in sorted(sweep):
        run = load_run(out / f"ae-f{f}", device=cfg.device)
        with torch.no_grad():
            recon_grid[f"f = {f}: PSNR {sweep[f]['recon']['psnr_db']:.1f} dB"] = to_uint8(
                run.reconstruct(test.batch(torch.arange(32))[0]).cpu())
    plot_samples(recon_grid, out / "sweep.png")

    report = "\n".join([
        f"# Latent vs pixel diffusion on {cfg.data}", "",
        f"Budget per arm: {'%g minutes wall clock' % total if cfg.steps is None else '%d steps' % cfg.steps} "
        f"(the latent arm's autoencoder training and dataset encoding included); U-Net and autoencoder preset "
        f"`{cfg.preset}`; {cfg.n} samples per model, DDIM {cfg.ddim_steps} steps (η = 0), scored against the test "
        f"split. Rates: wall clock, and in brackets per CPU-second of this process (one thread).", "",
        main_table(rows, cfg.ddim_steps),
        "## Autoencoder factor sweep (test split)", "", sweep_table(sweep),
        *(["## Speed by image size (CPU time, random weights)", "", speed_table(speed, cfg.ddim_steps)]
          if speed else []),
        "## Commands", "", commands(cfg, out, ldm_budget),
    ])
    (out / "report.md").write_text(report)
    write_json(out / "results.json", {"config": asdict(cfg), "rows": rows, "sweep": sweep, "speed": speed,
                                      "phases": {"autoencoder": ae_phase, "ldm": ldm, "pixel": pixel}})
    return {"report": report, "rows": rows, "sweep": sweep, "speed": speed}


def main(args: argparse.Namespace) -> int:
    """``trilemma experiment latent-vs-pixel`` (options in :func:`trilemma.experiments.add_latent_vs_pixel`)."""
    keys = ("data", "minutes", "ae_minutes", "steps", "ae_steps", "preset", "factor", "latent_channels",
            "sweep_factors", "n", "ddim_steps", "batch_size", "speed_sizes", "seed", "device", "recon_n")
    values = {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}
    for k in ("sweep_factors", "speed_sizes"):
        if k in values:
            values[k] = tuple(values[k])
    cfg = LatentVsPixelConfig(**values)
    out = run_latent_vs_pixel(cfg, args.out, progress=not args.quiet)
    print(out["report"], end="")
    say(f"latent-vs-pixel: wrote {Path(args.out) / 'report.md'}, samples.png, sweep.png and results.json")
    return 0
