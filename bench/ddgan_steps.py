"""Which step of a DDGAN's chain loses the data's variety: the chain started from real x_k, and each step's spread.

    python bench/ddgan_steps.py RUN [--n 2000] [--json OUT]

Two measurements per step, on training images x₀ (their scaled latents in a latent run):

- **The chain from real x_k**, k = T … 1: x_k ~ q(x_k | x₀), then the run's sampler for steps k … 1 (G's
  EMA, the posterior step), decoded and scored like ``trilemma eval`` (FID, precision, recall, coverage
  against the test split, ``--n`` images). k = T is the sampler itself up to the noise in x_T; k = 1 is
  the last step alone, from inputs with exactly the data's distribution. A first row scores x₀ itself
  (the autoencoder's reconstructions in a latent run): the ceiling of every other row. Where recall
  drops between two rows, the step in between loses variety.
- **The spread ratio** r_t = E‖G(x_t, z₁, t) − G(x_t, z₂, t)‖² / E‖G(x_t, z, t) − x₀‖² at real x_t. For
  a G whose x̂₀ has the distribution q(x₀ | x_t), numerator and denominator are both
  2·E Var[x₀ | x_t], so r_t = 1 at every t; below 1, G's x̂₀ is too narrow (or off-centre) at that step,
  above 1 too wide (docs/methods.md §11.6).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from ddgan_fresh_d import Data
from trilemma.data.transforms import to_uint8
from trilemma.ddgan.diffusion import ddgan_sample
from trilemma.ddgan.run import DDGANRun
from trilemma.errors import TrilemmaError
from trilemma.metrics import evaluate_images
from trilemma.registry import load_run

COLUMNS = ("fid", "precision", "recall", "coverage")


def q_sample(run: DDGANRun, x_0: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """x_k ~ q(x_k | x₀) = N(√ᾱ_k x₀, (1 − ᾱ_k) I): (B, C, H, W) → (B, C, H, W)."""
    ab = float(run.schedule.alpha_bar[k])
    return ab ** 0.5 * x_0 + (1 - ab) ** 0.5 * torch.randn(x_0.shape, generator=g)


@torch.no_grad()
def chain_from(run: DDGANRun, x_k: torch.Tensor, k: int, g: torch.Generator) -> torch.Tensor:
    """The sampler's steps k … 1 from x_k (G's sampling weights, the posterior step), decoded to images."""
    return run.decode(ddgan_sample(run.G, x_k, run.schedule, run.G.z_numel, generator=g, start=k))


@torch.no_grad()
def spread_ratio(run: DDGANRun, x_0: torch.Tensor, g: torch.Generator) -> dict[int, float]:
    """r_t = E‖x̂₀(z₁) − x̂₀(z₂)‖² / E‖x̂₀(z) − x₀‖² at x_t ~ q(x_t | x₀), per t (1 for a sampler of q(x₀ | x_t))."""
    out = {}
    for k in range(1, run.ddgan.T + 1):
        x_k, t = q_sample(run, x_0, k, g), torch.full((len(x_0),), k, dtype=torch.long)
        a, b = (run.G(x_k, torch.randn(len(x_0), run.G.z_numel, generator=g), t) for _ in range(2))
        out[k] = float((a - b).square().mean() / (a - x_0).square().mean())
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a DDGAN run folder (pixel or latent)")
    ap.add_argument("--n", type=int, default=2000, help="training images per row (as trilemma eval --n)")
    ap.add_argument("--batch-size", type=int, default=250, help="images per generator call")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args(argv)
    if args.n < 10:
        raise TrilemmaError(f"--n: need at least 10 images per row, got {args.n}")

    run = load_run(args.run, device="cpu")
    if not isinstance(run, DDGANRun):
        raise TrilemmaError(f"{args.run}: a {run.kind} run, not a DDGAN run")
    data = Data(run, json.loads((args.run / "config.json").read_text()))
    g = torch.Generator().manual_seed(args.seed)
    x_0 = data(torch.randperm(data.n, generator=g)[:args.n], g)                     # (n, C, H, W)
    batches = list(torch.split(x_0, args.batch_size))

    def score(images: torch.Tensor) -> dict[str, float]:
        result = evaluate_images(to_uint8(images), run.data_config, progress=False)
        flat = {**result["quality"], **result["coverage"]}
        return {k: float(flat[k]) for k in COLUMNS}

    first = "x₀ itself" if run.autoencoder is None else "x₀ through the autoencoder (its reconstructions)"
    rows = {first: score(torch.cat([run.decode(b) for b in batches]))}
    for k in tqdm(range(run.ddgan.T, 0, -1), desc="chains from real x_k"):
        rows[f"from real x_{k}"] = score(torch.cat([chain_from(run, q_sample(run, b, k, g), k, g) for b in batches]))
    ratios = spread_ratio(run, x_0[:1000], g)

    print(f"{args.run} (G step {run.step}), n = {args.n} training images per row, scored against the test split")
    print("| start | FID ↓ | precision ↑ | recall ↑ | coverage ↑ |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[c]:.3f}" if c != "fid" else f"{r[c]:.2f}" for c in COLUMNS) + " |")
    print("\nspread ratio r_t = E‖x̂₀(z₁) − x̂₀(z₂)‖² / E‖x̂₀ − x₀‖² (1 for a sampler of q(x₀ | x_t))")
    print("| " + " | ".join(f"t = {k}" for k in ratios) + " |")
    print("|" + "---|" * len(ratios))
    print("| " + " | ".join(f"{v:.3f}" for v in ratios.values()) + " |")
    result = {"run": str(args.run), "step": run.step, "n": args.n, "rows": rows, "spread_ratio": ratios}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    try:
        main()
    except TrilemmaError as e:
        sys.exit(f"ddgan_steps: {e}")
