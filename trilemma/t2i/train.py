"""Train a text-to-image diffusion model on image–caption pairs (docs/methods.md §8) into a run folder.

    python: train_t2i("runs/t2i", data="shapes", recipe="latent", minutes=60)
    shell:  trilemma train t2i --data shapes --recipe latent --out runs/t2i --minutes 60
            trilemma train t2i --data shapes --out runs/t2i --minutes 60 [--autoencoder RUN_AE]

Each step is the pixel DDPM's step (Algorithm 1, :func:`~trilemma.diffusion.losses.diffusion_loss`
through the shared loop) with the caption as conditioning:

    L = ‖ε − ε_θ(x_t, t, τ(y'))‖²,   y' = ∅ with probability p (caption dropout, default 10%), else y

so one network learns both ε_θ(·, y) and ε_θ(·, ∅) for classifier-free guidance. The frozen
text encoder never runs in the loop: every distinct caption of the dataset (and ∅) is encoded
once (disk-cached) into a table, and a batch gathers its rows.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from trilemma.autoencoder.cache import cached_latents
from trilemma.autoencoder.run import load_autoencoder
from trilemma.data import DataConfig, ImageDataset, load_dataset
from trilemma.data.text import require_captions
from trilemma.ddpm.config import DiffusionConfig
from trilemma.diffusion.denoiser import Denoiser
from trilemma.diffusion.losses import diffusion_loss
from trilemma.diffusion.samplers import ddim_sample, ddim_timesteps
from trilemma.diffusion.schedule import make_schedule
from trilemma.errors import DataError, TrilemmaError
from trilemma.ldm.config import latent_unet_preset
from trilemma.ldm.train import LatentSource, autoencoder_info, keep_autoencoder_copy, ldm_data_config
from trilemma.nets.unet import UNetConfig, count_parameters
from trilemma.options import build, overrides
from trilemma.t2i.config import T2IConfig
from trilemma.t2i.encoder import TextEncoder, get_encoder, pad_tokens
from trilemma.t2i.networks import describe_recipe, t2i_network
from trilemma.t2i.recipe import T2IRecipe, is_recipe_run, resume_folder, train_latent_recipe
from trilemma.t2i.run import PixelSpace, load_space, pixel_shape, text_conditioning
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
from trilemma.viz import save_grid

PREVIEW_PROMPTS = 8     # distinct test captions in the preview grid (one row each)
PREVIEW_SEEDS = 6       # images per prompt
PREVIEW_STEPS = 25      # DDIM steps
PREVIEW_GUIDANCE = 4.0
T2I_OVERRIDES = ("base_channels", "dropout", "num_res_blocks", "attn_resolutions")
CROSS_ATTN_MAX = 8      # default: transformer (cross-attention) blocks at every level of at most 8×8


def t2i_unet_preset(name: str, size: int, channels: int, context_dim: int, **overrides) -> UNetConfig:
    """The U-Net preset fitted to the diffused variable (levels ≥ 4×4), with cross-attention to τ(y).

    Transformer blocks (self-attention, cross-attention, feed-forward) sit at every level of at
    most 8×8 (and in the middle) unless ``attn_resolutions`` is given.
    """
    config = latent_unet_preset(name, size, channels)
    attn = tuple(r for r in config.resolutions if r <= CROSS_ATTN_MAX) or (config.resolutions[-1],)
    config = dataclasses.replace(config, attn_resolutions=attn, context_dim=context_dim)
    widths = [config.base_channels * m for m in config.channel_mults]
    heads = overrides.get("num_heads", config.num_heads)
    if any(w % heads for w in widths):
        raise TrilemmaError(f"--heads: {heads} heads must divide every level's width "
                            f"({', '.join(map(str, widths))})")
    config = dataclasses.replace(config, **overrides) if overrides else config
    bad = [r for r in config.attn_resolutions if r not in config.resolutions]
    if bad:
        raise TrilemmaError(f"--attn-resolutions: {bad} are not level sizes of this U-Net "
                            f"(its levels are {', '.join(map(str, config.resolutions))})")
    return config


def new_config(values: dict[str, Any]) -> tuple[dict[str, Any], ImageDataset]:
    if values.get("class_cond"):
        raise TrilemmaError("--class-cond: a text-to-image model is conditioned on captions, not class labels")
    patch = values.get("patch")
    ae_info, ae = None, None
    if values.get("autoencoder") is not None:
        if patch not in (None, 1):
            raise TrilemmaError("--patch: only in pixel space (not with --autoencoder)")
        ae = load_autoencoder(values["autoencoder"], device="cpu")
        data = ldm_data_config(ae, values.get("data"), {k: values.get(k) for k in ("image_size", "channels", "hflip")})
        shape = ae.latent_shape
        ae_info, patch = autoencoder_info(ae), 1
    else:
        data = data_config(values)
        if patch is None:
            patch = 2 if data.image_size % 2 == 0 and data.image_size >= 16 else 1
        shape = pixel_shape(data.image_size, data.channels, patch)
    dataset = load_dataset(data, "train")                        # validate before creating the folder
    require_captions(dataset)
    text = build(T2IConfig, values, patch=patch)
    encoder = get_encoder(text.encoder, "cpu", text.max_length)  # checks the encoder exists
    diffusion = build(DiffusionConfig, values, clip=ae is None)
    c, h, _ = shape
    heads = {"num_heads": text.heads} if text.heads is not None else {}
    model = t2i_unet_preset(values["preset"], h, c, encoder.width, **heads, **overrides(values, T2I_OVERRIDES))
    config = run_config("t2i", values, data, model, diffusion=diffusion, text=text, autoencoder=ae_info)
    return config, dataset


class CaptionTable:
    """Every distinct caption of a dataset (row 0 = ∅, the empty prompt) encoded once.

    ``context`` (U, L, D) and ``mask`` (U, L) on the device; ``index`` (N,) gives each image's row.
    """

    def __init__(self, encoder: TextEncoder, captions: list[str], device: torch.device, progress: bool = False):
        unique = list(dict.fromkeys(["", *captions]))                 # ∅ first, then first-seen order
        row = {c: i for i, c in enumerate(unique)}
        context, mask = pad_tokens(encoder.embed(unique, progress=progress))
        self.context, self.mask = context.to(device), mask.to(device)
        self.index = torch.tensor([row[c] for c in captions], dtype=torch.long)
        self.unique = unique

    def __len__(self) -> int:
        return len(self.unique)

    def lookup(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        rows = rows.to(self.context.device, non_blocking=True)     # a CPU tensor of the batch's own: no host wait
        return {"context": self.context[rows], "context_mask": self.mask[rows]}


def caption_rows(table: CaptionTable, indices: torch.Tensor, cond_drop: float,
                 generator: torch.Generator) -> torch.Tensor:
    """Each image's caption row, replaced by ∅ (row 0) with probability ``cond_drop`` (drawn from ``generator``)."""
    rows = table.index[indices]
    drop = torch.rand(len(rows), generator=generator) < cond_drop
    return torch.where(drop, torch.zeros_like(rows), rows)


def build_trainer(out: Path, config: dict[str, Any], dataset: ImageDataset | None, progress: bool) -> Built:
    s = read_stored(out, config, dataset, model=UNetConfig, diffusion=DiffusionConfig, text=T2IConfig)
    train_, device, dataset, unet_config, diffusion = s.train, s.device, s.dataset, s["model"], s["diffusion"]
    text, data_config = s["text"], s.data
    require_captions(dataset)
    space = load_space(out, config, text, device)
    encoder = get_encoder(text.encoder, "cpu", text.max_length)
    table = CaptionTable(encoder, dataset.captions, device, progress=progress)
    if isinstance(space, PixelSpace):
        latents, scale = None, 1.0
    else:
        latents, scale = cached_latents(space, dataset, progress=progress).latents, space.scale_factor
    schedule = make_schedule(diffusion.schedule)
    torch.manual_seed(train_.seed)                      # the initial weights depend on the seed only
    model = t2i_network(unet_config, text)                # the U-Net (+ the text recipe's layers)
    opt_ = adamw(model.parameters(), train_)                   # fused on CUDA
    c, h, w = unet_config.in_channels, unet_config.image_size, unet_config.image_size
    where_text = space.describe() if isinstance(space, PixelSpace) else "autoencoder latents"
    describe = (f"training text-to-image diffusion ({count_parameters(model) / 1e6:.2f}M parameters, "
                f"cross-attention at {'/'.join(map(str, unet_config.attn_resolutions))} px) on {dataset.name} "
                f"({len(dataset)} images, {len(table) - 1} distinct captions, {where_text} {c}×{h}×{w}; "
                f"text encoder {encoder.name}{describe_recipe(text)})")

    def batch_fn(indices: torch.Tensor, generator: torch.Generator):
        if latents is None:
            x, _ = dataset.batch(indices, generator)                        # (B, C, H, W) in [-1, 1]
            z_0 = space.encode(x.to(device, non_blocking=True))             # (B, C·p², H/p, W/p)
        else:
            z_0 = (latents[indices] * scale).to(device, non_blocking=True)
        rows = caption_rows(table, indices, diffusion.cond_drop, generator)  # caption dropout → ∅
        return z_0, table.lookup(rows)

    def loss_fn(net, z_0, cond, generator):
        return diffusion_loss(net, z_0, schedule, generator=generator, cond=cond, **diffusion.loss_options())

    preview_dir = out / "samples"
    preview_dir.mkdir(exist_ok=True)
    prompts = preview_prompts(dataset, data_config)

    def preview(ema_model, step):
        images = preview_samples(ema_model, unet_config, diffusion, schedule, space, encoder, prompts, device)
        save_grid(images, preview_dir / f"step_{step:07d}.png", nrow=PREVIEW_SEEDS)
        (preview_dir / "prompts.txt").write_text("".join(p + "\n" for p in prompts))

    trainer = Trainer(nets={"model": model}, optimizers={"opt": opt_}, batch=batch_fn,
                      step=single_optimizer_step(model, opt_, loss_fn, train_, device), preview=preview,
                      describe=describe)
    return Built(trainer, train_, len(dataset), device)


def preview_prompts(dataset: ImageDataset, data_config: DataConfig) -> list[str]:
    """Up to 8 distinct captions of the test split (of the training set when there is none)."""
    try:
        captions = load_dataset(data_config, "test").captions or []
    except DataError:
        captions = dataset.captions
    return list(dict.fromkeys(c for c in captions if c.strip()))[:PREVIEW_PROMPTS]


@torch.no_grad()
def preview_samples(ema_model, unet_config: UNetConfig, diffusion: DiffusionConfig, schedule, space,
                    encoder: TextEncoder, prompts: list[str], device) -> torch.Tensor:
    """A fixed-noise DDIM grid of the EMA model at guidance 4, one row per prompt (own generator)."""
    g = torch.Generator(device).manual_seed(1234)
    rows = [p for p in prompts for _ in range(PREVIEW_SEEDS)]
    c = unet_config
    x_T = torch.randn((len(rows), c.in_channels, c.image_size, c.image_size), generator=g, device=device)
    cond, uncond = text_conditioning(encoder, rows, None, device)
    denoiser = Denoiser(ema_model, diffusion.prediction, clip=(-1.0, 1.0) if diffusion.clip else None,
                        guidance=PREVIEW_GUIDANCE, uncond=uncond, sigma_data=diffusion.data_std)
    z = ddim_sample(denoiser, x_T, schedule, ddim_timesteps(schedule.T, PREVIEW_STEPS, "trailing"), cond=cond,
                    generator=g)
    return space.decode(z)


def train_t2i(out: str | os.PathLike, *, resume: bool = False, progress: bool = True, **options: Any) -> FitResult:
    """Train a text-to-image model into ``out`` (or continue it with ``resume=True``); options as the CLI's.

    ``recipe="latent"``: the measured latent recipe of :mod:`trilemma.t2i.recipe` (an autoencoder phase
    in ``out/ae`` first unless ``autoencoder`` is given; given options win over its defaults).
    ``patch`` (pixel space): p×p patches, default 2 when the image size is even and >= 16, else 1.
    """
    out = Path(out)
    recipe = options.pop("recipe", None) or "pixel"
    if (resume and is_recipe_run(out)) or (not resume and recipe == "latent"):
        return train_latent_recipe(out, options, resume=resume, progress=progress, phase2=_train_spec)
    return _train_spec(out, resume=resume, progress=progress, **options)


def _train_spec(out: Path, *, resume: bool, progress: bool, **options: Any) -> FitResult:
    return train(SPEC, out, resume=resume, progress=progress, **options)


SPEC = TrainSpec(kind="t2i", desc="text-to-image",
                 help="text-to-image diffusion: a frozen text encoder, cross-attention, caption dropout for "
                      "classifier-free guidance (docs/methods.md §8)",
                 options=(DataConfig, TrainConfig, DiffusionConfig, T2IConfig, LatentSource),
                 overrides={UNetConfig: T2I_OVERRIDES}, extra=(T2IRecipe,),
                 defaults={"lr": 1e-3, "batch_size": 64, "data": "shapes", "patch": None},
                 new_config=new_config, build=build_trainer, on_create=keep_autoencoder_copy,
                 runner=train_t2i, resume_folder=resume_folder)
