"""No host round-trip inside a training step that does not log, for every trainer (issue: one GPU, fast).

On a GPU, reading a tensor's value on the host (``.item()``, ``float(t)``, ``int(t)``, ``if t:``,
``.tolist()``, ``.cpu()``, ``.numpy()``, ``nonzero``) waits for every queued kernel, and making a
tensor from host data (``torch.tensor``, ``torch.from_numpy``) copies it over. scripts/gpu_check.sh
catches both with ``torch.cuda.set_sync_debug_mode("error")`` on a GPU; this test catches the same
Python calls on the CPU, where CI runs: a ``TorchFunctionMode`` records each such call made while
a step between two log steps runs, and the test names the line that made it.
"""

from __future__ import annotations

import collections
import dataclasses
import traceback

import pytest
import torch
from torch.overrides import TorchFunctionMode

from trilemma.registry import train_spec
from trilemma.train import family

READS = {torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__,
         torch.Tensor.__index__, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.cpu,
         torch.Tensor.nonzero, torch.nonzero}
FROM_HOST = {torch.tensor, torch.from_numpy}


class HostCalls(TorchFunctionMode):
    """Counts, by the trilemma source line that made them, calls that would wait for or copy from a GPU."""

    def __init__(self):
        super().__init__()
        self.calls: collections.Counter[str] = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        host_data = func is torch.as_tensor and not isinstance(args[0], torch.Tensor)
        if func in READS or func in FROM_HOST or host_data:
            ours = [f for f in traceback.extract_stack()[:-1] if "/trilemma/" in f.filename.replace("\\", "/")]
            where = f"{ours[-1].filename.rsplit('trilemma/', 1)[-1]}:{ours[-1].lineno}" if ours else "torch"
            self.calls[f"{func.__name__} at {where}"] += 1
        return func(*args, **(kwargs or {}))


def steps_without_host_calls(kind: str, out, steps: int = 8, **options) -> collections.Counter[str]:
    """Train ``steps`` tiny steps (log every 1000) and return the host calls of steps 3 … steps − 1."""
    spec, seen, mode = train_spec(kind), [], HostCalls()

    def build(out, config, dataset, progress):
        built = spec.build(out, config, dataset, progress)
        step = built.trainer.step

        def watched(draw, noise):
            seen.append(1)
            if 3 <= len(seen) < steps:                  # not the first steps (caches fill), not the last (it logs)
                with mode:
                    return step(draw, noise)
            return step(draw, noise)

        built.trainer.step = watched
        return built

    family.train(dataclasses.replace(spec, build=build), out, steps=steps, preset="tiny", batch_size=8,
                 log_every=1000, checkpoint_minutes=0, sample_minutes=0, progress=False, evaluate=False,
                 device="cpu", **options)
    assert len(seen) == steps
    return mode.calls


@pytest.fixture(scope="module")
def autoencoder(tmp_path_factory):
    from trilemma.autoencoder.train import train_autoencoder

    out = tmp_path_factory.mktemp("ae") / "ae"
    train_autoencoder(out, data="digits", preset="tiny", factor=2, steps=2, batch_size=16, progress=False,
                      device="cpu")
    return out


CASES = {
    "ddpm": ("ddpm", dict(data="digits")),
    "ddpm-class-cond": ("ddpm", dict(data="digits", class_cond=True)),
    "gan": ("gan", dict(data="digits")),
    "vae": ("vae", dict(data="digits")),
    "vae-bernoulli": ("vae", dict(data="digits", likelihood="bernoulli")),
    "autoencoder": ("autoencoder", dict(data="digits", factor=2, disc_weight=0.1, disc_start=2)),
    "ldm": ("ldm", dict(autoencoder=None)),
    "ddgan": ("ddgan", dict(data="digits", d_steps=2, lazy_reg=2)),
    "ddgan-latent": ("ddgan", dict(autoencoder=None, mbstd_group=2)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_no_host_round_trip_between_log_steps(case, autoencoder, tmp_path):
    kind, options = CASES[case]
    if "autoencoder" in options:
        options = {**options, "autoencoder": str(autoencoder)}
    calls = steps_without_host_calls(kind, tmp_path / case, **options)
    assert not calls, f"{case}: host round trips inside non-logging steps: {dict(calls)}"


def test_t2i_steps_have_no_host_round_trip(tmp_path):
    from helpers import small_shapes

    with small_shapes(24, 8, 1, cache=tmp_path / "cache"):
        calls = steps_without_host_calls("t2i", tmp_path / "t2i", data="shapes")
    assert not calls, f"t2i: host round trips inside non-logging steps: {dict(calls)}"


def test_the_watch_sees_what_it_must():
    """The mode itself: each kind of host round trip is caught, device-side work is not."""
    mode = HostCalls()
    with mode:
        x = torch.randn(4)
        y = (x * 2).sum()                                    # stays a tensor: fine
        float(y), int(x[0] > 0), bool(x.max() > 0), x.tolist()
        torch.tensor([1.0, 2.0]), torch.as_tensor(x), torch.as_tensor([1, 2])
    names = sorted(call.split(" at ")[0] for call in mode.calls.elements())
    assert names == ["__bool__", "__float__", "__int__", "as_tensor", "tensor", "tolist"], names
