"""Train phase 1 of latent diffusion, a KL-regularised autoencoder, into a run folder.

    python: train_autoencoder("runs/ae", data="fashion-mnist", preset="small", factor=4, minutes=5)
    shell:  trilemma train autoencoder --data fashion-mnist --factor 4 --out runs/ae --minutes 5

Without a discriminator (the default) the autoencoder is one network trained by one optimiser on
a per-image loss (:func:`~trilemma.train.loop.single_optimizer_step`). With ``--disc-weight > 0`` a
patch discriminator joins after ``--disc-start`` steps and :func:`disc_step` updates both networks;
either way the shared loop :func:`trilemma.train.loop.fit` runs it, with the same exact ``--resume``.

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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from trilemma.autoencoder.cache import cached_latents
from trilemma.autoencoder.config import FACTORS, AutoencoderConfig, AutoencoderObjective, PatchDiscConfig
from trilemma.autoencoder.config import preset as ae_preset
from trilemma.autoencoder.losses import DISC_LOSSES, autoencoder_terms, latent_moments
from trilemma.autoencoder.networks import Autoencoder, PatchDiscriminator
from trilemma.autoencoder.run import AutoencoderRun, evaluate_reconstructions
from trilemma.config import from_dict
from trilemma.data import DataConfig, ImageDataset, load_dataset
from trilemma.nets.unet import count_parameters
from trilemma.options import build, int_in, opt, option_names, optional, overrides, positive_int
from trilemma.run import read_run_config
from trilemma.train.common import TrainConfig, adamw, grad_norm_and_clip
from trilemma.train.family import (
    Built,
    TrainSpec,
    data_config,
    read_stored,
    run_config,
    train,
)
from trilemma.train.loop import FitResult, Trainer, single_optimizer_step
from trilemma.utils.device import autocast, pick_device
from trilemma.utils.io import write_json
from trilemma.viz import save_grid

PREVIEW_N = 16           # images shown (originals above reconstructions) in the preview grids
RECON_FILE = "recon.json"
POSTERIOR_STD_N = 2000   # training images used to measure the posterior's σ


@dataclass(frozen=True)
class AutoencoderEval:
    """Options of the evaluation after training, stored in config.json's ``evaluation`` section so that a
    resumed run is measured as it was asked to be (given again with ``--resume``, they replace it)."""

    eval_n: int | None = opt(None, "test images to reconstruct (default all)", check=optional(positive_int))
    recon_fid: bool = opt(True, "also the reconstruction FID (--no-recon-fid: PSNR only)")


def new_config(values: dict[str, Any]) -> tuple[dict[str, Any], ImageDataset]:
    data = data_config(values)
    model = ae_preset(values["preset"], data.image_size, data.channels, factor=values.get("factor", 4),
                      latent_channels=values.get("latent_channels", 4), **overrides(values, ("base_channels",)))
    objective = build(AutoencoderObjective, values)
    disc = PatchDiscConfig(channels=data.channels) if objective.uses_disc else None
    dataset = load_dataset(data, "train")                        # validate the data before creating the folder
    config = run_config("autoencoder", values, data, model, autoencoder=objective, disc=disc)
    config["evaluation"] = asdict(build(AutoencoderEval, values))
    return config, dataset


def build_trainer(out: Path, config: dict[str, Any], dataset: ImageDataset | None, progress: bool) -> Built:
    s = read_stored(out, config, dataset, model=AutoencoderConfig, autoencoder=AutoencoderObjective)
    train_, device, dataset, model_config, objective = s.train, s.device, s.dataset, s["model"], s["autoencoder"]
    where = f"{out}/config.json"
    stored_evaluation(config)                           # refused before training, not after it
    torch.manual_seed(train_.seed)                      # the initial weights depend on the seed only
    model = Autoencoder(model_config).to(device)
    disc = PatchDiscriminator(from_dict(PatchDiscConfig, config["disc"], where)).to(device) \
        if objective.uses_disc else None
    opt = adamw(model.parameters(), train_)                   # fused on CUDA

    def batch(indices: torch.Tensor, generator: torch.Generator):
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

    c, h, w = model_config.latent_shape
    describe = (f"training a KL autoencoder ({count_parameters(model) / 1e6:.2f}M parameters"
                f"{'' if disc is None else f', patch discriminator {count_parameters(disc) / 1e6:.2f}M'}; "
                f"f = {model_config.factor}, latents {c}×{h}×{w}, {objective.recon} + {objective.kl_weight:g}·KL) "
                f"on {dataset.name} ({len(dataset)} images {'x'.join(map(str, dataset.image_shape))})")
    if disc is None:
        trainer = Trainer(nets={"model": model}, optimizers={"opt": opt}, batch=batch,
                          step=single_optimizer_step(model, opt, loss_fn, train_, device), preview=preview,
                          describe=describe)
    else:
        opt_d = adamw(disc.parameters(), train_, betas=(0.5, 0.9), weight_decay=0.01)  # VQGAN's D optimiser
        trainer = Trainer(nets={"model": model, "disc": disc}, optimizers={"opt": opt, "opt_d": opt_d},
                          batch=batch, step=disc_step(model, disc, opt, opt_d, objective, train_, device),
                          preview=preview, describe=describe,
                          plot=(("loss", "loss_g", "loss_d"),
                                f"{out.name}: autoencoder loss, generator and discriminator losses"))
    return Built(trainer, train_, len(dataset), device)


def disc_step(model: Autoencoder, disc: PatchDiscriminator, opt, opt_d, objective: AutoencoderObjective,
              train_: TrainConfig, device: torch.device):
    """The autoencoder against a patch discriminator: per step, one autoencoder step, then one D step.

    Autoencoder: minimise mean[(rec + β·KL)/D + λ · L_G(D(x̂))]  (λ = ``disc_weight``; L_G only from
    step ``disc_start`` on). Discriminator: minimise mean L_D(D(x), D(x̂)) on the same batch.
    """
    d_loss, g_loss = DISC_LOSSES[objective.disc_loss]
    first = next(model.parameters())
    taken: list[int] = []                   # steps taken = the loop's step; read from the optimiser once (no sync)

    def step(draw, noise: torch.Generator) -> dict[str, torch.Tensor]:
        x, _ = draw()
        if not taken:
            state = opt.state.get(first)
            taken.append(int(state["step"]) if state else 0)
        adversarial = taken[0] >= objective.disc_start
        taken[0] += 1
        with autocast(device, train_.bf16):                                 # --- autoencoder step
            terms = autoencoder_terms(model, x, objective, noise)
            x_hat = terms.pop("x_hat")
            loss = terms["loss"]
            if adversarial:
                disc.requires_grad_(False)
                terms["loss_g"] = g_loss(disc(x_hat))                          # (B,)
                disc.requires_grad_(True)
                loss = loss + objective.disc_weight * terms["loss_g"]
        loss = loss.float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        terms["grad_norm"] = grad_norm_and_clip(model.parameters(), train_.grad_clip)
        opt.step()
        if adversarial:                                                     # --- D step, same reals, detached x̂
            with autocast(device, train_.bf16):
                terms["loss_d"] = d_loss(disc(x), disc(x_hat.detach()))        # (B,)
            opt_d.zero_grad(set_to_none=True)
            terms["loss_d"].float().mean().backward()
            grad_norm_and_clip(disc.parameters(), train_.grad_clip)
            opt_d.step()
        terms["loss"] = loss.detach()
        return terms
    return step


@torch.no_grad()
def posterior_std(run: AutoencoderRun, dataset: ImageDataset, n: int = POSTERIOR_STD_N) -> float:
    """Mean σ_φ(x) of q(z|x) over the first ``n`` images (unscaled): how noisy an encoding is next to std(μ)."""
    x, _ = dataset.batch(torch.arange(min(n, len(dataset))))
    _, logvar = run.model.encode(x.to(run.device))
    return torch.exp(0.5 * logvar.double()).mean().item()


def stored_evaluation(config: dict[str, Any]) -> dict[str, Any]:
    """The run's stored evaluation options (checked; empty for a run made before they were stored)."""
    return asdict(from_dict(AutoencoderEval, config["evaluation"])) if "evaluation" in config else {}


def finish_autoencoder(out: str | os.PathLike, values: dict[str, Any] | None = None,
                       progress: bool = True) -> dict[str, Any]:
    """Measure the latents (scale factor → config.json) and the test reconstructions (→ recon.json)."""
    out = Path(out)
    config = read_run_config(out)
    stored = stored_evaluation(config)
    given = {k: v for k, v in (values or {}).items() if k in option_names((AutoencoderEval,)) and v is not None}
    evaluation = build(AutoencoderEval, {**stored, **given})      # a run from before the section: the defaults
    recon_fid, eval_n = evaluation.recon_fid, evaluation.eval_n
    config["evaluation"] = asdict(evaluation)
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


@dataclass(frozen=True)
class AutoencoderShape:
    """How much the autoencoder compresses (the network options every preset takes)."""

    factor: int = opt(4, "spatial downsampling f (latents H/f)", choices=FACTORS)
    latent_channels: int = opt(4, "latent channels c", check=int_in(1, 256))


SPEC = TrainSpec(kind="autoencoder", desc="autoencoder",
                 help="latent diffusion, phase 1: a KL-regularised autoencoder; reports the test PSNR and "
                      "reconstruction FID and stores the latent scale factor",
                 options=(DataConfig, TrainConfig, AutoencoderShape, AutoencoderObjective),
                 overrides={AutoencoderConfig: ("base_channels",)}, extra=(AutoencoderEval,),
                 defaults={"lr": 1e-3, "batch_size": 32}, new_config=new_config, build=build_trainer,
                 finish=finish_autoencoder, drop_on_resume=("latent",))


def train_autoencoder(out: str | os.PathLike, *, resume: bool = False, progress: bool = True,
                      **options: Any) -> FitResult:
    """Train an autoencoder into ``out`` (or continue it with ``resume=True``), then measure it (``finish``)."""
    return train(SPEC, out, resume=resume, progress=progress, **options)
