"""How far a DDGAN's discriminator lags behind its generator: the run's own D against a fresh one.

    python bench/ddgan_fresh_d.py runs/lddgan --updates 1500

Freezes the run's EMA generator, then reports, for each step t, how often the run's trained D and a
freshly initialised D of the same size (trained ``--updates`` times against the frozen G on the
run's training data, Adam with the run's D learning rate and betas) classify real pairs
(x_{t−1}, x_t) ~ q and fake pairs (x′_{t−1} ~ q(x_{t−1}|x_t, G(x_t, z, t)), x_t) correctly. A fresh D
far above the trained one means the game's D is far from its best response: G is fooling the D it
trains against, not matching the pair distribution (docs/ddgan.md, Results).

It also reports how much G's x̂₀ = G(x_t, z, t) varies with z: per t, the variance over ``--z-draws``
z of x̂₀ at fixed x_t (averaged over elements and x_t), beside the variance of the data x₀ and of the
z-averaged x̂₀ across x_t. The true x₀ given a nearly pure-noise x_t varies like the data, so a
spread over z far below it means G has become (nearly) deterministic at that step.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm import tqdm

from trilemma.autoencoder.cache import TrainingLatents
from trilemma.data import DataConfig, load_dataset
from trilemma.ddgan.diffusion import q_sample_pairs
from trilemma.ddgan.losses import discriminator_terms
from trilemma.ddgan.networks import make_discriminator
from trilemma.ddgan.run import DDGANRun


def pair_terms(D, run: DDGANRun, data: Data, batch: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """D's terms on one batch of real and fake pairs at random t (the trainer's own, without R1)."""
    x_0 = data(torch.randint(0, data.n, (batch,), generator=g), g)
    return discriminator_terms(run.G, D, run.schedule, x_0, run.G.z_numel, 0.0, g)


@torch.no_grad()
def accuracy_per_t(D, run: DDGANRun, data: Data, batches: int, batch: int, seed: int) -> dict[int, float]:
    """Fraction of real pairs with D > ½ and fake pairs with D < ½, per t (the same pairs for every D)."""
    g = torch.Generator().manual_seed(seed)
    right = {t: [0, 0] for t in range(1, run.schedule.T + 1)}
    for _ in range(batches):
        terms = pair_terms(D, run, data, batch, g)
        for k, counts in right.items():
            m = terms["t"] == k
            counts[0] += int((terms["d_real"][m] > 0.5).sum() + (terms["d_fake"][m] < 0.5).sum())
            counts[1] += 2 * int(m.sum())
    return {k: r / max(n, 1) for k, (r, n) in right.items()}


@torch.no_grad()
def z_spread_per_t(run: DDGANRun, data: Data, draws: int, batch: int, seed: int) -> dict[int, dict[str, float]]:
    """Per t: Var_z[x̂₀ | x_t] and Var over x_t of E_z[x̂₀], element-wise means, on ``batch`` training x₀."""
    g = torch.Generator().manual_seed(seed)
    x_0 = data(torch.randint(0, data.n, (batch,), generator=g), g)
    out = {}
    for k in range(1, run.schedule.T + 1):
        t = torch.full((batch,), k)
        _, x_t = q_sample_pairs(run.schedule, x_0, t, g)
        x0_hat = torch.stack([run.G(x_t, torch.randn(batch, run.G.z_numel, generator=g), t) for _ in range(draws)])
        out[k] = {"over_z": x0_hat.var(0).mean().item(), "over_x_t": x0_hat.mean(0).var(0).mean().item()}
    return out


class Data:
    """x₀ of training images by index: the scaled latents of a latent run, else the images."""

    def __init__(self, run: DDGANRun, config: dict):
        self.dataset = load_dataset(DataConfig(**config["data"]), "train")
        self.latents = (TrainingLatents(run.autoencoder, self.dataset, hflip=False, progress=True)
                        if run.autoencoder is not None else None)
        self.n = len(self.dataset)

    def __call__(self, indices: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return self.latents.batch(indices, g) if self.latents else self.dataset.batch(indices, g)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--updates", type=int, default=1500, help="updates of the fresh D (default 1500)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-batches", type=int, default=40, help="batches of pairs scored per D (default 40)")
    parser.add_argument("--z-draws", type=int, default=16, help="z per x_t for the spread of x̂₀ over z (default 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()

    config = json.loads((args.run / "config.json").read_text())
    run = DDGANRun(args.run, config, torch.device("cpu"))
    data = Data(run, config)

    trained = accuracy_per_t(run.discriminator(), run, data, args.eval_batches, args.batch_size, args.seed + 1)
    torch.manual_seed(args.seed)
    D = make_discriminator(run.net_config).train()
    opt = torch.optim.Adam(D.parameters(), lr=run.ddgan.lr_d, betas=(run.ddgan.beta1, run.ddgan.beta2))
    g = torch.Generator().manual_seed(args.seed)
    for _ in tqdm(range(args.updates), desc="fresh D against the frozen G"):
        loss = pair_terms(D, run, data, args.batch_size, g)["d_loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    fresh = accuracy_per_t(D.eval(), run, data, args.eval_batches, args.batch_size, args.seed + 1)

    print(f"{args.run} (G step {run.step}): accuracy of D on real and fake pairs, per t (0.5 = chance)")
    print("| D | " + " | ".join(f"t = {k}" for k in trained) + " |")
    print("|---|" + "---|" * len(trained))
    print("| the run's | " + " | ".join(f"{v:.3f}" for v in trained.values()) + " |")
    print(f"| fresh, {args.updates} updates | " + " | ".join(f"{v:.3f}" for v in fresh.values()) + " |")
    spread = z_spread_per_t(run, data, args.z_draws, 4 * args.batch_size, args.seed + 2)
    g = torch.Generator().manual_seed(args.seed + 3)
    data_var = data(torch.randint(0, data.n, (4 * args.batch_size,), generator=g), g).var(0).mean().item()
    print(f"\nvariance of G's x̂₀ (mean over elements; the data x₀: {data_var:.4f})")
    print("| | " + " | ".join(f"t = {k}" for k in spread) + " |")
    print("|---|" + "---|" * len(spread))
    print(f"| over z ({args.z_draws} draws), fixed x_t | " + " | ".join(f"{v['over_z']:.4f}" for v in spread.values()) + " |")
    print("| over x_t, of the mean over z | " + " | ".join(f"{v['over_x_t']:.4f}" for v in spread.values()) + " |")
    if args.json:
        args.json.write_text(json.dumps({"run": str(args.run), "updates": args.updates, "trained": trained,
                                         "fresh": fresh, "data_var": data_var, "z_spread": spread}, indent=2) + "\n")


if __name__ == "__main__":
    main()
