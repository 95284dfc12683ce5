// Kernels that exercise the emulator itself (tests/emulation.rs,
// `the_emulator_keeps_cuda_semantics`): each checks one promise of
// cuda_emulation.h with a result that would be wrong without it.

// Block sum through shared memory: wrong unless __syncthreads() is a real
// barrier and __shared__ is per block (blocks run concurrently).
extern "C" __global__ void __launch_bounds__(256) block_sum(const float* __restrict__ x, float* __restrict__ y, int n) {
  __shared__ float partial[256];
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  partial[threadIdx.x] = i < n ? x[i] : 0.0f;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) y[blockIdx.x] = partial[0];
}

// Reads a neighbour's shared value without a barrier: right only when the
// lower thread happens to run first. The harness's reverse order exposes it.
extern "C" __global__ void racy_shift(const float* __restrict__ x, float* __restrict__ y) {
  __shared__ float s[64];
  const int t = threadIdx.x;
  s[t] = x[t];
  y[t] = t > 0 ? s[t - 1] : 0.0f;  // missing __syncthreads() before this read
}

// Reverses each block's slice through dynamic shared memory.
extern "C" __global__ void reverse_dynamic(const float* __restrict__ x, float* __restrict__ y) {
  extern __shared__ __align__(16) float tile[];
  const int t = threadIdx.x, base = blockIdx.x * blockDim.x;
  tile[t] = x[base + t];
  __syncthreads();
  y[base + t] = tile[blockDim.x - 1 - t];
}

// Warp sum with shuffles, then one atomicAdd per warp.
extern "C" __global__ void warp_sum(const float* __restrict__ x, float* __restrict__ y, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  float v = i < n ? x[i] : 0.0f;
  for (int offset = warpSize / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  const unsigned lanes = __ballot_sync(0xffffffffu, i < n);
  if ((threadIdx.x & 31) == 0 && lanes != 0) atomicAdd(y, v);
}

// Writes each thread's coordinates: 2-D blocks in a 3-D grid.
extern "C" __global__ void coordinates(float* __restrict__ y) {
  const int block = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  const int thread = threadIdx.y * blockDim.x + threadIdx.x;
  const int i = block * blockDim.x * blockDim.y + thread;
  y[4 * i + 0] = threadIdx.x + 100.0f * threadIdx.y;
  y[4 * i + 1] = blockIdx.x;
  y[4 * i + 2] = blockIdx.y;
  y[4 * i + 3] = blockIdx.z;
}

// A barrier only the even threads reach: a GPU hangs; the emulator must say so.
extern "C" __global__ void divergent_barrier(float* __restrict__ y) {
  if (threadIdx.x % 2 == 1) return;
  __syncthreads();
  y[threadIdx.x] = 1.0f;
}

// A full-mask shuffle after half the warp exited: undefined on a GPU, an error here.
extern "C" __global__ void shuffle_after_exit(float* __restrict__ y) {
  if (threadIdx.x >= 16) return;
  y[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.0f, 1);
}

// The math the generated kernels use, one value each.
extern "C" __global__ void math(float* __restrict__ y) {
  const float v = 0.75f;
  y[0] = fmaf(v, 2.0f, 1.0f);
  y[1] = expf(v);
  y[2] = expm1f(v);
  y[3] = tanhf(v);
  y[4] = erff(v);
  y[5] = logf(v);
  y[6] = powf(v, 1.5f);
  y[7] = fmaxf(v, -v) + fminf(v, -v);
  y[8] = __int_as_float(0x3f800000);
  y[9] = (float)(min(3, 4) + max(3, 4));
}
