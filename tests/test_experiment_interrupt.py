"""Ctrl-C (or SIGTERM) inside an experiment stops the experiment, and a re-run continues where it stopped.

A trainer answers the first Ctrl-C by saving a checkpoint and returning; these tests stand in for the
key press with an :class:`~trilemma.train.common.Interrupt` whose flag rises after a few of the
loop's checks, in the chosen training call of the command.
"""

from __future__ import annotations

import json

import pytest
from helpers import cli

import trilemma.train.loop as loop
from trilemma.errors import Interrupted, TrilemmaError
from trilemma.experiments import run_state
from trilemma.train.common import Interrupt


@pytest.fixture
def ctrl_c(monkeypatch):
    """``ctrl_c(call=1, after=2, signal="SIGINT")``: the ``call``-th training loop from now is stopped after
    ``after`` checks of its flag (a step or two), as by that signal; ``ctrl_c.off()`` puts the real one back."""

    def arm(call: int = 1, after: int = 2, signal: str = "SIGINT"):
        calls = [0]

        class Pressed(Interrupt):
            def __init__(self):
                calls[0] += 1
                self._fires = calls[0] == call
                self._reads = 0
                super().__init__()

            @property
            def requested(self):
                self._reads += 1
                if self._fires and self._reads > after:
                    self.signal_name = signal
                    return True
                return self._flag

            @requested.setter
            def requested(self, value):
                self._flag = value

        monkeypatch.setattr(loop, "Interrupt", Pressed)

    arm.off = lambda: monkeypatch.setattr(loop, "Interrupt", Interrupt)
    return arm


def steps_of(run):
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_ctrl_c_stops_experiment_trilemma_and_a_rerun_continues_the_run(cache, tmp_path, capsys, ctrl_c):
    from trilemma.experiments.trilemma import TrilemmaConfig, train_run

    out = tmp_path / "tri"
    ctrl_c(call=1)                                         # in the first model's training (the VAE)
    code, printed, err = cli(capsys, "experiment", "trilemma", "--data", "digits", "--preset", "tiny", "--steps",
                             "6", "--n", "30", "--batch-size", "15", "--device", "cpu", "--out", out, "--quiet")
    assert code == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("trilemma: interrupted at step ") and str(out / "vae") in last
    assert "run the same command again" in last and "Traceback" not in err
    assert run_state(out / "vae") == "interrupted"
    assert not (out / "gan").exists() and not (out / "trilemma.md").exists()   # nothing after it ran
    ctrl_c.off()
    cfg = TrilemmaConfig(data="digits", preset="tiny", steps=6, n=30, batch_size=15, device="cpu")
    train_run("vae", out, cfg, progress=False)             # what the re-run does first: continue the run
    assert run_state(out / "vae") == "finished"
    steps = steps_of(out / "vae")
    assert steps == sorted(set(steps)) and steps[-1] == 6


def test_sigterm_in_an_experiment_exits_143(cache, tmp_path, capsys, ctrl_c):
    ctrl_c(call=1, signal="SIGTERM")
    code, _, err = cli(capsys, "experiment", "vae-vs-gan", "--data", "digits", "--preset", "tiny", "--steps", "6",
                       "--n", "30", "--out", tmp_path / "vg", "--quiet")
    assert code == 143 and err.strip().splitlines()[-1].startswith("trilemma: SIGTERM at step ")
    assert run_state(tmp_path / "vg" / "vae") == "interrupted" and not (tmp_path / "vg" / "gan").exists()


def test_gan_gradients_takes_no_snapshot_of_an_interrupted_training(tmp_path, ctrl_c):
    from trilemma.experiments.gan_gradients import GanGradientsConfig, train_snapshots

    out = tmp_path / "gg"
    cfg = GanGradientsConfig(data="digits", preset="tiny", epochs=(0.25,), batch_size=32)
    ctrl_c(call=1)
    with pytest.raises(Interrupted, match="interrupted at step"):
        train_snapshots(cfg, out, progress=False)
    assert not (out / "epoch_0.25").exists()               # the snapshot would have been of fewer epochs
    ctrl_c.off()
    [(epochs, snap)] = train_snapshots(cfg, out, progress=False)
    assert (snap / "model.safetensors").is_file()
    assert json.loads((out / "dcgan" / "state" / "trainer.json").read_text())["step"] == 13   # 0.25 × 1617 / 32


def interrupted_pixel_phase(tmp_path, ctrl_c):
    """latent-vs-pixel's pixel DDPM (6 steps) stopped by Ctrl-C after a step or two: (its folder, the config)."""
    from trilemma.experiments.latent_vs_pixel import LatentVsPixelConfig, train_diffusion_phase

    run = tmp_path / "pixel"
    cfg = LatentVsPixelConfig(data="digits", preset="tiny", device="cpu")
    ctrl_c(call=1)
    with pytest.raises(Interrupted):
        train_diffusion_phase("pixel", run, cfg, {"steps": 6}, progress=False)
    ctrl_c.off()
    return run, cfg


def test_latent_vs_pixel_phase_continues_with_its_clocks_summed(tmp_path, ctrl_c):
    from trilemma.experiments.latent_vs_pixel import FIT_FILE, train_diffusion_phase

    run, cfg = interrupted_pixel_phase(tmp_path, ctrl_c)
    assert not (run / "phase.json").exists() and run_state(run) == "interrupted"
    before = json.loads((run / FIT_FILE).read_text())
    assert before["cpu_s"] > 0 and before["wall_s"] > 0 and 0 < before["step"] < 6
    info = train_diffusion_phase("pixel", run, cfg, {"steps": 6}, progress=False)
    assert info["steps"] == 6 and not (run / FIT_FILE).exists()
    assert info["train_cpu_s"] > before["cpu_s"] and info["call_wall_s"] > before["wall_s"]
    assert info["train_wall_s"] > before["elapsed_s"]                      # the loop's clock, carried over
    steps = steps_of(run)
    assert steps == sorted(set(steps)) and steps[-1] == 6
    assert train_diffusion_phase("pixel", run, cfg, {"steps": 6}, progress=False) == info     # reused


def test_latent_vs_pixel_keeps_a_finished_training_stopped_before_its_record(tmp_path):
    from trilemma.ddpm.train import train_ddpm
    from trilemma.experiments.latent_vs_pixel import FIT_FILE, LatentVsPixelConfig, fit_phase, train_diffusion_phase

    run = tmp_path / "pixel"
    cfg = LatentVsPixelConfig(data="digits", preset="tiny", device="cpu")
    # trained, then stopped before phase.json was written (Ctrl-C outside the loop, or a crash after it)
    fit = fit_phase(run, "the pixel DDPM", {"steps": 3}, train_ddpm, False,
                    dict(data="digits", preset="tiny", device="cpu", sample_every=0))
    assert json.loads((run / FIT_FILE).read_text()) == fit and run_state(run) == "finished"
    lines = (run / "metrics.jsonl").read_text()
    info = train_diffusion_phase("pixel", run, cfg, {"steps": 3}, progress=False)
    assert (run / "metrics.jsonl").read_text() == lines                    # not trained again
    assert (info["steps"], info["train_cpu_s"], info["call_wall_s"]) == (3, fit["cpu_s"], fit["wall_s"])


def test_latent_vs_pixel_refuses_a_run_stopped_without_its_clocks(tmp_path, ctrl_c):
    from trilemma.experiments.latent_vs_pixel import FIT_FILE, train_diffusion_phase

    run, cfg = interrupted_pixel_phase(tmp_path, ctrl_c)
    (run / FIT_FILE).unlink()                              # as a killed process leaves it: a checkpoint, no clocks
    with pytest.raises(TrilemmaError, match=r"CPU time is unknown\); remove it"):
        train_diffusion_phase("pixel", run, cfg, {"steps": 6}, progress=False)
