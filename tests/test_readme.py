"""Every command in the README runs (lightened: tiny preset, a few steps, a few images)."""

import os
import re
import shlex
import subprocess
from pathlib import Path

from trilemma.cli.main import build_parser, main

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
    """Make a README command cheap: tiny preset, --minutes -> a few --steps, at most 12 images."""
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
            out += ["--n", str(min(int(args[i + 1]), 12))]      # metrics need >= 10 images
            i += 2
            continue
        out.append(a)
        i += 1
    if out[0] == "train" and "--resume" not in out and "--preset" not in out:
        out += ["--preset", "tiny"]
    if out[:2] == ["train", "autoencoder"] and "--eval-n" not in out:
        out += ["--eval-n", "12"]                                 # reconstruction metrics on 12 test images
    if out[0] == "train" and "--resume" not in out and "--batch-size" not in out:
        out += ["--batch-size", "8"]
    if out[0] == "train" and "--batch-size" in out:
        out[out.index("--batch-size") + 1] = "8"
    if out[0] == "sample" and "ddpm" in out and "--steps" not in out:
        out += ["--steps", "20"]                                  # respaced DDPM
    if out[0] == "compare" and "--n" not in out:
        out += ["--n", "12"]
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
    """Runs them in README order in one folder (later commands use the runs of earlier ones).

    The experiments are only parsed here: each takes tens of minutes by design, and
    tests/test_experiments.py runs them end to end with tiny settings.
    """
    import trilemma.metrics.features as features
    from trilemma.utils.paths import cache_dir

    text_cache = cache_dir("text").resolve()                      # prompt embeddings are shared: they are the encoder's
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRILEMMA_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "text").symlink_to(text_cache, target_is_directory=True)
    for key, value in {"steps": 30, "width": 8, "feature_dim": 32}.items():   # a quick feature network
        monkeypatch.setitem(features.DEFAULT_RECIPE, key, value)
    budget = iter(range(2, 100))
    commands = trilemma_commands()
    assert len(commands) >= 20
    parser = build_parser()
    for args in commands:
        if args[0] in ("experiment", "ui"):                      # long-running or a server: parsed only
            parsed = parser.parse_args(args)
            assert callable(parsed.func)
            continue
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


def test_every_relative_link_in_the_docs_points_at_a_file():
    pages = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "bench" / "README.md",
             *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        if not page.exists():
            continue
        for link in re.findall(r"\]\(([^)#\s]+)", page.read_text()):
            if link.startswith(("http://", "https://", "mailto:")):
                continue
            target = (page.parent / link).resolve()
            if target.is_relative_to(ROOT) and not target.exists():   # a link out of the repository
                broken.append(f"{page.relative_to(ROOT)} -> {link}")
    assert not broken, broken
