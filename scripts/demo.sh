#!/usr/bin/env bash
# The quick-start demo: install (into .venv/), then train a latent DDPM on Fashion-MNIST on the CPU (~7 min on 2
# cores, plus installs), sample it with DDPM and 50-step DDIM, and print the run folder.
# Extra arguments go to `trilemma demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh data
venv="${TRILEMMA_VENV:-.venv}"
if [ -x "$venv/bin/python" ]; then exec "$venv/bin/python" -m trilemma demo "$@"; fi
exec python3 -m trilemma demo "$@"     # TRILEMMA_SKIP_SETUP=1 without a venv: the interpreter already set up
