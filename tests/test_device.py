"""Devices and precision: resuming on another device, --bf16 validation, time cadences, compiled weights."""

from __future__ import annotations

import json

import pytest
import torch

from trilemma.ddpm.train import train_ddpm
from trilemma.errors import TrilemmaError
from trilemma.train import common
from trilemma.train.distributed import unwrap
from trilemma.utils import device as device_mod
from trilemma.utils.io import load_tensors, read_json, save_tensors

TINY = dict(data="digits", preset="tiny", batch_size=8, device="cpu", log_every=1, progress=False)


def test_bf16_is_refused_where_the_device_lacks_it_also_on_resume(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(device_mod, "native_bf16", lambda device: False)
    with pytest.raises(TrilemmaError, match=r"^--bf16: this CPU has no native bf16.*\(cpu\)"):
        train_ddpm(tmp_path / "new", steps=1, bf16=True, **TINY)
    assert not (tmp_path / "new").exists()                               # refused before the run folder
    train_ddpm(tmp_path / "run", steps=1, **TINY)
    with pytest.raises(TrilemmaError, match="--bf16"):
        train_ddpm(tmp_path / "run", steps=2, resume=True, bf16=True, progress=False)
    assert read_json(tmp_path / "run" / "config.json")["train"]["bf16"] is False   # config.json untouched
    monkeypatch.setattr(device_mod, "native_bf16", lambda device: True)
    train_ddpm(tmp_path / "run", steps=2, resume=True, bf16=True, tf32=True, progress=False)   # honoured
    train = read_json(tmp_path / "run" / "config.json")["train"]
    assert train["bf16"] is True and train["tf32"] is True


def test_resuming_a_checkpoint_from_another_device_continues_and_says_so(tmp_path, cache, capsys):
    run = tmp_path / "run"
    train_ddpm(run, steps=2, **TINY)
    info = read_json(run / "state" / "trainer.json")
    assert info["device"] == "cpu" and info["world_size"] == 1
    rng = load_tensors(run / "state" / "rng.safetensors")
    rng["gen.noise"] = torch.zeros(16, dtype=torch.uint8)               # a CUDA (Philox) generator's state
    save_tensors(run / "state" / "rng.safetensors", rng, metadata={"step": "2"})
    (run / "state" / "trainer.json").write_text(json.dumps({**info, "device": "cuda:0"}))
    result = train_ddpm(run, steps=4, resume=True, progress=True)
    assert result.step == 4
    err = capsys.readouterr().err
    assert "resuming on cpu a checkpoint saved on cuda:0" in err


def test_cuda_is_refused_on_a_machine_without_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TrilemmaError, match="^--device cuda:1: CUDA is not available"):
        device_mod.pick_device("cuda:1")


@pytest.mark.parametrize("minutes, every, saves", [(1e-7, None, 3), (0.0, None, 1), (0.0, 2, 2), (60.0, None, 1)])
def test_checkpoints_by_minutes_and_by_steps(tmp_path, cache, monkeypatch, minutes, every, saves):
    calls = []
    original = common.Checkpoint.save
    monkeypatch.setattr(common.Checkpoint, "save", lambda self, step, **kw: (calls.append(step),
                                                                             original(self, step, **kw)))
    train_ddpm(tmp_path / "run", steps=3, checkpoint_minutes=minutes, checkpoint_every=every, sample_minutes=0,
               **TINY)
    assert len(calls) == saves and calls[-1] == 3 and calls == sorted(set(calls))


def test_previews_by_minutes(tmp_path, cache):
    train_ddpm(tmp_path / "run", steps=3, sample_minutes=1e-7, **TINY)
    shots = sorted(p.name for p in (tmp_path / "run" / "samples").glob("step_*.png"))
    assert shots == ["step_0000001.png", "step_0000002.png", "step_0000003.png"]


def test_compiled_networks_save_plain_keys(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    keys = set(net.state_dict())
    compiled = torch.compile(net)                                      # a wrapper: keys gain "_orig_mod."
    assert any(k.startswith("_orig_mod.") for k in compiled.state_dict())
    assert unwrap(compiled) is net
    net.compile()                                                      # --compile: in place, keys unchanged
    assert set(net.state_dict()) == keys
    ckpt = common.Checkpoint(tmp_path)
    ckpt.save(1, modules={"model": compiled}, optimizers={}, generators={"data": torch.Generator()},
              data_order={"perm": torch.arange(3), "pos": torch.tensor([0])})
    assert set(load_tensors(tmp_path / "model.safetensors")) == keys


def test_adamw_is_fused_on_the_cpu_and_makes_the_same_updates_as_the_default_loop():
    cfg = common.TrainConfig(steps=1, device="cpu", lr=1e-2, weight_decay=0.1)
    torch.manual_seed(0)
    start = [torch.randn(5, 3), torch.randn(7)]
    ours = [torch.nn.Parameter(p.clone()) for p in start]
    plain = [torch.nn.Parameter(p.clone()) for p in start]
    opt = common.adamw(ours, cfg, betas=(0.5, 0.9))
    assert opt.defaults["fused"] is True and opt.defaults["lr"] == 1e-2 and opt.defaults["weight_decay"] == 0.1
    ref = torch.optim.AdamW(plain, lr=1e-2, weight_decay=0.1, betas=(0.5, 0.9), foreach=False)
    for step in range(20):
        grads = [torch.randn(p.shape) for p in start]
        for o, params in ((opt, ours), (ref, plain)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            o.param_groups[0]["lr"] = 1e-2 * (1 + step) / 20           # the loop changes the lr every step
            o.step()
    for a, b in zip(ours, plain):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_deterministic_mode_is_set_and_unset():
    try:
        device_mod.set_precision(torch.device("cpu"), tf32=False, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        device_mod.set_precision(torch.device("cpu"), tf32=False, deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled()


def test_the_loop_keeps_resident_batches_equal_to_cpu_batches():
    from trilemma.data import load_dataset
    from trilemma.data.dataset import resident

    ds = load_dataset("digits", "train")
    idx = torch.tensor([3, 1, 4, 1, 5])
    a = ds.batch(idx, torch.Generator().manual_seed(0))
    with resident(torch.device("cpu"), 10**9):                         # the CPU path: no copy
        b = ds.batch(idx, torch.Generator().manual_seed(0))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
