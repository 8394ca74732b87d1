"""Train a text-to-image diffusion model on image–caption pairs (METHODS.md §8) into a run folder.

    python: train_t2i("runs/t2i", data="shapes", preset="small", minutes=60)
    shell:  trilemma train t2i --data shapes --out runs/t2i --minutes 60 [--autoencoder RUN_AE]

Each step is the pixel DDPM's step (Algorithm 1, :func:`~trilemma.diffusion.losses.diffusion_loss`
through :func:`~trilemma.train.loop.fit`) with the caption as conditioning:

    L = ‖ε − ε_θ(x_t, t, τ(y'))‖²,   y' = ∅ with probability p (caption dropout, default 10%), else y

so one network learns both ε_θ(·, y) and ε_θ(·, ∅) for classifier-free guidance. The frozen
text encoder never runs in the loop: every distinct caption of the dataset (and ∅) is encoded
once (disk-cached) into a table, and a batch gathers its rows.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import torch

from trilemma import __version__
from trilemma.config import from_dict, to_dict
from trilemma.data import DataConfig, ImageDataset, load_dataset
from trilemma.diffusion.denoiser import Denoiser
from trilemma.diffusion.losses import diffusion_loss
from trilemma.diffusion.pipeline import DiffusionConfig
from trilemma.diffusion.samplers import ddim_sample, ddim_timesteps
from trilemma.diffusion.schedule import ScheduleConfig, make_schedule
from trilemma.errors import TrilemmaError
from trilemma.nets.unet import UNet, UNetConfig, count_parameters
from trilemma.text.datasets import require_captions
from trilemma.text.encoder import TextEncoder, get_encoder, pad_tokens
from trilemma.text.pipeline import AUTOENCODER_DIR, PixelSpace, T2IConfig, load_space, pixel_shape
from trilemma.train.common import TrainConfig
from trilemma.train.diffusion import prepare_run_dir, resume_config
from trilemma.train.loop import FitResult, fit
from trilemma.utils.device import pick_device
from trilemma.viz import save_grid

PREVIEW_PROMPTS = 8     # distinct test captions in the preview grid (one row each)
PREVIEW_SEEDS = 6       # images per prompt
PREVIEW_STEPS = 25      # DDIM steps
PREVIEW_GUIDANCE = 4.0
CROSS_ATTN_MAX = 8      # default: transformer (cross-attention) blocks at every level of at most 8×8


def t2i_unet_preset(name: str, size: int, channels: int, context_dim: int, **overrides) -> UNetConfig:
    """The U-Net preset fitted to the diffused variable (levels ≥ 4×4), with cross-attention to τ(y).

    Transformer blocks (self-attention, cross-attention, feed-forward) sit at every level of at
    most 8×8 (and in the middle) unless ``attn_resolutions`` is given.
    """
    from trilemma.latent.pipeline import latent_unet_preset

    config = latent_unet_preset(name, size, channels)
    attn = tuple(r for r in config.resolutions if r <= CROSS_ATTN_MAX) or (config.resolutions[-1],)
    config = dataclasses.replace(config, attn_resolutions=attn, context_dim=context_dim)
    config = dataclasses.replace(config, **overrides) if overrides else config
    bad = [r for r in config.attn_resolutions if r not in config.resolutions]
    if bad:
        raise TrilemmaError(f"--attn-resolutions: {bad} are not level sizes of this U-Net "
                            f"(its levels are {', '.join(map(str, config.resolutions))})")
    return config


def t2i_run_config(data: DataConfig, model: UNetConfig, diffusion: DiffusionConfig, text: T2IConfig,
                   train: TrainConfig, preset: str | None, autoencoder: dict | None) -> dict[str, Any]:
    return {"kind": "t2i", "trilemma_version": __version__, "preset": preset, "data": data.to_dict(),
            "model": to_dict(model), "diffusion": to_dict(diffusion), "text": to_dict(text), "train": to_dict(train),
            "autoencoder": autoencoder}


def train_t2i(out: str | os.PathLike, data: str | DataConfig = "shapes", preset: str = "small", *,
              steps: int | None = None, minutes: float | None = None, batch_size: int = 64, lr: float = 1e-3,
              text_encoder: str | None = None, autoencoder: str | os.PathLike | None = None, patch: int | None = None,
              cond_drop: float = 0.1, schedule: str | ScheduleConfig = "linear", prediction: str = "eps",
              resume: bool = False, progress: bool = True, model_overrides: dict[str, Any] | None = None,
              train_overrides: dict[str, Any] | None = None,
              data_overrides: dict[str, Any] | None = None) -> FitResult:
    """Train a text-to-image model into ``out`` (or continue it with ``resume=True``).

    ``patch`` (pixel space): p×p patches, default 2 when the image size is even, else 1.
    """
    out = Path(out)
    if resume:
        if autoencoder is not None or text_encoder is not None:
            raise TrilemmaError("--autoencoder/--text-encoder: not with --resume (the run keeps its own)")
        config = resume_config(out, "t2i", steps, minutes)
        return fit_t2i(out, config, resume=True, progress=progress)

    overrides = {k: v for k, v in (data_overrides or {}).items() if v is not None}
    ae_info, ae = None, None
    if autoencoder is not None:
        from trilemma.latent.run import load_autoencoder
        from trilemma.train.ldm import ldm_data_config

        if patch not in (None, 1):
            raise TrilemmaError("--patch: only in pixel space (not with --autoencoder)")
        ae = load_autoencoder(autoencoder, device="cpu")
        data_config = ldm_data_config(ae, data, overrides)
        shape = ae.latent_shape
        ae_info = {"source": str(ae.path.resolve()), "weights": ae.weights_path.name, "digest": ae.weights_digest(),
                   "factor": ae.model_config.factor, "latent_shape": list(shape), "scale_factor": ae.scale_factor}
        patch = 1
    else:
        data_config = data if isinstance(data, DataConfig) else DataConfig(name=data, **overrides)
        data_config = data_config.resolved()
        if patch is None:
            patch = 2 if data_config.image_size % 2 == 0 and data_config.image_size >= 16 else 1
        shape = pixel_shape(data_config.image_size, data_config.channels, patch)
    dataset = load_dataset(data_config, "train")                 # validate before creating the folder
    require_captions(dataset)
    text = T2IConfig(encoder=text_encoder or T2IConfig.encoder, patch=patch)
    encoder = get_encoder(text.encoder, "cpu", text.max_length)  # checks the encoder exists
    sched = schedule if isinstance(schedule, ScheduleConfig) else ScheduleConfig(name=schedule)
    diffusion = DiffusionConfig(schedule=sched, prediction=prediction, clip=ae is None, cond_drop=cond_drop)
    train = TrainConfig(steps=steps, minutes=minutes, batch_size=batch_size, lr=lr, **(train_overrides or {}))
    c, h, _ = shape
    model = t2i_unet_preset(preset, h, c, encoder.width, **(model_overrides or {}))
    config = prepare_run_dir(out, False, t2i_run_config(data_config, model, diffusion, text, train, preset, ae_info))
    if ae is not None:
        from trilemma.train.ldm import copy_autoencoder

        copy_autoencoder(ae, out / AUTOENCODER_DIR)
    return fit_t2i(out, config, resume=False, progress=progress, dataset=dataset)


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
        rows = rows.to(self.context.device)
        return {"context": self.context[rows], "context_mask": self.mask[rows]}


def caption_rows(table: CaptionTable, indices: torch.Tensor, cond_drop: float,
                 generator: torch.Generator) -> torch.Tensor:
    """Each image's caption row, replaced by ∅ (row 0) with probability ``cond_drop`` (drawn from ``generator``)."""
    rows = table.index[indices]
    drop = torch.rand(len(rows), generator=generator) < cond_drop
    return torch.where(drop, torch.zeros_like(rows), rows)


def fit_t2i(out: Path, config: dict[str, Any], resume: bool, progress: bool = True,
            dataset: ImageDataset | None = None) -> FitResult:
    where = f"{out}/config.json"
    data_config = DataConfig.from_dict(config["data"])
    unet_config = from_dict(UNetConfig, config["model"], where)
    diffusion = from_dict(DiffusionConfig, config["diffusion"], where)
    text = from_dict(T2IConfig, config["text"], where)
    train = from_dict(TrainConfig, config["train"], where)
    device = pick_device(train.device)
    dataset = dataset or load_dataset(data_config, "train")
    require_captions(dataset)
    space = load_space(out, config, text, device)
    encoder = get_encoder(text.encoder, "cpu", text.max_length)
    table = CaptionTable(encoder, dataset.captions, device, progress=progress)
    if isinstance(space, PixelSpace):
        latents, scale = None, 1.0
    else:
        from trilemma.latent.cache import cached_latents

        latents, scale = cached_latents(space, dataset, progress=progress).latents, space.scale_factor
    schedule = make_schedule(diffusion.schedule)
    torch.manual_seed(train.seed)                      # the initial weights depend on the seed only
    model = UNet(unet_config)
    if progress:
        c, h, w = unet_config.in_channels, unet_config.image_size, unet_config.image_size
        where_text = space.describe() if isinstance(space, PixelSpace) else "autoencoder latents"
        print(f"trilemma: training text-to-image diffusion ({count_parameters(model) / 1e6:.2f}M parameters, "
              f"cross-attention at {'/'.join(map(str, unet_config.attn_resolutions))} px) on {dataset.name} "
              f"({len(dataset)} images, {len(table) - 1} distinct captions, {where_text} {c}×{h}×{w}; "
              f"text encoder {encoder.name}) on {device}, run folder {out}", file=sys.stderr, flush=True)

    def batch_fn(indices: torch.Tensor, generator: torch.Generator):
        if latents is None:
            x, _ = dataset.batch(indices, generator)                        # (B, C, H, W) in [-1, 1]
            z_0 = space.encode(x.to(device, non_blocking=True))             # (B, C·p², H/p, W/p)
        else:
            z_0 = (latents[indices] * scale).to(device, non_blocking=True)
        rows = caption_rows(table, indices, diffusion.cond_drop, generator)  # caption dropout → ∅
        return z_0, table.lookup(rows)

    def loss_fn(net, z_0, cond, generator):
        return diffusion_loss(net, z_0, schedule, prediction=diffusion.prediction, generator=generator, cond=cond)

    preview_dir = out / "samples"
    preview_dir.mkdir(exist_ok=True)
    prompts = preview_prompts(dataset, data_config)

    def preview(ema_model, step):
        images = preview_samples(ema_model, unet_config, diffusion, schedule, space, encoder, prompts, device)
        save_grid(images, preview_dir / f"step_{step:07d}.png", nrow=PREVIEW_SEEDS)
        (preview_dir / "prompts.txt").write_text("".join(p + "\n" for p in prompts))

    return fit(out, model=model, num_examples=len(dataset), batch_fn=batch_fn, loss_fn=loss_fn, train=train,
               device=device, preview=preview, resume=resume, progress=progress, desc="text-to-image")


def preview_prompts(dataset: ImageDataset, data_config: DataConfig) -> list[str]:
    """Up to 8 distinct captions of the test split (of the training set when there is none)."""
    from trilemma.errors import DataError

    try:
        captions = load_dataset(data_config, "test").captions or []
    except DataError:
        captions = dataset.captions
    return list(dict.fromkeys(c for c in captions if c.strip()))[:PREVIEW_PROMPTS]


@torch.no_grad()
def preview_samples(ema_model, unet_config: UNetConfig, diffusion: DiffusionConfig, schedule, space,
                    encoder: TextEncoder, prompts: list[str], device) -> torch.Tensor:
    """A fixed-noise DDIM grid of the EMA model at guidance 4, one row per prompt (own generator)."""
    from trilemma.text.pipeline import text_conditioning

    g = torch.Generator(device).manual_seed(1234)
    rows = [p for p in prompts for _ in range(PREVIEW_SEEDS)]
    c = unet_config
    x_T = torch.randn((len(rows), c.in_channels, c.image_size, c.image_size), generator=g, device=device)
    cond, uncond = text_conditioning(encoder, rows, None, device)
    denoiser = Denoiser(ema_model, diffusion.prediction, clip=(-1.0, 1.0) if diffusion.clip else None,
                        guidance=PREVIEW_GUIDANCE, uncond=uncond)
    z = ddim_sample(denoiser, x_T, schedule, ddim_timesteps(schedule.T, PREVIEW_STEPS, "trailing"), cond=cond,
                    generator=g)
    return space.decode(z)
