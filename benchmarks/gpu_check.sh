#!/usr/bin/env bash
# The GPU check of issue 13, as one prepared script for a short-lived GPU machine.
#
# Here, once (copies the Fashion-MNIST IDX files into the ignored folder .devdata/):
#     bash benchmarks/gpu_check.sh --prepare
# On the GPU machine (the device tool's `run`, carry [".devdata"], timeout leaving room for a rerun):
#     bash benchmarks/gpu_check.sh [--quick]
#
# It builds sparsekit in place, runs the GPU tests with SPARSEKIT_REQUIRE_GPU=1 (a missing GPU or
# CuPy fails them instead of skipping), trains the default Fashion-MNIST network for 5 epochs with
# --backend gpu and with --backend cpu from the same seed, runs benchmarks/gpu.py, and leaves at
# most 8 files in $OUT (the device tool brings back no more): summary.txt, build.log,
# tests-gpu.log, history-gpu.json, history-cpu.json, train.log, gpu.md, gpu.json.
# Every step runs even when an earlier one failed; summary.txt lists each step's exit status.
# STEP_TIMEOUT=S stops any one step after S seconds (exit 124), so a hang cannot eat the lease.
set -uo pipefail
cd "$(dirname "$0")/.."

DATA=.devdata/fashion-mnist
if [[ "${1:-}" == "--prepare" ]]; then
    src=${SPARSEKIT_DATA:-/usr/share/datasets/fashion-mnist}
    mkdir -p "$DATA" && cp "$src"/*-ubyte* "$DATA"/ || {
        echo "gpu_check: no Fashion-MNIST IDX files in $src (apt-get install dataset-fashion-mnist)" >&2
        exit 2
    }
    grep -qx '/.devdata/' .gitignore || echo "gpu_check: .devdata/ is not ignored by git" >&2
    echo "gpu_check: copied $(ls "$DATA" | wc -l) files to $DATA; carry \".devdata\" in the run"
    exit 0
fi
QUICK=""
EPOCHS=5
SLOW="--slow"  # the huge-layer GPU cases too
if [[ "${1:-}" == "--quick" ]]; then QUICK="--quick"; EPOCHS=1; SLOW=""; fi

OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
note() { echo "$*" | tee -a "$SUMMARY"; }
step() {  # step NAME LOG COMMAND...: run, log, record the exit status
    local name=$1 log=$2; shift 2
    local t0=$SECONDS
    timeout "${STEP_TIMEOUT:-0}" "$@" >> "$log" 2>&1
    local rc=$?
    note "$name: exit $rc in $((SECONDS - t0)) s"
    return $rc
}

note "gpu_check on $(hostname) at $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
note "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'nvidia-smi: none')"
note "$($PY -c 'import sys, cupy, numpy; print(sys.version.split()[0], "cupy", cupy.__version__, "numpy", numpy.__version__)' 2>&1 | tail -1)"

step build "$OUT/build.log" $PY -m pip install --no-build-isolation --no-deps -e . \
    || { note "build failed: see build.log"; exit 1; }

SPARSEKIT_REQUIRE_GPU=1 step "gpu tests" "$OUT/tests-gpu.log" \
    $PY -m pytest -q -p no:cacheprovider -rfE --tb=short --durations=15 -m gpu tests $SLOW
note "$(tail -n 1 "$OUT/tests-gpu.log")"

for be in gpu cpu; do
    rm -rf "runs/gpu-check-$be"
    step "train $be ($EPOCHS epochs)" "$OUT/train.log" \
        $PY -m sparsekit train --backend "$be" --epochs "$EPOCHS" --seed 0 --data-dir "$DATA" \
        --out "runs/gpu-check-$be" --no-plot --no-progress
    cp "runs/gpu-check-$be/history.json" "$OUT/history-$be.json" 2>/dev/null
done
$PY - "$OUT" >> "$SUMMARY" 2>&1 <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
try:
    gpu, cpu = (json.loads((out / f"history-{b}.json").read_text()) for b in ("gpu", "cpu"))
except (OSError, ValueError) as exc:
    print(f"accuracy curves: missing ({exc})")
    raise SystemExit
print("epoch  gpu test acc  cpu test acc  gap (points)  gpu s/epoch  cpu s/epoch")
for g, c in zip(gpu, cpu):
    print(f"{g['epoch']:5d}  {100 * g['test_acc']:11.2f}  {100 * c['test_acc']:11.2f}  "
          f"{100 * (g['test_acc'] - c['test_acc']):+11.2f}  {g['time_train']:11.3f}  "
          f"{c['time_train']:11.3f}")
EOF

# gpu.py finds the real data through SPARSEKIT_DATA (it fell back to random data without it)
SPARSEKIT_DATA="$PWD/$DATA" step "benchmarks/gpu.py $QUICK" "$OUT/train.log" $PY benchmarks/gpu.py $QUICK
for f in benchmarks/results/gpu${QUICK:+-quick}.md benchmarks/results/gpu${QUICK:+-quick}.json; do
    [[ -f "$f" ]] && cp "$f" "$OUT/$(basename "${f/-quick/}")"
done
note "done; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
