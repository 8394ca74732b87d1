"""Training (Algorithm 1): the loss goes down, resume is exact, Ctrl-C saves, checkpoints are atomic."""

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trilemma.data import load_dataset
from trilemma.ddpm.train import train_ddpm
from trilemma.diffusion import diffusion_loss, make_schedule
from trilemma.errors import RunError, TrilemmaError
from trilemma.nets import UNet, preset
from trilemma.registry import load_run
from trilemma.run import SampleOptions
from trilemma.train.common import TrainConfig, lr_at
from trilemma.train.loop import fit, one_network_trainer
from trilemma.utils.io import atomic_write, save_tensors


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def test_few_hundred_steps_on_a_handful_of_images_drive_the_loss_down(tmp_path):
    torch.manual_seed(0)
    images = load_dataset("digits", "train").batch(torch.arange(8))[0]          # 8 images, 1×8×8
    model = UNet(preset("tiny", 8, 1))
    schedule = make_schedule("linear", T=200)
    train = TrainConfig(steps=300, batch_size=8, lr=3e-3, warmup_steps=20, log_every=1, checkpoint_every=1000,
                        device="cpu")
    trainer = one_network_trainer(model, lambda idx, g: (images[idx], {}),
                                  lambda net, x, cond, g: diffusion_loss(net, x, schedule, generator=g),
                                  train, torch.device("cpu"))
    fit(tmp_path, trainer, train=train, num_examples=8, device=torch.device("cpu"), progress=False)
    values = losses(tmp_path)
    first, last = sum(values[:20]) / 20, sum(values[-50:]) / 50
    assert first > 0.5                         # an untrained net predicts ε ≈ 0: loss ≈ E‖ε‖²/d = 1
    assert last < 0.4 * first, (first, last)


def tiny_run(out, steps, **kw):
    return train_ddpm(out, data="digits", preset="tiny", steps=steps, batch_size=16, lr=1e-3, progress=False,
                      **dict(log_every=1, checkpoint_every=4, warmup_steps=5, device="cpu",
                                           **kw.pop("train", {})),
                      **dict(dropout=0.1), **kw)


def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path):
    straight = tmp_path / "straight"
    tiny_run(straight, 10)
    split = tmp_path / "split"
    tiny_run(split, 6)                          # stops (and checkpoints) at step 6 …
    train_ddpm(split, steps=10, resume=True, progress=False)   # … and continues to 10
    assert losses(split) == losses(straight)    # bit-for-bit, dropout and data order included
    for name in ("model.safetensors", "ema.safetensors"):
        sa, sb = load_file(straight / name), load_file(split / name)
        assert all(torch.equal(sa[k], sb[k]) for k in sa)


def fit_digits(out, steps, resume=False, preview=None, **train_options):
    """``train.loop.fit`` on 32 digits with a tiny U-Net (same initial weights every time)."""
    images = load_dataset("digits", "train").batch(torch.arange(32))[0]
    schedule = make_schedule("linear", T=100)
    torch.manual_seed(123)
    train = TrainConfig(steps=steps, batch_size=8, lr=1e-3, log_every=1, sample_every=1, checkpoint_every=100,
                        device="cpu", **train_options)
    trainer = one_network_trainer(UNet(preset("tiny", 8, 1)), lambda idx, g: (images[idx], {}),
                                  lambda net, x, cond, g: diffusion_loss(net, x, schedule, generator=g),
                                  train, torch.device("cpu"), preview=preview)
    return fit(out, trainer, train=train, num_examples=32, device=torch.device("cpu"), resume=resume,
               progress=False)


def press_ctrl_c_at_step_3(ema_model, step):
    if step == 3:
        os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_save_a_checkpoint_and_resume_continues(tmp_path, sig):
    def press_at_step_3(ema_model, step):
        if step == 3:
            os.kill(os.getpid(), sig)

    result = fit_digits(tmp_path / "a", 8, preview=press_at_step_3)
    assert result.interrupted and result.step == 3          # the step finished, then it stopped
    assert result.signal == signal.Signals(sig).name
    assert json.loads((tmp_path / "a" / "state" / "trainer.json").read_text())["step"] == 3
    result = fit_digits(tmp_path / "a", 8, resume=True)
    assert result.step == 8 and not result.interrupted
    fit_digits(tmp_path / "b", 8)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "w.safetensors"
    save_tensors(path, {"a": torch.ones(3)})
    before = path.read_bytes()

    class Boom(dict):
        def items(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_tensors(path, Boom())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]     # no temp file left behind
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new"


def test_a_torn_checkpoint_is_detected(tmp_path):
    run = tmp_path / "run"
    tiny_run(run, 4)
    save_tensors(run / "model.safetensors", load_run(run).model.state_dict(), metadata={"step": "99"})
    with pytest.raises(RunError, match="interrupted"):
        train_ddpm(run, steps=8, resume=True, progress=False)


def test_run_folder_is_self_contained_and_samples_reproducibly(tmp_path):
    run = tmp_path / "run"
    tiny_run(run, 4)
    config = json.loads((run / "config.json").read_text())
    assert config["kind"] == "ddpm" and config["model"]["image_size"] == 8
    assert {"config.json", "model.safetensors", "ema.safetensors", "metrics.jsonl", "loss.png"} <= {
        p.name for p in run.iterdir()}
    r = load_run(run, device="cpu")
    a = r.generate(5, seed=3, options=SampleOptions(sampler="ddim", steps=5), progress=False)
    b = r.generate(5, seed=3, options=SampleOptions(sampler="ddim", steps=5), progress=False)
    assert a.dtype == torch.uint8 and a.shape == (5, 1, 8, 8) and torch.equal(a, b)
    assert r.nfe(SampleOptions(sampler="ddpm")) == 1000 and r.nfe(SampleOptions(sampler="ddim", steps=7)) == 7


def test_refuses_to_overwrite_and_bad_budgets(tmp_path):
    run = tmp_path / "run"
    tiny_run(run, 2)
    with pytest.raises(RunError, match="already holds a run"):
        tiny_run(run, 2)
    with pytest.raises(RunError, match="no config.json"):
        train_ddpm(tmp_path / "nothing", steps=2, resume=True)
    with pytest.raises(TrilemmaError, match="budget"):
        TrainConfig()
    with pytest.raises(TrilemmaError, match="budget"):
        TrainConfig(steps=3, minutes=1.0)


def test_lr_warmup_is_linear_then_constant():
    assert lr_at(0, 1e-3, 10) == pytest.approx(1e-4)
    assert lr_at(4, 1e-3, 10) == pytest.approx(5e-4)
    assert lr_at(9, 1e-3, 10) == pytest.approx(1e-3)
    assert lr_at(500, 1e-3, 10) == pytest.approx(1e-3)


def test_cosine_decay_follows_the_budget_and_resumes_exactly(tmp_path):
    import math

    assert lr_at(500, 1e-3, 10, "cosine", 0.0) == pytest.approx(1e-3)
    assert lr_at(500, 1e-3, 10, "cosine", 0.5) == pytest.approx(0.5e-3)
    assert lr_at(500, 1e-3, 10, "cosine", 0.25) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(500, 1e-3, 10, "cosine", 1.0) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(4, 1e-3, 10, "cosine", 0.5) == pytest.approx(0.25e-3)       # warm-up × decay
    with pytest.raises(TrilemmaError, match="--lr-decay"):
        TrainConfig(steps=1, lr_decay="linear")
    fit_digits(tmp_path / "straight", 10, warmup_steps=0, lr_decay="cosine")
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([1e-3 * 0.5 * (1 + math.cos(math.pi * s / 10)) for s in range(10)])
    # interrupted at step 3 of the same 10-step budget, then resumed: the same schedule, the same losses
    assert fit_digits(tmp_path / "split", 10, preview=press_ctrl_c_at_step_3, warmup_steps=0,
                      lr_decay="cosine").interrupted
    fit_digits(tmp_path / "split", 10, resume=True, warmup_steps=0, lr_decay="cosine")
    assert losses(tmp_path / "split") == losses(tmp_path / "straight")


def test_cosine_decay_to_a_floor_matches_pytorchs_cosine_annealing(tmp_path):
    """--lr-final f: base · (f + (1 − f)·½(1 + cos(π·progress))), PyTorch's CosineAnnealingLR with eta_min = f·base."""
    import math

    base, final, T = 1.6e-4, 0.0625, 40
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=T, eta_min=final * base)
    for t in range(T + 1):
        assert lr_at(10_000, base, 0, "cosine", t / T, final) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
        opt.step()
        sched.step()
    assert lr_at(10_000, base, 0, "cosine", 1.0, final) == pytest.approx(1e-5)      # the DDGAN paper's end point
    assert lr_at(10_000, base, 0, "constant", 0.7, final) == base                   # only the cosine decays
    with pytest.raises(TrilemmaError, match="--lr-final.*--lr-decay cosine"):
        TrainConfig(steps=1, lr_final=0.1)
    with pytest.raises(TrilemmaError, match="--lr-final"):
        TrainConfig(steps=1, lr_decay="cosine", lr_final=1.5)
    fit_digits(tmp_path / "floor", 10, warmup_steps=0, lr_decay="cosine", lr_final=0.25)
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "floor" / "metrics.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([1e-3 * (0.25 + 0.75 * 0.5 * (1 + math.cos(math.pi * s / 10))) for s in range(10)])
    from trilemma.cli.main import main                                  # the flag of every trainer, recorded

    assert main(["train", "ddpm", "--data", "digits", "--preset", "tiny", "--steps", "2", "--batch-size", "8",
                 "--T", "100", "--lr-decay", "cosine", "--lr-final", "0.1", "--out", str(tmp_path / "cli"),
                 "--quiet"]) == 0
    config = json.loads((tmp_path / "cli" / "config.json").read_text())["train"]
    assert (config["lr_decay"], config["lr_final"]) == ("cosine", 0.1)


def test_the_loop_tells_each_step_the_share_of_the_budget_spent(tmp_path):
    images = load_dataset("digits", "train").batch(torch.arange(16))[0]
    schedule = make_schedule("linear", T=100)
    train = TrainConfig(steps=5, batch_size=8, log_every=1, checkpoint_every=100, device="cpu")
    trainer = one_network_trainer(UNet(preset("tiny", 8, 1)), lambda idx, g: (images[idx], {}),
                                  lambda net, x, cond, g: diffusion_loss(net, x, schedule, generator=g),
                                  train, torch.device("cpu"))
    seen, step = [], trainer.step

    def recording_step(draw, noise):
        seen.append(trainer.progress)
        return step(draw, noise)

    trainer.step = recording_step
    fit(tmp_path / "run", trainer, train=train, num_examples=16, device=torch.device("cpu"), progress=False)
    assert seen == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])


@pytest.mark.parametrize("kind", ["ddpm", "vae", "gan", "autoencoder", "ddgan"])
def test_sigterm_to_the_cli_saves_a_resumable_checkpoint(tmp_path, kind):
    """`kill -TERM` (timeout, systemd, Slurm) during `trilemma train KIND`: exit 143, a checkpoint, --resume works."""
    import subprocess
    import sys
    import time

    from trilemma.registry import train_spec
    from trilemma.train.family import train

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "trilemma", "train", kind, "--data", "digits", "--preset", "tiny",
           "--steps", "100000", "--batch-size", "8", "--out", str(run), "--device", "cpu", "--quiet",
           "--log-every", "2"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "metrics.jsonl").is_file() and time.monotonic() < deadline:    # training has started
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "SIGTERM" in err and "Traceback" not in err
    step = json.loads((run / "state" / "trainer.json").read_text())["step"]
    assert step > 0
    result = train(train_spec(kind), run, steps=step + 2, resume=True, progress=False, evaluate=False)
    assert result.step == step + 2
