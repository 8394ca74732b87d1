"""Every command in the README runs (lightened: tiny preset, a few steps, a few images)."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from trilemma.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def code_blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def trilemma_commands():
    out = []
    for block in code_blocks("bash"):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("trilemma "):
                out.append(shlex.split(line)[1:])
    return out


def lighten(args, budget):
    """Make a README command cheap: tiny preset, --minutes -> a few --steps, at most 4 images."""
    args = list(args)
    out = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--preset":
            out += ["--preset", "tiny"]
            i += 2
            continue
        if a == "--minutes":
            out += ["--steps", str(next(budget))]
            i += 2
            continue
        if a == "--n":
            out += ["--n", str(min(int(args[i + 1]), 4))]
            i += 2
            continue
        out.append(a)
        i += 1
    if out[:2] == ["train", "ddpm"] and "--resume" not in out:
        out += ["--batch-size", "8"]
    return out


def test_readme_quick_start_has_exactly_two_commands_and_ci_runs_the_test_one():
    quick = README.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = [line.split("#")[0].strip() for block in re.findall(r"```bash\n(.*?)```", quick, flags=re.S)
                for line in block.splitlines() if line.strip() and not line.startswith("#")]
    assert commands == ["bash scripts/demo.sh", "bash scripts/test.sh"]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#") and not line.startswith(("set ", "cd "))]
    assert ci == ["bash scripts/test.sh"]


def test_demo_script_runs_end_to_end(tmp_path):
    env = {**os.environ, "TRILEMMA_SKIP_SETUP": "1"}    # setup.sh itself runs in CI through test.sh
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh"), "--out", str(tmp_path / "demo"),
                           "--preset", "tiny", "--steps", "2", "--ddpm-n", "2", "--ddim-n", "2"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith(str(tmp_path / "demo"))
    assert (tmp_path / "demo" / "samples" / "ddim_50.png").exists()


def test_every_readme_cli_command_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    budget = iter(range(2, 100))
    commands = trilemma_commands()
    assert len(commands) >= 5
    for args in commands:
        light = lighten(args, budget)
        try:
            code = main(light)
        except SystemExit as e:
            code = e.code
        assert code == 0, f"README command failed: trilemma {' '.join(args)} (ran as: {' '.join(light)})"


def test_readme_python_api_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (block,) = [b for b in code_blocks("python") if "train_ddpm" in b]
    light = block.replace('preset="small"', 'preset="tiny"').replace("minutes=5", "steps=2, progress=False")
    assert light != block
    exec(compile(light, "README.md", "exec"), {})
    assert (tmp_path / "runs" / "api" / "grid.png").exists()
