#!/usr/bin/env bash
# The accelerator check of issue 10: writes $OUT/device_check.json (see device_check.py).
#   OUT=/tmp/x bash experiments/benchmarks/device_check.sh [--tiny]   (or DEVICE_CHECK_TINY=1)
# Runs from the repository root; PYTHON overrides the interpreter. Meant to finish in under
# 8 minutes on one accelerator (the Python side skips sections past --budget_s, 420 s).
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${OUT:?set OUT to the folder the JSON goes to}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python}"
args=("$@")
if [[ "${DEVICE_CHECK_TINY:-0}" == "1" ]]; then args+=(--tiny); fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.csv" || true
fi
"$PYTHON" -m experiments.benchmarks.device_check --out "$OUT/device_check.json" "${args[@]}" \
  2> >(tee "$OUT/device_check.log" >&2)
