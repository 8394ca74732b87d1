"""Train a VAE (maximise the ELBO, docs/methods.md §1) into a run folder, with the shared loop ``train.loop.fit``.

    python: train_vae("runs/vae", data="fashion-mnist", preset="small", minutes=8)
    shell:  trilemma train vae --data fashion-mnist --out runs/vae --minutes 8

At the end the test-set −ELBO (nats per image and bits/dim) is computed with the
EMA weights, printed, and written to ``RUN/eval_elbo.json``; ``RUN/samples/``
gets prior samples and reconstructions of test images.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

from trilemma.data import DataConfig, ImageDataset, load_dataset
from trilemma.nets.unet import count_parameters
from trilemma.options import build, overrides
from trilemma.run import read_run_config
from trilemma.train.common import TrainConfig, adamw
from trilemma.train.family import (
    Built,
    TrainSpec,
    data_config,
    read_stored,
    run_config,
    train,
)
from trilemma.train.loop import FitResult, Trainer, single_optimizer_step
from trilemma.utils.device import pick_device
from trilemma.utils.io import write_json
from trilemma.vae.config import VAEConfig, VAENetConfig
from trilemma.vae.config import preset as vae_preset
from trilemma.vae.losses import binarise, elbo_terms
from trilemma.vae.networks import VAE
from trilemma.vae.run import VAERun, evaluate_elbo
from trilemma.viz import save_grid

PREVIEW_N = 64
ELBO_FILE = "eval_elbo.json"
NET_OVERRIDES = ("latent_dim", "base_channels")


def new_config(values: dict[str, Any]) -> tuple[dict[str, Any], ImageDataset]:
    data = data_config(values)
    vae = build(VAEConfig, values)
    net = vae_preset(values["preset"], data.image_size, data.channels, **overrides(values, NET_OVERRIDES))
    dataset = load_dataset(data, "train")                      # validate the data before creating the folder
    config = run_config("vae", values, data, net, vae=vae)
    return config, dataset


def build_trainer(out: Path, config: dict[str, Any], dataset: ImageDataset | None, progress: bool) -> Built:
    s = read_stored(out, config, dataset, model=VAENetConfig, vae=VAEConfig)
    train_, device, dataset, net, vae = s.train, s.device, s.dataset, s["model"], s["vae"]
    torch.manual_seed(train_.seed)                      # the initial weights depend on the seed only
    model = VAE(net, vae)
    opt = adamw(model.parameters(), train_)                   # fused on CUDA

    def batch(indices: torch.Tensor, generator: torch.Generator):
        x, _ = dataset.batch(indices, generator)                         # (B, C, H, W) in [-1, 1]
        if vae.likelihood == "bernoulli":
            x = binarise(x, generator)                                   # a fresh binarisation every step
        return x.to(device, non_blocking=True), {}

    def loss_fn(net_, x, cond, generator):
        return elbo_terms(net_, x, vae, generator)

    z_preview = torch.randn((PREVIEW_N, net.latent_dim), generator=torch.Generator().manual_seed(1234))
    (out / "samples").mkdir(exist_ok=True)

    @torch.no_grad()
    def preview(ema_model, step):
        save_grid(ema_model.image(z_preview.to(device)), out / "samples" / f"step_{step:07d}.png")

    trainer = Trainer(nets={"model": model}, optimizers={"opt": opt}, batch=batch,
                      step=single_optimizer_step(model, opt, loss_fn, train_, device), preview=preview,
                      plot=(("neg_elbo", "recon", "kl"), f"{out.name}: −ELBO = recon + KL (nats per image)"),
                      describe=f"training VAE ({count_parameters(model) / 1e6:.2f}M parameters, {vae.likelihood} "
                               f"likelihood, β = {vae.beta}) on {dataset.name} ({len(dataset)} images "
                               f"{'x'.join(map(str, dataset.image_shape))})")
    return Built(trainer, train_, len(dataset), device)


def finish_vae(out: Path, values: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Test-set −ELBO → ``RUN/eval_elbo.json`` (printed even when ``progress`` is off), and test reconstructions."""
    out = Path(out)
    config = read_run_config(out)
    run = VAERun(out, config, pick_device(config["train"].get("device", "auto")))
    test = load_dataset(run.data_config, "test")
    result = evaluate_elbo(run.model, run.vae_config, test, run.device, progress=progress)
    result["weights"] = "ema" if (out / "ema.safetensors").is_file() else "model"
    result["step"] = run.step
    write_json(out / ELBO_FILE, result)
    x, _ = test.batch(torch.arange(min(32, len(test))))
    pairs = torch.stack([x.to(run.device), run.reconstruct(x)], 1).flatten(0, 1)      # original, reconstruction
    save_grid(pairs, out / "samples" / "reconstructions.png", nrow=16)
    print(f"trilemma: test −ELBO {result['neg_elbo_nats']:.2f} nats per image = {result['bits_per_dim']:.4f} "
          f"bits/dim (reconstruction {result['recon_nats']:.2f} + KL {result['kl_nats']:.2f}; "
          f"{result['convention']}) -> {out / ELBO_FILE}", file=sys.stderr, flush=True)   # also with --quiet
    return result


SPEC = TrainSpec(kind="vae", help="train a variational autoencoder (maximise the ELBO); reports the test −ELBO",
                 desc="VAE", options=(DataConfig, TrainConfig, VAEConfig),
                 overrides={VAENetConfig: NET_OVERRIDES}, defaults={"lr": 1e-3}, new_config=new_config,
                 build=build_trainer, finish=finish_vae)


def train_vae(out: str | os.PathLike, *, resume: bool = False, progress: bool = True, **options: Any) -> FitResult:
    """Train a VAE into the run folder ``out`` (or continue it with ``resume=True``); options as the CLI's."""
    return train(SPEC, out, resume=resume, progress=progress, **options)
