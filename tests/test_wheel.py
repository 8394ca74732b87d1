"""`pip install .` builds a wheel that works on its own: no tests, runs or caches inside, the command runs.

The wheel is built from this checkout without network access (no build isolation: setuptools from
the test environment) and installed, without dependencies, into a fresh virtual environment whose
only other packages are this environment's (through a .pth file) — so nothing is downloaded, and the
installed `trilemma` must work from the wheel's files alone, not from the checkout.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# What a checkout may hold besides its sources (environments, build output, runs, caches): not copied.
LOCAL_ONLY = (".git", ".venv", "build", "*.egg-info", "runs", ".cache", ".fmnist", ".hypothesis", "__pycache__",
              ".pytest_cache", ".ruff_cache")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # pip builds in the source tree (build/, *.egg-info), and under xdist each worker that runs a test of
    # this module builds its own wheel: each builds from a private copy, or two builds race in build/.
    source = tmp_path_factory.mktemp("source") / "trilemma"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*LOCAL_ONLY))
    env = {**os.environ, "PIP_NO_INDEX": "1"}
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(source)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheels = list(out.glob("trilemma-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_the_wheel_holds_the_package_and_nothing_else(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert "trilemma" in top
    assert all(t == "trilemma" or t.startswith("trilemma-") for t in top), sorted(top)
    for bad in ("tests/", "runs/", ".cache/", "__pycache__/", ".venv/", "bench/", "scripts/"):
        assert not any(bad in n for n in names), bad
    # the shipped feature networks travel with it (metrics are identical on every installation)
    assert any(n.endswith("feature_nets/manifest.json") for n in names)
    assert any(n.endswith("fashion-mnist.safetensors") for n in names)
    # and the fused CPU kernel's C source, which is compiled on first use
    assert "trilemma/nets/kernels/norm_silu.c" in names


def test_the_installed_wheel_runs_in_a_fresh_venv(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    # Dependencies (torch, numpy, …) from this environment; trilemma itself only from the wheel.
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    deps = [p for p in site.getsitepackages() if Path(p).is_dir()] or [sysconfig.get_paths()["purelib"]]
    (Path(purelib) / "deps.pth").write_text("\n".join(deps) + "\n")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                           "--target", purelib, str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["TRILEMMA_CACHE"] = str(tmp_path / "cache")
    run = lambda *args: subprocess.run([str(python), "-m", "trilemma", *args], capture_output=True, text=True,  # noqa: E731
                                       cwd=tmp_path, env=env, timeout=600)
    where = subprocess.run([str(python), "-c", "import trilemma; print(trilemma.__file__)"], capture_output=True,
                           text=True, cwd=tmp_path, env=env)
    assert where.stdout.strip().startswith(purelib), where.stdout + where.stderr     # not the checkout
    assert run("--help").returncode == 0
    out = run("demo", "--out", str(tmp_path / "demo"), "--data", "digits", "--preset", "tiny", "--steps", "3",
              "--batch-size", "8", "--ddpm-n", "2", "--ddim-n", "4", "--device", "cpu")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "demo" / "samples" / "ddim_50.png").is_file()
    if shutil.which("cc") or shutil.which("gcc"):    # the kernel is built from the wheel's own source
        built = subprocess.run([str(python), "-c", "from trilemma.nets import kernels; print(kernels.available())"],
                               capture_output=True, text=True, cwd=tmp_path, env=env)
        assert built.stdout.strip() == "True", built.stderr[-2000:]
