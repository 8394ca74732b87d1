"""Train a VAE (maximise the ELBO, METHODS.md §1) into a run folder, with the shared loop ``train.loop.fit``.

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

from trilemma import __version__
from trilemma.config import from_dict, to_dict
from trilemma.data import DataConfig, ImageDataset, load_dataset
from trilemma.nets.unet import count_parameters
from trilemma.train.common import TrainConfig
from trilemma.train.diffusion import prepare_run_dir, resume_config
from trilemma.train.loop import FitResult, fit
from trilemma.utils.device import pick_device
from trilemma.utils.io import write_json
from trilemma.vae.config import VAEConfig, VAENetConfig, preset as vae_preset
from trilemma.vae.losses import binarise, elbo_terms
from trilemma.vae.networks import VAE
from trilemma.vae.run import evaluate_elbo
from trilemma.viz import plot_losses, save_grid

PREVIEW_N = 64
ELBO_FILE = "eval_elbo.json"


def vae_run_config(data: DataConfig, model: VAENetConfig, vae: VAEConfig, train: TrainConfig,
                   preset: str | None) -> dict[str, Any]:
    return {"kind": "vae", "trilemma_version": __version__, "preset": preset, "data": data.to_dict(),
            "model": to_dict(model), "vae": to_dict(vae), "train": to_dict(train)}


def train_vae(out: str | os.PathLike, data: str | DataConfig = "fashion-mnist", preset: str = "small", *,
              steps: int | None = None, minutes: float | None = None, batch_size: int = 128, lr: float = 1e-3,
              likelihood: str = "gaussian", variance: str = "learned", sigma: float = 0.1, beta: float = 1.0,
              discretised: bool = True, resume: bool = False, progress: bool = True, evaluate: bool = True,
              model_overrides: dict[str, Any] | None = None, train_overrides: dict[str, Any] | None = None,
              data_overrides: dict[str, Any] | None = None) -> FitResult:
    """Train a VAE into the run folder ``out`` (or continue it with ``resume=True``)."""
    out = Path(out)
    if resume:
        dataset = None
        config = resume_config(out, "vae", steps, minutes)
    else:
        data_config = data if isinstance(data, DataConfig) else DataConfig(name=data, **(data_overrides or {}))
        data_config = data_config.resolved()
        vae = VAEConfig(likelihood=likelihood, variance=variance, sigma=sigma, beta=beta, discretised=discretised)
        train = TrainConfig(steps=steps, minutes=minutes, batch_size=batch_size, lr=lr, **(train_overrides or {}))
        net = vae_preset(preset, data_config.image_size, data_config.channels, **(model_overrides or {}))
        dataset = load_dataset(data_config, "train")               # validate the data before creating the folder
        config = prepare_run_dir(out, False, vae_run_config(data_config, net, vae, train, preset))
    result = fit_vae(out, config, resume=resume, progress=progress, dataset=dataset)
    if evaluate and not result.interrupted:
        finish_vae(out, config, progress=progress)
    return result


def fit_vae(out: Path, config: dict[str, Any], resume: bool, progress: bool = True,
            dataset: ImageDataset | None = None) -> FitResult:
    where = f"{out}/config.json"
    data_config = DataConfig.from_dict(config["data"])
    net = from_dict(VAENetConfig, config["model"], where)
    vae = from_dict(VAEConfig, config["vae"], where)
    train = from_dict(TrainConfig, config["train"], where)
    device = pick_device(train.device)
    dataset = dataset or load_dataset(data_config, "train")
    torch.manual_seed(train.seed)                      # the initial weights depend on the seed only
    model = VAE(net, vae)
    if progress:
        print(f"trilemma: training VAE ({count_parameters(model) / 1e6:.2f}M parameters, {vae.likelihood} "
              f"likelihood, β = {vae.beta}) on {dataset.name} ({len(dataset)} images "
              f"{'x'.join(map(str, dataset.image_shape))}) on {device}, run folder {out}",
              file=sys.stderr, flush=True)

    def batch_fn(indices: torch.Tensor, generator: torch.Generator):
        x, _ = dataset.batch(indices, generator)                         # (B, C, H, W) in [-1, 1]
        if vae.likelihood == "bernoulli":
            x = binarise(x, generator)                                   # a fresh binarisation every step
        return x.to(device, non_blocking=True), {}

    def loss_fn(net_, x, cond, generator):
        return elbo_terms(net_, x, vae, generator)

    z_preview = torch.randn((PREVIEW_N, net.latent_dim), generator=torch.Generator().manual_seed(1234))

    def preview(ema_model, step):
        with torch.no_grad():
            save_grid(ema_model.image(z_preview.to(device)), out / "samples" / f"step_{step:07d}.png")
        plot_losses(out / "metrics.jsonl", out / "loss.png", keys=("neg_elbo", "recon", "kl"),
                    title=f"{out.name}: −ELBO = recon + KL (nats per image)")

    (out / "samples").mkdir(exist_ok=True)
    return fit(out, model=model, num_examples=len(dataset), batch_fn=batch_fn, loss_fn=loss_fn, train=train,
               device=device, preview=preview, resume=resume, progress=progress, desc="VAE")


def finish_vae(out: Path, config: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    """Test-set −ELBO → ``RUN/eval_elbo.json`` (printed even when ``progress`` is off), and test reconstructions."""
    from trilemma.runs import load_run

    run = load_run(out, device=config["train"].get("device", "auto"))
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
