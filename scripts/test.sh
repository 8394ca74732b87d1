#!/usr/bin/env bash
# Install everything (test dependencies included) into .venv/, then run the whole test suite.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh all
venv="${TRILEMMA_VENV:-.venv}"
python="$venv/bin/python"
[ -x "$python" ] || python=python3
# Two workers, one thread each: two cores busy without OpenMP oversubscription.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export TRILEMMA_CACHE="${TRILEMMA_CACHE:-$PWD/.cache/trilemma-test}"
exec "$python" -m pytest -n 2 -q "$@"
