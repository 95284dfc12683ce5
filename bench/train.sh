#!/usr/bin/env bash
# Training throughput: `cnnc train` against PyTorch on the same machine, same
# model (mnist_cnn), same batch (256), same optimiser (Adam, lr 2e-4), same
# data (the bundled digits), in ONE run with alternating rounds; each side
# timed after its first (warm-up) step. Prints samples/s of both and the ratio.
#   bench/train.sh                        # 5 rounds of 20 timed steps each side
#   CNNC_TRAIN_ROUNDS=5 CNNC_TRAIN_STEPS=30 bench/train.sh
#   bench/train.sh --resnet18             # resnet18 at 32×32, 10 classes, batch 128, SGD
# Needs cargo and python3 with torch and numpy. Run it on a quiet machine:
# the load average before and after is printed with the results.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
CNNC_BENCH_MACHINE="machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, $(free -g | awk '/^Mem:/{print $2}') GiB; $(date -u '+%Y-%m-%d %H:%M UTC'); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
export CNNC_BENCH_MACHINE
echo "$CNNC_BENCH_MACHINE" >&2
exec python3 bench/train_bench.py "$@"
