#!/usr/bin/env bash
# Install everything trilemma needs on a fresh Debian/Ubuntu machine (safe to run again).
#   bash scripts/setup.sh [EXTRAS]     EXTRAS: pip extras of the package (default: all)
# Everything Python goes into a virtual environment, .venv/ (or $TRILEMMA_VENV), created on the
# first run and reused after: nothing is pip-installed into the system interpreter, so this works
# where python3 is "externally managed" (PEP 668: Debian 12, Ubuntu 24.04). $PYTHON picks the
# interpreter that creates the environment (default: python3).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-all}"
venv="${TRILEMMA_VENV:-.venv}"
python="${PYTHON:-python3}"
# Tests exercise demo.sh without reinstalling into the environment they are running in.
if [ "${TRILEMMA_SKIP_SETUP:-0}" = "1" ]; then exit 0; fi
sudo=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then sudo="sudo"; fi
apt_updated=0
apt_install() {   # apt_install PACKAGE...: install Debian packages, updating the lists once if needed
  $sudo apt-get install -y -q "$@" >/dev/null 2>&1 && return 0
  if [ "$apt_updated" = 0 ]; then $sudo apt-get update -q >/dev/null; apt_updated=1; fi
  $sudo apt-get install -y -q "$@" >/dev/null
}

# Fashion-MNIST as IDX files under /usr/share/datasets/fashion-mnist.
if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
  echo "trilemma setup: installing dataset-fashion-mnist (apt-get)" >&2
  apt_install dataset-fashion-mnist
fi

# A C compiler for trilemma's fused CPU kernels (trilemma/nets/kernels; without one they fall back
# to plain PyTorch layers, ~1.2-1.8x slower U-Net training on the CPU).
if ! command -v cc >/dev/null && ! command -v gcc >/dev/null; then
  echo "trilemma setup: installing gcc (apt-get) for the fused CPU kernels" >&2
  apt_install gcc || echo "trilemma setup: no C compiler; the fused CPU kernels will be off" >&2
fi

# The virtual environment (Debian's python3 needs python3-venv for ensurepip).
if [ ! -x "$venv/bin/python" ]; then
  echo "trilemma setup: creating the virtual environment $venv ($python -m venv)" >&2
  if ! "$python" -m venv "$venv" >/dev/null 2>&1; then
    rm -rf "$venv"
    minor=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    apt_install python3-venv || apt_install "python$minor-venv"
    "$python" -m venv "$venv"
  fi
fi
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)

# torch first and pinned: an unpinned torch requirement would pull a multi-GB CUDA build.
"$venv/bin/python" -c "import torch" 2>/dev/null || "${pip[@]}" torch==2.13.0
"$venv/bin/python" -c "import torch" || { echo "trilemma setup: torch failed to install" >&2; exit 1; }
echo "trilemma setup: installing trilemma[$extras] into $venv" >&2
"${pip[@]}" -e ".[$extras]"
"$venv/bin/python" -c "import trilemma" || { echo "trilemma setup: the package failed to install" >&2; exit 1; }
# The browser of the UI tests (Debian's chromium; Playwright's own download is not needed).
case ",$extras," in
  *,all,*|*,ui,*|*,test,*) command -v chromium >/dev/null || apt_install chromium || \
      echo "trilemma setup: chromium could not be installed; browser tests will skip" >&2 ;;
esac
echo "trilemma setup: done; activate with: source $venv/bin/activate" >&2
