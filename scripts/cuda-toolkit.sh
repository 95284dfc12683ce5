#!/usr/bin/env bash
# Installs the pinned CUDA compiler (nvcc, ptxas and the runtime headers it
# needs) and the SASS disassembler (cuobjdump with nvdisasm, which
# tests/codegen.rs reads to check that tensor-core kernels hold HMMA
# instructions) from PyPI into a folder of its own, once per version, and
# prints the path of nvcc. Used by .ci/run and scripts/build-gpu-bins.sh:
#
#   CNNC_NVCC="$(bash scripts/cuda-toolkit.sh)"
#
# A folder of its own (pip --target) rather than the machine's site-packages:
# there, other wheels (a user-site torch with newer CUDA libraries, say) can
# shadow parts of the namespace package `nvidia`, and nvcc finds
# `cuda_runtime.h` (from nvidia-cuda-runtime) only beside its own include
# folder. A half-finished install is never used: it is moved into place only
# when complete. 13.0 because the GPU machines run driver 580 (CUDA 13.0);
# cuobjdump and nvdisasm start at 13.2 on PyPI, and read 13.0's cubins.
set -euo pipefail
version=13.0.88
dir="${CNNC_CUDA_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cnnc/cuda-$version}"
tools=13.2.51
nvcc="$dir/nvidia/cu13/bin/nvcc"
if [ ! -x "$nvcc" ] || [ ! -x "$dir/nvidia/cu13/bin/cuobjdump" ] || [ ! -x "$dir/nvidia/cu13/bin/nvdisasm" ]; then
  rm -rf "$dir.partial"
  python3 -m pip install --quiet --disable-pip-version-check --target "$dir.partial" \
    "nvidia-cuda-nvcc==$version" "nvidia-cuda-crt==$version" \
    "nvidia-nvvm==$version" "nvidia-cuda-runtime==$version" \
    "nvidia-cuda-cuobjdump==$tools" "nvidia-cuda-nvdisasm==$tools" >&2
  rm -rf "$dir"
  mv "$dir.partial" "$dir"
fi
echo "$nvcc"
