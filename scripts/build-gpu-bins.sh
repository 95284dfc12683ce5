#!/usr/bin/env bash
# Builds the binaries scripts/gpu-check.sh runs, into gpu/bin/<model>.
# Needs cargo and nvcc (CNNC_NVCC, PATH, or the pinned one that
# scripts/cuda-toolkit.sh installs from PyPI); cubins for sm_80 and sm_90.
set -euo pipefail
cd "$(dirname "$0")/.."
models="${*:-mnist_cnn lenet5 resnet18 resnet50 googlenet vgg16 alexnet mobilenet_v2 efficientnet_b0 convnext_tiny}"
if [ -z "${CNNC_NVCC:-}" ] && ! command -v nvcc >/dev/null; then
  CNNC_NVCC="$(bash scripts/cuda-toolkit.sh)"
  export CNNC_NVCC
fi
cargo build --release --locked --quiet
# One target directory for every model's driver crate, so dependencies build once.
export CARGO_TARGET_DIR="${CNNC_BUILD_TARGET_DIR:-$PWD/target/cnnc-build}"
mkdir -p gpu/bin
# gpu/bin/<model> is the default build (--precision tf32); <model>.fp32 and
# <model>.tf32x3 are the strict and the split-operand builds, <model>.bf16 and
# <model>.fp16 the 16-bit tensor-core builds (only for the models of
# CNNC_GPU_HALF_MODELS, to keep the GPU check within its time), which
# scripts/gpu_check.py compares and times side by side.
precisions="${CNNC_GPU_PRECISIONS:-tf32 fp32 tf32x3 bf16 fp16}"
half_models=" ${CNNC_GPU_HALF_MODELS:-resnet18 resnet50 vgg16 mobilenet_v2 convnext_tiny} "
for m in $models; do
  for p in $precisions; do
    case "$p" in
      bf16 | fp16) [[ "$half_models" == *" $m "* ]] || continue ;;
    esac
    suffix=".$p"
    [ "$p" = tf32 ] && suffix=""
    echo "building $m ($p)"
    bin="$(./target/release/cnnc build "models/$m.cnn" --precision "$p" -o "gpu/crates/$m$suffix")"
    cp "$bin" "gpu/bin/$m$suffix.tmp" && mv "gpu/bin/$m$suffix.tmp" "gpu/bin/$m$suffix"
  done
done
ls -la gpu/bin
