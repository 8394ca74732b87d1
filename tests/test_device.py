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


def test_binarise_draws_from_the_generators_device_and_moves_the_draw(monkeypatch):
    """The VAE's Bernoulli binarisation with images resident on another device than the CPU data generator
    (here the meta device stands in for a GPU, where torch refuses a CPU generator): the uniforms are drawn
    on the generator's device and then moved, so a GPU run binarises exactly as a CPU run."""
    from trilemma.vae.losses import binarise

    x = torch.rand(2, 1, 4, 4) * 2 - 1
    real_rand, draws = torch.rand, []

    def rand(*args, generator=None, device=None, **kw):
        draws.append(torch.device(device or "cpu"))
        assert generator is None or draws[-1] == generator.device, "drawn off the generator's device"
        return real_rand(*args, generator=generator, device=device, **kw)

    monkeypatch.setattr(torch, "rand", rand)
    on_cpu = binarise(x, torch.Generator().manual_seed(3))
    assert set(on_cpu.unique().tolist()) <= {-1.0, 1.0}
    elsewhere = binarise(x.to("meta"), torch.Generator().manual_seed(3))
    assert elsewhere.device.type == "meta" and elsewhere.shape == x.shape
    assert draws[-1] == torch.device("cpu")


def test_cuda_rng_states_restore_in_device_order_and_only_for_visible_gpus(monkeypatch):
    """Saved on 12 GPUs: keys sort by number (not as text: cuda10 after cuda9), and with fewer GPUs visible
    now only theirs are restored (no IndexError)."""
    states = {f"torch_cuda{i}": torch.full((4,), i, dtype=torch.uint8) for i in range(12)}
    tensors = {"torch_cpu": torch.get_rng_state(), **states}
    for visible in (12, 2):
        calls = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda visible=visible: visible)
        monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, i: calls.append((i, int(state[0]))))
        common.rng_from_tensors(tensors, {})
        assert calls == [(i, i) for i in range(visible)]


def test_native_bf16_on_cuda_needs_compute_capability_8_for_that_device(monkeypatch):
    asked = []

    def capability(device=None):
        asked.append(device)
        return {None: (8, 0), 1: (7, 5)}[device if device is None else device.index]

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)   # says yes for emulation too
    assert device_mod.native_bf16(torch.device("cuda")) is True                # the current GPU: an A100
    assert device_mod.native_bf16(torch.device("cuda:1")) is False             # a T4 as cuda:1
    assert asked == [None, torch.device("cuda:1")]


def test_deterministic_mode_on_cuda_uses_the_math_attention_kernel(monkeypatch):
    flags = {}
    for name in ("enable_flash_sdp", "enable_mem_efficient_sdp", "enable_cudnn_sdp"):
        monkeypatch.setattr(torch.backends.cuda, name, lambda on, name=name: flags.__setitem__(name, on))
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        device_mod.set_precision(torch.device("cuda"), tf32=False, deterministic=True)
        assert flags == dict.fromkeys(flags, False) and len(flags) == 3
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        import os
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        device_mod.set_precision(torch.device("cuda"), tf32=False, deterministic=False)
        assert flags == dict.fromkeys(flags, True)
    finally:
        device_mod.set_precision(torch.device("cpu"), tf32=False, deterministic=False)
        torch.backends.cudnn.deterministic = False


def test_the_cublas_workspace_is_set_before_the_trainer_is_built(tmp_path, cache, monkeypatch):
    """--deterministic: CUBLAS_WORKSPACE_CONFIG is read once, at cuBLAS's first call, and building a
    trainer may already call it (encoding a latent cache on the GPU), so it is set before build."""
    import dataclasses
    import os

    from trilemma.ddpm.train import SPEC
    from trilemma.train import family

    seen = []

    def build(out, config, dataset, progress):
        seen.append(os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
        return SPEC.build(out, config, dataset, progress)

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        family.train(dataclasses.replace(SPEC, build=build), tmp_path / "run", steps=1, deterministic=True,
                     **{k: v for k, v in TINY.items() if k != "progress"}, progress=False)
    finally:
        device_mod.set_precision(torch.device("cpu"), tf32=False, deterministic=False)
    assert seen == [":4096:8"]


def test_the_latent_t2i_recipe_passes_the_precision_options_to_its_autoencoder():
    from trilemma.t2i.recipe import autoencoder_options

    ae = autoencoder_options({"data": "shapes", "preset": "tiny", "seed": 3, "device": "cpu", "bf16": False,
                              "tf32": True, "deterministic": True, "compile": True, "lr": 2e-3})
    assert {k: ae[k] for k in ("tf32", "deterministic", "compile", "seed")} == \
        {"tf32": True, "deterministic": True, "compile": True, "seed": 3}
    assert "lr" not in ae
