#!/usr/bin/env bash
# The GPU check (rung 7): run on a machine with an NVIDIA GPU and PyTorch, no
# package registry needed. Build the binaries first, on any machine with
# cargo and nvcc:  scripts/build-gpu-bins.sh  (writes gpu/bin/<model>), carry
# gpu/ over, then run this. Results go to $OUT/report.md (default
# /tmp/cnnc-gpu-check); copy them into bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export OUT="${OUT:-/tmp/cnnc-gpu-check}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
python3 scripts/gpu_check.py 2>&1 | tee "$OUT/log.txt"
