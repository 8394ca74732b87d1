"""Data-parallel training (torchrun's model, here two gloo processes on the CPU): same result, same stop.

Two spawned processes join one gloo group and run, in order, the DDPM, GAN and autoencoder trainers,
an interrupted-and-resumed DDPM, a ``--minutes`` budget with rank 1's clock far ahead and a NaN on
rank 1. The parent then checks: both ranks hold identical weights; they equal (allclose) a
one-process run with the same global batch; resumed == uninterrupted bit for bit; metrics.jsonl has
one line per step; both ranks stopped at the same step; the NaN stopped both ranks.
"""

from __future__ import annotations

import dataclasses
import json
import os
import traceback
from pathlib import Path

import pytest
import torch
from helpers import free_port, run_processes

from trilemma.train import distributed
from trilemma.utils.io import load_tensors, save_tensors

WORLD = 2
DDPM = dict(data="digits", preset="tiny", batch_size=16, lr=1e-3, device="cpu", log_every=1, warmup_steps=2,
            dropout=0.0, progress=False)
GAN = dict(data="digits", preset="tiny", batch_size=16, device="cpu", log_every=1, progress=False)
AE = dict(data="digits", preset="tiny", batch_size=16, lr=2e-3, factor=2, device="cpu", log_every=1, progress=False,
          evaluate=False)


def _specs():
    from trilemma.autoencoder.train import SPEC as AE_SPEC
    from trilemma.ddpm.train import SPEC as DDPM_SPEC
    from trilemma.gan.train import SPEC as GAN_SPEC
    return {"ddpm": DDPM_SPEC, "gan": GAN_SPEC, "autoencoder": AE_SPEC}


def _run(kind: str, out: Path, steps: int, weights: Path | None = None, nan_on_rank: int | None = None,
         **options):
    """Train ``kind`` (in this process's group, if any); save this rank's networks to ``weights``."""
    from trilemma.train.family import train

    spec, held = _specs()[kind], {}
    rank = distributed.world().rank

    def build(out_, config, dataset, progress):
        built = spec.build(out_, config, dataset, progress)
        held["nets"] = built.trainer.nets
        if nan_on_rank == rank:
            step = built.trainer.step

            def poisoned(draw, noise):
                terms = step(draw, noise)
                return {**terms, "loss": terms["loss"] * float("nan")}
            built.trainer.step = poisoned
        return built

    result = train(dataclasses.replace(spec, build=build), out, steps=steps, **options)
    if weights is not None:
        save_tensors(weights, {f"{name}.{k}": v for name, net in held["nets"].items()
                               for k, v in net.state_dict().items()})
    return result


def _worker(rank: int, tmp: str, port: int) -> None:
    tmp = Path(tmp)
    report = {}
    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                          LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
        torch.set_num_threads(1)
        import datetime

        torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD,
                                             timeout=datetime.timedelta(seconds=60))
        _run("ddpm", tmp / "ddpm2", 6, tmp / f"ddpm.{rank}.safetensors", **DDPM)
        _run("gan", tmp / "gan2", 4, tmp / f"gan.{rank}.safetensors", **GAN)
        _run("autoencoder", tmp / "ae2", 4, tmp / f"ae.{rank}.safetensors", disc_weight=0.1, disc_start=2, **AE)
        _run("ddpm", tmp / "split", 3, **DDPM)                                           # interrupted …
        _run("ddpm", tmp / "split", 6, resume=True, progress=False)                      # … and resumed
        if rank == 1:
            os.environ["TRILEMMA_CLOCK_OFFSET_S"] = "1e6"                                # rank 1's clock runs ahead
        report["clock_step"] = _run("ddpm", tmp / "clock", None, minutes=5.0, **{**DDPM, "log_every": 2}).step
        os.environ.pop("TRILEMMA_CLOCK_OFFSET_S", None)
        try:
            _run("ddpm", tmp / "nan", 8, nan_on_rank=1, **{**DDPM, "log_every": 2})
            report["nan"] = "no error"
        except Exception as e:
            report["nan"] = str(e)
    except Exception:
        report["error"] = traceback.format_exc()
    (tmp / f"report.{rank}.json").write_text(json.dumps(report))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, cache):
    tmp = tmp_path_factory.mktemp("dist")
    run_processes(_worker, (str(tmp), free_port()), WORLD, seconds=120)
    reports = [json.loads((tmp / f"report.{r}.json").read_text()) for r in range(WORLD)]
    for r, rep in enumerate(reports):
        assert "error" not in rep, f"rank {r}:\n{rep['error']}"
    return tmp, reports


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_tensors(path)


@pytest.mark.parametrize("kind, stem", [("ddpm", "ddpm"), ("gan", "gan"), ("autoencoder", "ae")])
def test_ranks_agree_and_equal_one_process_with_the_same_global_batch(two_ranks, tmp_path, kind, stem):
    tmp, _ = two_ranks
    rank0, rank1 = _weights(tmp / f"{stem}.0.safetensors"), _weights(tmp / f"{stem}.1.safetensors")
    assert rank0.keys() == rank1.keys()
    for key in rank0:                                                   # identical, bit for bit, on both ranks
        assert torch.equal(rank0[key], rank1[key]), key
    options = {"ddpm": DDPM, "gan": GAN, "autoencoder": {**AE, "disc_weight": 0.1, "disc_start": 2}}[kind]
    steps = {"ddpm": 6, "gan": 4, "autoencoder": 4}[kind]
    _run(kind, tmp_path / "one", steps, tmp_path / "one.safetensors", **options)
    one = _weights(tmp_path / "one.safetensors")
    assert one.keys() == rank0.keys()
    for key in one:                                                     # N-invariant up to summation order
        if one[key].is_floating_point():
            torch.testing.assert_close(rank0[key], one[key], rtol=1e-4, atol=1e-5, msg=key)
    saved = load_tensors(tmp / {"ddpm": "ddpm2", "gan": "gan2", "autoencoder": "ae2"}[kind] / "model.safetensors")
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in saved)   # loadable by a plain model
    for key, value in saved.items():
        assert torch.equal(value, rank0[f"model.{key}"])


def test_resumed_equals_uninterrupted_and_metrics_have_each_step_once(two_ranks):
    tmp, _ = two_ranks
    for stem in ("model", "ema"):
        a, b = load_tensors(tmp / "ddpm2" / f"{stem}.safetensors"), load_tensors(tmp / "split" / f"{stem}.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (stem, key)
    for run in ("ddpm2", "split", "gan2", "ae2"):
        steps = [json.loads(line)["step"] for line in (tmp / run / "metrics.jsonl").read_text().splitlines()]
        assert steps == sorted(set(steps)) and steps[-1] == (4 if run in ("gan2", "ae2") else 6), (run, steps)
    rows = lambda run: [{k: v for k, v in json.loads(line).items() if k not in ("images_per_s", "elapsed_s")}
                        for line in (tmp / run / "metrics.jsonl").read_text().splitlines()]
    assert rows("split") == rows("ddpm2")


def test_a_clock_ahead_on_one_rank_stops_both_at_the_same_step(two_ranks):
    _, reports = two_ranks
    assert reports[0]["clock_step"] == reports[1]["clock_step"] == 2      # the first step they compare clocks


def test_a_nan_on_one_rank_stops_every_rank(two_ranks):
    tmp, reports = two_ranks
    for rep in reports:
        assert "non-finite by step 2" in rep["nan"], rep["nan"]
    assert not (tmp / "nan" / "state" / "trainer.json").exists()          # nothing saved after the NaN


def test_a_batch_that_does_not_split_is_refused():
    from trilemma.errors import TrilemmaError

    with pytest.raises(TrilemmaError, match="--batch-size 10: not divisible by the 4 processes"):
        distributed.local_slice(10, distributed.World(rank=1, size=4))
    assert distributed.local_slice(12, distributed.World(rank=1, size=4)) == slice(3, 6)


def test_global_noise_gives_each_rank_its_slice_of_the_one_process_draw():
    g = torch.Generator().manual_seed(5)
    full = (torch.randn((8, 3), generator=g), torch.randint(0, 9, (8,), generator=g), torch.rand(8, generator=g),
            torch.empty(8, 2).normal_(generator=g))
    for rank in range(2):
        g = torch.Generator().manual_seed(5)
        with distributed.GlobalNoise(g, distributed.World(rank=rank, size=2)):
            part = (torch.randn(4, 3, generator=g), torch.randint(0, 9, (4,), generator=g),
                    torch.rand((4,), generator=g), torch.empty(4, 2).normal_(generator=g))
            other = torch.randn(4, 3)                                   # another generator: untouched
        assert other.shape == (4, 3)
        for a, b in zip(part, full):
            assert torch.equal(a, b[rank * 4:(rank + 1) * 4])


def test_wrapper_prefixes_are_stripped():
    sd = {"_orig_mod.conv.weight": 1, "module.fc.bias": 2, "norm.running_mean": 3}
    assert distributed.plain_keys(sd) == {"conv.weight": 1, "fc.bias": 2, "norm.running_mean": 3}
    net = torch.nn.Linear(2, 2)
    assert distributed.unwrap(torch.compile(net)) is net


def test_two_nodes_through_torchrun_rendezvous_train_what_one_process_trains(tmp_path):
    """The multi-node launch of docs/scaling.md, as two "machines" on this one: two torchrun agents
    (``--nnodes 2 --nproc_per_node 1``, c10d rendezvous on 127.0.0.1), each with its own
    TRILEMMA_CACHE, one shared run folder. The run equals a one-process run with the same global
    batch (allclose), has one metrics line per step, and resumes in a single process."""
    import subprocess
    import sys

    train = ["-m", "trilemma", "train", "ddpm", "--data", "digits", "--preset", "tiny", "--batch-size", "16",
             "--device", "cpu", "--log-every", "1", "--quiet"]
    base = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_PORT")}
    base.update(OMP_NUM_THREADS="1")

    def start(argv, cache):
        return subprocess.Popen([sys.executable, *argv], env={**base, "TRILEMMA_CACHE": str(tmp_path / cache)},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def finish(procs):                                                  # wait for all; fail with their logs
        try:
            logs = [p.communicate(timeout=300)[0] for p in procs]
        finally:
            for p in procs:
                p.kill()
        assert [p.returncode for p in procs] == [0] * len(procs), "\n---\n".join(log[-3000:] for log in logs)

    port = free_port()
    launch = ["-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
              "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "two-nodes", "--max_restarts", "0"]
    finish([start([*launch, *train, "--steps", "4", "--out", str(tmp_path / "nodes")], f"cache{node}")
            for node in range(2)] + [start([*train, "--steps", "4", "--out", str(tmp_path / "one")], "cache0")])

    a, b = load_tensors(tmp_path / "one" / "model.safetensors"), load_tensors(tmp_path / "nodes" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
    rows = [json.loads(line) for line in (tmp_path / "nodes" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]                    # written once, by global rank 0
    one = [json.loads(line)["loss"] for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == pytest.approx(one, rel=1e-5)

    finish([start([*train, "--out", str(tmp_path / run), "--resume", "--steps", "6"], "cache0")
            for run in ("nodes", "one")])                               # the two-node run continued on one machine
    a, b = load_tensors(tmp_path / "one" / "model.safetensors"), load_tensors(tmp_path / "nodes" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5, msg=key)
