"""The feature network every metric runs on: a small CNN trained per dataset, cached on disk.

No Inception weights can be downloaded here, so, as papers on MNIST-like data do
("Fréchet LeNet distance"), trilemma trains its own feature network for each
dataset and every metric uses its penultimate layer. To make numbers comparable
across runs and machines the network is reproducible:

- a fixed architecture (:class:`ConvNet`) and a fixed recipe (:data:`DEFAULT_RECIPE`):
  seed, steps, batch size, optimiser, schedule and augmentation are all in one dict;
- it is always trained on the CPU, from ``torch.manual_seed(recipe["seed"])``, with
  every random draw from one explicit ``torch.Generator`` and
  ``torch.use_deterministic_algorithms(True)``;
- the trained weights are cached under
  ``$TRILEMMA_CACHE/feature-nets/<dataset>-<hash>/`` where the hash covers the
  resolved :class:`~trilemma.data.DataConfig` (without ``hflip``, a generator-only
  option: see :func:`canonical_data_config`), a fingerprint of the training images
  and labels, the recipe, the objective and :data:`FEATURE_CODE_VERSION`; a second
  call loads the cached weights instead of training.

**Shipped networks.** Retrained on another machine the network is not bit-for-bit
the same (float rounding differs with the CPU's kernels and thread count), so for
the builtin datasets (``fashion-mnist``, ``mnist-5k``, ``digits``) the network is
trained once, by ``scripts/build_feature_nets.py`` with :data:`DEFAULT_RECIPE`,
and shipped inside the package (``trilemma/metrics/feature_nets/``: one
safetensors file per dataset and ``manifest.json`` with each file's sha256, the
recipe, the data config, the fingerprint of the training data, the test accuracy
and the torch version it was trained with). :func:`get_feature_network` loads it,
after checking the sha256, whenever the request is exactly what was shipped: a
builtin dataset at its native size and channels, the default recipe, the current
:data:`FEATURE_CODE_VERSION` and the training images it was trained on. Anything else (another image size, a
folder, another recipe) is trained and cached as above. ``feature_net.source``
in every result says which (``"shipped"`` or ``"trained"``), ``feature_net.sha256``
which weights.

**Objective.** A labelled dataset (the builtins, a folder with one sub-folder per
class) trains a classifier on its labels; the features are the 128-d penultimate
activations and :meth:`FeatureNetwork.probs` gives class probabilities (used by
the classifier score, modes hit and class-histogram divergences).

**Fallback for unlabelled folders: rotation prediction** (Gidaris et al. 2018,
"Unsupervised representation learning by predicting image rotations"). The same
CNN, with the same recipe, is trained to tell which of 0/90/180/270 degrees an
image was rotated by. Why this is a fair choice: it needs no labels and no
outside weights, it is trained on the very images being modelled (so it is as
specific to the dataset as the classifier is), it is deterministic and cached
like the classifier, and recognising an object's orientation forces the network
to encode its shape and parts — the same kind of features a classifier learns,
which Gidaris et al. show transfer to classification far better than random or
autoencoder features. Class-based metrics are then undefined and reported as
``null``; ``feature_net.objective`` in every result says which network was used.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from trilemma.errors import RunError, TrilemmaError
from trilemma.utils.io import load_tensors, read_json, save_tensors, write_json
from trilemma.utils.paths import cache_dir, stable_hash

# Bump when a change to this file changes what a recipe trains (architecture,
# augmentation, loop): every cached network is then retrained.
FEATURE_CODE_VERSION = 1

# The recipe every dataset gets unless a caller overrides it (tests use tiny ones).
# A fixed number of steps, not epochs, so every dataset costs the same CPU time.
DEFAULT_RECIPE: dict[str, Any] = {
    "arch": "convnet",
    "width": 16,  # channels of the first conv stage; later stages 2x and 4x
    "feature_dim": 128,  # size of the penultimate layer = the features
    "steps": 2500,  # optimiser steps
    "batch_size": 128,
    "lr": 3e-3,  # peak learning rate of AdamW
    "weight_decay": 5e-4,
    "warmup_steps": 100,  # linear warm-up, then cosine decay to 0
    "label_smoothing": 0.0,
    "shift": 0,  # random translation of up to +-shift pixels (background padding)
    "hflip": False,  # random horizontal flips
    "dropout": 0.2,  # before the output layer
    "seed": 0,
}

ROTATIONS = 4  # rotation-prediction objective: 0, 90, 180, 270 degrees

# The feature networks shipped with the package (see the module docstring).
SHIPPED_DIR = Path(__file__).resolve().parent / "feature_nets"
SHIPPED_MANIFEST = "manifest.json"
SHIPPED_SCHEMA = "trilemma.feature-nets/1"


def featurise_batch_size(image_shape: tuple[int, int, int]) -> int:
    """Images per forward pass when featurising: ~1M pixels, at least 64."""
    c, h, w = image_shape
    return max(64, min(1000, 1_000_000 // (c * h * w)))


# --- architecture ------------------------------------------------------------------------------

def conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class ConvNet(nn.Module):
    """A small VGG-style CNN for images of any size (>= 4 px).

    conv(w) pool conv(2w) conv(2w) pool conv(4w) -> adaptive avg-pool to 4x4 ->
    linear(feature_dim) ReLU = **features** -> dropout -> linear(num_outputs).
    """

    def __init__(self, channels: int, num_outputs: int, width: int = 32, feature_dim: int = 128,
                 dropout: float = 0.2) -> None:
        super().__init__()
        w = width
        self.trunk = nn.Sequential(
            conv_block(channels, w), nn.MaxPool2d(2),  # (B, w, H/2, W/2)
            conv_block(w, 2 * w), conv_block(2 * w, 2 * w), nn.MaxPool2d(2),  # (B, 2w, H/4, W/4)
            conv_block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(4), nn.Flatten(),  # (B, 64w)
        )
        self.embed = nn.Sequential(nn.Linear(64 * w, feature_dim), nn.ReLU(inplace=True))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, num_outputs))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self.trunk(x))  # (B, feature_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, num_outputs) logits


def build_net(recipe: dict[str, Any], channels: int, num_outputs: int) -> ConvNet:
    if recipe["arch"] != "convnet":
        raise ValueError(f"unknown feature-network arch {recipe['arch']!r}")
    return ConvNet(channels, num_outputs, recipe["width"], recipe["feature_dim"], recipe["dropout"])


# --- training ----------------------------------------------------------------------------------

def lr_at(step: int, recipe: dict[str, Any]) -> float:
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine decay to 0 at ``steps``."""
    peak, warmup, total = recipe["lr"], recipe["warmup_steps"], recipe["steps"]
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by an integer offset in ``[-max_shift, max_shift]``², padding with -1."""
    if max_shift == 0:
        return x
    b, c, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)  # (B, C, H+2s, W+2s)
    dy, dx = torch.randint(0, 2 * max_shift + 1, (2, b, 1), generator=generator)  # (B, 1) each
    rows = dy + torch.arange(h)  # (B, H)
    cols = dx + torch.arange(w)  # (B, W)
    batch = torch.arange(b)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def rotate_batch(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate each image by k*90 degrees, k uniform in {0..3}; return images and k."""
    k = torch.randint(0, ROTATIONS, (len(x),), generator=generator)  # (B,)
    out = x.clone()
    for r in range(1, ROTATIONS):
        mask = k == r
        out[mask] = torch.rot90(x[mask], r, dims=(2, 3))
    return out, k


def rotations_of(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All four rotations of each image (4B images) and their rotation index."""
    out = torch.cat([torch.rot90(x, r, dims=(2, 3)) for r in range(ROTATIONS)])  # (4B, C, H, W)
    return out, torch.arange(ROTATIONS).repeat_interleave(len(x))


def train_feature_net(train_images: torch.Tensor, train_targets: torch.Tensor | None,
                      num_classes: int, recipe: dict[str, Any], progress: bool = True) -> ConvNet:
    """Train :class:`ConvNet` on the CPU, deterministically, with a flat loop.

    ``train_targets=None`` selects the rotation-prediction objective (Gidaris et al.
    2018); otherwise cross-entropy on the class labels.
    """
    from trilemma.data import to_float

    rotation = train_targets is None
    torch.manual_seed(recipe["seed"])
    generator = torch.Generator().manual_seed(recipe["seed"])
    net = build_net(recipe, train_images.shape[1], ROTATIONS if rotation else num_classes)
    decay = [p for p in net.parameters() if p.ndim > 1]  # no weight decay on biases and norms
    no_decay = [p for p in net.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe["lr"])
    n, bs = len(train_images), min(recipe["batch_size"], len(train_images))
    order, cursor = torch.randperm(n, generator=generator), 0
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    net.train()
    bar = tqdm(range(recipe["steps"]), desc="training feature network", unit="step",
               disable=not progress, leave=False)
    try:
        for step in bar:
            if cursor + bs > n:  # a fresh permutation every epoch
                order, cursor = torch.randperm(n, generator=generator), 0
            idx = order[cursor:cursor + bs]
            cursor += bs
            x = to_float(train_images[idx])  # (B, C, H, W) in [-1, 1]
            if recipe["hflip"]:
                flip = torch.rand(len(idx), generator=generator) < 0.5
                x[flip] = x[flip].flip(-1)
            x = random_shift(x, recipe["shift"], generator)
            if rotation:
                x, y = rotate_batch(x, generator)
            else:
                y = train_targets[idx]
            loss = F.cross_entropy(net(x), y, label_smoothing=recipe["label_smoothing"])
            for group in opt.param_groups:
                group["lr"] = lr_at(step, recipe)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    finally:
        torch.use_deterministic_algorithms(deterministic)
    return net.eval()


# --- the cached network ------------------------------------------------------------------------

@dataclass
class FeatureNetwork:
    """A trained :class:`ConvNet` plus what produced it.

    ``info`` (written to ``info.json`` and into every eval result as ``feature_net``):
    ``name``, ``objective`` ("classifier" or "rotation"), ``hash``, ``dataset``,
    ``data_config``, ``recipe``, ``code_version``, ``feature_dim``, ``num_classes``,
    ``class_names``, ``test_accuracy`` (class accuracy, or rotation accuracy for the
    fallback; null when there is no test split), ``test_n``, ``train_seconds``,
    ``train_threads``, ``source`` ("shipped" with the package or "trained" on this
    machine), ``sha256`` (of the safetensors weights file) and ``torch_version``
    (that trained it; None for networks cached before it was recorded).
    """

    net: ConvNet
    info: dict[str, Any]
    device: torch.device = torch.device("cpu")

    @property
    def has_classes(self) -> bool:
        """True when :meth:`probs` gives class (not rotation) probabilities."""
        return self.info["objective"] == "classifier"

    @property
    def feature_dim(self) -> int:
        return self.net.embed[0].out_features

    @torch.no_grad()
    def embed(self, images: torch.Tensor | np.ndarray, *, batch_size: int | None = None,
              progress: bool = False, desc: str = "featurising") -> tuple[np.ndarray, np.ndarray]:
        """Features ``(N, D)`` and softmax outputs ``(N, K)``, both float64, in one pass.

        ``images``: uint8 ``(N, C, H, W)`` (as stored) or float in ``[-1, 1]``.
        The network runs in float32 (on CUDA with TF32 off: TF32 convolutions move the
        features by ~1e-3, full float32 agrees with the CPU to ~1e-5); the outputs are
        cast to float64 for statistics.
        """
        if self.device.type == "cuda":
            with full_float32_on_cuda():
                return self._embed(images, batch_size, progress, desc)
        return self._embed(images, batch_size, progress, desc)

    def _embed(self, images, batch_size, progress, desc) -> tuple[np.ndarray, np.ndarray]:
        from trilemma.data import to_float

        images = torch.as_tensor(images)
        if images.ndim != 4:
            raise ValueError(f"expected images (N, C, H, W), got shape {tuple(images.shape)}")
        batch_size = batch_size or featurise_batch_size(tuple(images.shape[1:]))
        feats, probs = [], []
        self.net.to(self.device).eval()
        for start in tqdm(range(0, len(images), batch_size), desc=desc, unit="batch",
                          disable=not progress, leave=False):
            x = images[start:start + batch_size]
            x = to_float(x) if x.dtype == torch.uint8 else x.to(torch.float32)
            h = self.net.features(x.to(self.device))  # (B, D)
            feats.append(h.cpu().double().numpy())
            probs.append(torch.softmax(self.net.head(h).double(), dim=1).cpu().numpy())
        d, k = self.feature_dim, self.net.head[-1].out_features
        return (np.concatenate(feats) if feats else np.zeros((0, d)),
                np.concatenate(probs) if probs else np.zeros((0, k)))

    def features(self, images, **kwargs) -> np.ndarray:
        """Penultimate-layer features ``(N, D)`` float64."""
        return self.embed(images, **kwargs)[0]

    def probs(self, images, **kwargs) -> np.ndarray:
        """Class probabilities ``(N, K)`` float64 (rotation probabilities for the fallback)."""
        return self.embed(images, **kwargs)[1]


@contextmanager
def full_float32_on_cuda():
    """Turn TF32 off for cuDNN convolutions and CUDA matmuls (cuDNN's default is on), then restore."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def dataset_fingerprint(images: torch.Tensor, labels: torch.Tensor | None) -> str:
    """A hash of the training images and labels, so a changed folder retrains."""
    h = hashlib.sha256(images.contiguous().numpy().tobytes())
    if labels is not None:
        h.update(labels.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def dataset_slug(name: str) -> str:
    """A short, filesystem-safe name for a dataset (a folder's base name)."""
    import os
    import re

    base = os.path.basename(name.rstrip("/")) or "data"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", base)[:40]


def canonical_data_config(data_config):
    """The resolved config with the generator-only option ``hflip`` off.

    The feature network and the real statistics depend on *which images* a dataset
    holds, not on how a generator augments them, so a run trained with flips is
    scored by the same network as one trained without; likewise a captioned copy
    of a dataset (``fashion-mnist-captions``) is scored as the dataset itself.
    """
    import dataclasses

    from trilemma.data import DataConfig

    if isinstance(data_config, str):
        data_config = DataConfig(data_config)
    config = dataclasses.replace(data_config.resolved(), hflip=False)
    # Captioned versions of a dataset hold the same images: score them with the source's network.
    source = {"fashion-mnist-captions": "fashion-mnist", "mnist-5k-captions": "mnist-5k"}.get(config.name)
    return dataclasses.replace(config, name=source) if source else config


def get_feature_network(data_config, *, recipe: dict[str, Any] | None = None,
                        progress: bool = True, device: str | torch.device = "cpu",
                        log: Callable[[str], None] | None = None) -> FeatureNetwork:
    """The feature network of ``data_config``: shipped, loaded from the cache, or trained and cached.

    ``data_config``: a :class:`~trilemma.data.DataConfig` or a dataset name.
    ``recipe``: overrides of :data:`DEFAULT_RECIPE` (unknown keys raise ``ValueError``).
    ``log``: called with one-line status messages (e.g. "training ... (test accuracy 92.1%)").

    A builtin dataset at the config, recipe and code version it was shipped with
    (:func:`shipped_entry`) gets the shipped weights (sha256-checked): nothing is
    trained and nothing is written to the cache. Everything else is trained on
    first use and cached under ``$TRILEMMA_CACHE/feature-nets/``.
    """
    from trilemma.data import load_dataset

    data_config = canonical_data_config(data_config)
    recipe = resolve_recipe(recipe)
    train = load_dataset(data_config, split="train")
    objective = "classifier" if train.has_labels else "rotation"
    if train.has_labels:  # a folder's root-level files have no class (-1): not trained on
        train = train.subset(torch.nonzero(train.labels >= 0).flatten())
    targets = train.labels if train.has_labels else None
    fingerprint = dataset_fingerprint(train.images, targets)
    entry = shipped_entry(data_config, recipe)
    if entry is not None:
        if entry["data_fingerprint"] == fingerprint:
            return load_shipped_network(data_config.name, device=device)
        if log:  # e.g. another copy of the dataset files: the shipped network was not trained on these
            log(f"the training images of {data_config.name} differ from those its shipped feature network "
                f"was trained on (fingerprint {fingerprint}, shipped {entry['data_fingerprint']}): "
                "training one for them")

    key = {"data": data_config.to_dict(), "fingerprint": fingerprint,
           "recipe": recipe, "objective": objective, "code_version": FEATURE_CODE_VERSION}
    digest = stable_hash(key)
    # The entry's folder is created only when the trained network is saved (a killed run leaves none);
    # an entry is complete when info.json (written last) names the sha256 of model.safetensors.
    folder = cache_dir("feature-nets") / f"{dataset_slug(data_config.name)}-{digest}"
    num_outputs = train.num_classes if train.has_labels else ROTATIONS
    cached = _load_cached_network(folder, recipe, data_config.channels, num_outputs, device)
    if cached is not None:
        return cached

    if log:
        log(f"training the {objective} feature network for {data_config.name} "
            f"({recipe['steps']} steps on the CPU; cached afterwards in {folder})")
    fn = train_feature_network(data_config, recipe, train, targets, digest, progress=progress,
                               device=device)
    save_tensors(folder / "model.safetensors", fn.net.state_dict(), {"hash": digest})
    fn.info["sha256"] = file_sha256(folder / "model.safetensors")
    write_json(folder / "info.json", fn.info)  # last: its presence marks a complete entry
    if log:
        what = "rotation accuracy" if objective == "rotation" else "test accuracy"
        accuracy = fn.info["test_accuracy"]
        acc = "n/a (no test split)" if accuracy is None else f"{100 * accuracy:.2f}%"
        log(f"feature network trained in {fn.info['train_seconds']:.0f} s, {what} {acc}")
    return fn


def _load_cached_network(folder: Path, recipe: dict[str, Any], channels: int, num_outputs: int,
                         device: str | torch.device) -> FeatureNetwork | None:
    """The cached network in ``folder``, or ``None`` when the entry is missing, incomplete or damaged.

    Complete means: ``info.json`` (written last) is a JSON object and ``model.safetensors`` loads
    into the network; when ``info.json`` records a sha256 (every entry written since networks are
    shipped), the weights file must have it. Anything else is treated as absent and retrained.
    """
    info_path, weights = folder / "info.json", folder / "model.safetensors"
    if not (info_path.is_file() and weights.is_file()):
        return None
    try:
        info = read_json(info_path)
        if not isinstance(info, dict):
            return None
        if "sha256" in info and info["sha256"] != file_sha256(weights):
            return None
        net = build_net(recipe, channels, num_outputs)
        net.load_state_dict(load_tensors(weights))
    except (RunError, RuntimeError, KeyError, ValueError, OSError):
        return None
    if "sha256" not in info:  # cached before networks were shipped: same keys as a new one
        info.update(source="trained", sha256=file_sha256(weights), torch_version=info.get("torch_version"))
    return FeatureNetwork(net.eval(), info, torch.device(device))


def train_feature_network(data_config, recipe: dict[str, Any], train, targets: torch.Tensor | None,
                          digest: str, *, progress: bool = True,
                          device: str | torch.device = "cpu") -> FeatureNetwork:
    """Train the network of a canonical ``data_config`` on ``train`` and test it; no caching.

    ``recipe``: a resolved recipe; ``targets``: the labels, or None for the rotation
    objective; ``digest``: the cache hash recorded as ``info["hash"]``. The returned
    ``info`` has every key but ``sha256``, which depends on how the weights are saved.
    """
    objective = "rotation" if targets is None else "classifier"
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        net = train_feature_net(train.images, targets, train.num_classes, recipe, progress)
    train_seconds = time.perf_counter() - t0
    fn = FeatureNetwork(net, {}, torch.device(device))
    accuracy, test_n = test_accuracy(fn, data_config, objective, progress)
    fn.info = {
        "name": f"trilemma-convnet-{objective}-{dataset_slug(data_config.name)}-{digest}",
        "objective": objective,
        "hash": digest,
        "dataset": data_config.name,
        "data_config": data_config.to_dict(),
        "recipe": recipe,
        "code_version": FEATURE_CODE_VERSION,
        "feature_dim": recipe["feature_dim"],
        "num_classes": train.num_classes,
        "class_names": list(train.class_names),
        "test_accuracy": accuracy,
        "test_n": test_n,
        "train_seconds": round(train_seconds, 1),
        "train_threads": torch.get_num_threads(),
        "source": "trained",
        "torch_version": torch.__version__,
    }
    return fn


# --- the shipped networks ----------------------------------------------------------------------

def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def shipped_manifest(folder: str | Path | None = None) -> dict[str, Any]:
    """The manifest of the shipped networks (``{}`` if the package ships none)."""
    path = Path(folder or SHIPPED_DIR) / SHIPPED_MANIFEST
    if not path.is_file():
        return {}
    manifest = read_json(path)
    if manifest.get("schema") != SHIPPED_SCHEMA:
        raise TrilemmaError(f"{path}: not a {SHIPPED_SCHEMA} manifest (schema {manifest.get('schema')!r}); "
                            "reinstall trilemma")
    return manifest


def shipped_entry(data_config, recipe: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The manifest entry of the network shipped for this exact request, or None.

    Shipped means: a builtin dataset whose canonical resolved config equals the
    manifest's (its native image size and channels, default split), ``recipe``
    (resolved against :data:`DEFAULT_RECIPE`) equal to the recipe it was trained
    with, and the current :data:`FEATURE_CODE_VERSION`.
    """
    data_config = canonical_data_config(data_config)
    entry = shipped_manifest().get("networks", {}).get(data_config.name)
    if entry is None or not data_config.is_builtin:
        return None
    if (entry["data_config"] != data_config.to_dict() or entry["recipe"] != resolve_recipe(recipe)
            or entry["code_version"] != FEATURE_CODE_VERSION):
        return None
    return entry


def load_shipped_network(name: str, *, folder: str | Path | None = None,
                         device: str | torch.device = "cpu") -> FeatureNetwork:
    """The shipped network of builtin dataset ``name``, its sha256 checked against the manifest.

    Reads safetensors only (nothing is unpickled); trains nothing and writes nothing.
    A missing or altered weights file raises :class:`~trilemma.errors.TrilemmaError`.
    """
    folder = Path(folder or SHIPPED_DIR)
    entry = shipped_manifest(folder).get("networks", {}).get(name)
    if entry is None:
        raise TrilemmaError(f"no shipped feature network for dataset {name!r} in {folder}")
    path = folder / entry["file"]
    if not path.is_file():
        raise TrilemmaError(f"shipped feature network of {name} is missing ({path}): reinstall trilemma")
    sha256 = file_sha256(path)
    if sha256 != entry["sha256"]:
        raise TrilemmaError(f"shipped feature network of {name} is corrupt: {path} has sha256 {sha256[:16]}..., "
                            f"the manifest says {entry['sha256'][:16]}...; reinstall trilemma or rebuild it "
                            "with scripts/build_feature_nets.py")
    net = build_net(entry["recipe"], entry["data_config"]["channels"], entry["num_classes"])
    net.load_state_dict(load_tensors(path))
    info = {key: entry[key] for key in SHIPPED_INFO_KEYS}
    info.update(name=f"trilemma-convnet-{entry['objective']}-{dataset_slug(name)}-{sha256[:16]}",
                hash=sha256[:16], dataset=name, source="shipped", sha256=sha256)
    return FeatureNetwork(net.eval(), {key: info[key] for key in INFO_KEYS}, torch.device(device))


# The keys of FeatureNetwork.info, in order; the shipped ones copy the rest from their manifest entry.
INFO_KEYS = ("name", "objective", "hash", "dataset", "data_config", "recipe", "code_version", "feature_dim",
             "num_classes", "class_names", "test_accuracy", "test_n", "train_seconds", "train_threads",
             "source", "sha256", "torch_version")
SHIPPED_INFO_KEYS = tuple(k for k in INFO_KEYS if k not in ("name", "hash", "dataset", "source", "sha256"))


def resolve_recipe(overrides: dict[str, Any] | None) -> dict[str, Any]:
    recipe = dict(DEFAULT_RECIPE)
    unknown = sorted(set(overrides or {}) - set(recipe))
    if unknown:
        raise ValueError(f"unknown feature-network recipe key(s): {', '.join(unknown)}")
    recipe.update(overrides or {})
    return recipe


def test_accuracy(fn: FeatureNetwork, data_config, objective: str,
                  progress: bool = False) -> tuple[float | None, int]:
    """Accuracy on the test split: of the class, or of the rotation for the fallback."""
    from trilemma.data import load_dataset
    from trilemma.errors import DataError

    try:
        test = load_dataset(data_config, split="test")
    except DataError:  # e.g. a folder with test_fraction = 0
        return None, 0
    if objective == "rotation":
        images, targets = rotations_of(test.images)
    else:
        labelled = test.labels >= 0
        images, targets = test.images[labelled], test.labels[labelled]
    if len(images) == 0:
        return None, 0
    probs = fn.probs(images, progress=progress, desc="testing feature network")
    return float((probs.argmax(1) == targets.numpy()).mean()), len(images)
