"""How far a DDGAN's discriminator lags behind its generator: the run's own D against a fresh one.

    python bench/ddgan_fresh_d.py runs/lddgan --updates 1500

Freezes the run's EMA generator, then reports, for each step t, how often the run's trained D and a
freshly initialised D of the same size (trained ``--updates`` times against the frozen G on the
run's training data, Adam with the run's D learning rate and betas) classify real pairs
(x_{t−1}, x_t) ~ q and fake pairs (x′_{t−1} ~ q(x_{t−1}|x_t, G(x_t, z, t)), x_t) correctly. A fresh D
far above the trained one means the game's D is far from its best response: G is fooling the D it
trains against, not matching the pair distribution (docs/ddgan.md, Results).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm import tqdm

from trilemma.autoencoder.cache import TrainingLatents
from trilemma.data import DataConfig, load_dataset
from trilemma.ddgan.diffusion import posterior_sample, q_sample_pairs, sample_t
from trilemma.ddgan.losses import d_loss
from trilemma.ddgan.networks import DDGANDiscriminator
from trilemma.ddgan.run import DDGANRun


def pairs(run: DDGANRun, draw, batch: int, g: torch.Generator):
    """One batch of real and fake pairs at random t: (x_prev, x_prev_fake, x_t, t)."""
    x_0 = draw(torch.randint(0, draw.n, (batch,), generator=g), g)
    t = sample_t(batch, run.schedule.T, "cpu", g)
    x_prev, x_t = q_sample_pairs(run.schedule, x_0, t, g)
    with torch.no_grad():
        x0_hat = run.G(x_t, torch.randn(batch, run.ddgan.z_dim, generator=g), t)
        x_prev_fake = posterior_sample(run.schedule, x0_hat, x_t, t, g)
    return x_prev, x_prev_fake, x_t, t


@torch.no_grad()
def accuracy_per_t(D, run: DDGANRun, draw, batches: int, batch: int, seed: int) -> dict[int, float]:
    """Fraction of real pairs with logit > 0 and fake pairs with logit < 0, per t (same pairs for every D)."""
    g = torch.Generator().manual_seed(seed)
    right = {t: [0, 0] for t in range(1, run.schedule.T + 1)}
    for _ in range(batches):
        x_prev, x_fake, x_t, t = pairs(run, draw, batch, g)
        ok = torch.cat([D(x_prev, x_t, t) > 0, D(x_fake, x_t, t) < 0])
        for k in right:
            m = torch.cat([t == k, t == k])
            right[k][0] += int(ok[m].sum())
            right[k][1] += int(m.sum())
    return {k: r / max(n, 1) for k, (r, n) in right.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--updates", type=int, default=1500, help="updates of the fresh D (default 1500)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-batches", type=int, default=40, help="batches of pairs scored per D (default 40)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()

    config = json.loads((args.run / "config.json").read_text())
    run = DDGANRun(args.run, config, torch.device("cpu"))
    dataset = load_dataset(DataConfig(**config["data"]), "train")
    if run.autoencoder is not None:
        latents = TrainingLatents(run.autoencoder, dataset, hflip=False, progress=True)
        draw = lambda idx, g: latents.batch(idx, g)                               # noqa: E731
    else:
        draw = lambda idx, g: dataset.batch(idx, g)[0]                            # noqa: E731
    draw.n = len(dataset)

    trained = accuracy_per_t(run.discriminator(), run, draw, args.eval_batches, args.batch_size, args.seed + 1)
    torch.manual_seed(args.seed)
    D = DDGANDiscriminator(run.net_config).train()
    opt = torch.optim.Adam(D.parameters(), lr=run.ddgan.lr_d, betas=(run.ddgan.beta1, run.ddgan.beta2))
    g = torch.Generator().manual_seed(args.seed)
    for _ in tqdm(range(args.updates), desc="fresh D against the frozen G"):
        x_prev, x_fake, x_t, t = pairs(run, draw, args.batch_size, g)
        loss = d_loss(D(x_prev, x_t, t), D(x_fake, x_t, t)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    fresh = accuracy_per_t(D.eval(), run, draw, args.eval_batches, args.batch_size, args.seed + 1)

    print(f"{args.run} (G step {run.step}): accuracy of D on real and fake pairs, per t (0.5 = chance)")
    print("| D | " + " | ".join(f"t = {k}" for k in trained) + " |")
    print("|---|" + "---|" * len(trained))
    print("| the run's | " + " | ".join(f"{v:.3f}" for v in trained.values()) + " |")
    print(f"| fresh, {args.updates} updates | " + " | ".join(f"{v:.3f}" for v in fresh.values()) + " |")
    if args.json:
        args.json.write_text(json.dumps({"run": str(args.run), "updates": args.updates, "trained": trained,
                                         "fresh": fresh}, indent=2) + "\n")


if __name__ == "__main__":
    main()
