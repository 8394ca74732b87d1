"""Quality per minute: trilemma's demo recipe against diffusers' unconditional training recipe.

Every arm trains on the same data (Fashion-MNIST by default) for the same wall-clock budget on
this machine, then draws ``--n`` samples with 50-step deterministic DDIM, and all are scored by
``trilemma eval`` against the same test split with the same feature network:

* ``trilemma``: ``trilemma demo`` (its default recipe; the budget is the demo's, autoencoder
  included for the latent recipe) — ``--space pixel`` adds the pixel-space demo as a fourth arm;
* ``diffusers-default``: the recipe of diffusers' ``examples/unconditional_image_generation/
  train_unconditional.py`` at its defaults — ``UNet2DModel`` with ``--widths`` (32, 64, 128 by
  default; attention at the lowest level), ε-prediction, linear β, AdamW lr 1e-4 (β = 0.95, 0.999,
  weight decay 1e-6), cosine schedule with 500 warm-up steps over the example's 100 epochs, batch
  16, ``EMAModel`` (inv_gamma 1, power 3/4, max 0.9999), fp32;
* ``diffusers-tuned``: the same network, tuned for a short budget the way a careful user would:
  lr 1e-3 with 100 warm-up steps then constant, v-prediction, batch 128, bf16 autocast (when the
  CPU has it), same EMA.

    python bench/quality_per_minute.py --out runs/qpm                    # 6 minutes each, n = 2000
    python bench/quality_per_minute.py --out runs/qpm --minutes 2 --n 500 --arms diffusers-tuned
    python bench/quality_per_minute.py --out runs/qpm --trilemma-run runs/demo   # score the demo you ran

Re-running reuses finished arms (``DIR/<arm>/result.json``); a killed arm is trained again. Not a
test and not in CI (it takes ~30 minutes at the defaults); it prints one table and writes
``DIR/quality_per_minute.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

ARMS = ("trilemma", "diffusers-default", "diffusers-tuned")
RECIPES = {
    "diffusers-default": dict(lr=1e-4, warmup=500, schedule="cosine", epochs=100, batch=16, prediction="epsilon",
                              bf16=False),
    "diffusers-tuned": dict(lr=1e-3, warmup=100, schedule="constant", epochs=None, batch=128,
                            prediction="v_prediction", bf16=True),
}


def trilemma_cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "trilemma", *args], check=True)


def evaluate(arm_dir: Path, args, *, run: Path | None = None, samples: Path | None = None) -> dict:
    out = arm_dir / "eval.json"
    if run is not None:
        trilemma_cli("eval", str(run), "--n", str(args.n), "--sampler", "ddim", "--steps", "50", "--eta", "0",
                     "--json", str(out), "--quiet")
    else:
        trilemma_cli("eval", "--samples", str(samples), "--data", args.data, "--json", str(out), "--quiet")
    return json.loads(out.read_text())


# --------------------------------------------------------------------------- the trilemma arm

def run_trilemma(arm_dir: Path, args, space: str) -> dict:
    demo = arm_dir / "run"
    if space == "latent" and args.trilemma_run is not None:              # a demo trained (and timed) before
        demo = args.trilemma_run
    else:
        trilemma_cli("demo", "--out", str(demo), "--data", args.data, "--space", space, "--minutes",
                     str(args.minutes), "--ddpm-n", "4", "--ddim-n", "16")
    state = json.loads((demo / "state" / "trainer.json").read_text())
    config = json.loads((demo / "config.json").read_text())
    images = state["step"] * config["train"]["batch_size"]
    metrics = evaluate(arm_dir, args, run=demo)
    result = {"train_images_per_s": images / max(state["elapsed_s"], 1e-9), "steps": state["step"],
              "batch_size": config["train"]["batch_size"], "eval": metrics}
    if (demo / "ae" / "state" / "trainer.json").is_file():                # the latent recipe's phase 1
        ae_state = json.loads((demo / "ae" / "state" / "trainer.json").read_text())
        ae_config = json.loads((demo / "ae" / "config.json").read_text())
        result["phase1"] = f"autoencoder {ae_state['step']:,} × {ae_config['train']['batch_size']}, " \
                           f"{ae_state['elapsed_s'] / 60:.1f} min"
    return result


# --------------------------------------------------------------------------- the diffusers arms

def diffusers_unet(size: int, channels: int, widths: tuple[int, ...]):
    from diffusers import UNet2DModel

    down = tuple("AttnDownBlock2D" if i == len(widths) - 1 else "DownBlock2D" for i in range(len(widths)))
    up = tuple("AttnUpBlock2D" if i == 0 else "UpBlock2D" for i in range(len(widths)))
    return UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=2,
                       block_out_channels=widths, down_block_types=down, up_block_types=up)


def run_diffusers(arm_dir: Path, args, name: str) -> dict:
    from diffusers import DDIMScheduler, DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from trilemma.data import load_dataset
    from trilemma.utils.device import native_bf16

    recipe = RECIPES[name]
    torch.manual_seed(args.seed)
    data = load_dataset(args.data, "train")
    c, h, _ = data.image_shape
    model = diffusers_unet(h, c, args.widths)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type=recipe["prediction"])
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    batch = recipe["batch"]
    total = recipe["epochs"] * math.ceil(len(data) / batch) if recipe["epochs"] else 10**9
    lr_sched = get_scheduler(recipe["schedule"] if recipe["schedule"] == "cosine" else "constant_with_warmup", opt,
                             num_warmup_steps=recipe["warmup"], num_training_steps=total)
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=3 / 4)
    bf16 = recipe["bf16"] and native_bf16(torch.device("cpu"))
    g = torch.Generator().manual_seed(args.seed)
    budget_s, step, seen, t0 = args.minutes * 60, 0, 0, time.perf_counter()
    order = torch.randperm(len(data), generator=g)
    with tqdm(total=round(budget_s), desc=f"{name} (s)", unit="s", file=sys.stderr) as bar:
        while time.perf_counter() - t0 < budget_s:
            if seen + batch > len(order):
                order, seen = torch.randperm(len(data), generator=g), 0
            x_0, _ = data.batch(order[seen:seen + batch])
            seen += batch
            noise = torch.randn(x_0.shape, generator=g)
            t = torch.randint(0, 1000, (len(x_0),), generator=g)
            x_t = scheduler.add_noise(x_0, noise, t)
            target = noise if recipe["prediction"] == "epsilon" else scheduler.get_velocity(x_0, noise, t)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = model(x_t, t).sample
            loss = F.mse_loss(out.float(), target)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            lr_sched.step()
            opt.zero_grad(set_to_none=True)
            ema.step(model.parameters())
            step += 1
            bar.update(round(time.perf_counter() - t0) - bar.n)
            bar.set_postfix(step=step, loss=f"{loss.item():.4f}")
    elapsed = time.perf_counter() - t0
    ema.copy_to(model.parameters())
    model.eval()
    sampler = DDIMScheduler.from_config(scheduler.config)
    sampler.set_timesteps(50)
    images = []
    gen = torch.Generator().manual_seed(args.seed + 1)
    with torch.no_grad():
        for start in tqdm(range(0, args.n, 250), desc=f"{name} sampling", file=sys.stderr):
            x = torch.randn((min(250, args.n - start), c, h, h), generator=gen)
            for t in sampler.timesteps:
                x = sampler.step(model(x, t).sample, t, x, eta=0.0).prev_sample
            images.append(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())
    samples = arm_dir / "samples.npz"
    np.savez_compressed(samples, images=np.concatenate(images))
    metrics = evaluate(arm_dir, args, samples=samples)
    return {"train_images_per_s": step * batch / elapsed, "steps": step, "batch_size": batch, "eval": metrics,
            "parameters": sum(p.numel() for p in model.parameters())}


# --------------------------------------------------------------------------- the table

def table(results: dict[str, dict], args) -> str:
    lines = [f"Budget {args.minutes:g} training minutes per arm, data {args.data}, n = {args.n}, 50-step DDIM "
             f"(η = 0), scored by `trilemma eval`.", "",
             "| arm | FID ↓ | precision ↑ | recall ↑ | coverage ↑ | train images/s | steps × batch |",
             "|---|---|---|---|---|---|---|"]
    notes = []
    for arm, r in results.items():
        q, c = r["eval"]["quality"], r["eval"]["coverage"]
        lines.append(f"| {arm} | {q['fid']:.2f} | {q['precision']:.3f} | {c['recall']:.3f} | {c['coverage']:.3f} | "
                     f"{r['train_images_per_s']:.0f} | {r['steps']:,} × {r['batch_size']} |")
        if "phase1" in r:
            notes.append(f"{arm}: the diffusion phase's images/s and steps; before it, in the same budget, "
                         f"{r['phase1']} (and encoding the training set).")
    lines += [""] + notes if notes else []
    fids = {arm: r["eval"]["quality"]["fid"] for arm, r in results.items()}
    if "trilemma" in fids:
        for peer in ("diffusers-default", "diffusers-tuned"):
            if peer in fids:
                lines.append(f"\nFID ratio {peer} / trilemma: {fids[peer] / fids['trilemma']:.2f}×")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/quality_per_minute"))
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--minutes", type=float, default=6.0, help="training minutes per arm")
    p.add_argument("--n", type=int, default=2000, help="samples scored per arm")
    p.add_argument("--arms", nargs="+", choices=ARMS + ("trilemma-pixel",), default=list(ARMS))
    p.add_argument("--widths", type=lambda s: tuple(int(w) for w in s.split(",")), default=(32, 64, 128),
                   help="diffusers UNet2DModel block_out_channels (comma-separated)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--trilemma-run", type=Path, default=None,
                   help="score this finished `trilemma demo` run (same data and budget) instead of training one")
    args = p.parse_args(argv)
    results = {}
    for arm in args.arms:
        arm_dir = args.out / arm
        done = arm_dir / "result.json"
        if done.is_file():
            results[arm] = json.loads(done.read_text())
            print(f"reusing {done}", file=sys.stderr)
            continue
        if arm_dir.exists():                                    # a killed attempt: start the arm again
            import shutil

            shutil.rmtree(arm_dir)
        arm_dir.mkdir(parents=True)
        if arm.startswith("trilemma"):
            results[arm] = run_trilemma(arm_dir, args, "pixel" if arm == "trilemma-pixel" else "latent")
        else:
            results[arm] = run_diffusers(arm_dir, args, arm)
        done.write_text(json.dumps(results[arm], indent=1))
    text = table(results, args)
    print(text)
    (args.out / "quality_per_minute.md").write_text(text + "\n")
    (args.out / "quality_per_minute.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
