#!/usr/bin/env bash
# The speed axis on a model trained long enough that its 1000-step DDPM samples are clean:
# train the `small` v-prediction DDPM for STEPS × 128 images (default 4,800 steps: what the 2-core CPU
# demo's recipe reaches in about 60 minutes at its measured 80 steps/min), then `experiment steps`:
# FID, KID, precision, recall, coverage and images/s for each sampler × NFE, and the DDPM-1000 reference.
#   OUT=runs STEPS=4800 N=2000 bash bench/steps_gpu.sh        (a GPU: a few minutes; a CPU: hours)
#   PREDICTION=eps OUT=runs bash bench/steps_gpu.sh           (the ε-prediction model, in steps-long-eps)
set -euo pipefail
cd "$(dirname "$0")/.."
prediction="${PREDICTION:-v}"
out="${OUT:-runs}/steps-long"; [ "$prediction" = v ] || out="$out-$prediction"
py=python3; [ -x .venv/bin/python ] && py=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ ! -f "$out/run/model.safetensors" ]; then
  $py -m trilemma train ddpm --data fashion-mnist --preset small --prediction "$prediction" --steps "${STEPS:-4800}" \
      --batch-size 128 --lr 1e-3 --bf16 --out "$out/run" --quiet --log-every 200
fi
$py -m trilemma experiment steps "$out/run" --n "${N:-2000}" --nfe "${NFE:-4,6,8,10,15,20,50}" \
    --samplers "${SAMPLERS:-ddim,dpmpp-2m,dpmpp-2m-sde,unipc,heun}" --out "$out/steps" --batch-size 1000
