#!/usr/bin/env bash
# CPU benchmark: cnnc-built binaries (--device cpu) against PyTorch eager, same
# weights, same inputs, alternating rounds in one run; numerics and peak memory
# too. Builds the binaries it needs (scripts/build-gpu-bins.sh, into gpu/bin)
# when they are missing or older than their sources, or all of them with
# CNNC_REBUILD=1.
#   bench/cpu.sh                      # every case of the issues (about 7 minutes on 2 quiet cores)
#   CNNC_BENCH_CASES="resnet18:1" bench/cpu.sh
# Results: stdout and $CNNC_BENCH_OUT/results.md (default /tmp/cnnc-cpu-bench).
# Needs cargo, python3 with torch, torchvision and numpy, and /usr/bin/time.
# Run it on a quiet machine: the load average is printed with the results.
set -euo pipefail
cd "$(dirname "$0")/.."
cases="${CNNC_BENCH_CASES:-mnist_cnn:1 mnist_cnn:256 lenet5:1 lenet5:256 resnet18:1 resnet18:16 resnet50:1 resnet50:16 vgg16:1 mobilenet_v2:1 efficientnet_b0:1 convnext_tiny:1}"
export CNNC_BENCH_CASES="$cases"
models="$(for c in $cases; do echo "${c%%:*}"; done | sort -u | tr '\n' ' ')"
missing=""
for m in $models; do
  # Missing, forced, or older than the model or any source it is built from.
  if [ "${CNNC_REBUILD:-0}" = 1 ] || [ ! -x "gpu/bin/$m" ] ||
     [ -n "$(find "models/$m.cnn" runtime compiler Cargo.toml Cargo.lock -newer "gpu/bin/$m" -type f -print -quit)" ]; then
    missing="$missing $m"
  fi
done
if [ -n "$missing" ]; then
  echo "building:$missing" >&2
  # The binaries embed cubins when nvcc is found, the CUDA source otherwise;
  # either way their CPU path is the same.
  scripts/build-gpu-bins.sh $missing >&2
fi
# `cnnc run` (the reference evaluator) checks the binaries' numerics.
cargo build --release --locked --quiet
CNNC_BENCH_MACHINE="machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(free -g | awk '/^Mem:/{print $2}') GiB; $(date -u '+%Y-%m-%d %H:%M UTC'); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
export CNNC_BENCH_MACHINE
echo "$CNNC_BENCH_MACHINE" >&2
exec python3 bench/cpu_bench.py
