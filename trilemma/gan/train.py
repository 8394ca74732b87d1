"""Train a DCGAN with Algorithm 1 (Goodfellow et al. 2014) into a run folder.

    python: train_gan("runs/gan", data="fashion-mnist", preset="small", minutes=8, g_loss="nonsaturating")
    shell:  trilemma train gan --data fashion-mnist --out runs/gan --minutes 8 --g-loss nonsaturating --k 1

A GAN is two networks and two optimisers; the shared loop (:func:`trilemma.train.loop.fit`) runs
it like any other family, with :func:`algorithm1_iteration` as its step, and writes the same run
folder: ``model.safetensors`` = G, ``disc.safetensors`` = D, ``ema.safetensors`` = the EMA of G
(``--ema``), ``state/`` with both Adam states, every RNG and the data order, so ``--resume``
continues bit for bit on the CPU. One *step* of the budget is one iteration of Algorithm 1: k
discriminator steps and one generator step (k minibatches of real images).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from trilemma.data import DataConfig, ImageDataset, load_dataset
from trilemma.errors import TrilemmaError
from trilemma.gan.config import DCGANConfig, GANConfig
from trilemma.gan.config import preset as gan_preset
from trilemma.gan.losses import GENERATOR_COSTS, discriminator_accuracy, discriminator_loss
from trilemma.gan.networks import Discriminator, Generator
from trilemma.nets.unet import count_parameters
from trilemma.options import build, overrides
from trilemma.train.common import TrainConfig, adamw, grad_norm_and_clip
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


def new_config(values: dict[str, Any]) -> tuple[dict[str, Any], ImageDataset]:
    data = data_config(values)
    gan = build(GANConfig, values)
    default_decay = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == "ema_decay")
    if not gan.ema and values.get("ema_decay", default_decay) != default_decay:
        raise TrilemmaError("--ema-decay: the GAN keeps no EMA of G unless --ema is given")
    model = gan_preset(values["preset"], data.image_size, data.channels, **overrides(values, ("z_dim",)))
    dataset = load_dataset(data, "train")                       # validate the data before creating the folder
    config = run_config("gan", values, data, model, gan=gan)
    return config, dataset


def build_trainer(out: Path, config: dict[str, Any], dataset: ImageDataset | None, progress: bool) -> Built:
    """Algorithm 1 in the shared loop: one *step* = k discriminator steps and one generator step."""
    s = read_stored(out, config, dataset, model=DCGANConfig, gan=GANConfig)
    train_, device, dataset, model_config, gan = s.train, s.device, s.dataset, s["model"], s["gan"]
    if len(dataset) < train_.batch_size:
        raise TrilemmaError(f"--batch-size {train_.batch_size}: larger than the {len(dataset)} training images")
    torch.manual_seed(train_.seed)                                       # initial weights depend on the seed only
    G, D = Generator(model_config), Discriminator(model_config)
    opt_g = adamw(G.parameters(), train_, betas=(gan.beta1, gan.beta2))      # Adam (weight decay 0 by default);
    opt_d = adamw(D.parameters(), train_, betas=(gan.beta1, gan.beta2))      # fused on CUDA
    cost = GENERATOR_COSTS[gan.g_loss]

    def batch(indices: torch.Tensor, generator: torch.Generator):
        x, _ = dataset.batch(indices, generator)                         # (m, C, H, W) in [-1, 1]
        return x.to(device, non_blocking=True), {}

    def step(draw, noise_gen: torch.Generator) -> dict[str, torch.Tensor]:
        def noise(m: int) -> torch.Tensor:
            return torch.randn((m, model_config.z_dim), generator=noise_gen, device=device)   # z ~ N(0, I)

        with autocast(device, train_.bf16):
            terms = algorithm1_iteration(G, D, opt_g, opt_d, real_batch=lambda: draw()[0], noise=noise, k=gan.k,
                                         generator_cost=cost, grad_clip=train_.grad_clip)
        return {"loss": terms["loss_g"], **terms}

    z_preview = torch.randn((PREVIEW_N, model_config.z_dim), generator=torch.Generator().manual_seed(1234))
    (out / "samples").mkdir(exist_ok=True)

    @torch.no_grad()
    def preview(net, at_step: int) -> None:
        was_training = net.training
        net.eval()
        save_grid(net(z_preview.to(device)), out / "samples" / f"step_{at_step:07d}.png")
        net.train(was_training)

    trainer = Trainer(nets={"model": G, "disc": D}, optimizers={"opt_g": opt_g, "opt_d": opt_d}, batch=batch,
                      step=step, ema=gan.ema, draws_per_step=gan.k, preview=preview,
                      plot=(("loss_d", "loss_g"), f"{out.name}: D and G ({gan.g_loss}) losses"),
                      describe=f"training DCGAN (G {count_parameters(G) / 1e6:.2f}M, D {count_parameters(D) / 1e6:.2f}M "
                               f"parameters; {gan.g_loss} generator cost, k = {gan.k}) on {dataset.name} "
                               f"({len(dataset)} images {'x'.join(map(str, dataset.image_shape))})")
    return Built(trainer, train_, len(dataset), device)


SPEC = TrainSpec(kind="gan", help="train a DCGAN with Algorithm 1 (k D steps per G step); a step = one iteration",
                 desc="GAN", options=(DataConfig, TrainConfig, GANConfig), overrides={DCGANConfig: ("z_dim",)},
                 defaults={"lr": 2e-4, "batch_size": 64, "warmup_steps": 0, "grad_clip": 0.0},   # DCGAN's recipe
                 new_config=new_config, build=build_trainer)


def train_gan(out: str | os.PathLike, *, resume: bool = False, progress: bool = True, **options: Any) -> FitResult:
    """Train a DCGAN into the run folder ``out`` (or continue it with ``resume=True``); options as the CLI's."""
    return train(SPEC, out, resume=resume, progress=progress, **options)

Cost = Callable[[torch.Tensor], torch.Tensor]


def discriminator_step(G: nn.Module, D: nn.Module, opt_d: torch.optim.Optimizer, x: torch.Tensor, z: torch.Tensor,
                       grad_clip: float = 0.0) -> dict[str, torch.Tensor]:
    """One ascent step of D on V(D, G) with reals x (m, C, H, W) and noises z (m, z_dim); G is not changed."""
    with torch.no_grad():
        x_fake = G(z)                                                   # (m, C, H, W), no gradient into G
    l_real, l_fake = D(x), D(x_fake)                                    # (m,), (m,) logits; one batch each (DCGAN)
    loss_d = discriminator_loss(l_real, l_fake).mean()
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    grad_norm = grad_norm_and_clip(D.parameters(), grad_clip)
    opt_d.step()
    return {"loss_d": loss_d.detach(), "d_real": torch.sigmoid(l_real.detach()).mean(),
            "d_accuracy": discriminator_accuracy(l_real.detach(), l_fake.detach()), "grad_norm_d": grad_norm}


def generator_step(G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer, z: torch.Tensor, cost: Cost,
                   grad_clip: float = 0.0) -> dict[str, torch.Tensor]:
    """One descent step of G on the mean ``cost`` of D's logits for G(z); D is not changed."""
    D.requires_grad_(False)
    l_gen = D(G(z))                                                     # (m,) logits of fresh fakes
    loss_g = cost(l_gen).mean()
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    grad_norm = grad_norm_and_clip(G.parameters(), grad_clip)
    opt_g.step()
    D.requires_grad_(True)
    return {"loss_g": loss_g.detach(), "d_fake": torch.sigmoid(l_gen.detach()).mean(), "grad_norm_g": grad_norm}


def algorithm1_iteration(G: nn.Module, D: nn.Module, opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, *,
                         real_batch: Callable[[], torch.Tensor], noise: Callable[[int], torch.Tensor], k: int,
                         generator_cost: Cost, grad_clip: float = 0.0) -> dict[str, torch.Tensor]:
    """One iteration of Algorithm 1; returns the last D step's and the G step's statistics (0-d tensors).

    ``real_batch()`` returns a fresh minibatch of real images (m, C, H, W) on the
    device; ``noise(m)`` a fresh (m, z_dim) draw of z ~ N(0, I).
    """
    for _ in range(k):                                                  # k discriminator steps
        x = real_batch()
        d_stats = discriminator_step(G, D, opt_d, x, noise(len(x)), grad_clip)
    g_stats = generator_step(G, D, opt_g, noise(len(x)), generator_cost, grad_clip)   # then one generator step
    return {**d_stats, **g_stats}


def generator_gradient_norms(G: nn.Module, D: nn.Module, z: torch.Tensor, costs: dict[str, Cost]) -> dict[str, float]:
    """‖∇_θg (1/m) Σ cost(D(G(z⁽ⁱ⁾)))‖₂ for each cost, on the fixed noises z; nothing is updated.

    The quantity of Arjovsky & Bottou (2017), Figures 2 and 3: how much the
    generator would be taught by each cost against the current D.
    """
    params = [p for p in G.parameters()]
    D.requires_grad_(False)
    logits = D(G(z))                                                    # (m,), one forward pass for every cost
    out = {}
    for name, cost in costs.items():
        grads = torch.autograd.grad(cost(logits).mean(), params, retain_graph=True)
        out[name] = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()
    D.requires_grad_(True)
    return out
