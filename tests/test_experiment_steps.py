"""`trilemma experiment steps`: every sampler at every NFE against DDPM on all T steps, cells cached.

A 3-step tiny DDPM on 8×8 digits (T = 100) and the tiny feature-network recipe (tests/conftest.py):
the numbers are meaningless, the plumbing is what is tested — files, the DDPM reference row, Heun's
evaluation count, and that a re-run samples nothing when every cell is cached.
"""

from __future__ import annotations

import json

import pytest

import trilemma.metrics
import trilemma.metrics.features as features_mod
from trilemma.cli.main import main
from trilemma.errors import TrilemmaError
from trilemma.experiments.steps import StepsConfig, nfe_used, run_steps


@pytest.fixture(scope="module")
def ddpm_run(cache, tmp_path_factory):
    features_mod.get_feature_network("digits", progress=False)       # the tiny recipe, trained once
    out = tmp_path_factory.mktemp("runs") / "ddpm"
    assert main(["train", "ddpm", "--data", "digits", "--preset", "tiny", "--steps", "3", "--batch-size", "8",
                 "--out", str(out), "--quiet", "--T", "100"]) == 0
    return out


@pytest.fixture
def counted(monkeypatch):
    """Count the calls of evaluate_run (each samples a cell)."""
    calls = []
    real = trilemma.metrics.evaluate_run

    def evaluate_run(run, n, options, **kwargs):
        calls.append((options.sampler, options.steps))
        return real(run, n, options, **kwargs)

    monkeypatch.setattr(trilemma.metrics, "evaluate_run", evaluate_run)
    return calls


def test_heun_spends_an_odd_number_of_evaluations():
    assert [nfe_used("heun", k) for k in (2, 3, 4, 6, 10, 15, 50)] == [1, 3, 3, 5, 9, 15, 49]
    assert [nfe_used(s, 6) for s in ("ddim", "dpmpp-2m", "unipc", "euler", "dpmpp-2m-sde")] == [6] * 5


def test_bad_config_is_refused():
    with pytest.raises(TrilemmaError, match="--samplers"):
        StepsConfig(samplers=("ddim", "rk4"))
    with pytest.raises(TrilemmaError, match="--nfe"):
        StepsConfig(nfe=(0, 4))
    assert StepsConfig(nfe=(10, 4, 4)).nfe == (4, 10)


def test_steps_writes_table_json_plot_and_reuses_its_cells(ddpm_run, tmp_path, counted, capsys):
    out = tmp_path / "steps"
    cfg = StepsConfig(nfe=(3, 4), samplers=("ddim", "heun"), n=20, batch_size=10, device="cpu")
    result = run_steps(ddpm_run, cfg, out, progress=False)
    assert sorted(counted) == sorted([("ddim", 3), ("ddim", 4), ("heun", 3), ("heun", 4), ("ddpm", None)])
    assert {p.name for p in out.iterdir()} >= {"steps.md", "steps.json", "steps.png", "cells"}
    assert len(list((out / "cells").glob("*.json"))) == 5 and (out / "cells" / "ddpm_100.json").is_file()
    assert (out / "steps.png").stat().st_size > 1000

    data = json.loads((out / "steps.json").read_text())
    assert data["T"] == 100 and data["computed_cells"] == 5 and len(data["rows"]) == 4
    ref = data["reference"]
    assert ref["name"] == "DDPM-100" and ref["nfe_used"] == 100 and ref["sampling"]["sampler"] == "ddpm"
    assert ref["sampling"]["steps"] is None and ref["fid"] > 0
    heun4 = next(r for r in data["rows"] if r["sampler"] == "heun" and r["nfe"] == 4)
    assert heun4["nfe_used"] == 3 and heun4["steps"] == 2                # 2N − 1 = 3 ≤ 4
    for row in data["rows"]:
        assert row["fid"] > 0 and 0 <= row["precision"] <= 1 and 0 <= row["coverage"] <= 1
        assert row["images_per_s"] > 0 and row["nfe"] in (3, 4)
        assert row["sampling"]["spacing"] == "trailing"          # ddim, and the solvers below 8 NFE
    table = (out / "steps.md").read_text()
    assert "| DDPM-100 (NFE 100) |" in table and "| heun |" in table and "(3)" in table
    assert "Best at ≤ 10 NFE" in table
    # the same seed for every cell: ddim and the first-order heun step at 1 NFE start from one x_T
    assert result["rows"][0]["sampling"]["sampler"] == "ddim"

    # A re-run through the CLI samples nothing: every cell comes from cells/.
    counted.clear()
    code = main(["experiment", "steps", str(ddpm_run), "--nfe", "4,3", "--samplers", "ddim,heun", "--n", "20",
                 "--batch-size", "10", "--device", "cpu", "--out", str(out), "--quiet"])
    assert code == 0 and counted == []
    assert "0 cells computed" in capsys.readouterr().err
    again = json.loads((out / "steps.json").read_text())
    assert all(r["cached"] for r in again["rows"]) and again["reference"]["cached"]
    assert [r["fid"] for r in again["rows"]] == [r["fid"] for r in data["rows"]]

    # A new NFE and another n: only what is missing, or keyed differently, is computed.
    run_steps(ddpm_run, StepsConfig(nfe=(3, 4, 5), samplers=("ddim", "heun"), n=20, batch_size=10, device="cpu",
                                    reference=True), out, progress=False)
    assert sorted(counted) == [("ddim", 5), ("heun", 5)]
    counted.clear()
    run_steps(ddpm_run, StepsConfig(nfe=(3,), samplers=("ddim",), n=24, batch_size=10, device="cpu",
                                    reference=False), out, progress=False)
    assert counted == [("ddim", 3)]


def test_steps_refuses_a_run_that_is_not_diffusion(cache, tmp_path, capsys):
    code = main(["experiment", "steps", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "error" in err and "none" in err
