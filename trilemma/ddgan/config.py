"""The two config sections of a denoising diffusion GAN run: the networks (``"model"``) and the method (``"ddgan"``).

Defaults are the paper's CIFAR-10 settings (Xiao et al., ICLR 2022, App. C, and the
``train_ddgan.py`` command line of its public code) unless a comment says otherwise;
the maths is in docs/methods.md §11.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from trilemma.diffusion.schedule import SCHEDULES
from trilemma.errors import TrilemmaError
from trilemma.gan.config import dcgan_geometry
from trilemma.ldm.config import MIN_LEVEL_SIZE
from trilemma.nets.unet import level_sizes
from trilemma.options import check_fields, in_range, int_in, nonneg, opt, positive

DDGAN_SCHEDULES: tuple[str, ...] = ("vp",) + SCHEDULES
MAX_T = 8


def _steps(value) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_T:
        return f"must be between 1 and {MAX_T}, got {value!r}"
    return None


@dataclass(frozen=True)
class DDGANConfig:
    """The method: the few-step forward process, the game's regulariser, D's optimiser.

    The generator's learning rate and the EMA of its weights are the shared ``--lr`` and
    ``--ema-decay`` (:class:`trilemma.train.common.TrainConfig`); this family's defaults are in
    ``trilemma.ddgan.train.SPEC`` (lr 1.6e-4 as the paper; EMA 0.999 for short CPU runs, the
    paper's 0.9999 for long GPU runs).

    ``schedule = "vp"`` is the paper's discretised variance-preserving SDE (see
    :func:`trilemma.ddgan.diffusion.vp_betas`): t_k = ε + (1 − ε)·k/T,
    ᾱ(t) = exp(−β_min t − ½(β_max − β_min) t²), β_k = 1 − ᾱ(t_k)/ᾱ(t_{k−1}).
    Any other name respaces that trilemma schedule (with ``base_T`` steps) to T
    evenly spaced steps, keeping its ᾱ at the kept steps.
    """

    T: int = opt(4, "diffusion steps = generator calls per sample (paper: 4 on CIFAR-10, 2 at 256 px)", check=_steps)
    schedule: str = opt("vp", "vp (the paper's discretised VP SDE) or a trilemma schedule respaced to T steps",
                        choices=DDGAN_SCHEDULES)
    beta_min: float = opt(0.1, "β_min of the VP schedule (the paper's value)", check=positive)
    beta_max: float = opt(20.0, "β_max of the VP schedule (the paper's value)", check=positive)
    t_eps: float = opt(1e-3, "start of the VP time grid, t_k = ε + (1 − ε)k/T, as the paper's code (0: t_k = k/T)",
                       check=in_range(0.0, 1.0, hi_open=True))
    base_T: int = opt(1000, "steps of a non-vp schedule before it is respaced to T", flag="base-T",
                      check=int_in(2, 100_000))
    r1_gamma: float = opt(0.02, "γ of the R1 penalty γ/2 ‖∇_{x_{t−1}} D‖² on real pairs (paper: 0.02 on CIFAR-10)",
                          check=nonneg)
    lazy_reg: int = opt(1, "apply R1 on every k-th discriminator step, unscaled as the paper's code (CIFAR-10: 15)",
                        check=int_in(1, 10_000))
    t_weights: tuple[float, ...] = opt((), "relative weights of t = 1..T in the training draws of t, one per step, "
                                           "e.g. 3,2,2,1 (empty: uniform, the paper's)")
    d_steps: int = opt(1, "discriminator updates per generator update, each on fresh pairs of the step's batch "
                            "(paper: 1)", check=int_in(1, 100))
    rec_weight: float = opt(0.0, "weight λ of an L1 reconstruction term λ·mean|x̂₀ − x₀| in G's cost (Trinh & "
                                 "Hamagami 2024; 0: the paper's pure GAN cost)", check=in_range(0.0, 1000.0))
    rec_fade: str = opt("sigmoid", "how λ changes over the budget: sigmoid (λ·(1 − σ(12p − 6)), from λ to ~0 at "
                                   "the end) or constant", choices=("sigmoid", "constant"))
    z_dim: int = opt(100, "dimension of the generator's latent z ~ N(0, I)", check=int_in(1, 65536))
    loss: str = opt("ns", "the game's costs: ns (the paper's non-saturating) or rp (relativistic pairing: D minimises "
                          "softplus(l_fake − l_real), G softplus(l_real − l_fake), the real and fake pair sharing x_t)",
                    choices=("ns", "rp"))
    prediction: str = opt("x0", "what G's network outputs: x0 (x̂₀ itself, the paper's) or v (x̂₀ = √ᾱ_t x_t − "
                                "√(1 − ᾱ_t) v̂, the v-parameterisation; no tanh)", choices=("x0", "v"))
    pretrain: float = opt(0.0, "share of the budget (steps or minutes) spent first on G alone, regressing x̂₀ on "
                               "x₀ (mean squared error; D idle), before the game starts (0: the paper's, none)",
                          check=in_range(0.0, 1.0, hi_open=True))
    div_weight: float = opt(0.0, "weight μ of a diversity term −μ·min(ℓ, τ) in G's cost, ℓ = mean|x̂₀(z₁) − x̂₀(z₂)| / "
                                 "mean|z₁ − z₂| for two z at the same x_t (DSGAN, Yang et al. 2019; one more G pass "
                                 "per G update; 0: the paper's, none)", check=in_range(0.0, 1000.0))
    div_cap: float = opt(0.5, "cap τ of the diversity term of --div-weight (a pair of z earns nothing beyond it)",
                         check=positive)
    es_weight: float = opt(0.0, "weight ν of an energy-score term ν·(½‖x̂₀(z₁) − x₀‖ + ½‖x̂₀(z₂) − x₀‖ − ½‖x̂₀(z₁) − "
                                "x̂₀(z₂)‖) in G's cost (RMS norms; a strictly proper score of G's conditional "
                                "q(x₀ | x_t); shares --div-weight's second G pass; 0: the paper's, none)",
                           check=in_range(0.0, 1000.0))
    d_uncond: float = opt(0.0, "share p of the pairs D sees without their x_t (zeros in its place; a fresh draw per "
                               "pair, the same for a real and fake pair of one x_t), so that D also judges x_{t−1} "
                               "by itself, the marginal as well as the pair (0: the paper's, D always sees x_t)",
                          flag="d-uncond", check=in_range(0.0, 1.0, hi_open=True))
    # G's learning rate is the shared --lr (TrainConfig.lr; this family's default 1.6e-4, the paper's);
    # D's follows the same warm-up/decay schedule, scaled by lr_d / lr (see trilemma.ddgan.train).
    lr_d: float = opt(1.25e-4, "Adam learning rate of the discriminator (the generator's is --lr)",
                      check=in_range(1e-12, 10.0))
    beta1: float = opt(0.5, "Adam β₁ of both networks", check=in_range(0.0, 1.0, hi_open=True))
    beta2: float = opt(0.9, "Adam β₂ of both networks", check=in_range(0.0, 1.0, hi_open=True))

    def __post_init__(self):
        check_fields(self)
        if not self.beta_min < self.beta_max:
            raise TrilemmaError(f"--beta-min/--beta-max: need beta_min < beta_max, got {self.beta_min}, {self.beta_max}")
        if self.schedule == "vp":
            from trilemma.ddgan.diffusion import vp_betas

            with np.errstate(all="ignore"):
                betas = vp_betas(self.T, self.beta_min, self.beta_max, self.t_eps)
            if not np.all(np.isfinite(betas) & (betas > 0) & (betas < 1)):
                raise TrilemmaError(f"--beta-max: with beta_min = {self.beta_min:g}, beta_max = {self.beta_max:g} "
                                    f"and T = {self.T} a step's β reaches 1 in float64 (all signal gone before "
                                    f"the last step); use a smaller --beta-max/--beta-min (the paper's: 20 and 0.1)")
        w = self.t_weights
        if w and (len(w) != self.T or not all(math.isfinite(v) and v >= 0 for v in w) or sum(w) <= 0):
            raise TrilemmaError(f"--t-weights: need {self.T} finite weights >= 0 (one per step t = 1..{self.T}) "
                                f"with a positive sum, got {','.join(f'{v:g}' for v in w)}")
        if self.schedule != "vp" and self.base_T < self.T:
            raise TrilemmaError(f"--base-T: must be >= T = {self.T} to respace to T steps, got {self.base_T}")

    @property
    def t_probs(self) -> tuple[float, ...] | None:
        """P(t = 1..T) of the training draws: ``t_weights`` normalised, or None for the uniform draw."""
        return tuple(v / sum(self.t_weights) for v in self.t_weights) if self.t_weights else None

    def rec_weight_at(self, progress: float) -> float:
        """λ at ``progress`` ∈ [0, 1] of the budget: ``rec_weight``, faded by 1 − σ(12·progress − 6) with ``sigmoid``.

        The sigmoid fade is Trinh & Hamagami's "weighted learning" (2024): the reconstruction term
        steers G towards the data early, when D knows little, and leaves the adversarial cost alone
        at the end (λ(0) ≈ 0.998 λ, λ(½) = ½ λ, λ(1) ≈ 0.0025 λ).
        """
        if self.rec_fade == "constant":
            return self.rec_weight
        return self.rec_weight * (1.0 - 1.0 / (1.0 + math.exp(-(12.0 * progress - 6.0))))

    def r1_gamma_at(self, d_step: int) -> float:
        """γ to use on the D step numbered ``d_step`` (from 0): ``r1_gamma`` every ``lazy_reg`` steps, else 0.

        Lazy regularisation as in the paper's code: R1 is simply skipped between
        regularised steps, not scaled up by ``lazy_reg`` (StyleGAN2 scales it).
        """
        return self.r1_gamma if d_step % self.lazy_reg == 0 else 0.0


@dataclass(frozen=True)
class DDGANNetConfig:
    """Sizes of the generator x̂₀ = G(x_t, z, t) (a U-Net with adaptive GroupNorm) and the discriminator D(x_{t−1}, x_t, t)."""

    image_size: int = 32
    channels: int = 1                          # channels of x (1 grey, 3 RGB; the latent channels in latent space)
    base_channels: int = opt(64, "generator: width of the first U-Net level (overrides the preset's)",
                             check=int_in(1, 4096))
    channel_mults: tuple[int, ...] = (1, 2, 2)  # G: width of level i = base_channels · channel_mults[i]
    num_res_blocks: int = 2                    # G: ResNet blocks per level on the way down (one more on the way up)
    attention: bool = True                     # G: self-attention in the middle (lowest resolution)
    dropout: float = 0.0                       # G: dropout inside the ResNet blocks
    z_emb_dim: int = 256                       # width of the mapped noise w = MLP(z)
    n_mlp: int = 4                             # layers of the mapping MLP z → w (paper: 4 on CIFAR-10)
    tanh: bool = True                          # G's output x̂₀ through tanh, so it lies in (−1, 1) (the paper's default)
    d_channels: int = opt(64, "discriminator: widths 2, 4, 8 × this (overrides the preset's)",
                          check=int_in(1, 4096))
    mbstd_group: int = opt(0, "discriminator: minibatch standard deviation over groups of this many pairs "
                              "(0, the default: off; the paper's code: 4)", flag="mbstd-group",
                           check=int_in(0, 1024))
    z_maps: int = opt(0, "generator: channels of spatial noise N(0, I) at the input's resolution, concatenated to "
                         "x_t at G's input beside the global z (0, the default: off; unet only)", flag="z-maps",
                      check=int_in(0, 64))
    z_spatial: bool = opt(False, "generator: also add a learned map of the mapped noise w (a linear layer, reshaped "
                                 "to C × s × s) to the features at the U-Net's lowest resolution s, before its middle "
                                 "(DCGAN's way in for z; off by default; unet only)")
    arch: str = opt("unet", "networks: unet (the paper's U-Net G with AdaGN and ResNet D) or dcgan (G and D at "
                            "DCGAN size for s·2^n pixels: base-channels is G's first width, d-channels D's)",
                    choices=("unet", "dcgan"))

    @property
    def resolutions(self) -> tuple[int, ...]:
        """G's spatial size at each level: image_size, ⌈/2⌉, ⌈/4⌉, …"""
        return level_sizes(self.image_size, len(self.channel_mults))

    def __post_init__(self):
        check_fields(self)
        if not isinstance(self.image_size, int) or self.image_size < 4:
            raise TrilemmaError(f"--image-size: DDGAN networks need images of at least 4 pixels, got {self.image_size!r}")
        if not isinstance(self.channels, int) or self.channels < 1:
            raise TrilemmaError(f"DDGAN option channels: must be a positive integer, got {self.channels!r}")
        if not self.channel_mults or min(self.channel_mults) < 1:
            raise TrilemmaError(f"DDGAN option channel_mults: must be a non-empty list of positive integers, "
                                f"got {list(self.channel_mults)}")
        for name in ("base_channels", "num_res_blocks", "z_emb_dim", "d_channels"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise TrilemmaError(f"DDGAN option {name}: must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.n_mlp, int) or self.n_mlp < 0:
            raise TrilemmaError(f"DDGAN option n_mlp: must be an integer >= 0, got {self.n_mlp!r}")
        if not 0 <= self.dropout < 1:
            raise TrilemmaError(f"DDGAN option dropout: must be in [0, 1), got {self.dropout}")
        if self.arch == "dcgan" and self.z_maps:
            raise TrilemmaError("--z-maps: spatial noise maps are an input of the U-Net generator only (--arch unet)")
        if self.arch == "dcgan" and self.z_spatial:
            raise TrilemmaError("--z-spatial: the map of w is a layer of the U-Net generator only (--arch unet; "
                                "the dcgan generator already starts from z)")
        if self.arch == "dcgan":
            try:
                dcgan_geometry(self.image_size)
            except TrilemmaError as e:
                raise TrilemmaError(f"--arch dcgan: inputs of {self.image_size}×{self.image_size}: "
                                    f"{str(e).partition(': ')[2]}") from None


PRESETS = {
    "tiny": dict(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention=False,
                 z_emb_dim=32, n_mlp=2, d_channels=8),
    "small": dict(base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1, attention=True,
                  z_emb_dim=128, n_mlp=3, d_channels=32),
    "base": dict(base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2, attention=True,
                 z_emb_dim=256, n_mlp=4, d_channels=64),   # = the paper's CIFAR-10 widths
}


def preset(name: str, image_size: int, channels: int, **overrides) -> DDGANNetConfig:
    """Named sizes: ``tiny`` (tests), ``small`` (CPU runs on 28×28), ``base`` (the paper's CIFAR-10 widths, GPU)."""
    if name not in PRESETS:
        raise TrilemmaError(f"--preset: unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    config = DDGANNetConfig(image_size=image_size, channels=channels, **PRESETS[name])
    return replace(config, **overrides) if overrides else config



def latent_preset(name: str, latent_size: int, latent_channels: int, **overrides) -> DDGANNetConfig:
    """The preset ``name`` for a DDGAN on an autoencoder's scaled latents (c × h × h).

    As the latent DDPM's U-Net (:func:`trilemma.ldm.config.latent_unet_preset`), G keeps its
    levels while they are at least 4×4 (7 → 4, 8 → 4, 16 → 8 → 4), and its output is not
    squashed by tanh: scaled latents have unit variance, not the range (−1, 1) of pixels.
    """
    if latent_size < MIN_LEVEL_SIZE:
        raise TrilemmaError(f"latents of {latent_size}×{latent_size} are too small for the DDGAN generator (it needs "
                            f"at least {MIN_LEVEL_SIZE}×{MIN_LEVEL_SIZE}): use a smaller --factor or a larger "
                            f"--image-size for the autoencoder")
    config = preset(name, latent_size, latent_channels, tanh=False)
    keep = sum(1 for size in config.resolutions if size >= MIN_LEVEL_SIZE)
    config = replace(config, channel_mults=config.channel_mults[:keep])
    return replace(config, **overrides) if overrides else config
