"""The VAE: the KL closed form, the reparameterisation, ELBO ≤ log p(x) on an exact model, likelihoods,
training with exact resume, the run folder, and the CLI."""

import json
import math
import shutil

import pytest
import torch
from torch import nn

from trilemma.cli.main import main
from trilemma.errors import TrilemmaError
from trilemma.registry import load_run
from trilemma.run import SampleOptions
from trilemma.vae import (
    VAE,
    VAEConfig,
    bernoulli_log_likelihood,
    binarise,
    discretised_gaussian_log_likelihood,
    elbo_terms,
    gaussian_kl,
    gaussian_log_likelihood,
    preset,
    reparameterise,
)
from trilemma.vae.train import train_vae


# ------------------------------------------------------------------------------------------ the maths
def test_gaussian_kl_closed_form_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mu = torch.tensor([[0.5, -1.2, 0.0], [2.0, 0.3, -0.7]], dtype=torch.float64)
    logvar = torch.tensor([[0.0, -1.5, 0.8], [-0.3, 1.0, -2.0]], dtype=torch.float64)
    closed = gaussian_kl(mu, logvar)                                        # (2,)
    n = 400_000
    z = reparameterise(mu.repeat(n, 1), logvar.repeat(n, 1), g).view(n, 2, 3)
    sigma2 = logvar.exp()
    log_q = (-0.5 * math.log(2 * math.pi) - 0.5 * logvar - 0.5 * (z - mu) ** 2 / sigma2).sum(-1)   # (n, 2)
    log_p = (-0.5 * math.log(2 * math.pi) - 0.5 * z ** 2).sum(-1)
    ratio = log_q - log_p                                                  # KL = E_q[log q − log p]
    mc, se = ratio.mean(0), ratio.std(0) / math.sqrt(n)
    assert torch.all((mc - closed).abs() < 4 * se), (mc, closed, se)
    assert torch.allclose(gaussian_kl(torch.zeros(1, 5), torch.zeros(1, 5)), torch.zeros(1))    # q = p: KL = 0


def test_reparameterisation_sends_exact_gradients_to_mu_and_sigma():
    mu = torch.tensor([[0.3, -0.5, 1.0]], requires_grad=True)
    logvar = torch.tensor([[-1.0, 0.0, 0.5]], requires_grad=True)
    z = reparameterise(mu, logvar, torch.Generator().manual_seed(7))
    eps = torch.randn((1, 3), generator=torch.Generator().manual_seed(7))   # the same ε
    assert torch.allclose(z, mu + torch.exp(0.5 * logvar) * eps)
    (z * torch.tensor([1.0, 2.0, 3.0])).sum().backward()                    # L = Σ c_j z_j
    c = torch.tensor([[1.0, 2.0, 3.0]])
    assert torch.allclose(mu.grad, c)                                       # ∂L/∂μ = c
    assert torch.allclose(logvar.grad, c * 0.5 * torch.exp(0.5 * logvar.detach()) * eps)   # ∂L/∂log σ² = c·½σε


class LinearGaussianVAE(nn.Module):
    """p(z) = N(0, I), p(x|z) = N(Wz + b, s² I): log p(x) = log N(x; b, WWᵀ + s² I) exactly.

    W has orthogonal columns, so the posterior N(M⁻¹Wᵀ(x − b)/s², M⁻¹), M = I + WᵀW/s², is diagonal
    and a diagonal-Gaussian encoder can equal it.
    """

    def __init__(self, W, b, s, enc_A, enc_c, enc_logvar):
        super().__init__()
        self.W, self.b, self.log_s = W, b, math.log(s)
        self.A, self.c, self.logvar = enc_A, enc_c, enc_logvar

    def encode(self, x):
        return x @ self.A.T + self.c, self.logvar.expand(len(x), -1)

    def decode(self, z):
        return z @ self.W.T + self.b, torch.full((1, 1), self.log_s, dtype=z.dtype)

    @staticmethod
    def optimal_encoder(W, b, s):
        M = torch.eye(W.shape[1], dtype=W.dtype) + W.T @ W / s ** 2      # posterior precision (diagonal here)
        cov = torch.linalg.inv(M)
        A = cov @ W.T / s ** 2
        return A, -A @ b, torch.log(torch.diagonal(cov))


def test_elbo_is_a_lower_bound_on_log_p_with_equality_at_the_optimal_encoder():
    torch.manual_seed(0)
    dtype = torch.float64
    Q, _ = torch.linalg.qr(torch.randn(5, 2, dtype=dtype))
    W = Q * torch.tensor([1.5, 0.7], dtype=dtype)                           # orthogonal columns, (5, 2)
    b, s = torch.randn(5, dtype=dtype), 0.4
    x = torch.randn(3, 5, dtype=dtype)
    exact = torch.distributions.MultivariateNormal(b, W @ W.T + s ** 2 * torch.eye(5, dtype=dtype)).log_prob(x)
    config = VAEConfig(discretised=False)                                   # the continuous Gaussian density
    n = 20_000
    xs = x.repeat_interleave(n, 0)
    g = torch.Generator().manual_seed(1)

    def mean_elbo(model):                          # Monte-Carlo mean over n draws of z, and its standard error
        elbo = -elbo_terms(model, xs, config, g)["neg_elbo"].view(3, n)
        return elbo.mean(1), elbo.std(1) / math.sqrt(n)

    A, c, logvar = LinearGaussianVAE.optimal_encoder(W, b, s)
    best, se = mean_elbo(LinearGaussianVAE(W, b, s, A, c, logvar))
    assert torch.all((best - exact).abs() < 4 * se + 1e-9), (best, exact, se)   # ELBO = log p(x) at the optimum
    worse_A, worse_logvar = A + 0.3 * torch.randn_like(A), logvar + 0.5
    worse, se = mean_elbo(LinearGaussianVAE(W, b, s, worse_A, c, worse_logvar))
    # the gap is exactly KL(q(z|x) ‖ p(z|x)), both Gaussians
    post_mean = x @ A.T + c
    q = torch.distributions.Normal(x @ worse_A.T + c, (0.5 * worse_logvar).exp())
    p = torch.distributions.Normal(post_mean, (0.5 * logvar).exp())
    gap = torch.distributions.kl_divergence(q, p).sum(-1)
    assert torch.all(worse < exact - 1) and torch.all((exact - worse - gap).abs() < 4 * se), (exact - worse, gap, se)


def test_discretised_gaussian_is_a_probability_over_the_256_levels():
    levels = torch.arange(256, dtype=torch.float64) / 127.5 - 1                # (256,)
    for mean, sigma in ((0.0, 0.1), (0.93, 0.004), (-1.3, 0.5), (0.2, 3.0), (1.0, 1e-3)):
        logp = discretised_gaussian_log_likelihood(levels, torch.tensor(mean, dtype=torch.float64),
                                                   torch.tensor(math.log(sigma), dtype=torch.float64))
        assert torch.isfinite(logp).all() and logp.logsumexp(0).abs() < 1e-9, (mean, sigma)
    # wide σ: mass of a bin ≈ density × bin width
    x = torch.tensor([-0.2, 0.1, 0.5])
    wide = discretised_gaussian_log_likelihood(x, torch.zeros(3), torch.full((3,), math.log(0.5)))
    assert torch.allclose(wide, gaussian_log_likelihood(x, torch.zeros(3), torch.full((3,), math.log(0.5)))
                          + math.log(2 / 255), atol=1e-4)
    # σ far below the bin width: the level under the mean gets probability ≈ 1, not an infinite density
    sharp = discretised_gaussian_log_likelihood(torch.tensor([0.2]), torch.tensor([0.2]), torch.tensor([math.log(1e-4)]))
    assert sharp.item() == pytest.approx(0.0, abs=1e-6)
    # gradients stay finite at the edge levels and for far-off means
    mean = torch.tensor([-1.0, 1.0, 0.0, 5.0, -5.0], requires_grad=True)
    x = torch.tensor([-1.0, 1.0, 1.0, -1.0, 1.0])
    discretised_gaussian_log_likelihood(x, mean, torch.full((5,), math.log(0.01))).sum().backward()
    assert torch.isfinite(mean.grad).all()


def test_bernoulli_likelihood_and_binarisation():
    logits = torch.tensor([-2.0, 0.0, 3.0])
    p = torch.sigmoid(logits)
    for x in (torch.zeros(3), torch.ones(3)):
        assert torch.allclose(bernoulli_log_likelihood(x, logits), torch.log(torch.where(x > 0, p, 1 - p)))
    x = torch.full((200_000,), 0.5)                                         # pixel 0.75 in [0, 1]
    b = binarise(x, torch.Generator().manual_seed(0))
    assert set(b.unique().tolist()) == {-1.0, 1.0} and ((b + 1) / 2).mean().item() == pytest.approx(0.75, abs=0.005)


def test_elbo_terms_are_consistent_per_sample():
    torch.manual_seed(0)
    net = preset("tiny", 8, 1)
    for vae in (VAEConfig(beta=0.5), VAEConfig(likelihood="bernoulli", beta=2.0)):
        model = VAE(net, vae)
        x = torch.rand(4, 1, 8, 8) * 2 - 1
        if vae.likelihood == "bernoulli":
            x = binarise(x)
        t = elbo_terms(model, x, vae, torch.Generator().manual_seed(0))
        assert all(v.shape == (4,) for v in t.values())
        assert torch.allclose(t["neg_elbo"], t["recon"] + t["kl"])
        assert torch.allclose(t["loss"], (t["recon"] + vae.beta * t["kl"]) / 64)
        assert torch.allclose(t["bpd"], t["neg_elbo"] / (64 * math.log(2)))
        assert torch.all(t["kl"] >= 0) and torch.all(t["recon"] > 0)      # a probability: −log P > 0


@pytest.mark.parametrize("size", [8, 28, 32, 64])
def test_networks_fit_every_image_size(size):
    for channels in (1, 3):
        net = preset("tiny", size, channels)
        model = VAE(net, VAEConfig())
        mu, logvar = model.encode(torch.zeros(2, channels, size, size))
        assert mu.shape == logvar.shape == (2, net.latent_dim)
        assert model.image(mu).shape == (2, channels, size, size)


def test_bad_options_are_one_line_errors():
    with pytest.raises(TrilemmaError, match="--likelihood"):
        VAEConfig(likelihood="poisson")
    with pytest.raises(TrilemmaError, match="--beta"):
        VAEConfig(beta=-1)
    with pytest.raises(TrilemmaError, match="--preset"):
        preset("huge", 28, 1)


# ------------------------------------------------------------------------------------------ training
def losses(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def tiny_vae(out, steps, checkpoint_every=4, **kw):
    return train_vae(out, data="digits", preset="tiny", steps=steps, batch_size=32, lr=3e-3, progress=False,
                     **dict(log_every=1, checkpoint_every=checkpoint_every, warmup_steps=2,
                                          device="cpu"), **kw)


def test_training_lowers_the_negative_elbo_and_reports_it(tmp_path):
    run = tmp_path / "vae"
    tiny_vae(run, 40, checkpoint_every=1000)
    rows = losses(run)
    first, last = sum(r["neg_elbo"] for r in rows[:5]) / 5, sum(r["neg_elbo"] for r in rows[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert {"loss", "recon", "kl", "neg_elbo", "bpd"} <= set(rows[-1])
    result = json.loads((run / "eval_elbo.json").read_text())
    assert result["split"] == "test" and result["n"] == 180 and result["dims"] == 64
    assert result["neg_elbo_nats"] == pytest.approx(result["recon_nats"] + result["kl_nats"])
    assert result["bits_per_dim"] == pytest.approx(result["neg_elbo_nats"] / (64 * math.log(2)))
    assert result["kl_nats"] > 0 and result["recon_nats"] > 0              # −log of a probability: positive
    assert result["neg_elbo_nats"] < 1.5 * rows[-1]["neg_elbo"]            # the EMA weights are as good as trained
    assert (run / "samples" / "reconstructions.png").exists() and (run / "loss.png").exists()


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path):
    tiny_vae(tmp_path / "straight", 8, evaluate=False)
    tiny_vae(tmp_path / "split", 5, evaluate=False)
    train_vae(tmp_path / "split", steps=8, resume=True, progress=False, evaluate=False)
    def exact(rows):                                                        # everything but the timings
        return [{k: v for k, v in r.items() if k not in ("images_per_s", "elapsed_s")} for r in rows]

    assert exact(losses(tmp_path / "split")) == exact(losses(tmp_path / "straight"))
    from safetensors.torch import load_file
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = load_file(tmp_path / "straight" / name), load_file(tmp_path / "split" / name)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_run_samples_reconstructs_encodes_and_interpolates(tmp_path):
    run_dir = tmp_path / "vae"
    tiny_vae(run_dir, 4, likelihood="bernoulli", evaluate=False)
    run = load_run(run_dir, device="cpu")
    assert run.kind == "vae" and run.nfe(SampleOptions()) == 1
    a = run.generate(6, seed=3, progress=False)
    assert a.dtype == torch.uint8 and a.shape == (6, 1, 8, 8) and torch.equal(a, run.generate(6, seed=3, progress=False))
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    assert run.encode(x).shape == (2, run.net_config.latent_dim)
    path = run.interpolate(x[0], x[1], 5)
    assert path.shape == (5, 1, 8, 8)
    assert torch.allclose(path[[0, -1]], run.reconstruct(x), atol=1e-6)   # the ends decode μ(x_a) and μ(x_b)


# ------------------------------------------------------------------------------------------ CLI
def test_cli_train_sample_interpolate_and_errors(tmp_path, capsys):
    run = tmp_path / "vae"
    assert main(["train", "vae", "--data", "digits", "--preset", "tiny", "--steps", "3", "--batch-size", "16",
                 "--out", str(run), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "test −ELBO" in err and "bits/dim" in err
    assert main(["train", "vae", "--out", str(run), "--resume", "--steps", "5", "--quiet"]) == 0
    assert "trained 5 steps" in capsys.readouterr().err
    assert main(["sample", str(run), "--n", "4", "--out", str(tmp_path / "s.png"), "--quiet"]) == 0
    assert main(["show", "interpolation", str(run), "--out", str(tmp_path / "i.png"), "--pairs", "2",
                 "--steps", "4"]) == 0
    assert (tmp_path / "s.png").stat().st_size > 100 and (tmp_path / "i.png").stat().st_size > 100
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["train", "vae", "--out", str(tmp_path / "x"), "--steps", "2", "--likelihood", "poisson"])
    assert "--likelihood" in capsys.readouterr().err
    shutil.copytree(run, tmp_path / "fake")
    cfg = json.loads((tmp_path / "fake" / "config.json").read_text())
    cfg["kind"] = "ddpm"
    (tmp_path / "fake" / "config.json").write_text(json.dumps(cfg))
    assert main(["train", "vae", "--out", str(tmp_path / "fake"), "--resume", "--steps", "9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not vae" in err[0]


def test_interpolation_refuses_a_run_without_a_latent_code(tmp_path, capsys):
    from trilemma.ddpm.train import train_ddpm

    train_ddpm(tmp_path / "ddpm", data="digits", preset="tiny", steps=1, batch_size=8, progress=False,
               **dict(device="cpu"))
    assert main(["show", "interpolation", str(tmp_path / "ddpm"), "--out", str(tmp_path / "i.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ddpm run has no latent code" in err[0]
