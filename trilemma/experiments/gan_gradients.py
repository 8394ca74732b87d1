"""The vanishing-gradient experiment of Arjovsky & Bottou (ICLR 2017, Figures 2 and 3), as in the lecture.

    trilemma experiment gan-gradients --data fashion-mnist --out DIR [--epochs 1 3 10] [--d-iters 4000]

1. Train a DCGAN (``trilemma train gan``, non-saturating cost, Algorithm 1 with
   k = 1) and keep its generator after E₁ < E₂ < E₃ epochs (``DIR/dcgan`` is the
   run; ``DIR/epoch_E/`` holds each snapshot as a run folder of its own).
2. For each snapshot, freeze G and train a fresh discriminator from scratch
   (same architecture, same Adam) for ``--d-iters`` steps. Every
   ``--measure-every`` steps, on one fixed batch of noises z, record the norm of
   the gradient with respect to G's parameters of each generator cost,
   log(1 − D(G(z))) (the original, "minimax" cost) and −log D(G(z)) (the
   alternative, "non-saturating" cost), plus D's accuracy on a fixed batch of
   real images and those fakes.
3. Write ``DIR/gradients.csv``, ``DIR/gradients_minimax.png`` and
   ``DIR/gradients_nonsaturating.png`` (log scale, one line per snapshot: the
   lecture's two figures), ``DIR/gradients.png`` (both, and D's accuracy), and
   ``DIR/summary.json`` / ``summary.md`` with the orders of magnitude by which
   each norm changed: log₁₀(‖∇‖ at the end / ‖∇‖ with the untrained D).

The paper trains for 1, 10 and 25 epochs on a GPU. The defaults here (1, 3 and 10
epochs of Fashion-MNIST, ``small`` preset, 4,000 D steps measured every 20) take
an estimated 15 minutes on two free CPU cores; ``--epochs 1 10 25`` reproduces the paper's
schedule on a GPU. G and D run in training mode (BatchNorm batch statistics),
as they do while the GAN trains. Ctrl-C during the DCGAN's training stops the experiment
once its checkpoint is saved (no snapshot is taken of it); running the same command again
continues the same run to the snapshot's epochs.
"""

from __future__ import annotations

import argparse
import csv
import math
import shutil
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from trilemma.data import load_dataset
from trilemma.errors import TrilemmaError
from trilemma.experiments import stop_if_interrupted
from trilemma.gan.losses import GENERATOR_COSTS, discriminator_accuracy
from trilemma.gan.networks import Discriminator
from trilemma.gan.train import discriminator_step, generator_gradient_norms, train_gan
from trilemma.registry import load_run
from trilemma.train.common import EpochSampler
from trilemma.utils.console import say
from trilemma.utils.io import read_json, write_json
from trilemma.viz import _pyplot, save_figure

COSTS = ("minimax", "nonsaturating")
TITLES = {"minimax": "original cost  log(1 − D(G(z)))", "nonsaturating": "alternative cost  −log D(G(z))"}
SNAPSHOT_FILES = ("config.json", "model.safetensors", "disc.safetensors")


@dataclass(frozen=True)
class GanGradientsConfig:
    data: str = "fashion-mnist"
    epochs: tuple[float, ...] = (1.0, 3.0, 10.0)   # paper: 1, 10, 25 (GPU)
    d_iters: int = 4000                            # steps of the fresh discriminator (paper: 4,000)
    measure_every: int = 20                        # D steps between gradient measurements
    preset: str = "small"
    batch_size: int = 64
    g_loss: str = "nonsaturating"                  # how the DCGAN itself is trained
    fixed_n: int = 256                             # size of the fixed batches of z and of real images
    d_lr: float | None = None                      # Adam lr of the fresh D (None: the DCGAN's, 2e-4)
    seed: int = 0
    device: str = "auto"

    def __post_init__(self):
        if not self.epochs or any(not e > 0 for e in self.epochs) or list(self.epochs) != sorted(set(self.epochs)):
            raise TrilemmaError(f"--epochs: give increasing positive numbers of epochs, got {list(self.epochs)}")
        if self.d_iters <= 0 or self.measure_every <= 0 or self.fixed_n <= 0:
            raise TrilemmaError("--d-iters, --measure-every and --fixed-n must be positive")


def epoch_name(epochs: float) -> str:
    return f"epoch_{epochs:g}"


def train_snapshots(cfg: GanGradientsConfig, out: Path, progress: bool = True) -> list[tuple[float, Path]]:
    """Train the DCGAN through E₁ < E₂ < …, copying G (and D) at each as ``out/epoch_E``; reuses finished ones."""
    run = out / "dcgan"
    n_train = len(load_dataset(cfg.data, "train"))
    snapshots = []
    for epochs in cfg.epochs:
        snap = out / epoch_name(epochs)
        steps = max(1, round(epochs * n_train / cfg.batch_size))       # k = 1: one real batch per iteration
        if not (snap / "model.safetensors").is_file():
            done = read_json(run / "state" / "trainer.json")["step"] if (run / "state" / "trainer.json").is_file() else 0
            if done > steps:
                raise TrilemmaError(f"{run} is already past {epochs:g} epochs ({done} steps); use a new --out")
            if progress:
                say(f"gan-gradients: training the DCGAN to {epochs:g} epochs ({steps} steps of {cfg.batch_size})")
            if 0 < done < steps:                                         # continue the same run
                stop_if_interrupted(train_gan(run, steps=steps, resume=True, progress=progress))
            elif done == 0:
                stop_if_interrupted(train_gan(run, data=cfg.data, preset=cfg.preset, steps=steps,
                                              batch_size=cfg.batch_size, g_loss=cfg.g_loss, progress=progress,
                                              seed=cfg.seed, device=cfg.device, checkpoint_every=10**9))
            snap.mkdir(parents=True, exist_ok=True)
            for name in SNAPSHOT_FILES:
                shutil.copy2(run / name, snap / name)
        snapshots.append((epochs, snap))
    return snapshots


def measure_fresh_discriminator(snapshot: Path, cfg: GanGradientsConfig, epochs: float,
                                progress: bool = True) -> list[dict[str, Any]]:
    """Freeze the snapshot's G, train a fresh D from scratch, and record the generator's gradient norms."""
    run = load_run(snapshot, device=cfg.device)
    device = run.device
    dataset = load_dataset(run.data_config, "train")
    G = run.G.train().requires_grad_(True)                 # gradients are measured, never applied
    torch.manual_seed(cfg.seed + 100)                      # the same fresh D for every snapshot
    D = Discriminator(run.model_config).to(device).train()
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.d_lr or run.config["train"]["lr"],
                             betas=(run.gan_config.beta1, run.gan_config.beta2))
    data_gen = torch.Generator().manual_seed(cfg.seed + 200)
    noise_gen = torch.Generator(device).manual_seed(cfg.seed + 300)
    sampler = EpochSampler(len(dataset), cfg.batch_size, data_gen)
    z_dim = run.model_config.z_dim
    z_fixed = torch.randn((cfg.fixed_n, z_dim), generator=torch.Generator(device).manual_seed(cfg.seed + 400),
                          device=device)                                                               # (n, z_dim)
    x_fixed = dataset.batch(torch.randperm(len(dataset), generator=torch.Generator().manual_seed(cfg.seed + 500))
                            [:cfg.fixed_n])[0].to(device)                                              # (n, C, H, W)
    costs = {name: GENERATOR_COSTS[name] for name in COSTS}

    def measure(d_iter: int, loss_d: float) -> dict[str, Any]:
        norms = generator_gradient_norms(G, D, z_fixed, costs)
        with torch.no_grad():
            l_real, l_fake = D(x_fixed), D(G(z_fixed))
        return {"epochs": epochs, "d_iter": d_iter, **{f"grad_norm_{k}": v for k, v in norms.items()},
                "d_accuracy": discriminator_accuracy(l_real, l_fake).item(),
                "d_real": torch.sigmoid(l_real).mean().item(), "d_fake": torch.sigmoid(l_fake).mean().item(),
                "loss_d": loss_d}

    rows = [measure(0, math.nan)]
    bar = tqdm(range(1, cfg.d_iters + 1), desc=f"fresh D vs G after {epochs:g} epochs", unit="step",
               disable=not progress, dynamic_ncols=True)
    for d_iter in bar:
        x, _ = dataset.batch(sampler.next(), data_gen)
        z = torch.randn((len(x), z_dim), generator=noise_gen, device=device)
        stats = discriminator_step(G, D, opt_d, x.to(device), z)
        if d_iter % cfg.measure_every == 0 or d_iter == cfg.d_iters:
            rows.append(measure(d_iter, float(stats["loss_d"])))
            bar.set_postfix_str(f"acc={rows[-1]['d_accuracy']:.3f} ‖∇‖ mm={rows[-1]['grad_norm_minimax']:.1e} "
                                f"ns={rows[-1]['grad_norm_nonsaturating']:.1e}", refresh=False)
    return rows


def orders_of_magnitude(rows: list[dict[str, Any]], tail: int = 5) -> dict[str, Any]:
    """log₁₀(‖∇‖ at the end / ‖∇‖ with the untrained D) per cost; the end is the median of the last ``tail``."""
    out: dict[str, Any] = {}
    for cost in COSTS:
        start = rows[0][f"grad_norm_{cost}"]
        end = statistics.median(r[f"grad_norm_{cost}"] for r in rows[-tail:])
        floor = 1e-45                                                      # a norm can underflow to 0 in float32
        peak = max(r[f"grad_norm_{cost}"] for r in rows)
        out[cost] = {"start": start, "end": end, "log10_change": math.log10(max(end, floor) / max(start, floor)),
                     "min": min(r[f"grad_norm_{cost}"] for r in rows), "max": peak,
                     "log10_change_from_peak": math.log10(max(end, floor) / max(peak, floor))}
    # at the end, how many orders of magnitude smaller the minimax gradient is than the non-saturating one
    out["log10_minimax_over_nonsaturating_end"] = math.log10(max(out["minimax"]["end"], 1e-45)
                                                             / max(out["nonsaturating"]["end"], 1e-45))
    out["d_accuracy_end"] = statistics.median(r["d_accuracy"] for r in rows[-tail:])
    out["d_fake_end"] = statistics.median(r["d_fake"] for r in rows[-tail:])
    return out


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """The lecture's two figures (one per cost, log scale, a line per snapshot) and a combined one."""
    plt = _pyplot()
    epochs = sorted({r["epochs"] for r in rows})

    def draw(ax, key: str, log: bool = True):
        for e in epochs:
            pts = [(r["d_iter"], max(r[key], 1e-45)) for r in rows if r["epochs"] == e]
            ax.plot(*zip(*pts), label=f"after {e:g} epoch{'s' if e != 1 else ''}", lw=1.5)
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("discriminator iterations (fresh D, G frozen)")
        ax.grid(alpha=0.3, which="both")
        ax.legend()

    written = []
    for cost in COSTS:
        fig, ax = plt.subplots(figsize=(6, 4))
        draw(ax, f"grad_norm_{cost}")
        ax.set_ylabel("‖∇_θg cost‖ (log scale)")
        ax.set_title(f"Generator gradient, {TITLES[cost]}")
        written.append(save_figure(fig, out / f"gradients_{cost}.png"))
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.2))
    for ax, cost in zip(axes, COSTS):
        draw(ax, f"grad_norm_{cost}")
        ax.set_title(TITLES[cost])
        ax.set_ylabel("generator gradient norm (log scale)")
    draw(axes[2], "d_accuracy", log=False)
    axes[2].set_title("accuracy of the fresh discriminator")
    axes[2].set_ylabel("accuracy on 2 × fixed batches")
    fig.suptitle("Arjovsky & Bottou (2017): as D nears its optimum the original cost's gradient vanishes")
    written.append(save_figure(fig, out / "gradients.png"))
    return written


def summary_markdown(summary: dict[str, Any], cfg: GanGradientsConfig) -> str:
    lines = [f"Fresh discriminator trained for {cfg.d_iters} steps against each frozen generator; gradient norms "
             f"on {cfg.fixed_n} fixed noises; change = log₁₀(‖∇‖ at the end / ‖∇‖ with the untrained D).", "",
             "| G after | minimax: start → peak → end | change (orders of magnitude): from start, from peak "
             "| non-saturating: start → end | change | minimax ÷ non-saturating at the end | D accuracy at the end "
             "| D(G(z)) at the end |",
             "|---|---|---|---|---|---|---|---|"]
    for e, s in summary["snapshots"].items():
        mm, ns = s["minimax"], s["nonsaturating"]
        lines.append(f"| {e} epochs | {mm['start']:.2e} → {mm['max']:.2e} → {mm['end']:.2e} | "
                     f"{mm['log10_change']:+.1f}, {mm['log10_change_from_peak']:+.1f} | "
                     f"{ns['start']:.2e} → {ns['end']:.2e} | {ns['log10_change']:+.1f} | "
                     f"10^{s['log10_minimax_over_nonsaturating_end']:.1f} | {s['d_accuracy_end']:.3f} | "
                     f"{s['d_fake_end']:.1e} |")
    return "\n".join(lines) + "\n"


def summarise(rows: list[dict[str, Any]], cfg: GanGradientsConfig) -> dict[str, Any]:
    """Orders of magnitude per snapshot (from the rows of ``gradients.csv``) and over all snapshots."""
    summary: dict[str, Any] = {"config": asdict(cfg), "snapshots": {}}
    for epochs in sorted({r["epochs"] for r in rows}):
        summary["snapshots"][f"{epochs:g}"] = orders_of_magnitude([r for r in rows if r["epochs"] == epochs])
    drops = [-s["minimax"]["log10_change"] for s in summary["snapshots"].values()]
    summary["minimax_orders_of_magnitude_drop"] = {"min": min(drops), "max": max(drops)}
    summary["nonsaturating_log10_change"] = {e: s["nonsaturating"]["log10_change"]
                                             for e, s in summary["snapshots"].items()}
    return summary


def read_csv(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as f:
        return [{k: (int(v) if k == "d_iter" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]


def write_outputs(rows: list[dict[str, Any]], cfg: GanGradientsConfig, out: Path) -> dict[str, Any]:
    """The plots, ``summary.json`` and ``summary.md`` from the measurements."""
    plot(rows, out)
    summary = summarise(rows, cfg)
    write_json(out / "summary.json", summary)
    (out / "summary.md").write_text(summary_markdown(summary, cfg))
    return summary


def run_gan_gradients(cfg: GanGradientsConfig, out: str | Path, progress: bool = True) -> dict[str, Any]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    snapshots = train_snapshots(cfg, out, progress)
    rows: list[dict[str, Any]] = []
    for epochs, snap in snapshots:
        rows += measure_fresh_discriminator(snap, cfg, epochs, progress)
        write_csv(rows, out / "gradients.csv")                              # partial results survive a Ctrl-C
    return write_outputs(rows, cfg, out)


# --------------------------------------------------------------------------------------------- CLI
def main(args: argparse.Namespace) -> int:
    """``trilemma experiment gan-gradients`` (options in :func:`trilemma.experiments.add_gan_gradients`)."""
    given = {key: getattr(args, key) for key in ("data", "epochs", "d_iters", "measure_every", "preset", "batch_size",
                                                "fixed_n", "d_lr", "seed", "device") if getattr(args, key) is not None}
    if "epochs" in given:
        given["epochs"] = tuple(given["epochs"])
    cfg = GanGradientsConfig(**given)
    summary = run_gan_gradients(cfg, args.out, progress=not args.quiet)
    print(summary_markdown(summary, cfg), end="")
    drop = summary["minimax_orders_of_magnitude_drop"]
    say(f"gan-gradients: the minimax cost's gradient norm fell by {drop['min']:.1f} to {drop['max']:.1f} orders of "
        f"magnitude; the non-saturating one changed by "
        + ", ".join(f"{v:+.1f}" for v in summary["nonsaturating_log10_change"].values())
        + f" orders. Wrote {Path(args.out) / 'gradients.csv'}, gradients*.png and summary.md")
    return 0
