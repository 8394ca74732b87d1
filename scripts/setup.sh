#!/usr/bin/env bash
# Install everything trilemma needs on a fresh Debian/Ubuntu machine (safe to run again).
#   bash scripts/setup.sh [EXTRAS]     EXTRAS: pip extras of the package (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-all}"
# Tests exercise demo.sh without reinstalling into the environment they are running in.
if [ "${TRILEMMA_SKIP_SETUP:-0}" = "1" ]; then exit 0; fi
sudo=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then sudo="sudo"; fi

# Fashion-MNIST as IDX files under /usr/share/datasets/fashion-mnist.
if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
  echo "trilemma setup: installing dataset-fashion-mnist (apt-get)" >&2
  $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
    || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q dataset-fashion-mnist >/dev/null; }
fi

# torch first and pinned: an unpinned torch requirement would pull a multi-GB CUDA build.
python3 -m pip install -q --disable-pip-version-check torch==2.13.0 2>&1 | grep -v "as the 'root' user" >&2 || true
python3 -c "import torch" || { echo "trilemma setup: torch failed to install" >&2; exit 1; }
echo "trilemma setup: installing trilemma[$extras]" >&2
python3 -m pip install -q --disable-pip-version-check -e ".[$extras]" 2>&1 | grep -v "as the 'root' user" >&2 || true
python3 -c "import trilemma" || { echo "trilemma setup: the package failed to install" >&2; exit 1; }
