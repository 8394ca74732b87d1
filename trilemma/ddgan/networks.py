"""The DDGAN generator x̂₀ = G(x_t, z, t) and the time-conditioned pair discriminator D(x_{t−1}, x_t, t).

Xiao et al., ICLR 2022, §3.3 and App. C; docs/methods.md §11.

Generator: the DDPM U-Net layout of :mod:`trilemma.nets.unet` (levels of ResNet
blocks, skips, a middle with self-attention) whose ResNet blocks are
:class:`AdaGNResBlock`: the step t enters additively (sinusoidal embedding →
MLP, as in DDPM) and the latent z, after a mapping MLP w = M(z) (StyleGAN's
mapping network; PixelNorm first), modulates both GroupNorms:
AdaGN(h) = GroupNorm(h) · (1 + s) + b with (s, b) a linear map of [e_t, w]. The
paper's blocks take (s, b) from w alone; here t is in it too, at no cost.
Output: tanh, so x̂₀ ∈ (−1, 1) like the data (the paper's default; ``tanh=False``
gives the raw conv output). With ``z_maps = k`` > 0, z also carries k maps of spatial noise
N(0, I) at the input's resolution (its last k·H·W entries, :attr:`GeneratorOutput.z_numel`), which
are concatenated to x_t at G's input: a source of variation that differs from place to place, which
the global w (one scale and shift per channel) cannot give directly. With ``z_spatial``, a linear
layer maps w to a (C, s, s) map that is added to the features at the lowest resolution s, before the
middle blocks: z then also enters as a DCGAN generator's does, as a learned spatial pattern.

Discriminator: the pair is concatenated along channels, (B, 2C, H, W), a 1×1
conv lifts it to 2·ndf channels, then ResNet down-blocks (LeakyReLU(0.2) → conv
→ + embedding of t → LeakyReLU → 2× average-pool → conv, plus a 1×1 skip,
summed / √2) halve the map until it is at most 4×4; then, as in the paper's code
(StyleGAN's minibatch standard deviation, Karras et al. 2018), one feature map is
appended that holds the standard deviation of the features over a group of
``mbstd_group`` pairs (consecutive in the batch), averaged over channels and
positions; a 3×3 conv, a spatial sum and a linear layer give one logit per pair.
No normalisation layer. With ``mbstd_group = 0`` (the default, and what runs saved
before the option read as) the map is left out and each logit depends on its own
pair only; with it, a pair's logit also
sees how varied its group is, so D can tell a generator that gives too uniform
pairs from the data, and R1 (the gradient of the summed logits, as the paper's
code) includes the group's cross terms.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trilemma.ddgan.config import MAX_T, DDGANConfig, DDGANNetConfig
from trilemma.ddgan.diffusion import ddgan_schedule
from trilemma.gan.config import dcgan_geometry
from trilemma.nets import kernels
from trilemma.nets.layers import (
    Downsample,
    SelfAttention,
    Upsample,
    group_norm,
    norm_silu,
    sinusoidal_embedding,
    zero_init,
)
from trilemma.nets.unet import activation_layout


def _plain_group_norm(channels: int) -> nn.GroupNorm:
    """trilemma's GroupNorm grouping (:func:`group_norm`), without its own affine scale/shift."""
    return nn.GroupNorm(group_norm(channels).num_groups, channels, eps=1e-6, affine=False)


class PixelNorm(nn.Module):
    """z / √(mean_j z_j² + 1e−8): puts z on the sphere of radius √z_dim before the mapping MLP (Karras et al. 2018)."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)         # (B, z_dim)


def mapping_network(z_dim: int, width: int, layers: int) -> nn.Sequential:
    """w = M(z): PixelNorm, then 1 + ``layers`` linear layers of ``width`` with SiLU (StyleGAN's mapping)."""
    mapping: list[nn.Module] = [PixelNorm(), nn.Linear(z_dim, width), nn.SiLU()]
    for _ in range(layers):
        mapping += [nn.Linear(width, width), nn.SiLU()]
    return nn.Sequential(*mapping)


class AdaptiveGroupNorm(nn.Module):
    """AdaGN(h, c) = GroupNorm(h) · (1 + s(c)) + b(c), (s, b) = Linear(c) (Nichol & Dhariwal 2021; Xiao et al. 2022)."""

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.norm = _plain_group_norm(channels)
        self.style = nn.Linear(cond_dim, 2 * channels)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        scale, shift = self.style(cond)[:, :, None, None].chunk(2, dim=1)           # (B, C, 1, 1) each
        return self.norm(h) * (1 + scale) + shift                                   # (B, C, H, W)

    def silu(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """SiLU(AdaGN(h, c)): one fused kernel on channels-last CPU activations (GroupNorm with γ = 1,
        β = 0, then the per-sample scale and shift; trilemma.nets.kernels), else the layers."""
        if not kernels.supports_input(h):
            return F.silu(self(h, cond))
        scale, shift = self.style(cond)[:, :, None, None].chunk(2, dim=1)           # (B, C, 1, 1) each
        ones = torch.ones(h.shape[1])
        return kernels.fused_norm_silu(h, ones, torch.zeros_like(ones), scale, shift, self.norm.num_groups,
                                       self.norm.eps)


class AdaGNResBlock(nn.Module):
    """AdaGN → SiLU → conv → (+ time embedding) → AdaGN → SiLU → dropout → conv (zero-init), plus skip."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, cond_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = AdaptiveGroupNorm(in_ch, cond_dim)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_dim, out_ch)
        self.norm2 = AdaptiveGroupNorm(out_ch, cond_dim)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.norm1.silu(x, cond))                                     # (B, C_out, H, W)
        h = h + self.temb_proj(F.silu(temb))[:, :, None, None]                       # + embedding of t
        h = self.conv2(self.dropout(self.norm2.silu(h, cond)))                       # (B, C_out, H, W)
        return self.skip(x) + h


class GeneratorOutput(nn.Module):
    """What a generator's last layer h means: x̂₀ itself (the paper's; through tanh when ``config.tanh``) or v.

    With :meth:`predict_v` (``--prediction v``) the network's output is read as v̂ and turned into
    x̂₀ = √ᾱ_t x_t − √(1 − ᾱ_t) v̂ (Salimans & Ho 2022; docs/methods.md §11.6). For data of unit variance
    this is the preconditioning of Karras et al. (2022): at small t, where x_t is nearly x₀, an
    untrained network (v̂ ≈ 0) already answers x̂₀ ≈ √ᾱ_t x_t, and the network's output has unit
    variance at every t. The table of (√ᾱ_t, √(1 − ᾱ_t)) is a buffer that is not saved: the run's
    config.json rebuilds it.
    """

    config: DDGANNetConfig
    z_dim: int

    def __init__(self):
        super().__init__()
        self.register_buffer("v_coefficients", None, persistent=False)

    @property
    def z_numel(self) -> int:
        """Entries of G's noise input z: the global z_dim, then ``config.z_maps`` spatial maps of H × W."""
        return self.z_dim + self.config.z_maps * self.config.image_size ** 2

    def predict_v(self, alpha_bar: np.ndarray) -> None:
        """Read the output as v̂ from now on, with ᾱ_t = ``alpha_bar[t]`` (t = 0..T)."""
        table = np.stack([np.sqrt(alpha_bar), np.sqrt(1.0 - alpha_bar)], axis=1)        # (T+1, 2)
        self.v_coefficients = torch.tensor(table, dtype=torch.float32,
                                           device=next(self.parameters()).device)

    def x0_from_output(self, h: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x̂₀ (B, C, H, W) from the last layer's h (B, C, H, W), the input x_t and the steps t (B,)."""
        if self.v_coefficients is None:
            return torch.tanh(h) if self.config.tanh else h
        c = self.v_coefficients[t].to(h.dtype)[:, :, None, None, None]                 # (B, 2, 1, 1, 1)
        return c[:, 0] * x_t - c[:, 1] * h


class DDGANGenerator(GeneratorOutput):
    """x̂₀ = G(x_t, z, t): a U-Net with adaptive GroupNorm; see the module docstring.

    x_t (B, C, H, W), z (B, z_dim), t (B,) in 1..T → x̂₀ (B, C, H, W).
    """

    def __init__(self, config: DDGANNetConfig, z_dim: int = 100):
        super().__init__()
        self.config = c = config
        self.z_dim = z_dim
        ch = c.base_channels
        temb_dim = 4 * ch
        cond_dim = temb_dim + c.z_emb_dim                                            # AdaGN sees [e_t, w]
        self.time_mlp = nn.Sequential(nn.Linear(ch, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.mapping = mapping_network(z_dim, c.z_emb_dim, c.n_mlp)

        def block(in_ch: int, out_ch: int) -> AdaGNResBlock:
            return AdaGNResBlock(in_ch, out_ch, temb_dim, cond_dim, c.dropout)

        self.conv_in = nn.Conv2d(c.channels + c.z_maps, ch, 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skip_channels, width = [ch], ch
        for level, mult in enumerate(c.channel_mults):
            blocks = nn.ModuleList()
            for _ in range(c.num_res_blocks):
                blocks.append(block(width, ch * mult))
                width = ch * mult
                skip_channels.append(width)
            self.down.append(blocks)
            if level < len(c.channel_mults) - 1:
                self.downsample.append(Downsample(width))
                skip_channels.append(width)
        s = c.resolutions[-1]                                                        # the lowest resolution
        self.z_spatial = nn.Linear(c.z_emb_dim, width * s * s) if c.z_spatial else None
        self.mid1 = block(width, width)
        self.mid_attn = SelfAttention(width, num_heads=1) if c.attention else nn.Identity()
        self.mid2 = block(width, width)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(len(c.channel_mults))):
            blocks = nn.ModuleList()
            for _ in range(c.num_res_blocks + 1):
                blocks.append(block(width + skip_channels.pop(), ch * c.channel_mults[level]))
                width = ch * c.channel_mults[level]
            self.up.append(blocks)
            if level > 0:
                self.upsample.append(Upsample(width))
        self.norm_out = group_norm(width)
        self.conv_out = nn.Conv2d(width, c.channels, 3, padding=1)

    # Channels-last activations on the CPU (as the U-Net's, trilemma.nets.unet.activation_layout, so that
    # the adaptive norms run in the fused kernel) from this many positions: at 28×28 pixels sampling is
    # 1.5× faster, at 7×7 latents it was 0.85× (per-call overhead dominates there), so latents stay NCHW.
    CHANNELS_LAST_FROM = 256

    def forward(self, x_t: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time_mlp(sinusoidal_embedding(t, self.config.base_channels).to(x_t.dtype))  # (B, 4ch)
        x_in = x_t
        if self.config.z_maps:                                                       # spatial noise beside x_t
            maps = z[:, self.z_dim:].reshape(len(z), self.config.z_maps, *x_t.shape[-2:])   # (B, k, H, W)
            z, x_in = z[:, :self.z_dim], torch.cat([x_t, maps.to(x_t.dtype)], dim=1)       # (B, C + k, H, W)
        w = self.mapping(z)                                                          # (B, z_emb_dim)
        cond = torch.cat([temb, w], dim=1)                                           # (B, 4ch + z_emb_dim)
        if x_t.shape[-2] * x_t.shape[-1] >= self.CHANNELS_LAST_FROM:                # channels-last on the CPU
            h = activation_layout(self.conv_in(activation_layout(x_in)))             # (B, ch, H, W)
        else:
            h = self.conv_in(x_in)
        skips = [h]
        for level, blocks in enumerate(self.down):
            for res_block in blocks:
                h = res_block(h, temb, cond)
                skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)                                        # (B, C, ⌈H/2⌉, ⌈W/2⌉)
                skips.append(h)
        if self.z_spatial is not None:                                               # + a learned map of w
            h = h + self.z_spatial(w).reshape(h.shape)                               # (B, C, s, s), h's layout
        h = self.mid2(self.mid_attn(self.mid1(h, temb, cond)), temb, cond)
        for level, blocks in enumerate(self.up):
            for res_block in blocks:
                h = res_block(torch.cat([h, skips.pop()], dim=1), temb, cond)
            if level < len(self.upsample):
                h = self.upsample[level](h, size=skips[-1].shape[-2:])               # back to the skip's size
        h = self.conv_out(norm_silu(self.norm_out, h)).contiguous()                  # (B, C, H, W), NCHW
        return self.x0_from_output(h, x_t, t)


def minibatch_stddev(h: torch.Tensor, group: int) -> torch.Tensor:
    """Append one map: the features' standard deviation over groups of ``group`` consecutive samples.

    h (B, C, H, W) → (B, C + 1, H, W). Samples 0…g−1 form the first group, g…2g−1 the next, …
    with g the largest divisor of B that is at most ``group`` (so a data-parallel rank's contiguous
    slice of a global batch, of a multiple of g samples, forms the same groups as one process). Per group:
    s = mean over (c, h, w) of √(Var_group(h_c,h,w) + 10⁻⁸), in float32, broadcast to the group's
    samples and positions.
    """
    B, C, H, W = h.shape
    g = max(d for d in range(1, min(group, B) + 1) if B % d == 0)
    y = h.float().reshape(B // g, g, C, H, W)                                        # (B/g, g, C, H, W)
    s = (y.var(dim=1, unbiased=False) + 1e-8).sqrt().mean(dim=(1, 2, 3))              # (B/g,)
    s = s.repeat_interleave(g).to(h.dtype)[:, None, None, None].expand(B, 1, H, W)    # (B, 1, H, W)
    return torch.cat([h, s], dim=1)


class DownBlock(nn.Module):
    """LeakyReLU → conv → + Dense(e_t) → LeakyReLU → [2× avg-pool] → conv (zero-init); skip 1×1 conv; sum / √2."""

    def __init__(self, in_ch: int, out_ch: int, temb_dim: int, downsample: bool):
        super().__init__()
        self.downsample = downsample
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_dim, out_ch)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1, bias=False)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, 2, ceil_mode=True) if self.downsample else x          # 7 → 4 with ceil_mode

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.leaky_relu(x, 0.2))                                         # (B, C_out, H, W)
        h = h + self.temb_proj(temb)[:, :, None, None]                               # + embedding of t
        h = self.conv2(self._pool(F.leaky_relu(h, 0.2)))                             # (B, C_out, H', W')
        return (h + self.skip(self._pool(x))) / math.sqrt(2)


class DDGANDiscriminator(nn.Module):
    """The logit of "(x_{t−1}, x_t) is a real pair at step t": x_prev, x_t (B, C, H, W), t (B,) → (B,).

    Widths 2·ndf, 4·ndf, 8·ndf, 8·ndf … (ndf = ``d_channels``): one block at full
    resolution, then down-blocks until the map is at most 4×4 (32 → 16 → 8 → 4,
    28 → 14 → 7 → 4, 8 → 4), as the paper's small (CIFAR-10) discriminator.
    """

    def __init__(self, config: DDGANNetConfig):
        super().__init__()
        self.config = c = config
        ndf = c.d_channels
        self.temb_in = 2 * ndf
        temb_dim = 4 * ndf
        self.time_mlp = nn.Sequential(nn.Linear(self.temb_in, temb_dim), nn.LeakyReLU(0.2),
                                      nn.Linear(temb_dim, temb_dim), nn.LeakyReLU(0.2))
        self.conv_in = nn.Conv2d(2 * c.channels, 2 * ndf, 1)
        blocks, width, size = [DownBlock(2 * ndf, 2 * ndf, temb_dim, downsample=False)], 2 * ndf, c.image_size
        while size > 4:
            out = min(2 * width, 8 * ndf)
            blocks.append(DownBlock(width, out, temb_dim, downsample=True))
            width, size = out, math.ceil(size / 2)
        self.blocks = nn.ModuleList(blocks)
        self.conv_out = nn.Conv2d(width + (c.mbstd_group > 0), width, 3, padding=1)
        self.linear = nn.Linear(width, 1)

    def forward(self, x_prev: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time_mlp(sinusoidal_embedding(t, self.temb_in).to(x_t.dtype))    # (B, 4ndf)
        h = self.conv_in(torch.cat([x_prev, x_t], dim=1))                            # (B, 2C, H, W) → (B, 2ndf, H, W)
        for block in self.blocks:
            h = block(h, temb)                                                       # … → (B, ≤8ndf, ≤4, ≤4)
        if self.config.mbstd_group > 0:
            h = minibatch_stddev(h, self.config.mbstd_group)                         # (B, width + 1, ≤4, ≤4)
        h = F.leaky_relu(self.conv_out(h), 0.2).sum(dim=(2, 3))                     # (B, width), summed over space
        return self.linear(h).squeeze(1)                                             # (B,)


# ------------------------------------------------------------------------------ the DCGAN-sized pair
class DCGANGenerator(GeneratorOutput):
    """x̂₀ = G(x_t, z, t) at DCGAN size (``arch = "dcgan"``): a DCGAN generator that also reads x_t.

    For s₀·2ⁿ pixels (28 = 7·2², 32 = 4·2³) and widths e_i = ngf·2^i (ngf = ``base_channels``):

    - encoder: n convolutions 4×4 / 2 take x_t from s₀·2ⁿ down to s₀ pixels (widths e_0 … e_{n−1});
    - z enters as in DCGAN: PixelNorm, then a transposed convolution from 1×1 to s₀×s₀ (e_{n−1}
      maps), concatenated with the encoder's output;
    - decoder: n transposed convolutions 4×4 / 2 back up, each but the last concatenated with the
      encoder's map of the same size (a U-Net's skips); the last gives the C channels of x̂₀ at
      full size, as DCGAN's, plus a 3×3 convolution of x_t itself (its details, at little cost),
      then tanh for pixels.

    Every normalisation after a convolution is adaptive GroupNorm on [e_t, w] (as the U-Net
    generator's, w = M(z)), so both t and z steer every layer, not only the input. `small` (ngf = 32)
    at 28×28: 0.60M parameters, half of them in z's transposed convolution, and 5.6 MMAC per
    image (trilemma's `small` DCGAN generator: 0.23M, 1.9 MMAC), so the two compare at similar cost.
    """

    def __init__(self, config: DDGANNetConfig, z_dim: int = 100):
        super().__init__()
        self.config = c = config
        self.z_dim = z_dim
        s0, n = dcgan_geometry(c.image_size)
        ngf = c.base_channels
        widths = [ngf * 2 ** i for i in range(n)]                                     # e_0 … e_{n−1}
        temb_dim = 4 * ngf
        cond_dim = temb_dim + c.z_emb_dim
        self.time_mlp = nn.Sequential(nn.Linear(ngf, temb_dim), nn.SiLU(), nn.Linear(temb_dim, temb_dim))
        self.mapping = mapping_network(z_dim, c.z_emb_dim, c.n_mlp)
        self.pixel_norm = PixelNorm()

        self.enc = nn.ModuleList()
        self.enc_norm = nn.ModuleList()
        for i in range(n):
            self.enc.append(nn.Conv2d(c.channels if i == 0 else widths[i - 1], widths[i], 4, 2, 1))
            self.enc_norm.append(AdaptiveGroupNorm(widths[i], cond_dim))
        self.z_in = nn.ConvTranspose2d(z_dim, widths[-1], s0, 1, 0)                    # 1×1 → s₀×s₀
        self.z_norm = AdaptiveGroupNorm(widths[-1], cond_dim)
        self.dec = nn.ModuleList()
        self.dec_norm = nn.ModuleList()
        width = 2 * widths[-1]
        for j in range(n - 1):                                                         # s₀ → … → s₀·2^{n−1}
            out = widths[n - 2 - j]                                                    # the skip's width
            self.dec.append(nn.ConvTranspose2d(width, out, 4, 2, 1))
            self.dec_norm.append(AdaptiveGroupNorm(out, cond_dim))
            width = 2 * out                                                            # + the skip's maps
        self.deconv_out = nn.ConvTranspose2d(width, c.channels, 4, 2, 1)               # → full size, C maps
        self.x_skip = nn.Conv2d(c.channels, c.channels, 3, padding=1)                  # x_t's own details

    def forward(self, x_t: torch.Tensor, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time_mlp(sinusoidal_embedding(t, self.config.base_channels).to(x_t.dtype))  # (B, 4ngf)
        cond = torch.cat([temb, self.mapping(z)], dim=1)                                # (B, 4ngf + z_emb_dim)
        h, skips = x_t, []
        for conv, norm in zip(self.enc, self.enc_norm):
            h = F.leaky_relu(norm(conv(h), cond), 0.2)                                  # (B, e_i, H/2^{i+1}, …)
            skips.append(h)
        skips.pop()                                                                     # the bottom map is h itself
        h_z = F.relu(self.z_norm(self.z_in(self.pixel_norm(z)[:, :, None, None]), cond))  # (B, e_{n−1}, s₀, s₀)
        h = torch.cat([h, h_z], dim=1)                                                  # (B, 2e_{n−1}, s₀, s₀)
        for deconv, norm in zip(self.dec, self.dec_norm):
            h = F.relu(norm(deconv(h), cond))                                           # 2× the size
            h = torch.cat([h, skips.pop()], dim=1)                                      # + the encoder's map
        h = self.deconv_out(h) + self.x_skip(x_t)                                       # (B, C, H, W)
        return self.x0_from_output(h, x_t, t)


class DCGANDiscriminator(nn.Module):
    """D(x_{t−1}, x_t, t) at DCGAN size (``arch = "dcgan"``): x_prev, x_t (B, C, H, W), t (B,) → logit (B,).

    The pair is concatenated along channels and read by DCGAN's discriminator: n convolutions
    4×4 / 2 (widths ndf·2^i, LeakyReLU 0.2) from s₀·2ⁿ down to s₀ pixels, then a s₀×s₀ convolution
    to a feature vector φ. The step t enters twice: a learned per-channel bias e₁(t) after the first
    convolution, and a projection term (Miyato & Koyama 2018): logit = w·φ + b + e₂(t)·φ. No
    normalisation layer (DCGAN's has BatchNorm); the minibatch standard deviation map of
    ``mbstd_group`` is appended before the last convolution, as in :class:`DDGANDiscriminator`.
    """

    def __init__(self, config: DDGANNetConfig):
        super().__init__()
        self.config = c = config
        s0, n = dcgan_geometry(c.image_size)
        ndf = c.d_channels
        widths = [ndf * 2 ** i for i in range(n)]
        self.convs = nn.ModuleList(nn.Conv2d(2 * c.channels if i == 0 else widths[i - 1], widths[i], 4, 2, 1)
                                   for i in range(n))
        self.t_bias = nn.Embedding(MAX_T + 1, widths[0])
        nn.init.zeros_(self.t_bias.weight)
        self.conv_out = nn.Conv2d(widths[-1] + (c.mbstd_group > 0), widths[-1], s0)    # s₀×s₀ → 1×1
        self.linear = nn.Linear(widths[-1], 1)
        self.t_proj = nn.Embedding(MAX_T + 1, widths[-1])
        nn.init.zeros_(self.t_proj.weight)

    def forward(self, x_prev: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x_prev, x_t], dim=1)                                             # (B, 2C, H, W)
        for i, conv in enumerate(self.convs):
            h = conv(h)
            if i == 0:
                h = h + self.t_bias(t)[:, :, None, None].to(h.dtype)                    # + e₁(t)
            h = F.leaky_relu(h, 0.2)                                                    # … → (B, ndf·2^{n−1}, s₀, s₀)
        if self.config.mbstd_group > 0:
            h = minibatch_stddev(h, self.config.mbstd_group)                            # (B, ndf·2^{n−1} + 1, s₀, s₀)
        phi = F.leaky_relu(self.conv_out(h), 0.2).flatten(1)                            # (B, F)
        return self.linear(phi).squeeze(1) + (self.t_proj(t).to(phi.dtype) * phi).sum(dim=1)   # (B,)


def make_generator(config: DDGANNetConfig, z_dim: int, method: DDGANConfig | None = None) -> GeneratorOutput:
    """The generator of ``config.arch``: the U-Net (:class:`DDGANGenerator`) or the DCGAN-sized one.

    With ``method.prediction == "v"`` its output is read as v̂ on ``method``'s schedule
    (:meth:`GeneratorOutput.predict_v`); without ``method``, or with "x0", as x̂₀.
    """
    G = DCGANGenerator(config, z_dim) if config.arch == "dcgan" else DDGANGenerator(config, z_dim)
    if method is not None and method.prediction == "v":
        G.predict_v(ddgan_schedule(method).alpha_bar)
    return G


def make_discriminator(config: DDGANNetConfig) -> nn.Module:
    """The discriminator of ``config.arch``: the paper's ResNet one or the DCGAN-sized one."""
    return DCGANDiscriminator(config) if config.arch == "dcgan" else DDGANDiscriminator(config)
