"""Tests of trilemma.metrics: the math against closed forms, brute force and scipy/prdc, the
behaviour the issue asks for (toy mixtures, noise, blur, copies), the feature-network cache,
and evaluate_images / evaluate_run end to end on scikit-learn's 8x8 digits.

Everything that needs a feature network uses :data:`TINY_RECIPE` on digits (trains in ~1 s) in
a temporary TRILEMMA_CACHE, so the user's cache is never touched.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from trilemma.metrics import classes
from trilemma.metrics import features as features_mod
from trilemma.metrics.evaluate import SCHEMA, SCHEMA_VERSION, EvalSettings, evaluate_images, evaluate_run
from trilemma.metrics.fid import fid, frechet_distance, gaussian_stats
from trilemma.metrics.kid import kid, mmd2_unbiased, polynomial_kernel
from trilemma.metrics.memorisation import exact_copy_fraction, memorisation, nearest_distances
from trilemma.metrics.prdc import knn_radii, prdc, recall_breakdown
from trilemma.metrics.speed import PeakMemory, time_sampler

TINY_RECIPE = {"width": 8, "feature_dim": 32, "steps": 120, "batch_size": 64, "warmup_steps": 10,
               "lr": 5e-3}
FAST = EvalSettings(kid_subsets=10)  # KID's 100 subsets are the slowest part at this size


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One temporary TRILEMMA_CACHE for the module (feature nets and stats are reused across tests)."""
    path = tmp_path_factory.mktemp("trilemma-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("TRILEMMA_CACHE", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def digits(cache):
    from trilemma.data import DataConfig

    return DataConfig("digits", test_fraction=0.5).resolved()


@pytest.fixture(scope="module")
def digits_net(digits):
    return features_mod.get_feature_network(digits, recipe=TINY_RECIPE, progress=False)


def load(config, split):
    from trilemma.data import load_dataset

    return load_dataset(config, split=split)


# --- FID -----------------------------------------------------------------------------------------

def scipy_fid(x: np.ndarray, y: np.ndarray) -> float:
    """The textbook computation (pytorch-fid style), with scipy's general matrix square root."""
    mu1, mu2 = x.mean(0), y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = covmean.real if np.iscomplexobj(covmean) else covmean
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("dim", [2, 16, 64])
def test_fid_matches_scipy_sqrtm(dim):
    rng = np.random.default_rng(dim)
    x = rng.normal(size=(600, dim)) @ rng.normal(size=(dim, dim))
    y = rng.normal(0.3, 1.5, size=(500, dim)) @ rng.normal(size=(dim, dim))
    assert fid(x, y) == pytest.approx(scipy_fid(x, y), rel=1e-6)


def test_fid_closed_form_for_commuting_covariances():
    # Diagonal covariances commute: FID = |mu1 - mu2|² + Σ (sqrt(a_i) - sqrt(b_i))².
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 2.0])
    expected = 9.0 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


def test_fid_of_a_set_with_itself_is_zero_and_handles_singular_covariance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 80))  # N < D: the covariance is singular
    assert fid(x, x) == pytest.approx(0.0, abs=1e-8)
    mu, sigma = gaussian_stats(x)
    assert sigma.dtype == np.float64 and mu.shape == (80,)


# --- KID -----------------------------------------------------------------------------------------

def test_mmd2_unbiased_equals_the_direct_double_sum():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(12, 5)), rng.normal(0.5, 1.0, size=(12, 5))
    m, d = len(x), x.shape[1]

    def k(a, b):
        return (a @ b / d + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    assert mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-10)
    assert polynomial_kernel(x, y).shape == (12, 12)


def test_kid_near_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(1500, 16)), rng.normal(size=(1500, 16))
    same_mean, same_std = kid(a, b, num_subsets=20, subset_size=500)
    assert abs(same_mean) < max(3 * same_std, 1e-3)
    diff_mean, diff_std = kid(a, b + 0.5, num_subsets=20, subset_size=500)
    assert diff_mean > 10 * max(diff_std, abs(same_mean))


# --- precision / recall / density / coverage -----------------------------------------------------

def brute_prdc(real, fake, k_pr, k_dc):
    """Straight from the papers' definitions, with Python loops."""
    def dist(a, b):
        return math.sqrt(((a - b) ** 2).sum())

    def radius(points, i, k):
        return sorted(dist(points[i], points[j]) for j in range(len(points)) if j != i)[k - 1]

    r_pr = [radius(real, j, k_pr) for j in range(len(real))]
    r_dc = [radius(real, j, k_dc) for j in range(len(real))]
    r_fake = [radius(fake, i, k_pr) for i in range(len(fake))]
    precision = np.mean([any(dist(y, x) <= r_pr[j] for j, x in enumerate(real)) for y in fake])
    recall = np.mean([any(dist(x, y) <= r_fake[i] for i, y in enumerate(fake)) for x in real])
    density = sum(dist(y, x) <= r_dc[j] for y in fake for j, x in enumerate(real)) / (k_dc * len(fake))
    coverage = np.mean([min(dist(x, y) for y in fake) <= r_dc[j] for j, x in enumerate(real)])
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


def test_prdc_matches_brute_force_with_chunking():
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(45, 4)), rng.normal(0.4, 1.2, size=(38, 4))
    got = prdc(real, fake, k_pr=3, k_dc=5, chunk_rows=7)
    want = brute_prdc(real, fake, 3, 5)
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


def test_prdc_matches_the_naver_prdc_package():
    reference = pytest.importorskip("prdc")
    rng = np.random.default_rng(4)
    real, fake = rng.normal(size=(300, 8)), rng.normal(0.3, 1.1, size=(250, 8))
    for k in (3, 5):
        got = prdc(real, fake, k_pr=k, k_dc=k)
        want = reference.compute_prdc(real, fake, nearest_k=k)
        for key in got:
            assert got[key] == pytest.approx(float(want[key]), abs=1e-12), (k, key)


def test_knn_radii_exclude_the_point_itself():
    points = np.array([[0.0], [1.0], [3.0], [7.0]])
    radii = knn_radii(points, (1, 2), chunk_rows=3)
    assert radii[1].tolist() == [1.0, 1.0, 2.0, 4.0]
    assert radii[2].tolist() == [3.0, 2.0, 3.0, 6.0]


def mixture(rng, n, modes, centres, scale=0.15):
    labels = rng.choice(modes, size=n)
    return centres[labels] + scale * rng.normal(size=(n, centres.shape[1])), labels


def mode_probs(points, centres):
    """A toy classifier: softmax of negative squared distances to the mode centres."""
    logits = -((points[:, None, :] - centres[None]) ** 2).sum(-1) / 0.1
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True)


def test_toy_mixture_dropped_modes_lower_coverage_not_precision():
    rng = np.random.default_rng(5)
    angles = np.linspace(0, 2 * np.pi, 10, endpoint=False)
    centres = np.stack([np.cos(angles), np.sin(angles)], 1) * 3  # 10 modes on a circle
    real, _ = mixture(rng, 2000, np.arange(10), centres)
    full, _ = mixture(rng, 2000, np.arange(10), centres)
    dropped, _ = mixture(rng, 2000, np.arange(5), centres)  # half the modes missing
    m_full, m_drop = prdc(real, full), prdc(real, dropped)
    assert m_drop["recall"] < m_full["recall"] - 0.3
    assert m_drop["coverage"] < m_full["coverage"] - 0.3
    assert m_drop["precision"] >= m_full["precision"] - 0.02
    threshold = 0.25 / 10
    assert classes.modes_hit(classes.class_counts(mode_probs(full, centres)), threshold) == 10
    assert classes.modes_hit(classes.class_counts(mode_probs(dropped, centres)), threshold) == 5


def test_toy_mixture_outliers_lower_precision_and_density():
    rng = np.random.default_rng(6)
    angles = np.linspace(0, 2 * np.pi, 10, endpoint=False)
    centres = np.stack([np.cos(angles), np.sin(angles)], 1) * 3
    real, _ = mixture(rng, 2000, np.arange(10), centres)
    clean, _ = mixture(rng, 2000, np.arange(10), centres)
    noisy = clean.copy()
    noisy[:600] = rng.uniform(-8, 8, size=(600, 2)) + 10  # 30% outliers far from every mode
    m_clean, m_noisy = prdc(real, clean), prdc(real, noisy)
    assert m_noisy["precision"] < m_clean["precision"] - 0.25
    assert m_noisy["density"] < m_clean["density"] - 0.25



def test_recall_breakdown_by_hand_in_one_dimension():
    real = np.array([[0.0], [1.0], [2.0], [3.0], [4.0]])     # every real 1-NN radius is 1
    fake = np.array([[0.5], [1.5], [6.0], [8.5]])            # fake 1-NN radii 1, 1, 2.5, 2.5
    # 0.5 and 1.5 lie in real balls (inliers) and cover reals 0, 1, 2; 6 and 8.5 do not (outliers),
    # and 6's ball (radius 2.5) covers real 4, which no inlier covers
    got = recall_breakdown(real, fake, k=1, chunk_rows=3)
    assert got == {"recall": 0.8, "recall_from_inliers": 0.6, "recall_from_outliers_only": pytest.approx(0.2),
                   "outlier_share": 0.5, "radius_inliers": 1.0, "radius_outliers": 2.5}


def test_recall_breakdown_matches_brute_force_and_adds_up_to_prdc():
    rng = np.random.default_rng(9)
    real, fake = rng.normal(size=(60, 2)), rng.normal(1.0, 2.0, size=(50, 2))
    got, want = recall_breakdown(real, fake, chunk_rows=7), prdc(real, fake)
    d = np.sqrt(((fake[:, None, :] - real[None, :, :]) ** 2).sum(-1))              # (fakes, reals)
    r_real = np.sort(np.sqrt(((real[:, None] - real[None]) ** 2).sum(-1)), 1)[:, 3]
    r_fake = np.sort(np.sqrt(((fake[:, None] - fake[None]) ** 2).sum(-1)), 1)[:, 3]
    inlier = (d <= r_real[None, :]).any(1)
    covered = d <= r_fake[:, None]
    by_in, by_out = covered[inlier].any(0), covered[~inlier].any(0)
    assert got["recall_from_inliers"] == pytest.approx(by_in.mean(), abs=1e-12)
    assert got["recall_from_outliers_only"] == pytest.approx((by_out & ~by_in).mean(), abs=1e-12)
    assert got["recall_from_outliers_only"] > 0                  # this draw has a real only an outlier covers
    assert got["radius_outliers"] == pytest.approx(np.median(r_fake[~inlier]) / np.median(r_real), rel=1e-12)
    assert got["recall"] == pytest.approx(want["recall"], abs=1e-12)
    assert got["recall_from_inliers"] + got["recall_from_outliers_only"] == pytest.approx(want["recall"], abs=1e-12)
    assert got["outlier_share"] == pytest.approx(1 - want["precision"], abs=1e-12)


def test_toy_mixture_spread_out_outliers_inflate_recall_not_coverage():
    """Naeem et al.'s point: off-manifold fakes have big k-NN balls that 'cover' modes nobody sampled."""
    rng = np.random.default_rng(7)
    angles = np.linspace(0, 2 * np.pi, 10, endpoint=False)
    centres = np.stack([np.cos(angles), np.sin(angles)], 1) * 3
    real, _ = mixture(rng, 2000, np.arange(10), centres)
    dropped, _ = mixture(rng, 2000, np.arange(5), centres)      # half the modes missing
    spread = dropped.copy()
    spread[:300] = rng.uniform(-4, 4, size=(300, 2))            # 15% scattered over the whole plane
    m_drop, m_spread = prdc(real, dropped), prdc(real, spread)
    b_drop, b_spread = recall_breakdown(real, dropped), recall_breakdown(real, spread)
    assert m_spread["recall"] > m_drop["recall"] + 0.4          # recall says the missing modes are back
    assert abs(m_spread["coverage"] - m_drop["coverage"]) < 0.05  # coverage does not
    assert b_drop["recall_from_outliers_only"] < 0.01 < 0.1 < b_spread["recall_from_outliers_only"]
    assert b_spread["radius_outliers"] > 5 * b_spread["radius_inliers"]

# --- class histograms ---------------------------------------------------------------------------

def test_class_divergences_match_hand_computed_values():
    p, q = np.array([0.5, 0.5]), np.array([0.25, 0.75])
    # KL(p||q) = ½ln(0.5/0.25) + ½ln(0.5/0.75) = ½ln(4/3)
    assert classes.kl_divergence(p, q) == pytest.approx(0.5 * math.log(4 / 3), rel=1e-12)
    # M = (0.375, 0.625): KL(p||M) = ½ln(4/3) + ½ln(4/5); KL(q||M) = ¼ln(2/3) + ¾ln(6/5)
    js = 0.5 * (0.5 * math.log(4 / 3) + 0.5 * math.log(4 / 5)) + 0.5 * (
        0.25 * math.log(2 / 3) + 0.75 * math.log(6 / 5))
    assert classes.js_divergence(p, q) == pytest.approx(js, rel=1e-12)
    assert classes.total_variation(p, q) == pytest.approx(0.25, rel=1e-12)
    # disjoint supports: KL infinite, JS = ln 2, TV = 1
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert classes.kl_divergence(a, b) == math.inf
    assert classes.js_divergence(a, b) == pytest.approx(math.log(2), rel=1e-12)
    assert classes.total_variation(a, b) == 1.0
    assert classes.kl_divergence(p, p) == 0.0
    # smoothing: counts (3, 0) with alpha 1/2 -> (3.5/4, 0.5/4)
    assert classes.smoothed_histogram(np.array([3, 0]), 0.5).tolist() == [0.875, 0.125]


def test_classifier_score_extremes():
    k = 10
    uniform = np.full((1000, k), 1.0 / k)  # no confident sample: score 1
    onehot = np.eye(k)[np.arange(1000) % k]  # confident and balanced: score K
    assert classes.classifier_score(uniform)[0] == pytest.approx(1.0)
    assert classes.classifier_score(onehot) == pytest.approx((k, 0.0))
    collapsed = np.eye(k)[np.zeros(1000, dtype=int)]  # one class only: score 1
    assert classes.classifier_score(collapsed)[0] == pytest.approx(1.0)


# --- memorisation --------------------------------------------------------------------------------

def test_memorisation_flags_copies_and_passes_fresh_samples():
    rng = np.random.default_rng(7)
    train, test = rng.normal(size=(800, 8)), rng.normal(size=(300, 8))
    test_nn = nearest_distances(test, train)
    copies = train[rng.choice(800, 300, replace=False)]
    fresh = rng.normal(size=(300, 8))
    m_copy = memorisation(nearest_distances(copies, train), test_nn)
    m_fresh = memorisation(nearest_distances(fresh, train), test_nn)
    assert m_copy["copy_fraction"] == 1.0 and m_copy["nn_ratio"] == 0.0
    assert m_fresh["copy_fraction"] < 0.06 and 0.8 < m_fresh["nn_ratio"] < 1.25


def test_exact_copy_fraction():
    rng = np.random.default_rng(8)
    train = rng.integers(0, 256, size=(50, 1, 4, 4), dtype=np.uint8)
    samples = np.concatenate([train[:5], rng.integers(0, 256, size=(15, 1, 4, 4), dtype=np.uint8)])
    assert exact_copy_fraction(samples, train) == pytest.approx(0.25)


# --- speed ------------------------------------------------------------------------------------

def test_time_sampler_reports_median_rate_and_peak_memory():
    calls = []

    def sample():
        calls.append(1)
        return torch.ones(8 * 2**20 // 4 * 8)  # 64 MB

    result = time_sampler(sample, batch_size=4, device=torch.device("cpu"), warmup=1, repeats=3)
    assert len(calls) == 4 and len(result["batch_seconds"]) == 3
    assert result["images_per_s"] > 0
    if result["peak_memory_mb"] is not None:  # Linux
        assert result["memory_above_baseline_mb"] >= 32
        assert result["memory_measure"].startswith("cpu:")


def test_peak_memory_on_cpu_sees_a_temporary_allocation():
    with PeakMemory(torch.device("cpu")) as memory:
        x = torch.ones(2**25, dtype=torch.float32)  # 128 MB
        x += 1
        del x
    if memory.peak_mb is None:
        pytest.skip("no /proc/self/status here")
    assert memory.peak_mb - memory.baseline_mb >= 100


# --- the feature network ------------------------------------------------------------------------

def test_feature_network_is_cached_and_reused(digits, digits_net, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the cached feature network should have been loaded, not retrained")

    monkeypatch.setattr(features_mod, "train_feature_net", refuse)
    again = features_mod.get_feature_network(digits, recipe=TINY_RECIPE, progress=False)
    assert again.info == digits_net.info
    images = load(digits, "test").images[:20]
    np.testing.assert_array_equal(again.features(images), digits_net.features(images))


def test_feature_network_is_deterministic_and_informative(digits, digits_net, tmp_path, monkeypatch):
    monkeypatch.setenv("TRILEMMA_CACHE", str(tmp_path))  # a fresh cache: trains again
    retrained = features_mod.get_feature_network(digits, recipe=TINY_RECIPE, progress=False)
    for (name, a), b in zip(digits_net.net.state_dict().items(), retrained.net.state_dict().values()):
        assert torch.equal(a, b), name
    info = digits_net.info
    assert info["objective"] == "classifier" and info["feature_dim"] == 32
    assert info["test_accuracy"] > 0.6  # even the 120-step recipe learns the digits
    feats = digits_net.features(load(digits, "test").images[:10])
    assert feats.shape == (10, 32) and feats.dtype == np.float64


def test_real_statistics_are_cached(digits, digits_net, monkeypatch):
    from trilemma.metrics import stats as stats_mod

    first = stats_mod.reference_stats(digits_net, digits, "test", progress=False)

    def refuse(*args, **kwargs):
        raise AssertionError("cached statistics should have been loaded, not recomputed")

    monkeypatch.setattr(stats_mod, "knn_radii", refuse)
    monkeypatch.setattr(digits_net, "embed", refuse)
    again = stats_mod.reference_stats(digits_net, digits, "test", progress=False)
    np.testing.assert_array_equal(first.sigma, again.sigma)
    np.testing.assert_array_equal(first.radii[5], again.radii[5])
    np.testing.assert_array_equal(first.train_nn, again.train_nn)
    assert first.n == len(load(digits, "test")) and first.sigma.dtype == np.float64


def test_recipe_change_gives_a_new_network(digits, digits_net, monkeypatch):
    calls = []
    real_train = features_mod.train_feature_net
    monkeypatch.setattr(features_mod, "train_feature_net",
                        lambda *a, **k: calls.append(1) or real_train(*a, **k))
    other = features_mod.get_feature_network(digits, recipe={**TINY_RECIPE, "seed": 1}, progress=False)
    assert calls and other.info["hash"] != digits_net.info["hash"]
    with pytest.raises(ValueError, match="unknown feature-network recipe"):
        features_mod.get_feature_network(digits, recipe={"widht": 3}, progress=False)


def test_rotation_fallback_for_an_unlabelled_folder(cache, tmp_path):
    from PIL import Image

    from trilemma.data import DataConfig

    digits_images = load("digits", "train").images[:120, 0].numpy()
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for i, image in enumerate(digits_images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    config = DataConfig(str(folder), image_size=8, channels=1, test_fraction=0.25).resolved()
    fn = features_mod.get_feature_network(config, recipe=TINY_RECIPE, progress=False)
    assert fn.info["objective"] == "rotation" and not fn.has_classes
    assert fn.info["test_accuracy"] is not None  # rotation accuracy on the folder's test split
    test = load(config, "test").images
    result = evaluate_images(test, config, feature_net=fn, settings=FAST, progress=False)
    assert result["feature_net"]["objective"] == "rotation"
    assert result["quality"]["classifier_score_mean"] is None and result["coverage"]["modes_hit"] is None
    assert result["quality"]["fid"] == pytest.approx(0.0, abs=1e-6)


# --- evaluate_images / evaluate_run -------------------------------------------------------------

def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of uint8 (N, C, H, W) images (3x3 kernel), back to uint8."""
    t = torch.arange(-1, 2, dtype=torch.float32)
    k1 = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = (k1[:, None] * k1[None, :]) / k1.sum() ** 2
    x = torch.nn.functional.conv2d(images.float(), k[None, None], padding=1)
    return x.round().clamp(0, 255).to(torch.uint8)


def add_noise(images: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = images.float() + std * 255 * torch.randn(images.shape, generator=g)
    return x.round().clamp(0, 255).to(torch.uint8)


def test_fid_grows_with_noise_and_with_blur(digits, digits_net):
    from trilemma.metrics.stats import reference_stats

    ref = reference_stats(digits_net, digits, "test", progress=False)
    test = load(digits, "test").images

    def score(images):
        return frechet_distance(*gaussian_stats(digits_net.features(images)), ref.mu, ref.sigma)

    assert score(test) == pytest.approx(0.0, abs=1e-6)
    noisy = [score(add_noise(test, s)) for s in (0.0, 0.1, 0.2, 0.4)]
    blurred = [score(test)] + [score(blur(test, s)) for s in (0.5, 1.0, 3.0)]
    assert all(a < b for a, b in zip(noisy, noisy[1:])), noisy
    assert all(a < b for a, b in zip(blurred, blurred[1:])), blurred


def test_evaluate_images_schema_and_reference_rows(digits, digits_net):
    test, train = load(digits, "test").images, load(digits, "train").images
    real = evaluate_images(test, digits, feature_net=digits_net, settings=FAST, progress=False)
    assert real["schema"] == SCHEMA_VERSION
    for section, keys in SCHEMA.items():
        assert set(real[section]) == set(keys), section
    assert real["quality"]["fid"] == pytest.approx(0.0, abs=1e-6)
    assert real["quality"]["precision"] == 1.0 and real["coverage"]["recall"] == 1.0
    assert real["coverage"]["modes_hit"] == 10 and real["coverage"]["class_tv"] == 0.0
    assert real["memorisation"]["nn_ratio"] == pytest.approx(1.0)
    assert real["memorisation"]["exact_copy_fraction"] == 0.0
    assert real["speed"]["nfe"] is None  # images have no sampler

    copies = evaluate_images(train[:len(test)], digits, feature_net=digits_net, settings=FAST, progress=False)
    assert copies["memorisation"]["copy_fraction"] == 1.0
    assert copies["memorisation"]["exact_copy_fraction"] == 1.0

    noise = torch.randint(0, 256, test.shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    bad = evaluate_images(noise, digits, feature_net=digits_net, settings=FAST, progress=False)
    assert bad["quality"]["fid"] > 10 * max(copies["quality"]["fid"], 1.0)
    # (precision is not asserted: a collapsed cluster of noise features can sit inside one of
    # the large real balls of this tiny network; that is why density/coverage exist)
    assert bad["coverage"]["recall"] < 0.2 and bad["coverage"]["coverage"] < 0.2
    assert bad["memorisation"]["nn_ratio"] > 1.5
    assert bad["quality"]["classifier_score_mean"] < real["quality"]["classifier_score_mean"] / 2

    nhwc = test.permute(0, 2, 3, 1).numpy()  # (N, H, W, C) numpy works too
    again = evaluate_images(nhwc, digits, feature_net=digits_net, settings=FAST, progress=False)
    assert again["quality"]["fid"] == real["quality"]["fid"]


def test_evaluate_images_rejects_wrong_shapes(digits, digits_net):
    from trilemma.errors import TrilemmaError

    with pytest.raises(TrilemmaError, match="do not match"):
        evaluate_images(np.zeros((4, 1, 9, 9), np.uint8), digits, feature_net=digits_net)
    with pytest.raises(TrilemmaError, match="uint8"):
        evaluate_images(np.zeros((4, 1, 8, 8), np.float32), digits, feature_net=digits_net)
    with pytest.raises(TrilemmaError, match="at least 10"):
        evaluate_images(np.zeros((4, 1, 8, 8), np.uint8), digits, feature_net=digits_net)


class CopyingRun:
    """A fake run (the trilemma.run interface) whose 'generator' returns training images."""

    kind = "gan"

    def __init__(self, data_config, path):
        self.data_config, self.path, self.device = data_config, path, torch.device("cpu")
        self.train = load(data_config, "train").images

    def nfe(self, options):
        return 1

    def sampling_record(self, options):
        return {}                                   # a GAN uses no sampling options

    def generator(self, seed):
        return torch.Generator().manual_seed(seed)

    def sample_batch(self, n, generator, options):
        from trilemma.data import to_float

        idx = torch.randint(0, len(self.train), (n,), generator=generator)
        return to_float(self.train[idx])

    def generate(self, n, *, seed=0, batch_size=256, options=None, progress=True):
        from trilemma.data import to_uint8

        g = self.generator(seed)
        return torch.cat([to_uint8(self.sample_batch(min(batch_size, n - s), g, options))
                          for s in range(0, n, batch_size)])


def test_evaluate_run_flags_a_copying_generator_and_times_it(digits, digits_net, tmp_path, monkeypatch):
    import trilemma.metrics.evaluate as evaluate_mod

    monkeypatch.setattr(evaluate_mod, "get_feature_network", lambda *a, **k: digits_net)
    run = CopyingRun(digits, tmp_path)
    result = evaluate_run(run, 300, None, batch_size=100, settings=FAST, progress=False)
    assert result["memorisation"]["copy_fraction"] == 1.0
    assert result["memorisation"]["exact_copy_fraction"] == 1.0
    assert result["memorisation"]["nn_ratio"] == 0.0
    speed = result["speed"]
    assert speed["nfe"] == 1 and speed["images_per_s"] > 0
    assert speed["timed_batches"] == 2 and speed["warmup_batches"] == 1  # batches 2 and 3 of 3
    # the images are exactly those run.generate gives for the same seed and batch size
    from trilemma.metrics.speed import generate_timed

    images, _ = generate_timed(run, 250, None, seed=3, batch_size=100, progress=False)
    assert torch.equal(images, run.generate(250, seed=3, batch_size=100))
    assert result["source"]["kind"] == "run" and result["source"]["run_kind"] == "gan"
    assert result["timing"]["sample_s"] is not None


def test_a_small_evaluation_times_batches_of_its_own_size(digits, tmp_path):
    from trilemma.metrics.speed import generate_timed

    run = CopyingRun(digits, tmp_path)
    sizes = []
    sample_batch = run.sample_batch
    run.sample_batch = lambda b, g, o: sizes.append(b) or sample_batch(b, g, o)
    images, speed = generate_timed(run, 12, None, batch_size=256, progress=False, fallback_batches=3)
    assert images.shape[0] == 12
    assert sizes == [12, 12, 12, 12]                 # the kept batch, then 3 timed ones of the same size
    assert speed["batch_size"] == 12 and speed["timed_batches"] == 3


def test_repeats_score_independent_sample_sets_and_average_them(digits, digits_net, tmp_path, monkeypatch):
    """--repeats K: K sets of n samples (seeds seed … seed + K − 1), each metric their mean, ± their sd."""
    import trilemma.metrics.evaluate as evaluate_mod
    from trilemma.errors import TrilemmaError
    from trilemma.metrics.evaluate import REPEATED

    monkeypatch.setattr(evaluate_mod, "get_feature_network", lambda *a, **k: digits_net)
    run = CopyingRun(digits, tmp_path)
    singles = [evaluate_run(run, 60, None, seed=s, batch_size=30, settings=FAST, progress=False) for s in (4, 5, 6)]
    combined = evaluate_run(run, 60, None, seed=4, repeats=3, batch_size=30, settings=FAST, progress=False)
    assert combined["n"] == 60 and combined["source"]["seed"] == 4
    assert combined["repeats"]["seeds"] == combined["source"]["seeds"] == [4, 5, 6]
    fids = [r["quality"]["fid"] for r in singles]
    assert len(set(fids)) == 3                                    # three different sample sets
    assert combined["repeats"]["values"]["quality.fid"] == pytest.approx(fids, rel=1e-12)
    assert combined["quality"]["fid"] == pytest.approx(np.mean(fids), rel=1e-12)
    assert combined["repeats"]["sd"]["quality.fid"] == pytest.approx(np.std(fids, ddof=1), rel=1e-9)
    for section, keys in REPEATED.items():
        for key in keys:
            if singles[0][section][key] is not None:
                assert combined[section][key] == pytest.approx(np.mean([r[section][key] for r in singles]))
    assert combined["coverage"]["class_histogram"] == singles[0]["coverage"]["class_histogram"]   # the first set's
    speeds = combined["repeats"]["values"]["speed.images_per_s"]
    assert len(speeds) == 3 and combined["speed"]["images_per_s"] == pytest.approx(np.median(speeds))
    assert evaluate_run(run, 60, None, seed=4, batch_size=30, settings=FAST, progress=False)["repeats"] is None
    with pytest.raises(TrilemmaError, match="repeats"):
        evaluate_run(run, 60, None, repeats=0, settings=FAST, progress=False)
