#!/usr/bin/env bash
# The quick-start demo: install, then train a DDPM on Fashion-MNIST on the CPU (~7 min on 2 cores, plus installs),
# sample it with DDPM and 50-step DDIM, and print the run folder. Extra arguments go to `trilemma demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh data
exec trilemma demo "$@"
