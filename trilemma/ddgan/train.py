"""Train a denoising diffusion GAN (Xiao et al., ICLR 2022; docs/methods.md §11) into a run folder.

    python: train_ddgan("runs/ddgan", data="fashion-mnist", preset="small", minutes=8, T=4)
    shell:  trilemma train ddgan --data fashion-mnist --out runs/ddgan --minutes 8 --T 4
    latent: trilemma train ddgan --autoencoder runs/ae --out runs/lddgan --minutes 20

With ``--autoencoder`` the diffused variable is the autoencoder's scaled latent z₀ = s · μ_φ(x)
(as the latent DDPM's, :mod:`trilemma.ldm.train`): the training set is encoded once through the
latent cache, G and D work on c × h × h latents, and samples are decoded; the run keeps a copy of
the autoencoder in ``RUN/autoencoder`` (its SHA-256 in ``config.json["autoencoder"]``).

One *step* of the shared loop (:func:`trilemma.train.loop.fit`) is one iteration of the paper's
training: on a minibatch x₀,

1. ``--d-steps`` D updates (default 1), each on fresh t, pairs and z from the same x₀: real pairs
   (x_{t−1}, x_t) ~ q against fake pairs (x′_{t−1} ~ q(x_{t−1}|x_t, x̂₀), x̂₀ = G(x_t, z, t) without
   gradients), the non-saturating cost plus R1 on the real pairs (every ``--lazy-reg`` D updates,
   :meth:`DDGANConfig.r1_gamma_at`);
2. a G update with D frozen, on fresh t, fresh pairs and fresh z from the same x₀.

Run folder: ``model.safetensors`` = G, ``disc.safetensors`` = D, ``ema.safetensors`` = the EMA of
G (the loop's EMA; sampling uses it), ``state/`` with both Adam states, every RNG and the data
order, so ``--resume`` continues bit for bit on the CPU. G's learning rate is ``--lr`` (default
1.6e-4) and D's is ``--lr-d`` (1.25e-4); both follow the shared warm-up/decay schedule, D's
through the ratio ``lr_scale = lr_d / lr`` stored in its Adam param group.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from trilemma.autoencoder.cache import TrainingLatents
from trilemma.autoencoder.run import load_autoencoder, run_autoencoder
from trilemma.data import DataConfig, ImageDataset, load_dataset
from trilemma.ddgan.config import DDGANConfig, DDGANNetConfig, latent_preset
from trilemma.ddgan.config import preset as ddgan_preset
from trilemma.ddgan.diffusion import ddgan_sample, ddgan_schedule
from trilemma.ddgan.losses import discriminator_terms, generator_terms, regression_terms
from trilemma.ddgan.networks import make_discriminator, make_generator
from trilemma.errors import TrilemmaError
from trilemma.ldm.train import LatentSource, autoencoder_info, keep_autoencoder_copy, ldm_data_config
from trilemma.nets.unet import count_parameters
from trilemma.options import build, overrides
from trilemma.train.common import TrainConfig, adamw, grad_norm_and_clip
from trilemma.train.distributed import unwrap
from trilemma.train.family import (
    Built,
    TrainSpec,
    data_config,
    read_stored,
    run_config,
    train,
)
from trilemma.train.loop import FitResult, Trainer
from trilemma.utils.device import autocast
from trilemma.viz import save_grid

PREVIEW_N = 64
NET_OVERRIDES = ("base_channels", "d_channels", "mbstd_group", "z_maps", "z_spatial", "arch")


def new_config(values: dict[str, Any]) -> tuple[dict[str, Any], ImageDataset]:
    ddgan = build(DDGANConfig, values)
    nets = overrides(values, NET_OVERRIDES)
    if values.get("autoencoder") is None:                          # pixel space
        if values.get("data") is None:
            raise TrilemmaError("--data: required (a dataset, or --autoencoder RUN_AE to train on its latents)")
        data = data_config(values)
        model, ae_info = ddgan_preset(values["preset"], data.image_size, data.channels, **nets), None
    else:                                                           # on the scaled latents of an autoencoder
        ae = load_autoencoder(values["autoencoder"], device="cpu")
        data = ldm_data_config(ae, values.get("data"), {k: values.get(k) for k in ("image_size", "channels", "hflip")})
        c, h, _ = ae.latent_shape
        model, ae_info = latent_preset(values["preset"], h, c, **nets), autoencoder_info(ae)
    dataset = load_dataset(data, "train")                       # validate the data before creating the folder
    config = run_config("ddgan", values, data, model, ddgan=ddgan, autoencoder=ae_info)
    return config, dataset


def d_updates_done(opt_d: torch.optim.Optimizer) -> int:
    """D updates made so far (so lazy R1 stays in phase across resumes).

    Counted in Python in D's first parameter group (``"d_updates"``, saved and restored with
    the optimiser's state, so reading it never waits for a GPU); a run saved before that key
    existed starts it from Adam's own step counter, read once.
    """
    group = opt_d.param_groups[0]
    if "d_updates" not in group:
        group["d_updates"] = next((int(state["step"]) for state in opt_d.state.values() if "step" in state), 0)
    return group["d_updates"]


def update(opt: torch.optim.Optimizer, net: torch.nn.Module, loss: torch.Tensor, grad_clip: float) -> torch.Tensor:
    """One optimiser step of ``net`` on ``loss`` (gradients clipped to ``grad_clip`` if > 0); returns the gradient norm."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = grad_norm_and_clip(net.parameters(), grad_clip)
    opt.step()
    return grad_norm


def ddgan_iteration(G: torch.nn.Module, D: torch.nn.Module, opt_g: torch.optim.Optimizer,
                    opt_d: torch.optim.Optimizer, schedule, x_0: torch.Tensor, ddgan: DDGANConfig,
                    noise: torch.Generator | None = None, grad_clip: float = 0.0,
                    bf16: bool = False, progress: float = 0.0) -> dict[str, torch.Tensor]:
    """``ddgan.d_steps`` D updates then one G update with D frozen (paper §3.3: one each); returns 0-d stats.

    The D update minimises mean(−log D(real) − log(1 − D(fake)) + R1) (with ``ddgan.loss == "rp"`` the
    relativistic pairing costs instead, :mod:`trilemma.ddgan.losses`), R1 = γ/2‖∇_{x_{t−1}} D‖² on real
    pairs with γ = ``ddgan.r1_gamma_at(d_updates_done(opt_d))``; the G update minimises the mean of the
    non-saturating −log D(fake) on fresh pairs, plus λ·mean|x̂₀ − x₀| with λ =
    ``ddgan.rec_weight_at(progress)``, minus μ·min(ℓ, τ) for the diversity ratio ℓ of a second z with
    μ = ``ddgan.div_weight`` (both 0 by default; docs/methods.md §11). While ``progress`` is below
    ``ddgan.pretrain`` the iteration is :func:`pretrain_iteration` instead (G alone).
    """
    device, z_numel = x_0.device, unwrap(G).z_numel                      # z's entries (the global z_dim + maps)
    if progress < ddgan.pretrain:                                        # G alone: regress x̂₀ on x₀
        return pretrain_iteration(G, opt_g, schedule, x_0, ddgan, noise, grad_clip, bf16)
    for _ in range(ddgan.d_steps):                                       # --d-steps D updates, fresh t, pairs and z
        gamma = ddgan.r1_gamma_at(d_updates_done(opt_d))
        with autocast(device, bf16):
            d_terms = discriminator_terms(G, D, schedule, x_0, z_numel, gamma, noise, ddgan.loss,
                                          ddgan.t_probs, ddgan.d_uncond)
        grad_norm_d = update(opt_d, D, d_terms["loss"].float().mean(), grad_clip)
        opt_d.param_groups[0]["d_updates"] += 1

    D.requires_grad_(False)                                              # G's update leaves D as it is
    with autocast(device, bf16):
        g_terms = generator_terms(G, D, schedule, x_0, z_numel, noise, ddgan.rec_weight_at(progress), ddgan.loss,
                                  ddgan.div_weight, ddgan.div_cap, ddgan.es_weight, ddgan.t_probs, ddgan.d_uncond)
    loss_g = g_terms["loss"].float().mean()
    grad_norm_g = update(opt_g, G, loss_g, grad_clip)
    D.requires_grad_(True)
    return {"loss": loss_g.detach(), "loss_g": loss_g.detach(), "loss_d": d_terms["d_loss"].detach().float().mean(),
            "r1": d_terms["r1"].detach().float().mean(), "d_real": d_terms["d_real"].float().mean(),
            "d_fake": d_terms["d_fake"].float().mean(), "d_fake_g": g_terms["d_fake"].float().mean(),
            "rec": g_terms["rec"].float().mean(), "div": g_terms["div"].float().mean(),
            "es": g_terms["es"].float().mean(), "grad_norm_d": grad_norm_d, "grad_norm_g": grad_norm_g}


def pretrain_iteration(G: torch.nn.Module, opt_g: torch.optim.Optimizer, schedule, x_0: torch.Tensor,
                       ddgan: DDGANConfig, noise: torch.Generator | None = None, grad_clip: float = 0.0,
                       bf16: bool = False) -> dict[str, torch.Tensor]:
    """One G update on mean‖x̂₀ − x₀‖² (``--pretrain``): G as a T-step denoiser, before the game starts.

    t ~ U{1..T}, x_t ~ q(x_t | x₀) as in the game's G step (:func:`regression_terms`). The minimiser
    is the posterior mean E[x₀ | x_t] at every t, a blurred x̂₀ that the game then sharpens. D is
    neither used nor updated, and its statistics (``loss_d``, ``d_real`` …) are reported as 0.
    """
    device = x_0.device
    with autocast(device, bf16):
        terms = regression_terms(G, schedule, x_0, unwrap(G).z_numel, noise, ddgan.t_probs)
    loss = terms["loss"].float().mean()
    grad_norm_g = update(opt_g, G, loss, grad_clip)
    zero = torch.zeros((), device=device)
    return {"loss": loss.detach(), "loss_g": loss.detach(), "loss_d": zero, "r1": zero, "d_real": zero,
            "d_fake": zero, "d_fake_g": zero, "rec": terms["rec"].float().mean(), "div": zero, "es": zero, "grad_norm_d": zero,
            "grad_norm_g": grad_norm_g}


def build_trainer(out: Path, config: dict[str, Any], dataset: ImageDataset | None, progress: bool) -> Built:
    """The DDGAN game in the shared loop: one *step* = one D update and one G update."""
    s = read_stored(out, config, dataset, model=DDGANNetConfig, ddgan=DDGANConfig)
    train_, device, dataset, net, ddgan = s.train, s.device, s.dataset, s["model"], s["ddgan"]
    if len(dataset) < train_.batch_size:
        raise TrilemmaError(f"--batch-size {train_.batch_size}: larger than the {len(dataset)} training images")
    schedule = ddgan_schedule(ddgan)
    torch.manual_seed(train_.seed)                                       # initial weights depend on the seed only
    G, D = make_generator(net, ddgan.z_dim, ddgan), make_discriminator(net)
    betas = (ddgan.beta1, ddgan.beta2)
    opt_g = adamw(G.parameters(), train_, betas=betas)                  # Adam (weight decay 0 by default); fused on CUDA
    opt_d = adamw([{"params": list(D.parameters()), "lr_scale": ddgan.lr_d / train_.lr}], train_,
                  lr=ddgan.lr_d, betas=betas)                           # the loop sets lr = lr_scale · lr_at(…)

    ae, space = None, "pixels"
    if config.get("autoencoder"):                                        # x₀ = s · μ_φ(image), encoded once
        ae = run_autoencoder(out, config, device)
        latents = TrainingLatents(ae, dataset, s.data.hflip, progress)
        c, h, w = ae.latent_shape
        space = (f"{c}×{h}×{w} latents (f = {ae.model_config.factor}, scale factor {ae.scale_factor:.4g}; "
                 f"{'read from the cache' if latents.cached.reused else 'encoded and cached'})")

    def batch(indices: torch.Tensor, generator: torch.Generator):
        if ae is None:
            x, _ = dataset.batch(indices, generator)                     # (B, C, H, W) in [-1, 1]
            return x.to(device, non_blocking=True), {}
        return latents.batch(indices, generator).to(device, non_blocking=True), {}   # z₀ = s · μ_φ(x)

    def step(draw, noise_gen: torch.Generator) -> dict[str, torch.Tensor]:
        x_0, _ = draw()
        return ddgan_iteration(G, D, opt_g, opt_d, schedule, x_0, ddgan, noise_gen, train_.grad_clip, train_.bf16,
                               trainer.progress)

    g_preview = torch.Generator().manual_seed(1234)
    x_T_preview = torch.randn((PREVIEW_N, net.channels, net.image_size, net.image_size), generator=g_preview)
    (out / "samples").mkdir(exist_ok=True)

    @torch.no_grad()
    def preview(sampling_net, at_step: int) -> None:
        was_training = sampling_net.training
        sampling_net.eval()
        g = torch.Generator().manual_seed(4321)                          # its own RNG: training RNGs untouched
        x_0 = ddgan_sample(sampling_net, x_T_preview.to(device), schedule, G.z_numel, generator=g)
        save_grid(x_0 if ae is None else ae.decode(x_0), out / "samples" / f"step_{at_step:07d}.png")
        sampling_net.train(was_training)

    rec = f"; L1 reconstruction λ = {ddgan.rec_weight:g}, {ddgan.rec_fade}" if ddgan.rec_weight > 0 else ""
    rec += "; G predicts v" if ddgan.prediction == "v" else ""
    rec += "; relativistic pairing costs" if ddgan.loss == "rp" else ""
    rec += f"; diversity term μ = {ddgan.div_weight:g}, τ = {ddgan.div_cap:g}" if ddgan.div_weight > 0 else ""
    rec += f"; t drawn with weights {','.join(f'{v:g}' for v in ddgan.t_weights)}" if ddgan.t_weights else ""
    rec += f"; energy-score term ν = {ddgan.es_weight:g}" if ddgan.es_weight > 0 else ""
    rec += f"; {net.z_maps} spatial noise map(s) into G" if net.z_maps else ""
    rec += "; a learned map of w added at G's lowest resolution" if net.z_spatial else ""
    rec += f"; D sees no x_t in {ddgan.d_uncond:.0%} of the pairs" if ddgan.d_uncond > 0 else ""
    rec += f"; G alone regresses x̂₀ for the first {ddgan.pretrain:.0%} of the budget" if ddgan.pretrain > 0 else ""
    trainer = Trainer(nets={"model": G, "disc": D}, optimizers={"opt_g": opt_g, "opt_d": opt_d}, batch=batch,
                      step=step, ema=True, preview=preview,
                      eager=("disc",) if ddgan.r1_gamma > 0 else (),    # R1 differentiates D's gradient
                      plot=(("loss_d", "loss_g"), f"{out.name}: DDGAN D and G losses (T = {ddgan.T})"),
                      describe=f"training DDGAN (T = {ddgan.T}; G {count_parameters(G) / 1e6:.2f}M, "
                               f"D {count_parameters(D) / 1e6:.2f}M parameters; R1 γ = {ddgan.r1_gamma} every "
                               f"{ddgan.lazy_reg} D step(s); {ddgan.d_steps} D update(s) per G update"
                               f"{rec}) on {dataset.name} "
                               f"({len(dataset)} images {'x'.join(map(str, dataset.image_shape))}; in {space})")
    return Built(trainer, train_, len(dataset), device)


SPEC = TrainSpec(kind="ddgan", help="train a denoising diffusion GAN (T large steps, each a conditional GAN; "
                 "docs/methods.md §11); a step = one D and one G update", desc="DDGAN",
                 options=(DataConfig, TrainConfig, DDGANConfig, LatentSource),
                 overrides={DDGANNetConfig: NET_OVERRIDES},
                 # The paper: G's lr 1.6e-4, batch 64 on CIFAR-10, no warm-up or clipping, EMA 0.9999 (0.999 here:
                 # a CPU run of minutes is a few thousand steps, which a 0.9999 average would barely leave).
                 defaults={"lr": 1.6e-4, "batch_size": 64, "warmup_steps": 0, "grad_clip": 0.0, "ema_decay": 0.999,
                           "data": None},
                 new_config=new_config, build=build_trainer, on_create=keep_autoencoder_copy)


def train_ddgan(out: str | os.PathLike, *, resume: bool = False, progress: bool = True, **options: Any) -> FitResult:
    """Train a DDGAN into the run folder ``out`` (or continue it with ``resume=True``); options as the CLI's."""
    return train(SPEC, out, resume=resume, progress=progress, **options)


__all__ = ["SPEC", "ddgan_iteration", "train_ddgan"]
