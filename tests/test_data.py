"""Tests for trilemma.data: builtin sources, image folders, splits, caching and batching."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import trilemma.data.folder as folder_module
from trilemma.data import (
    BUILTIN_DATASETS,
    DataConfig,
    DataWarning,
    ImageDataset,
    list_datasets,
    load_dataset,
    to_float,
    to_uint8,
)
from trilemma.data.builtin import permutation_split
from trilemma.errors import DataError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file(),
                                   reason="apt-get install -y dataset-fashion-mnist")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test gets its own TRILEMMA_CACHE, so folder caches never leak between tests."""
    monkeypatch.setenv("TRILEMMA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TRILEMMA_FASHION_MNIST_DIR", raising=False)


def image_bytes(images: torch.Tensor) -> set[bytes]:
    return {x.numpy().tobytes() for x in images}


# --- pixel conversions ---------------------------------------------------------------------------

def test_to_float_to_uint8_round_trip_all_values():
    x = torch.arange(256, dtype=torch.uint8)
    f = to_float(x)
    assert f.dtype == torch.float32
    assert f[0].item() == -1.0 and f[255].item() == 1.0
    assert (f.double() - (x.double() / 127.5 - 1)).abs().max() < 1e-7
    assert torch.equal(to_uint8(f), x)


def test_to_uint8_clamps_and_rounds():
    x = torch.tensor([-3.0, -1.0, 0.0, 1.0, 7.0])
    assert to_uint8(x).tolist() == [0, 0, 128, 255, 255]  # 0 -> 127.5 rounds half to even = 128
    with pytest.raises(TypeError):
        to_float(torch.zeros(3))


# --- DataConfig ----------------------------------------------------------------------------------

def test_config_round_trip_and_resolution():
    config = DataConfig("mnist-5k", image_size=32, hflip=True, test_fraction=0.2, split_seed=3)
    assert DataConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert DataConfig("fashion-mnist").resolved() == DataConfig("fashion-mnist", 28, 1)
    assert DataConfig("digits", channels=3).resolved() == DataConfig("digits", 8, 3)
    folder = DataConfig("some/folder").resolved()
    assert (folder.image_size, folder.channels) == (32, 3)
    assert folder.name == os.path.abspath("some/folder")
    assert list_datasets() == list(BUILTIN_DATASETS)


@pytest.mark.parametrize("bad", [
    {"name": "digits", "colour": 3}, {"image_size": 8}, {"name": "digits", "channels": 2},
    {"name": "digits", "image_size": 0}, {"name": "digits", "test_fraction": 1.0},
    {"name": "digits", "hflip": "yes"}, {"name": ""},
])
def test_config_rejects_bad_options(bad):
    with pytest.raises(DataError):
        DataConfig.from_dict(bad)


def test_load_rejects_bad_split_and_unknown_name(tmp_path):
    with pytest.raises(DataError, match="split must be"):
        load_dataset("digits", split="valid")
    with pytest.raises(DataError, match="unknown dataset") as e:
        load_dataset(str(tmp_path / "nope"))
    assert "fashion-mnist, mnist-5k, digits" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="unknown data option"):
        load_dataset("digits", colour=3)


# --- fashion-mnist -------------------------------------------------------------------------------

@needs_fashion
def test_fashion_mnist_official_split():
    train = load_dataset("fashion-mnist")
    test = load_dataset("fashion-mnist", split="test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.image_shape == (1, 28, 28) and train.images.dtype == torch.uint8
    assert train.images.is_contiguous()
    assert train.class_names[0] == "T-shirt/top" and train.class_names[9] == "Ankle boot"
    assert train.num_classes == 10 and train.has_labels and train.captions is None
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert train.labels[0].item() == 9 and test.labels[0].item() == 9  # both start with an ankle boot
    x, y = train.batch(torch.arange(512))
    assert x.dtype == torch.float32 and x.shape == (512, 1, 28, 28)
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    assert torch.equal(y, train.labels[:512])
    assert torch.equal(to_uint8(x), train.images[:512])


def test_fashion_mnist_missing_dir_explains_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("TRILEMMA_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(DataError) as e:
        load_dataset("fashion-mnist")
    message = str(e.value)
    assert "apt-get install -y dataset-fashion-mnist" in message and str(tmp_path) in message
    assert "\n" not in message


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def fake_fashion_mnist(folder: Path, n_train: int = 6, n_test: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    write_idx(folder / "train-images-idx3-ubyte.gz", train)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(n_train) % 10)
    write_idx(folder / "t10k-images-idx3-ubyte", np.full((n_test, 28, 28), 77), compress=False)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.full(n_test, 3))
    return train, np.arange(n_train) % 10


def test_idx_parser_reads_handmade_files(tmp_path, monkeypatch):
    train_images, train_labels = fake_fashion_mnist(tmp_path)
    monkeypatch.setenv("TRILEMMA_FASHION_MNIST_DIR", str(tmp_path))
    train = load_dataset("fashion-mnist")
    assert np.array_equal(train.images[:, 0].numpy(), train_images)
    assert train.labels.tolist() == train_labels.tolist()
    test = load_dataset("fashion-mnist", split="test")  # uncompressed images file
    assert len(test) == 4 and (test.images == 77).all() and (test.labels == 3).all()

    big = load_dataset("fashion-mnist", split="test", image_size=32, channels=3)
    assert big.image_shape == (3, 32, 32)
    assert (big.images == 77).all()  # a flat image stays flat through the resize


def test_idx_parser_rejects_bad_magic(tmp_path, monkeypatch):
    fake_fashion_mnist(tmp_path)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x0d\x03" + b"\x00" * 64))  # type 0x0d (float), not ubyte
    monkeypatch.setenv("TRILEMMA_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(DataError, match="magic") as e:
        load_dataset("fashion-mnist")
    assert str(bad) in str(e.value)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8bnot really gzip")
    write_idx(bad, np.zeros((6, 28, 28)))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz"):
        load_dataset("fashion-mnist")


# --- mnist-5k and digits -------------------------------------------------------------------------

def test_permutation_split_is_a_partition():
    train, test = permutation_split(1797, 0.1, seed=0)
    assert len(test) == round(0.1 * 1797)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(1797))
    again, _ = permutation_split(1797, 0.1, seed=0)
    other, _ = permutation_split(1797, 0.1, seed=1)
    assert np.array_equal(train, again) and not np.array_equal(train, other)


@pytest.mark.parametrize("name,total,shape", [("mnist-5k", 5000, (1, 28, 28)), ("digits", 1797, (1, 8, 8))])
def test_small_builtins_split_deterministically(name, total, shape):
    train = load_dataset(name, test_fraction=0.2)
    test = load_dataset(name, split="test", test_fraction=0.2)
    assert len(test) == round(0.2 * total) and len(train) + len(test) == total
    assert train.image_shape == shape and train.class_names[7] == "seven"
    assert train.images.max() == 255 and train.images.min() == 0
    # disjoint: no image of the test set appears in the training set
    assert not image_bytes(train.images) & image_bytes(test.images)
    # every class is present in total as in the source
    counts = torch.bincount(torch.cat([train.labels, test.labels]), minlength=10)
    assert counts.sum() == total and (counts > 150).all()

    same = load_dataset(name, split="test", test_fraction=0.2)
    assert torch.equal(same.images, test.images) and torch.equal(same.labels, test.labels)
    other = load_dataset(name, split="test", test_fraction=0.2, split_seed=1)
    assert not torch.equal(other.images, test.images)


def test_mnist_5k_has_500_of_each_digit():
    train, test = load_dataset("mnist-5k"), load_dataset("mnist-5k", split="test")
    assert torch.bincount(torch.cat([train.labels, test.labels])).tolist() == [500] * 10


def test_digits_scaled_from_sklearn():
    from sklearn.datasets import load_digits

    digits = load_digits()
    train = load_dataset("digits", test_fraction=0.0)  # everything, in source order
    assert len(train) == 1797
    expected = np.rint(digits.images * 255 / 16).astype(np.uint8)
    assert np.array_equal(train.images[:, 0].numpy(), expected)
    assert train.labels.tolist() == digits.target.tolist()
    rgb = load_dataset("digits", test_fraction=0.0, channels=3, image_size=16)
    assert rgb.image_shape == (3, 16, 16)
    assert torch.equal(rgb.images[:, 0], rgb.images[:, 1]) and torch.equal(rgb.images[:, 0], rgb.images[:, 2])


# --- image folders -------------------------------------------------------------------------------

def save(path: Path, image: Image.Image) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def solid(size: tuple[int, int], colour, mode: str = "RGB") -> Image.Image:
    return Image.new(mode, size, colour)


def make_class_tree(root: Path) -> None:
    """cats: 3 good + 1 corrupt; dogs: 2 (one nested); a text file; a hidden file."""
    save(root / "cats" / "a.png", solid((40, 30), (250, 0, 0)))
    save(root / "cats" / "b.JPG", solid((64, 100), (240, 10, 10)))
    save(root / "cats" / "c.webp", solid((20, 20), (255, 0, 0, 128), "RGBA"))
    (root / "cats" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    save(root / "dogs" / "d.jpeg", solid((33, 47), (0, 0, 250)))
    save(root / "dogs" / "deep" / "e.png", solid((16, 16), 30, "L"))
    (root / "dogs" / "notes.txt").write_text("not an image")
    save(root / ".hidden" / "f.png", solid((8, 8), (0, 255, 0)))


def test_folder_classes_corrupt_file_and_channels(tmp_path):
    root = tmp_path / "pets"
    make_class_tree(root)
    with pytest.warns(DataWarning) as record:
        data = load_dataset(str(root), test_fraction=0.0, image_size=16)
    assert len(record) == 1
    assert "skipped 1 unreadable image(s)" in str(record[0].message) and "bad.png" in str(record[0].message)
    assert data.name == "pets" and len(data) == 5
    assert data.class_names == ("cats", "dogs")
    assert data.labels.tolist() == [0, 0, 0, 1, 1]  # a.png, b.JPG, c.webp, d.jpeg, deep/e.png
    assert data.image_shape == (3, 16, 16)
    red, half_red, blue = data.images[:2].float(), data.images[2].float(), data.images[3].float()
    assert (red[:, 0] > 200).all() and (red[:, 1:] < 40).all()
    assert (blue[2] > 200).all() and (blue[:2] < 40).all()
    assert (half_red[0] > 245).all() and ((half_red[1:] - 127).abs() < 12).all()  # 50% red over white
    assert (data.images[4] == 30).all()  # grey stays grey, repeated into RGB

    with pytest.warns(DataWarning):
        grey = load_dataset(str(root), test_fraction=0.0, image_size=16, channels=1)
    assert grey.image_shape == (1, 16, 16)
    assert abs(grey.images[0].float().mean().item() - 0.299 * 250) < 2  # ITU-R 601 luminance of red


def test_folder_alpha_is_composited_on_white(tmp_path):
    save(tmp_path / "t.png", solid((8, 8), (0, 0, 0, 0), "RGBA"))  # fully transparent black
    data = load_dataset(str(tmp_path), test_fraction=0.0, image_size=8)
    assert (data.images == 255).all()


def test_folder_applies_exif_rotation(tmp_path):
    halves = np.zeros((16, 16, 3), dtype=np.uint8)
    halves[:, :8] = (255, 0, 0)  # red left, blue right
    halves[:, 8:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 3  # orientation: stored upside down, display rotated by 180 degrees
    Image.fromarray(halves).save(tmp_path / "photo.jpg", exif=exif, quality=95)
    image = load_dataset(str(tmp_path), test_fraction=0.0, image_size=16).images[0].float()
    assert image[2, :, :6].mean() > 200 and image[0, :, 10:].mean() > 200  # shown as blue left, red right


def test_folder_root_images_are_unlabeled_and_flat_folder_has_no_classes(tmp_path):
    save(tmp_path / "mixed" / "x" / "1.png", solid((8, 8), (1, 2, 3)))
    save(tmp_path / "mixed" / "0.png", solid((8, 8), (1, 2, 3)))
    mixed = load_dataset(str(tmp_path / "mixed"), test_fraction=0.0)
    assert mixed.class_names == ("x",) and mixed.labels.tolist() == [-1, 0]

    save(tmp_path / "flat" / "1.png", solid((8, 8), (1, 2, 3)))
    flat = load_dataset(str(tmp_path / "flat"), test_fraction=0.0)
    assert flat.class_names == () and not flat.has_labels and flat.labels.tolist() == [-1]
    assert flat.image_shape == (3, 32, 32)  # folders default to 32 px RGB


def test_centre_crop_keeps_the_middle(tmp_path):
    wide = np.zeros((20, 60, 3), dtype=np.uint8)  # (H, W, 3): blue edges, red 20x20 middle
    wide[:, :, 2] = 255
    wide[:, 20:40] = (255, 0, 0)
    tall = wide.transpose(1, 0, 2).copy()  # red middle rows
    save(tmp_path / "wide.png", Image.fromarray(wide))
    save(tmp_path / "tall.png", Image.fromarray(tall))
    data = load_dataset(str(tmp_path), test_fraction=0.0, image_size=10)
    for image in data.images:  # (3, 10, 10)
        assert (image[0, 1:-1, 1:-1] >= 250).all() and (image[2, 1:-1, 1:-1] <= 5).all()
        assert (image[0] > 200).all() and (image[2] < 55).all()  # the border blends in only a little blue

    exact = np.random.default_rng(0).integers(0, 256, (12, 12, 3), dtype=np.uint8)
    save(tmp_path / "exact" / "e.png", Image.fromarray(exact))
    same = load_dataset(str(tmp_path / "exact"), test_fraction=0.0, image_size=12)
    assert np.array_equal(same.images[0].permute(1, 2, 0).numpy(), exact)  # no resampling at native size


def test_folder_split_is_per_file_and_stable(tmp_path):
    def add_files(ids: range) -> None:
        for i in ids:  # the pixel value i * 4 identifies the file
            save(tmp_path / f"{i:02d}.png", solid((4, 4), i * 4, "L"))

    def file_ids(data: ImageDataset) -> set[int]:
        return {int(v) // 4 for v in data.images[:, 0, 0, 0]}

    def split(**kwargs) -> tuple[set[int], set[int]]:
        options = dict(test_fraction=0.3, image_size=4, channels=1, **kwargs)
        return (file_ids(load_dataset(str(tmp_path), **options)),
                file_ids(load_dataset(str(tmp_path), "test", **options)))

    add_files(range(40))
    train, test = split()
    assert train | test == set(range(40)) and not train & test
    assert 4 <= len(test) <= 20

    add_files(range(40, 60))
    train_after, test_after = split()
    assert train_after | test_after == set(range(60)) and not train_after & test_after
    assert train <= train_after and test <= test_after  # no old file changed sides
    assert split(split_seed=1)[1] != test_after


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no images found in") as e:
        load_dataset(str(tmp_path))
    assert ".png, .jpg, .jpeg, .webp" in str(e.value)
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="no images found"):
        load_dataset(str(tmp_path))
    save(tmp_path / "sub" / "one.png", solid((4, 4), (1, 2, 3)))
    with pytest.raises(DataError, match="test split of .* is empty"):
        load_dataset(str(tmp_path), "test", test_fraction=0.0)
    (tmp_path / "sub" / "one.png").unlink()
    (tmp_path / "broken.png").write_bytes(b"nope")
    with pytest.warns(DataWarning), pytest.raises(DataError, match="no readable images"):
        load_dataset(str(tmp_path))


def test_folder_decodes_once_then_uses_disk_cache(tmp_path, monkeypatch):
    root = tmp_path / "pets"
    make_class_tree(root)
    with pytest.warns(DataWarning):
        first = load_dataset(str(root), test_fraction=0.0, image_size=16)
    cached = list((tmp_path / "cache" / "datasets").glob("*.npz"))
    assert len(cached) == 1

    def fail(*args, **kwargs):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(folder_module, "decode_images", fail)
    with pytest.warns(DataWarning, match="skipped 1"):  # the warning survives the cache
        second = load_dataset(str(root), test_fraction=0.0, image_size=16)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)

    # another size, or a changed file, is a different cache entry
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset(str(root), test_fraction=0.0, image_size=8)
    stat = os.stat(root / "cats" / "a.png")
    os.utime(root / "cats" / "a.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoded again"):
        load_dataset(str(root), test_fraction=0.0, image_size=16)


def test_folder_captions_from_metadata_jsonl(tmp_path):
    save(tmp_path / "a.png", solid((8, 8), (255, 0, 0)))
    save(tmp_path / "sub" / "b.png", solid((8, 8), (0, 255, 0)))
    save(tmp_path / "c.png", solid((8, 8), (0, 0, 255)))
    lines = [{"file_name": "sub/b.png", "text": "a green square"},
             {"file_name": "a.png", "text": "a red square"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    data = load_dataset(str(tmp_path), test_fraction=0.0, image_size=8)
    assert data.captions == ["a red square", "", "a green square"]  # a.png, c.png, sub/b.png
    part = data.subset(torch.tensor([2, 0]))
    assert part.captions == ["a green square", "a red square"] and part.labels.tolist() == [0, -1]

    (tmp_path / "metadata.jsonl").write_text(json.dumps(lines[0]) + "\n{\"file_name\": \"a.png\", text}\n")
    with pytest.raises(DataError) as e:
        load_dataset(str(tmp_path), test_fraction=0.0, image_size=8)
    assert "metadata.jsonl line 2" in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.png"}\n')
    with pytest.raises(DataError, match="line 1: expected an object"):
        load_dataset(str(tmp_path), test_fraction=0.0, image_size=8)


# --- batching ------------------------------------------------------------------------------------

def random_dataset(hflip: bool, n: int = 1000) -> ImageDataset:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 5, 5), generator=generator, dtype=torch.uint8)
    config = DataConfig("random", image_size=5, channels=3, hflip=hflip)
    return ImageDataset(images, torch.arange(n) % 10, [str(i) for i in range(10)], config, "train", "random")


def test_batch_hflip_flips_about_half_deterministically():
    data = random_dataset(hflip=True)
    indices = torch.arange(len(data))
    x, y = data.batch(indices, torch.Generator().manual_seed(0))
    original, mirrored = to_float(data.images), to_float(data.images).flip(-1)
    is_original = (x == original).flatten(1).all(1)
    is_mirrored = (x == mirrored).flatten(1).all(1)
    assert (is_original ^ is_mirrored).all()  # every image is one or the other, whole
    assert 430 <= is_mirrored.sum().item() <= 570
    assert torch.equal(y, data.labels)
    again, _ = data.batch(indices, torch.Generator().manual_seed(0))
    other, _ = data.batch(indices, torch.Generator().manual_seed(1))
    assert torch.equal(again, x) and not torch.equal(other, x)
    assert torch.equal(data.images, random_dataset(hflip=True).images)  # batch never mutates the data

    mask = torch.arange(len(data)) % 3 == 0
    assert torch.equal(data.subset(mask).images, data.images[::3])
    assert torch.equal(data.subset(torch.tensor([5, 1])).labels, torch.tensor([5, 1]))

    plain = random_dataset(hflip=False)
    assert torch.equal(plain.batch(indices[:7], torch.Generator())[0], original[:7])
