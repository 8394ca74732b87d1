#!/usr/bin/env bash
# One GPU (or CPU) smoke check of everything that runs on the device, in a few minutes:
#
#   every trainer at tiny size in fp32 and bf16 (bf16 only where the device has it), resume,
#   every sampler, `trilemma eval`, no host sync in non-logging training steps (CUDA:
#   torch.cuda.set_sync_debug_mode("error")), a 2-process torchrun run (gloo, on the CPU),
#   and the base U-Net's training step: images/s and the fraction of the GPU's bf16 peak
#   (FLOPs counted by torch.utils.flop_counter), plus bench/unet_vs_diffusers.py on CUDA.
#
#   scripts/gpu_check.sh            # log and summary.json under ${OUT:-/tmp/gpu_check}
#   DEVICE=cpu scripts/gpu_check.sh # force the CPU
#
# Exits non-zero when any check fails. CUDA-only checks are skipped (and say so) on the CPU.
set -uo pipefail
cd "$(dirname "$0")/.."

PY="${TRILEMMA_VENV:-.venv}/bin/python"      # the environment scripts/setup.sh made (as scripts/test.sh)
[ -x "$PY" ] || PY=python3
OUTDIR="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu_check.log"
RUNS="$OUTDIR/runs"
rm -rf "$RUNS" "$OUTDIR/results.tsv"
mkdir -p "$RUNS"
export TRILEMMA_CACHE="${TRILEMMA_CACHE:-$OUTDIR/cache}"
export PYTHONUNBUFFERED=1
: > "$LOG"
BEGAN=$(date +%s)

DEVICE="${DEVICE:-$($PY -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}"
case "$DEVICE" in cuda*) IS_CUDA=1 ;; *) IS_CUDA=0 ;; esac   # cuda, cuda:0, cuda:1, …
BF16=$($PY -c "import torch; from trilemma.utils.device import native_bf16; print(int(native_bf16(torch.device('$DEVICE'))))")
echo "gpu_check: device $DEVICE, native bf16 $BF16, python $PY, output $OUTDIR" | tee -a "$LOG"
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
      torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')" 2>&1 | tee -a "$LOG"

FAILED=0
# check NAME CMD...: run one check with a time limit, log its output, record pass/fail/seconds.
check() {
    local name="$1"; shift
    local t0=$(date +%s%N) status
    echo "=== $name: $*" >> "$LOG"
    if timeout 240 "$@" >> "$LOG" 2>&1; then status=pass; else status=FAIL; FAILED=$((FAILED + 1)); fi
    local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    local dt="$((ms / 1000)).$(( (ms % 1000) / 100 ))"
    printf '%s\t%s\t%s\n' "$name" "$status" "$dt" >> "$OUTDIR/results.tsv"
    printf '%-45s %s  %6s s\n' "$name" "$status" "$dt" | tee -a "$LOG"
}
skip() {
    printf '%s\tskip\t0\n' "$1" >> "$OUTDIR/results.tsv"
    printf '%-45s skip (%s)\n' "$1" "$2" | tee -a "$LOG"
}

T="$PY -m trilemma train"
COMMON="--preset tiny --device $DEVICE --batch-size 16 --log-every 2 --quiet"
KINDS="ddpm vae gan autoencoder ldm t2i"
$PY -m trilemma train ddgan --help > /dev/null 2>&1 && KINDS="$KINDS ddgan"

extra() {   # the options a kind needs at tiny size
    case "$1" in
        ldm) echo "--autoencoder $RUNS/autoencoder-fp32" ;;
        t2i) echo "--data shapes" ;;
        autoencoder) echo "--data digits --factor 2 --no-recon-fid --eval-n 64" ;;
        *) echo "--data digits" ;;
    esac
}

# ---------------------------------------------------------------------------------- every trainer
for kind in $KINDS; do
    check "train $kind fp32" $T $kind --out "$RUNS/$kind-fp32" --steps 6 $COMMON $(extra $kind)
    check "resume $kind" $T $kind --out "$RUNS/$kind-fp32" --steps 10 --resume --quiet
    if [ "$BF16" = 1 ]; then
        check "train $kind bf16" $T $kind --out "$RUNS/$kind-bf16" --steps 4 --bf16 $COMMON $(extra $kind)
    else
        skip "train $kind bf16" "no native bf16 on $DEVICE"
    fi
done
check "--bf16 refused or accepted cleanly" $PY - <<EOF
import torch
from trilemma.errors import TrilemmaError
from trilemma.utils.device import check_bf16, native_bf16
d = torch.device("$DEVICE")
try:
    check_bf16(d, True); assert native_bf16(d)
except TrilemmaError as e:
    assert not native_bf16(d) and "--bf16" in str(e) and "\n" not in str(e)
EOF

# ---------------------------------------------------------------------------------- every sampler
for s in ddpm ddim dpmpp-2m dpmpp-2m-sde unipc heun euler; do
    check "sample ddpm --sampler $s" $PY -m trilemma sample "$RUNS/ddpm-fp32" --sampler $s --steps 10 --n 16 \
        --device $DEVICE --out "$OUTDIR/sample-$s.png" --quiet
done
check "sample gan" $PY -m trilemma sample "$RUNS/gan-fp32" --n 16 --device $DEVICE --out "$OUTDIR/sample-gan.png" --quiet
check "eval ddpm (n 64)" $PY -m trilemma eval "$RUNS/ddpm-fp32" --n 64 --steps 10 --device $DEVICE \
    --json "$OUTDIR/eval.json" --quiet

# ------------------------------------------------------------------- no host sync between log steps
if [ "$IS_CUDA" = 1 ]; then
    check "no host sync in non-logging steps" $PY - "$RUNS" "$DEVICE" <<'EOF'
import sys
from pathlib import Path
import torch
from trilemma.train import family

runs, device = Path(sys.argv[1]), sys.argv[2]
torch.cuda.set_device(torch.device(device))            # set_sync_debug_mode watches the current GPU's syncs
# every trainer (tests/test_host_sync.py checks the same steps' Python-level host reads on the CPU in CI)
cases = {"ddpm": dict(data="digits"), "ddpm-class-cond": dict(data="digits", class_cond=True),
         "gan": dict(data="digits"), "vae": dict(data="digits"),
         "vae-bernoulli": dict(data="digits", likelihood="bernoulli"),
         "autoencoder": dict(data="digits", factor=2, disc_weight=0.1, disc_start=2),
         "ldm": dict(autoencoder=str(runs / "autoencoder-fp32")), "t2i": dict(data="shapes"),
         "ddgan": dict(data="digits", d_steps=2, lazy_reg=2)}
for case, opts in cases.items():
    from trilemma.registry import train_spec
    kind = case.split("-")[0]
    spec, steps, seen = train_spec(kind), 30, []

    def build(out, config, dataset, progress, spec=spec):
        built = spec.build(out, config, dataset, progress)
        step = built.trainer.step

        def guarded(draw, noise):          # steps 4 … steps-1: every op between them must not sync
            seen.append(1)
            torch.cuda.set_sync_debug_mode("error" if 4 <= len(seen) < steps else 0)
            return step(draw, noise)
        built.trainer.step = guarded
        return built
    import dataclasses
    try:
        family.train(dataclasses.replace(spec, build=build), runs / f"sync-{case}", steps=steps, preset="tiny",
                     batch_size=16, device=device, log_every=1000, checkpoint_minutes=0, sample_minutes=0,
                     progress=False, evaluate=False, **opts)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    print(f"{case}: {steps - 4} training steps without a host sync")
EOF
    check "--deterministic resume is bit-exact on CUDA" $PY - "$RUNS" "$DEVICE" <<'EOF'
import sys
from pathlib import Path
import torch
from trilemma.ddpm.train import train_ddpm
from trilemma.utils.io import load_tensors
runs, device = Path(sys.argv[1]), sys.argv[2]
# 28×28 images: the U-Net's attention then spans 196 tokens, where the fused attention backwards would
# split the keys nondeterministically (--deterministic switches them to the math kernel).
o = dict(data="mnist-5k", preset="tiny", batch_size=16, device=device, deterministic=True, progress=False,
         dropout=0.0)
train_ddpm(runs / "det-a", steps=8, **o)
train_ddpm(runs / "det-b", steps=4, **o)
train_ddpm(runs / "det-b", steps=8, resume=True, progress=False)
a, b = load_tensors(runs / "det-a/model.safetensors"), load_tensors(runs / "det-b/model.safetensors")
worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
print("max |resumed - straight| =", worst)
assert all(torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-6) for k in a), worst
EOF
else
    skip "no host sync in non-logging steps" "CUDA only"
    skip "--deterministic resume on CUDA" "CUDA only (the CPU is covered by tests/test_distributed.py)"
fi

# --------------------------------------------------------------------------- two processes (torchrun)
check "torchrun 2 processes (gloo, CPU)" env OMP_NUM_THREADS=1 $PY -m torch.distributed.run --standalone \
    --nproc_per_node 2 -m trilemma train ddpm --out "$RUNS/ddp" --data digits --preset tiny --steps 6 \
    --batch-size 16 --device cpu --log-every 2 --quiet
check "torchrun run samples in one process" $PY -m trilemma sample "$RUNS/ddp" --steps 10 --n 16 --device $DEVICE \
    --out "$OUTDIR/sample-ddp.png" --quiet

# ---------------------------------------------------------------------- the U-Net's training step speed
check "U-Net training step: images/s and share of bf16 peak" $PY - "$DEVICE" "$OUTDIR/unet_step.json" <<'EOF'
import json, statistics, sys, time
import torch
from torch.utils.flop_counter import FlopCounterMode
from trilemma.nets.unet import UNet, preset

device = torch.device(sys.argv[1])
cuda = device.type == "cuda"
size, batch = ("base", 64) if cuda else ("tiny", 8)
torch.manual_seed(0)
net = UNet(preset(size, 32, 1)).to(device)
opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=cuda)
x = torch.randn(batch, 1, 32, 32, device=device)
t = torch.randint(1, 1001, (batch,), device=device)
eps = torch.randn_like(x)
dtype = torch.bfloat16 if cuda else None

def step():
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
        loss = (net(x, t).float() - eps).pow(2).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()

with FlopCounterMode(display=False) as counter:
    step()
flops = counter.get_total_flops()
sync = torch.cuda.synchronize if cuda else (lambda: None)
for _ in range(3):
    step()
sync()
times = []
for _ in range(5 if cuda else 2):
    t0 = time.perf_counter()
    for _ in range(10 if cuda else 2):
        step()
    sync()
    times.append((time.perf_counter() - t0) / (10 if cuda else 2))
sec = statistics.median(times)
# dense bf16 tensor-core peaks from the vendor datasheets (FLOP/s)
PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12,
         "RTX 4090": 165e12}
name = torch.cuda.get_device_name(device) if cuda else "cpu"
peak = next((v for k, v in PEAKS.items() if k in name), None)
result = {"device": name, "unet": size, "batch": batch, "flops_per_step": flops, "seconds_per_step": sec,
          "images_per_s": batch / sec, "tflops_per_s": flops / sec / 1e12,
          "share_of_bf16_peak": None if peak is None else flops / sec / peak}
print(json.dumps(result))
json.dump(result, open(sys.argv[2], "w"), indent=1)
share = "?" if peak is None else f"{100 * flops / sec / peak:.1f}%"
print(f"{size} U-Net training step on {name}: {batch / sec:.0f} images/s, {flops / sec / 1e12:.2f} TFLOP/s, "
      f"{share} of the bf16 peak")
EOF
tail -1 "$OUTDIR/unet_step.json" > /dev/null 2>&1 && grep -h "U-Net training step on" "$LOG" | tail -1
if [ "$IS_CUDA" = 1 ] && $PY -c "import diffusers" 2>/dev/null; then
    check "bench/unet_vs_diffusers.py base bf16" $PY bench/unet_vs_diffusers.py --device "$DEVICE" --sizes base \
        --precisions bf16 --repeats 3 --warmup 1 --matmul-size 8192 --json "$OUTDIR/bench.json"
else
    skip "bench/unet_vs_diffusers.py" "CUDA (and diffusers) only; on the CPU it takes minutes"
fi

# ------------------------------------------------------------------------------------------ summary
TOTAL=$(( $(date +%s) - BEGAN ))
$PY - "$OUTDIR" "$DEVICE" "$TOTAL" "$FAILED" <<'EOF'
import json, sys
from pathlib import Path
out, device, total, failed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
checks = [dict(zip(("name", "status", "seconds"), line.split("\t"))) for line in
          (out / "results.tsv").read_text().splitlines()]
for c in checks:
    c["seconds"] = float(c["seconds"])
unet = out / "unet_step.json"
summary = {"device": device, "seconds": total, "failed": failed, "checks": checks,
           "unet_step": json.loads(unet.read_text()) if unet.exists() else None}
(out / "summary.json").write_text(json.dumps(summary, indent=1))
print(f"gpu_check: {sum(c['status'] == 'pass' for c in checks)} passed, {failed} failed, "
      f"{sum(c['status'] == 'skip' for c in checks)} skipped in {total} s; {out / 'summary.json'}")
EOF
[ "$FAILED" -eq 0 ]
