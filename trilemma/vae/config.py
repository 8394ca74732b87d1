"""The two config sections of a VAE run: the network (``"model"``) and the objective (``"vae"``)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from trilemma.errors import TrilemmaError
from trilemma.options import int_in, nonneg, opt, positive


@dataclass(frozen=True)
class VAENetConfig:
    """Convolutional encoder x → (μ, log σ²) and its mirror-image decoder z → p_θ(x|z)."""

    image_size: int = 28
    channels: int = 1                 # image channels (1 grey, 3 RGB)
    latent_dim: int = opt(16, "dimension of z (overrides the preset's)", check=int_in(1, 65536))
    base_channels: int = opt(32, "width after the first stride-2 conv; doubles at every further one", check=int_in(1, 4096))
    max_downsamples: int = 3          # stride-2 convs, while the map stays even and ≥ 4 px
    blocks_per_level: int = 0         # extra 3×3 convs after each stride-2 (transposed) conv
    hidden_dim: int = 256             # width of the fully connected layer before (μ, log σ²)

    def __post_init__(self):
        for name in ("image_size", "latent_dim", "base_channels", "hidden_dim"):
            if getattr(self, name) <= 0:
                raise TrilemmaError(f"VAE option {name}: must be a positive integer, got {getattr(self, name)}")
        if self.channels not in (1, 3):
            raise TrilemmaError(f"VAE option channels: must be 1 or 3, got {self.channels}")
        for name in ("max_downsamples", "blocks_per_level"):
            if getattr(self, name) < 0:
                raise TrilemmaError(f"VAE option {name}: must be >= 0, got {getattr(self, name)}")

    @property
    def downsamples(self) -> int:
        """How many times the encoder halves the image: 28 → 14 → 7 (2), 32 → 16 → 8 → 4 (3), 8 → 4 (1)."""
        size, n = self.image_size, 0
        while n < self.max_downsamples and size % 2 == 0 and size // 2 >= 4:
            size, n = size // 2, n + 1
        return n

    @property
    def bottleneck_size(self) -> int:
        return self.image_size // 2 ** self.downsamples

    @property
    def bottleneck_channels(self) -> int:
        return self.base_channels * 2 ** max(0, self.downsamples - 1)


Likelihood = Literal["gaussian", "bernoulli"]


@dataclass(frozen=True)
class VAEConfig:
    """The objective: −ELBO(x) = −E_q[log p_θ(x|z)] + β · KL(q_φ(z|x) ‖ N(0, I)).

    Likelihoods (both are proper probabilities of the stored 8-bit image, so the
    −ELBO is an upper bound on −log p(x) in nats and bits/dim are comparable with
    the literature):

    - ``gaussian``: a *discretised* Gaussian over the 256 pixel levels (Ho et al.
      2020 §3.3, after PixelCNN++): pixel k ∈ {0..255} sits at x = k/127.5 − 1 in
      [−1, 1] and gets the Gaussian mass of its bin [x − 1/255, x + 1/255], the
      edge bins reaching to ±∞. ``discretised=False`` uses the continuous density
      instead (a density, not a probability: its "bits/dim" can be negative).
      ``variance``: ``fixed`` (σ = ``sigma``) or ``learned`` (one σ per channel,
      the "calibrated decoder" of Rybkin et al. 2021).
    - ``bernoulli``: pixels p = (x + 1)/2 ∈ [0, 1] are binarised stochastically,
      x_bin ~ Bernoulli(p), afresh at every training step (Salakhutdinov & Murray
      2008); the decoder outputs logits. The −ELBO is then in nats per *binarised*
      image (test set binarised once with a fixed seed) and is not comparable
      with the 256-level Gaussian numbers.
    """

    likelihood: Likelihood = opt("gaussian", "p(x|z): discretised Gaussian over 256 levels, or Bernoulli on "
                                 "binarised pixels", choices=("gaussian", "bernoulli"))
    variance: Literal["fixed", "learned"] = opt("learned", "Gaussian σ", choices=("fixed", "learned"))
    sigma: float = opt(0.1, "fixed σ, or the initial σ when learned (pixels in [−1, 1])", check=positive)
    discretised: bool = opt(True, "Gaussian: the 256-bin probability (--no-discretised: a continuous density)")
    beta: float = opt(1.0, "weight of the KL term (β-VAE, Higgins et al. 2017); 1 = the ELBO", check=nonneg)

    def __post_init__(self):
        if self.likelihood not in ("gaussian", "bernoulli"):
            raise TrilemmaError(f"--likelihood: expected 'gaussian' or 'bernoulli', got {self.likelihood!r}")
        if self.variance not in ("fixed", "learned"):
            raise TrilemmaError(f"--variance: expected 'fixed' or 'learned', got {self.variance!r}")
        if not self.sigma > 0:
            raise TrilemmaError(f"--sigma: must be > 0, got {self.sigma}")
        if not self.beta >= 0:
            raise TrilemmaError(f"--beta: must be >= 0, got {self.beta}")


PRESETS = {
    "tiny": dict(latent_dim=4, base_channels=8, hidden_dim=32, max_downsamples=2),
    "small": dict(latent_dim=16, base_channels=32, hidden_dim=256, max_downsamples=2),
    "base": dict(latent_dim=64, base_channels=64, hidden_dim=512, max_downsamples=4, blocks_per_level=1),
}


def preset(name: str, image_size: int, channels: int, **overrides) -> VAENetConfig:
    """Named sizes: ``tiny`` (tests), ``small`` (CPU runs), ``base`` (GPU)."""
    if name not in PRESETS:
        raise TrilemmaError(f"--preset: unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    config = VAENetConfig(image_size=image_size, channels=channels, **PRESETS[name])
    return replace(config, **overrides) if overrides else config
