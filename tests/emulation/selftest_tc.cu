// Kernels that check the emulator's tensor-core instructions against their
// PTX ISA definitions (tests/emulation.rs, `the_emulated_tensor_core_
// instructions_follow_the_ptx_isa`). They are compiled after the device
// library (cnnc::PRELUDE), so they call the same wrappers as generated code.

// One warp: D (16x8) = A (16x8, row-major) * B (8x8, [k][n]) with TF32
// operands. Each lane loads its fragments by the documented layout (groupID
// g = lane / 4, t = lane % 4): a0 A[g][t], a1 A[g+8][t], a2 A[g][t+4], a3
// A[g+8][t+4]; b0 B[t][g], b1 B[t+4][g]; D [g][2t], [g][2t+1], [g+8][2t],
// [g+8][2t+1]. `round` converts with cvt.rna first; otherwise the tensor core
// sees the raw bits (truncated to TF32).
extern "C" __global__ void __launch_bounds__(32) mma_tile(const float* __restrict__ a, const float* __restrict__ b,
                                                          float* __restrict__ d, int round) {
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  const float av[4] = {a[g * 8 + t], a[(g + 8) * 8 + t], a[g * 8 + t + 4], a[(g + 8) * 8 + t + 4]};
  const float bv[2] = {b[t * 8 + g], b[(t + 4) * 8 + g]};
  unsigned ar[4], br[2];
  for (int i = 0; i < 4; ++i) ar[i] = round ? cnnc::to_tf32(av[i]) : __float_as_uint(av[i]);
  for (int i = 0; i < 2; ++i) br[i] = round ? cnnc::to_tf32(bv[i]) : __float_as_uint(bv[i]);
  float acc[4] = {d[g * 8 + 2 * t], d[g * 8 + 2 * t + 1], d[(g + 8) * 8 + 2 * t], d[(g + 8) * 8 + 2 * t + 1]};
  cnnc::mma_tf32(acc, ar, br);
  d[g * 8 + 2 * t] = acc[0];
  d[g * 8 + 2 * t + 1] = acc[1];
  d[(g + 8) * 8 + 2 * t] = acc[2];
  d[(g + 8) * 8 + 2 * t + 1] = acc[3];
}

// One warp: x (16 rows of 8 floats, 32 bytes per row) to shared memory, then
// ldmatrix.x4 with lane l addressing row l % 16, floats (l / 16) * 4 ..: the
// four 8x4 matrices of 32-bit values rows 0-7 / 8-15 x columns 0-3 / 4-7.
// Writes each lane's four registers: out[lane * 4 + i].
extern "C" __global__ void __launch_bounds__(32) ldmatrix_x4(const float* __restrict__ x, float* __restrict__ out) {
  __align__(16) __shared__ float s[16 * 8];
  const int lane = threadIdx.x;
  for (int i = lane; i < 16 * 8; i += 32) s[i] = x[i];
  __syncwarp();
  unsigned r[4];
  cnnc::ldmatrix(r, &s[(lane % 16) * 8 + (lane / 16) * 4]);
  for (int i = 0; i < 4; ++i) out[lane * 4 + i] = __uint_as_float(r[i]);
}

// cp.async: a copy issued but not waited for has not landed (the shared
// buffer still holds what was there: here 7); wait_group 1 lands every group
// but the newest; wait_group 0 the rest; a null source fills zeros.
// Thread 0 writes out[0..6].
extern "C" __global__ void __launch_bounds__(32) cp_async_groups(const float* __restrict__ x, float* __restrict__ out) {
  __align__(16) __shared__ float s[12];
  if (threadIdx.x != 0) return;
  for (int i = 0; i < 12; ++i) s[i] = 7.0f;
  cnnc::cp_async4(&s[0], &x[0]);
  cnnc::cp_async_commit();                  // group 0: s[0]
  cnnc::cp_async16(&s[4], &x[4]);
  cnnc::cp_async_commit();                  // group 1: s[4..8]
  cnnc::cp_async16(&s[8], nullptr);         // group 2 (zeros): s[8..12]
  cnnc::cp_async_commit();
  out[0] = s[0];                            // not yet: 7
  cnnc::cp_async_wait<2>();
  out[1] = s[0];                            // group 0 landed: x[0]
  out[2] = s[4];                            // group 1 not yet: 7
  cnnc::cp_async_wait<1>();
  out[3] = s[7];                            // x[7]
  out[4] = s[8];                            // group 2 not yet: 7
  cnnc::cp_async_wait<0>();
  out[5] = s[8];                            // zero-filled
  out[6] = s[11];
}

// One warp: D (16x8) += A (16x16, row-major) * B (16x8, [k][n]) with 16-bit
// operands (bf16, or fp16 when `fp16`), each converted with cvt.rn. Each lane
// packs its fragments by the PTX ISA's m16n8k16 layout (g = lane / 4,
// t = lane % 4; the lower k in the lower half): a0 A[g][2t..2t+1], a1
// A[g+8][2t..], a2 A[g][2t+8..], a3 A[g+8][2t+8..]; b0 B[2t..2t+1][g], b1
// B[2t+8..2t+9][g]; D as for m16n8k8.
extern "C" __global__ void __launch_bounds__(32) mma16_tile(const float* __restrict__ a, const float* __restrict__ b,
                                                            float* __restrict__ d, int fp16) {
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  const int ar[4] = {g, g + 8, g, g + 8}, ac[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
  unsigned af[4], bf[2];
  for (int i = 0; i < 4; ++i) {
    const float lo = a[ar[i] * 16 + ac[i]], hi = a[ar[i] * 16 + ac[i] + 1];
    af[i] = fp16 ? cnnc::to_16x2<true>(lo, hi) : cnnc::to_16x2<false>(lo, hi);
  }
  for (int i = 0; i < 2; ++i) {
    const int k = 2 * t + 8 * i;
    bf[i] = fp16 ? cnnc::to_16x2<true>(b[k * 8 + g], b[(k + 1) * 8 + g])
                 : cnnc::to_16x2<false>(b[k * 8 + g], b[(k + 1) * 8 + g]);
  }
  float acc[4] = {d[g * 8 + 2 * t], d[g * 8 + 2 * t + 1], d[(g + 8) * 8 + 2 * t], d[(g + 8) * 8 + 2 * t + 1]};
  if (fp16) {
    cnnc::mma_16<true>(acc, af, bf);
  } else {
    cnnc::mma_16<false>(acc, af, bf);
  }
  d[g * 8 + 2 * t] = acc[0];
  d[g * 8 + 2 * t + 1] = acc[1];
  d[(g + 8) * 8 + 2 * t] = acc[2];
  d[(g + 8) * 8 + 2 * t + 1] = acc[3];
}

// cvt.rn.{bf16,f16}x2.f32 of x[2i] (low half) and x[2i+1] (high half) for
// i < n, the packed 32 bits written to out[i] (as a float's bits).
extern "C" __global__ void __launch_bounds__(32) cvt16(const float* __restrict__ x, float* __restrict__ out, int n,
                                                       int fp16) {
  for (int i = threadIdx.x; i < n; i += 32)
    out[i] = __uint_as_float(fp16 ? cnnc::to_16x2<true>(x[2 * i], x[2 * i + 1])
                                  : cnnc::to_16x2<false>(x[2 * i], x[2 * i + 1]));
}
