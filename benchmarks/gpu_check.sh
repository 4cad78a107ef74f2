#!/usr/bin/env bash
# The one GPU check for a lent machine: the bench package's gpu suite (see benchmarks/gpu_check.py).
#
#   bash benchmarks/gpu_check.sh                 # from anywhere; results in $OUT (or outputs/gpu_check)
#   bash benchmarks/gpu_check.sh --cpu-smoke     # the same script, tiny sizes, on a CPU
#
# hw2rt need not be installed: the repository root goes on PYTHONPATH. Hard wall-clock cap:
# 470 s (the Python side budgets 420 s and writes its JSON after every section, so a killed
# run still leaves its results).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
OUT="${OUT:-outputs/gpu_check}"
export OUT
mkdir -p "$OUT"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
fi
timeout --signal=TERM --kill-after=15 "${GPU_CHECK_TIMEOUT:-470}" "$PY" benchmarks/gpu_check.py --out "$OUT" "$@"
rc=$?
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    echo "gpu_check: stopped by the ${GPU_CHECK_TIMEOUT:-470} s cap; partial results in $OUT/gpu_check.json" >&2
fi
exit "$rc"
