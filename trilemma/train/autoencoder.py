"""Train phase 1 of latent diffusion, a KL-regularised autoencoder, into a run folder.

    python: train_autoencoder("runs/ae", data="fashion-mnist", preset="small", factor=4, minutes=5)
    shell:  trilemma train autoencoder --data fashion-mnist --factor 4 --out runs/ae --minutes 5

Without a discriminator (the default) the autoencoder is one network trained by one optimiser
on a per-image loss, so it trains with the shared loop :func:`trilemma.train.loop.fit`. With
``--disc-weight > 0`` a patch discriminator joins after ``--disc-start`` steps; two networks and
two optimisers need their own loop, :func:`fit_with_disc` — flat, built from the same pieces
(Budget, Interrupt, MetricsLog, EpochSampler, EMA, Checkpoint), with the same exact ``--resume``.

At the end, :func:`finish_autoencoder` (with the EMA weights)

1. encodes the training set — through the latent cache, which ``trilemma train ldm`` then
   reuses — and stores the latents' moments and the scale factor s = 1/std in
   ``config.json["latent"]``;
2. reconstructs the test split: PSNR and reconstruction FID go to ``RUN/recon.json``, and
   originals above reconstructions to ``RUN/samples/reconstructions.png``.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from trilemma import __version__
from trilemma.config import from_dict, to_dict
from trilemma.data import DataConfig, ImageDataset, load_dataset
from trilemma.errors import TrilemmaError
from trilemma.latent.autoencoder import (Autoencoder, AutoencoderConfig, AutoencoderObjective, autoencoder_terms,
                                         latent_moments, preset as ae_preset)
from trilemma.latent.cache import cached_latents
from trilemma.latent.patch_disc import DISC_LOSSES, PatchDiscConfig, PatchDiscriminator
from trilemma.latent.run import AutoencoderRun, evaluate_reconstructions
from trilemma.nets.unet import count_parameters
from trilemma.runs import read_run_config
from trilemma.train.common import (EMA, Budget, Checkpoint, EpochSampler, Interrupt, MetricsLog, TrainConfig,
                                   ema_decay_at, format_eta, grad_norm_and_clip, lr_at)
from trilemma.train.diffusion import prepare_run_dir, resume_config
from trilemma.train.loop import FitResult, fit
from trilemma.utils.device import autocast, pick_device
from trilemma.utils.io import write_json
from trilemma.viz import plot_losses, save_grid

PREVIEW_N = 16           # images shown (originals above reconstructions) in the preview grids
RECON_FILE = "recon.json"
POSTERIOR_STD_N = 2000   # training images used to measure the posterior's σ


def autoencoder_run_config(data: DataConfig, model: AutoencoderConfig, objective: AutoencoderObjective,
                           disc: PatchDiscConfig | None, train: TrainConfig, preset: str | None) -> dict[str, Any]:
    return {"kind": "autoencoder", "trilemma_version": __version__, "preset": preset, "data": data.to_dict(),
            "model": to_dict(model), "autoencoder": to_dict(objective),
            "disc": None if disc is None else to_dict(disc), "train": to_dict(train)}


def train_autoencoder(out: str | os.PathLike, data: str | DataConfig = "fashion-mnist", preset: str = "small", *,
                      steps: int | None = None, minutes: float | None = None, batch_size: int = 32,
                      lr: float = 1e-3, factor: int = 4, latent_channels: int = 4, recon: str = "l2",
                      kl_weight: float = 1e-6, disc_weight: float = 0.0, disc_start: int = 0,
                      disc_loss: str = "hinge", resume: bool = False, progress: bool = True,
                      evaluate: bool = True, recon_fid: bool = True, eval_n: int | None = None,
                      model_overrides: dict[str, Any] | None = None, train_overrides: dict[str, Any] | None = None,
                      data_overrides: dict[str, Any] | None = None) -> FitResult:
    """Train an autoencoder into the run folder ``out`` (or continue it with ``resume=True``), then finish it."""
    out = Path(out)
    if resume:
        dataset = None
        config = resume_config(out, "autoencoder", steps, minutes, drop=("latent",))   # the weights will change: measured again
    else:
        data_config = data if isinstance(data, DataConfig) else DataConfig(name=data, **(data_overrides or {}))
        data_config = data_config.resolved()
        model = ae_preset(preset, data_config.image_size, data_config.channels, factor=factor,
                          latent_channels=latent_channels, **(model_overrides or {}))
        objective = AutoencoderObjective(recon=recon, kl_weight=kl_weight, disc_weight=disc_weight,
                                         disc_start=disc_start, disc_loss=disc_loss)
        disc = PatchDiscConfig(channels=data_config.channels) if objective.uses_disc else None
        train = TrainConfig(steps=steps, minutes=minutes, batch_size=batch_size, lr=lr, **(train_overrides or {}))
        dataset = load_dataset(data_config, "train")               # validate the data before creating the folder
        config = prepare_run_dir(out, False, autoencoder_run_config(data_config, model, objective, disc, train,
                                                                     preset))
    result = fit_autoencoder(out, config, resume=resume, progress=progress, dataset=dataset)
    if evaluate and not result.interrupted:
        finish_autoencoder(out, progress=progress, recon_fid=recon_fid, eval_n=eval_n)
    return result


def fit_autoencoder(out: Path, config: dict[str, Any], resume: bool, progress: bool = True,
                    dataset: ImageDataset | None = None) -> FitResult:
    where = f"{out}/config.json"
    data_config = DataConfig.from_dict(config["data"])
    model_config = from_dict(AutoencoderConfig, config["model"], where)
    objective = from_dict(AutoencoderObjective, config["autoencoder"], where)
    train = from_dict(TrainConfig, config["train"], where)
    device = pick_device(train.device)
    dataset = dataset or load_dataset(data_config, "train")
    torch.manual_seed(train.seed)                      # the initial weights depend on the seed only
    model = Autoencoder(model_config)
    disc = PatchDiscriminator(from_dict(PatchDiscConfig, config["disc"], where)) if objective.uses_disc else None
    if progress:
        c, h, w = model_config.latent_shape
        extra = f", patch discriminator {count_parameters(disc) / 1e6:.2f}M" if disc is not None else ""
        print(f"trilemma: training a KL autoencoder ({count_parameters(model) / 1e6:.2f}M parameters{extra}; "
              f"f = {model_config.factor}, latents {c}×{h}×{w}, {objective.recon} + {objective.kl_weight:g}·KL) "
              f"on {dataset.name} ({len(dataset)} images {'x'.join(map(str, dataset.image_shape))}) on {device}, "
              f"run folder {out}", file=sys.stderr, flush=True)

    def batch_fn(indices: torch.Tensor, generator: torch.Generator):
        x, _ = dataset.batch(indices, generator)                         # (B, C, H, W) in [-1, 1]
        return x.to(device, non_blocking=True), {}

    def loss_fn(net, x, cond, generator):
        terms = autoencoder_terms(net, x, objective, generator)
        del terms["x_hat"]
        return terms

    x_preview = dataset.batch(torch.arange(min(PREVIEW_N, len(dataset))))[0]
    (out / "samples").mkdir(exist_ok=True)

    @torch.no_grad()
    def preview(ema_model, step):
        x = x_preview.to(device)
        mu, _ = ema_model.encode(x)
        save_grid(torch.cat([x, ema_model.decode(mu).clamp(-1, 1)]), out / "samples" / f"step_{step:07d}.png",
                  nrow=len(x))                                          # originals above reconstructions

    if disc is None:
        return fit(out, model=model, num_examples=len(dataset), batch_fn=batch_fn, loss_fn=loss_fn, train=train,
                   device=device, preview=preview, resume=resume, progress=progress, desc="autoencoder")
    return fit_with_disc(out, model=model, disc=disc, objective=objective, num_examples=len(dataset),
                         batch_fn=batch_fn, train=train, device=device, preview=preview, resume=resume,
                         progress=progress)


def fit_with_disc(run_dir: Path, *, model: Autoencoder, disc: PatchDiscriminator, objective: AutoencoderObjective,
                  num_examples: int, batch_fn, train: TrainConfig, device: torch.device, preview=None,
                  resume: bool = False, progress: bool = True) -> FitResult:
    """The autoencoder against a patch discriminator: per step, one autoencoder step, then one D step.

    Autoencoder: minimise mean[(rec + β·KL)/D + λ · L_G(D(x̂))]  (λ = ``disc_weight``; L_G only from
    step ``disc_start`` on). Discriminator: minimise mean L_D(D(x), D(x̂)) on the same batch.
    """
    model.to(device).train()
    disc.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=train.lr, betas=(0.5, 0.9))    # VQGAN's D optimiser
    ema = EMA(model)
    data_gen = torch.Generator().manual_seed(train.seed)              # data order and flips (CPU)
    noise_gen = torch.Generator(device).manual_seed(train.seed + 1)   # z = μ + σε (on the device)
    torch.manual_seed(train.seed + 2)
    sampler = EpochSampler(num_examples, train.batch_size, data_gen)
    ckpt = Checkpoint(run_dir)
    generators = {"data": data_gen, "noise": noise_gen}
    modules = {"model": model, "ema": ema.model, "disc": disc}
    optimizers = {"opt": opt, "opt_d": opt_d}
    step, elapsed_before = 0, 0.0
    if resume:
        info, order = ckpt.load(modules=modules, optimizers=optimizers, generators=generators, device=device)
        step, elapsed_before = info["step"], info.get("elapsed_s", 0.0)
        sampler.load_state(order)
    log = MetricsLog(run_dir / "metrics.jsonl", resume_step=step if resume else None)
    budget = Budget(train, elapsed_before)
    d_loss, g_loss = DISC_LOSSES[objective.disc_loss]

    def save(at_step: int) -> None:
        ckpt.save(at_step, modules=modules, optimizers=optimizers, generators=generators, data_order=sampler.state(),
                  extra={"elapsed_s": budget.elapsed, "epoch": at_step * train.batch_size / num_examples})
        plot_losses(run_dir / "metrics.jsonl", run_dir / "loss.png", keys=("loss", "loss_g", "loss_d"),
                    title=f"{run_dir.name}: autoencoder loss, generator and discriminator losses")

    bar = tqdm(total=train.steps, initial=step, desc="autoencoder + D", unit="step", disable=not progress,
               dynamic_ncols=True)
    window: dict[str, list[float]] = {}
    window_start = time.monotonic()
    last_loss = math.nan
    start_step = step
    with Interrupt() as interrupt:
        while not budget.done(step) and not interrupt.requested:
            x, _ = batch_fn(sampler.next(), data_gen)
            for o in (opt, opt_d):
                for group in o.param_groups:
                    group["lr"] = lr_at(step, train.lr, train.warmup_steps, train.lr_decay, budget.progress(step))
            adversarial = step >= objective.disc_start
            # --- autoencoder step
            with autocast(device, train.bf16):
                terms = autoencoder_terms(model, x, objective, noise_gen)
                x_hat = terms.pop("x_hat")
                loss = terms["loss"]
                if adversarial:
                    disc.requires_grad_(False)
                    terms["loss_g"] = g_loss(disc(x_hat))                          # (B,)
                    disc.requires_grad_(True)
                    loss = loss + objective.disc_weight * terms["loss_g"]
            loss = loss.float().mean()
            if not torch.isfinite(loss):
                raise TrilemmaError(f"the loss became {loss.item()} at step {step + 1}; "
                                    f"try a lower --lr or --disc-weight (the last checkpoint is intact)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = grad_norm_and_clip(model.parameters(), train.grad_clip)
            opt.step()
            ema.update(model, ema_decay_at(step, train.ema_decay))
            # --- discriminator step, on the same reals and the (detached) reconstructions
            if adversarial:
                with autocast(device, train.bf16):
                    terms["loss_d"] = d_loss(disc(x), disc(x_hat.detach()))        # (B,)
                opt_d.zero_grad(set_to_none=True)
                terms["loss_d"].float().mean().backward()
                grad_norm_and_clip(disc.parameters(), train.grad_clip)
                opt_d.step()
            step += 1
            last_loss = loss.item()
            for key, value in {"loss": loss, **{k: v for k, v in terms.items() if k != "loss"}}.items():
                window.setdefault(key, []).append(value.float().mean().item())

            if step % train.log_every == 0 or budget.done(step):
                seconds = time.monotonic() - window_start
                n = len(window["loss"])
                row = {"step": step, **{k: sum(v) / len(v) for k, v in window.items()},
                       "lr": opt.param_groups[0]["lr"], "grad_norm": grad_norm,
                       "images_per_s": n * train.batch_size / max(seconds, 1e-9), "elapsed_s": round(budget.elapsed, 3)}
                log.write(row)
                window, window_start = {}, time.monotonic()
            postfix = f"loss={last_loss:.4f}" + (f" D={terms['loss_d'].mean().item():.3f}" if adversarial else "")
            if train.steps is None:
                postfix += f" left={format_eta(max(0.0, budget.seconds - budget.elapsed))}"
            bar.set_postfix_str(postfix, refresh=False)
            bar.update(1)
            if preview is not None and train.sample_every and step % train.sample_every == 0:
                preview(ema.model, step)
            if step % train.checkpoint_every == 0:
                save(step)
    bar.close()
    if step > start_step or not ckpt.exists():
        save(step)
    if preview is not None and not interrupt.requested:
        preview(ema.model, step)
    return FitResult(run_dir, step, budget.elapsed, interrupt.requested, last_loss)


@torch.no_grad()
def posterior_std(run: AutoencoderRun, dataset: ImageDataset, n: int = POSTERIOR_STD_N) -> float:
    """Mean σ_φ(x) of q(z|x) over the first ``n`` images (unscaled): how noisy an encoding is next to std(μ)."""
    x, _ = dataset.batch(torch.arange(min(n, len(dataset))))
    _, logvar = run.model.encode(x.to(run.device))
    return torch.exp(0.5 * logvar.double()).mean().item()


def finish_autoencoder(out: str | os.PathLike, *, progress: bool = True, recon_fid: bool = True,
                       eval_n: int | None = None) -> dict[str, Any]:
    """Measure the latents (scale factor → config.json) and the test reconstructions (→ recon.json)."""
    out = Path(out)
    config = read_run_config(out)
    run = AutoencoderRun(out, config, pick_device(config["train"].get("device", "auto")))
    train_set = load_dataset(run.data_config, "train")
    cached = cached_latents(run, train_set, progress=progress)          # encoded once; reused by `train ldm`
    moments = latent_moments(cached.latents)
    config["latent"] = {**moments, "posterior_std_mean": posterior_std(run, train_set),
                        "split": "train", "n": len(train_set), "weights": run.weights_path.name, "step": run.step,
                        "digest": run.weights_digest()}
    write_json(out / "config.json", config)
    run.latent_stats = config["latent"]

    test = load_dataset(run.data_config, "test")
    result = evaluate_reconstructions(run, test, n=eval_n, fid=recon_fid, progress=progress)
    c, h, w = run.latent_shape
    result.update({"factor": run.model_config.factor, "latent_shape": [c, h, w],
                   "compression": math.prod(run.image_shape) / (c * h * w), "scale_factor": moments["scale_factor"],
                   "weights": run.weights_path.name, "step": run.step,
                   "encode_train_s": round(cached.seconds, 2), "encode_train_cached": cached.reused})
    write_json(out / RECON_FILE, result)
    x, _ = test.batch(torch.arange(min(PREVIEW_N, len(test))))
    save_grid(torch.cat([x.to(run.device), run.reconstruct(x)]), out / "samples" / "reconstructions.png",
              nrow=len(x))
    rfid = "" if result["rfid"] is None else f", reconstruction FID {result['rfid']:.2f}"
    print(f"trilemma: autoencoder f = {run.model_config.factor} ({c}×{h}×{w} latents, {result['compression']:.1f}× "
          f"fewer numbers than pixels): test PSNR {result['psnr_db']:.2f} dB{rfid} on {result['n']} images; "
          f"latent std {moments['std']:.4g} -> scale factor {moments['scale_factor']:.4g} -> {out / RECON_FILE}",
          file=sys.stderr, flush=True)                                     # also with --quiet
    return result
