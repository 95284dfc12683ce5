// ---------------------------------------------------------------------------
// cnnc device library (the same in every generated file)
// ---------------------------------------------------------------------------
namespace cnnc {

// How activations are stored in global memory: `act`. With --precision fp32,
// tf32 and tf32x3 it is float. A bf16 or fp16 build defines CNNC_ACT16 (1
// for bfloat16, 2 for IEEE half) before this library: `act` is then a 16-bit
// value that reads as a float and rounds a float to nearest (ties to even)
// when one is assigned to it, so a kernel reads and writes activations as it
// would floats and computes in FP32 between the two. Only the arena's
// activations have this type: weights, biases and the split-K workspace stay
// f32.
//
// from16: the value of 16 bits in the build's 16-bit format (exact): how a
// 16-bit activation, and a 16-bit weight (Weights16), reads. Bfloat16 unless
// CNNC_ACT16 is 2; an f32 build never calls it.
__device__ __forceinline__ float from16(unsigned short bits) {
#if !defined(CNNC_ACT16) || CNNC_ACT16 == 1
  return __uint_as_float(static_cast<unsigned>(bits) << 16);
#elif defined(__CUDA_ARCH__)
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(bits));
  return f;
#elif defined(CNNC_EMULATION)
  return static_cast<float>(cnnc_emu::f16_operand(bits));
#else
  (void)bits;
  return 0.0f;
#endif
}
#if !defined(CNNC_ACT16)
typedef float act;
#else
struct act {
  unsigned short bits;
  __device__ __forceinline__ operator float() const { return from16(bits); }
  __device__ __forceinline__ act& operator=(float v) {
#if defined(__CUDA_ARCH__) && CNNC_ACT16 == 1
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(bits) : "f"(v));
#elif defined(__CUDA_ARCH__)
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(bits) : "f"(v));
#elif defined(CNNC_EMULATION)
    bits = CNNC_ACT16 == 1 ? cnnc_emu::cvt_rn_bf16(v) : cnnc_emu::cvt_rn_f16(v);
#else
    (void)v;
#endif
    return *this;
  }
};
#endif

// Activations, as PyTorch defines them: each definition is its row's text in
// the table of activations (runtime/src/activation.rs), which a test checks.
// Comparisons rather than fmaxf/fminf, which drop NaN: PyTorch's relu, relu6
// and hardsigmoid keep it. Hardswish divides before it multiplies, so that
// v * 6 cannot overflow for v near FLT_MAX.
__device__ __forceinline__ float relu(float v) { return v < 0.0f ? 0.0f : v; }
__device__ __forceinline__ float relu6(float v) { return v < 0.0f ? 0.0f : (v > 6.0f ? 6.0f : v); }
__device__ __forceinline__ float leaky_relu(float v, float slope) { return v >= 0.0f ? v : v * slope; }
__device__ __forceinline__ float elu(float v, float alpha) { return v > 0.0f ? v : alpha * expm1f(v); }
__device__ __forceinline__ float sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }
__device__ __forceinline__ float silu(float v) { return v / (1.0f + expf(-v)); }
__device__ __forceinline__ float gelu(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); }
__device__ __forceinline__ float gelu_tanh(float v) {
  return 0.5f * v * (1.0f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)));
}
__device__ __forceinline__ float hardsigmoid(float v) {
  const float r = (v + 3.0f) / 6.0f;
  return r < 0.0f ? 0.0f : (r > 1.0f ? 1.0f : r);
}
__device__ __forceinline__ float hardswish(float v) {
  const float r = v + 3.0f;
  return v * ((r < 0.0f ? 0.0f : (r > 6.0f ? 6.0f : r)) / 6.0f);
}

// Padding modes: 0 zeros, 1 reflect, 2 replicate, 3 circular. Returns the
// source index of padded coordinate i, or -1 where zeros padding reads 0.
template <int MODE>
__device__ __forceinline__ int source_index(int i, int size) {
  if (MODE == 0) return (i < 0 || i >= size) ? -1 : i;
  if (MODE == 1) { if (size == 1) return 0; const int period = 2 * (size - 1); int m = i % period; if (m < 0) m += period; return m < size ? m : period - m; }
  if (MODE == 2) return i < 0 ? 0 : (i >= size ? size - 1 : i);
  int m = i % size; return m < 0 ? m + size : m;
}

// A convolution (or a linear layer, as a 1x1 convolution on 1x1 maps) seen as
// a GEMM per group: A = weights [M][K], B = the input under each filter tap
// [K][N] (gathered on the fly, never materialised), N = batch * OH * OW.
template <int IC, int IH, int IW, int OC, int OH, int OW, int KH, int KW, int SH, int SW,
          int PT, int PL, int DH, int DW, int GROUPS, int MODE, bool GLOBAL_POOL, int IN_CT, int IN_CO>
struct Conv {
  static constexpr int G = GROUPS;
  static constexpr int ICG = IC / GROUPS;
  static constexpr int M = OC / GROUPS;
  static constexpr int K = GLOBAL_POOL ? IC : ICG * KH * KW;
  static constexpr int P = OH * OW;
  static constexpr bool GLOBAL_POOL_B = GLOBAL_POOL;
  static constexpr bool SCALED = false;  // see Gated and Normed
  static constexpr bool W16 = false;     // see Weights16
  static constexpr int IN_P = IH * IW;
  // Whether every B[k][n] is a pixel of the input, none padding, and rows
  // are whole input channels (one group): what Normed needs.
  static constexpr bool UNPADDED = !GLOBAL_POOL && GROUPS == 1 && PT == 0 && PL == 0 &&
                                   (OH - 1) * SH + (KH - 1) * DH < IH && (OW - 1) * SW + (KW - 1) * DW < IW;
  // The input pixel (y * IW + x) that B[k][n] reads, for an UNPADDED convolution.
  static __device__ __forceinline__ int source_pixel(int k, int n) {
    const int p = n % P;
    const int tap = k % (KH * KW);
    const int oy = p / OW, ox = p - (p / OW) * OW;
    return (oy * SH + (tap / KW) * DH) * IW + ox * SW + (tap % KW) * DW;
  }
  // B[k][n] for group g.
  static __device__ __forceinline__ float load_b(const act* __restrict__ x, int g, int k, int n) {
    const int image = n / P;
    const int p = n - image * P;
    if (GLOBAL_POOL) {  // the mean of input map k (adaptive_avgpool(1) fused in)
      const act* map = x + ((long)image * IN_CT + IN_CO + k) * (IH * IW);
      float s = 0.0f;
      for (int i = 0; i < IH * IW; ++i) s += map[i];
      return s * (1.0f / (IH * IW));
    }
    const int ic = g * ICG + k / (KH * KW);
    const int tap = k % (KH * KW);
    const int oy = p / OW, ox = p - (p / OW) * OW;
    const int iy = source_index<MODE>(oy * SH - PT + (tap / KW) * DH, IH);
    const int ix = source_index<MODE>(ox * SW - PL + (tap % KW) * DW, IW);
    if (iy < 0 || ix < 0) return 0.0f;
    return x[((long)image * IN_CT + IN_CO + ic) * (IH * IW) + iy * IW + ix];
  }
  // Where B[k][n] of group g is read from, or null where it is zero padding
  // (the tensor-core tiles copy it with cp.async; not for GLOBAL_POOL).
  static __device__ __forceinline__ const act* src_b(const act* __restrict__ x, int g, int k, int n) {
    const int image = n / P;
    const int p = n - image * P;
    const int ic = g * ICG + k / (KH * KW);
    const int tap = k % (KH * KW);
    const int oy = p / OW, ox = p - (p / OW) * OW;
    const int iy = source_index<MODE>(oy * SH - PT + (tap / KW) * DH, IH);
    const int ix = source_index<MODE>(ox * SW - PL + (tap % KW) * DW, IW);
    if (iy < 0 || ix < 0) return nullptr;
    return x + ((long)image * IN_CT + IN_CO + ic) * (IH * IW) + iy * IW + ix;
  }
};

// A convolution whose input channels are scaled as they are read: B[k][n]
// times s[image, channel of k], with s one value per (image, input channel)
// (a gate's [C, 1, 1] factor, so its multiply never writes the gated map).
// SCALED kernels transform B with transform(): as each value is read
// (gemm), or in shared memory once a slice has landed (transform_b_slice).
template <class Base>
struct Gated : Base {
  static constexpr bool SCALED = true;
  // The factor of B[k][n] of group g: that of column n's image and row k's channel.
  static __device__ __forceinline__ float factor(const act* __restrict__ s, int g, int k, int n) {
    constexpr int TAPS = Base::K / Base::ICG;
    const int image = n / Base::P;
    return s[(long)image * (Base::G * Base::ICG) + g * Base::ICG + k / TAPS];
  }
  static __device__ __forceinline__ float transform(float v, const act* __restrict__ s, int g, int k, int n) {
    return v * factor(s, g, k, n);
  }
  static __device__ __forceinline__ float load_b(const act* __restrict__ x, const act* __restrict__ s, int g,
                                                 int k, int n) {
    return transform(Base::load_b(x, g, k, n), s, g, k, n);
  }
};

// A convolution that normalises its input as it reads it: a layer norm over
// channels moved into its reader. B[k][n] becomes (B[k][n] - mean) * inv,
// with the mean and 1/sqrt(var + eps) of the input pixel it reads, at
// channels 0 and 1 of s, a [2, IH, IW] map per image (S_CT channels in its
// buffer from S_CO); the layer norm's weight and bias are folded into the
// convolution's weights and bias at load. The same arithmetic as the layer
// norm kernel's (x - mean) * inv before its weight and bias. Only without
// padding (a padded zero would be normalised) and with one group.
template <class Base, int S_CT, int S_CO>
struct Normed : Base {
  static_assert(Base::UNPADDED, "normalising a padded or grouped convolution's input is not supported");
  static constexpr bool SCALED = true;
  static __device__ __forceinline__ float transform(float v, const act* __restrict__ s, int g, int k, int n) {
    (void)g;
    const int image = n / Base::P;
    const act* at = s + ((long)image * S_CT + S_CO) * Base::IN_P + Base::source_pixel(k, n);
    return (v - at[0]) * at[Base::IN_P];
  }
  static __device__ __forceinline__ float load_b(const act* __restrict__ x, const act* __restrict__ s, int g,
                                                 int k, int n) {
    return transform(Base::load_b(x, g, k, n), s, g, k, n);
  }
};

// A GEMM whose weights the GPU holds only as their 16-bit copy: in a bf16
// or fp16 build, a layer that runs on 16-bit tensor cores at some batch size
// (Prepared::WithHalf; the driver uploads the copy alone, rows of KP = K
// rounded up to 8 values, so each row starts 16-byte aligned). Every kernel
// of the layer reads them from it: gemm_tc16, and gemm and gemv on CUDA
// cores (4 at a time with one 8-byte load when K is a multiple of 4).
template <class Base>
struct Weights16 : Base {
  static constexpr bool W16 = true;
  static constexpr int KP = (Base::K + 7) / 8 * 8;
};

// 16-byte loads. Every call site is aligned by construction (the kernel IR
// vectorises only when K is a multiple of 4 and the offset a multiple of 4
// floats; weights and shared arrays start 16-byte aligned); CNNC_CHECK_ALIGN is
// empty on the GPU, and the CPU emulation defines it to verify that.
#ifndef CNNC_CHECK_ALIGN
#define CNNC_CHECK_ALIGN(p)
#endif
__device__ __forceinline__ float4 load4(const float* p) {
  CNNC_CHECK_ALIGN(p);
  return *reinterpret_cast<const float4*>(p);
}
// 4 consecutive 16-bit weights with one 8-byte load (K a multiple of 4 and
// each 16-bit row 16-byte aligned, so p is 8-byte aligned; CNNC_CHECK_ALIGN8
// verifies it in the emulation).
#ifndef CNNC_CHECK_ALIGN8
#define CNNC_CHECK_ALIGN8(p)
#endif
__device__ __forceinline__ float4 load_half4(const unsigned short* p) {
  CNNC_CHECK_ALIGN8(p);
  const unsigned long long v = *reinterpret_cast<const unsigned long long*>(p);
  return make_float4(from16(v & 0xffffu), from16((v >> 16) & 0xffffu), from16((v >> 32) & 0xffffu),
                     from16((v >> 48) & 0xffffu));
}
__device__ __forceinline__ float component(const float4& v, int e) {
  return e == 0 ? v.x : (e == 1 ? v.y : (e == 2 ? v.z : v.w));
}

// Which of a tile's BN columns is a thread's j-th: with TN a multiple of 4,
// its columns come in runs of 4, one run in each of the TN/4 parts of the
// tile (a warp's 16-byte shared-memory reads are then contiguous, free of
// bank conflicts); otherwise TN consecutive columns.
template <int BN, int TN>
__device__ __forceinline__ int column(int col, int j) {
  if constexpr (TN % 4 == 0) return (j / 4) * (BN / (TN / 4)) + col * 4 + j % 4;
  return col * TN + j;
}

// The implicit GEMM: each block computes a BM x BN tile of the output through
// BK-deep shared-memory tiles; each thread accumulates a TM x TN block in
// registers. The shared tiles are double-buffered and the global loads of the
// next K-slice go to registers before the current slice is multiplied, so
// they are in flight during the arithmetic; one barrier per slice. With VEC_A
// each thread reads 4 consecutive weights of a row with one 16-byte load. The
// weight tile is padded by 4 floats per row, so the transposing stores do not
// all fall into one bank. The epilogue (bias, activations, residual adds) runs
// on the registers before the only write to memory.
//
// With SPLIT > 1, K is split: block z = split * GROUPS + group sums only its
// split's run of whole BK-slices (so the vector loads stay aligned), writes
// its partial sums to the workspace `ws` and counts itself in `counters[tile]`;
// the tile's last block to arrive adds every split's partials in split order
// (the same sum whichever block is last), runs the epilogue and resets the
// counter for the next launch (the driver zeroes the counters once).
template <class C, int BM, int BN, int BK, int TM, int TN, bool VEC_A, int SPLIT, class Epi, bool HAS_BIAS,
          int OUT_CT, int OUT_CO>
__device__ __forceinline__ void gemm(const act* __restrict__ x, const float* __restrict__ w,
                                     const float* __restrict__ bias, const act* __restrict__ r0,
                                     act* __restrict__ y, int batch, float* __restrict__ ws,
                                     unsigned* __restrict__ counters, const act* __restrict__ s = nullptr) {
  constexpr int THREADS = (BM / TM) * (BN / TN);
  constexpr int SLICES = (C::K + BK - 1) / BK;
  constexpr int PER_SPLIT = (SLICES + SPLIT - 1) / SPLIT;  // slices per split
  static_assert(SPLIT == 1 || (SPLIT - 1) * PER_SPLIT < SLICES, "every split has at least one slice");
  constexpr int A_VEC = VEC_A ? 4 : 1;
  constexpr int A_LOADS = BM * BK / A_VEC;
  constexpr int A_ITERS = (A_LOADS + THREADS - 1) / THREADS;
  constexpr int B_ITERS = (BK * BN + THREADS - 1) / THREADS;
  constexpr int APAD = 4;
  __align__(16) __shared__ float As[2][BK][BM + APAD];
  __align__(16) __shared__ float Bs[2][BK][BN];
  const int n_total = batch * C::P;
  const int g = blockIdx.z % C::G;
  const int split = blockIdx.z / C::G;
  const int k_begin = split * PER_SPLIT * BK;
  const int k_end = min(C::K, k_begin + PER_SPLIT * BK);
  const int m0 = blockIdx.y * BM;
  const int n0 = blockIdx.x * BN;
  const int tid = threadIdx.x;
  const int row = tid / (BN / TN);  // which TM-row block of the tile
  const int col = tid % (BN / TN);  // which TN-column block
  float4 ra[A_ITERS];
  float rb[B_ITERS];
  // A: consecutive threads read consecutive k of one weight row (contiguous).
  auto load_a = [&](int k0) {
#pragma unroll
    for (int j = 0; j < A_ITERS; ++j) {
      const int f = tid + j * THREADS;
      const int mm = f / (BK / A_VEC), kk = (f % (BK / A_VEC)) * A_VEC;
      const int m = m0 + mm, k = k0 + kk;
      const bool in = f < A_LOADS && m < C::M && k < k_end;
      if constexpr (C::W16) {
        const unsigned short* p = reinterpret_cast<const unsigned short*>(w) + ((long)g * C::M + m) * C::KP + k;
        if (VEC_A) {
          ra[j] = in ? load_half4(p) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        } else {
          ra[j].x = in ? from16(*p) : 0.0f;
        }
      } else {
        const float* p = w + ((long)g * C::M + m) * C::K + k;
        if (VEC_A) {
          ra[j] = in ? load4(p) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        } else {
          ra[j].x = in ? *p : 0.0f;
        }
      }
    }
  };
  // B: consecutive threads read consecutive output pixels.
  auto load_b = [&](int k0) {
#pragma unroll
    for (int j = 0; j < B_ITERS; ++j) {
      const int i = tid + j * THREADS;
      const int kk = i / BN, nn = i % BN;
      const int k = k0 + kk, n = n0 + nn;
      if constexpr (C::SCALED) {
        rb[j] = (i < BK * BN && k < k_end && n < n_total) ? C::load_b(x, s, g, k, n) : 0.0f;
      } else {
        rb[j] = (i < BK * BN && k < k_end && n < n_total) ? C::load_b(x, g, k, n) : 0.0f;
      }
    }
  };
  auto store = [&](int buf) {
#pragma unroll
    for (int j = 0; j < A_ITERS; ++j) {
      const int f = tid + j * THREADS;
      if (f >= A_LOADS) continue;
      const int mm = f / (BK / A_VEC), kk = (f % (BK / A_VEC)) * A_VEC;
#pragma unroll
      for (int e = 0; e < A_VEC; ++e) As[buf][kk + e][mm] = component(ra[j], e);
    }
#pragma unroll
    for (int j = 0; j < B_ITERS; ++j) {
      const int i = tid + j * THREADS;
      if (i < BK * BN) Bs[buf][i / BN][i % BN] = rb[j];
    }
  };
  float acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;
  load_a(k_begin);
  load_b(k_begin);
  store(0);
  __syncthreads();
  for (int k0 = k_begin, buf = 0; k0 < k_end; k0 += BK, buf ^= 1) {
    const bool more = k0 + BK < k_end;
    if (more) {  // the next slice's loads overlap this slice's arithmetic
      load_a(k0 + BK);
      load_b(k0 + BK);
    }
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      float a[TM], b[TN];
      if constexpr (TM % 4 == 0) {
#pragma unroll
        for (int i = 0; i < TM; i += 4) {
          const float4 v = load4(&As[buf][kk][row * TM + i]);
          a[i] = v.x; a[i + 1] = v.y; a[i + 2] = v.z; a[i + 3] = v.w;
        }
      } else {
#pragma unroll
        for (int i = 0; i < TM; ++i) a[i] = As[buf][kk][row * TM + i];
      }
      if constexpr (TN % 4 == 0) {
#pragma unroll
        for (int j = 0; j < TN; j += 4) {
          const float4 v = load4(&Bs[buf][kk][column<BN, TN>(col, j)]);
          b[j] = v.x; b[j + 1] = v.y; b[j + 2] = v.z; b[j + 3] = v.w;
        }
      } else {
#pragma unroll
        for (int j = 0; j < TN; ++j) b[j] = Bs[buf][kk][col * TN + j];
      }
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    // The other buffer was last read before the previous barrier: safe to fill.
    if (more) store(buf ^ 1);
    __syncthreads();
  }
  if constexpr (SPLIT > 1) {
    // Partials laid out [split][tile][TM * TN][THREADS]: a warp's stores and loads are contiguous.
    __shared__ bool last;
    const long tiles = (long)gridDim.x * gridDim.y * C::G;
    const long tile = ((long)g * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    float* mine = ws + ((long)split * tiles + tile) * (BM * BN) + tid;
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) mine[(i * TN + j) * THREADS] = acc[i][j];
    __threadfence();  // the partials are visible to every block before the count says so
    __syncthreads();
    if (tid == 0) {
      last = atomicAdd(&counters[tile], 1u) == SPLIT - 1;
      if (last) counters[tile] = 0u;  // every other split has counted: ready for the next launch
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;
    for (int s = 0; s < SPLIT; ++s) {
      const float* part = ws + ((long)s * tiles + tile) * (BM * BN) + tid;
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] += __ldcg(part + (i * TN + j) * THREADS);  // L2, not a stale L1 line
    }
  } else {
    (void)ws;
    (void)counters;
  }
#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int m = m0 + row * TM + i;
    if (m >= C::M) continue;
    const int oc = g * C::M + m;
    const float b = HAS_BIAS ? bias[oc] : 0.0f;
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int n = n0 + column<BN, TN>(col, j);
      if (n >= n_total) continue;
      const int image = n / C::P;
      const int p = n - image * C::P;
      const float v = Epi::apply(acc[i][j] + b, image, oc, p, r0);
      y[((long)image * OUT_CT + OUT_CO + oc) * C::P + p] = v;
    }
  }
}

// A linear layer at a small batch as a matrix-vector product, bound by
// reading the weights once: each warp owns ROWS output features for IMAGES
// images (block x takes images x*IMAGES onwards, so any batch is computed
// right; the driver uses it while one block covers the batch); the block
// stages CHUNK inputs of each of its images in shared memory
// (through C::load_b, so a fused global average pool works as in gemm); each
// lane streams 4 consecutive weights per load (VEC4: K is a multiple of 4) and
// keeps ROWS x IMAGES partial sums; warp shuffles add them up and lane 0
// applies bias and epilogue. grid = [ceil(batch / IMAGES), ceil(M / (WARPS * ROWS))].
template <class C, int WARPS, int ROWS, int IMAGES, int CHUNK, bool VEC4, class Epi, bool HAS_BIAS, int OUT_CT,
          int OUT_CO>
__device__ __forceinline__ void gemv(const act* __restrict__ x, const float* __restrict__ w,
                                     const float* __restrict__ bias, const act* __restrict__ r0,
                                     act* __restrict__ y, int batch) {
  static_assert(C::P == 1, "gemv is for linear layers (1x1 outputs)");
  constexpr int STEP = VEC4 ? 128 : 32;  // floats of a row a warp reads per step
  __align__(16) __shared__ float xs[IMAGES][CHUNK];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int m_first = (blockIdx.y * WARPS + warp) * ROWS;
  const int b0 = blockIdx.x * IMAGES;
  const int images = min(IMAGES, batch - b0);
  float acc[ROWS][IMAGES];
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int b = 0; b < IMAGES; ++b) acc[r][b] = 0.0f;
  for (int k0 = 0; k0 < C::K; k0 += CHUNK) {
    for (int i = threadIdx.x; i < IMAGES * CHUNK; i += WARPS * 32) {
      const int b = i / CHUNK, kk = i % CHUNK, k = k0 + kk;
      xs[b][kk] = (b < images && k < C::K) ? C::load_b(x, 0, k, b0 + b) : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (int s = 0; s < CHUNK / STEP; ++s) {
      const int kk = s * STEP + lane * (VEC4 ? 4 : 1);
      if (k0 + kk >= C::K) break;
      float4 wv[ROWS];
#pragma unroll
      for (int r = 0; r < ROWS; ++r) {
        const int m = min(m_first + r, C::M - 1);  // rows past M compute a copy, never written
        if constexpr (C::W16) {
          const unsigned short* p = reinterpret_cast<const unsigned short*>(w) + (long)m * C::KP + k0 + kk;
          if (VEC4) wv[r] = load_half4(p); else wv[r].x = from16(*p);
        } else {
          const float* p = w + (long)m * C::K + k0 + kk;
          if (VEC4) wv[r] = load4(p); else wv[r].x = *p;
        }
      }
#pragma unroll
      for (int b = 0; b < IMAGES; ++b) {
        if (b >= images) break;
        if (VEC4) {
          const float4 xv = load4(&xs[b][kk]);
#pragma unroll
          for (int r = 0; r < ROWS; ++r) {
            acc[r][b] = fmaf(wv[r].x, xv.x, acc[r][b]);
            acc[r][b] = fmaf(wv[r].y, xv.y, acc[r][b]);
            acc[r][b] = fmaf(wv[r].z, xv.z, acc[r][b]);
            acc[r][b] = fmaf(wv[r].w, xv.w, acc[r][b]);
          }
        } else {
          const float xv = xs[b][kk];
#pragma unroll
          for (int r = 0; r < ROWS; ++r) acc[r][b] = fmaf(wv[r].x, xv, acc[r][b]);
        }
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
#pragma unroll
    for (int b = 0; b < IMAGES; ++b)
#pragma unroll
      for (int offset = 16; offset > 0; offset /= 2) acc[r][b] += __shfl_xor_sync(0xffffffffu, acc[r][b], offset);
  if (lane != 0) return;
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    const int m = m_first + r;
    if (m >= C::M) continue;
    const float bv = HAS_BIAS ? bias[m] : 0.0f;
#pragma unroll
    for (int b = 0; b < IMAGES; ++b) {
      if (b >= images) break;
      y[(long)(b0 + b) * OUT_CT + OUT_CO + m] = Epi::apply(acc[r][b] + bv, b0 + b, m, 0, r0);
    }
  }
}

// A depthwise convolution (groups = input channels = output channels, zero
// padding): output channel c is input channel c convolved with its own KH x KW
// filter (weights [C][KH * KW]).
template <int C_, int IH_, int IW_, int OH_, int OW_, int KH_, int KW_, int SH_, int SW_, int PT_, int PL_,
          int DH_, int DW_, int IN_CT_, int IN_CO_>
struct Depthwise {
  static constexpr int C = C_, IH = IH_, IW = IW_, OH = OH_, OW = OW_, KH = KH_, KW = KW_;
  static constexpr int SH = SH_, SW = SW_, PT = PT_, PL = PL_, DH = DH_, DW = DW_;
  static constexpr int IN_CT = IN_CT_, IN_CO = IN_CO_;
  static constexpr int P = OH * OW;
};

// The depthwise kernel: block (x, y, z) = (image * GROUPS + channel group,
// tile row, tile column) computes a TH x TW output tile of CH consecutive
// channels. It stages each channel's input tile with its halo in shared
// memory (zeros for the padding; consecutive threads read consecutive columns,
// coalesced along W; rows PITCH floats apart, PITCH % 4 == 1, so the four rows
// a warp reads at once start in different banks), then each thread keeps its
// channel's KH * KW weights in registers and computes TX adjacent outputs of
// one row: per filter row it reads the SPAN inputs those outputs need into
// registers once, then KW * TX FMAs. Bias and epilogue run in registers before
// the only write. grid = [batch * ceil(C / CH), ceil(OH / TH), ceil(OW / TW)].
template <class D, int CH, int TH, int TW, int TX, class Epi, bool HAS_BIAS, int OUT_CT, int OUT_CO>
__device__ __forceinline__ void depthwise(const act* __restrict__ x, const float* __restrict__ w,
                                          const float* __restrict__ bias, const act* __restrict__ r0,
                                          act* __restrict__ y, int batch) {
  static_assert(TW % TX == 0, "a row of the tile is whole threads");
  constexpr int ROW_THREADS = TW / TX;
  constexpr int PLANE_THREADS = TH * ROW_THREADS;
  constexpr int THREADS = CH * PLANE_THREADS;
  constexpr int IN_H = (TH - 1) * D::SH + (D::KH - 1) * D::DH + 1;  // the tile and its halo
  constexpr int IN_W = (TW - 1) * D::SW + (D::KW - 1) * D::DW + 1;
  constexpr int PITCH = IN_W + ((1 - IN_W) % 4 + 4) % 4;
  constexpr int SPAN = (TX - 1) * D::SW + (D::KW - 1) * D::DW + 1;  // inputs of a thread's outputs, per filter row
  constexpr int GROUPS = (D::C + CH - 1) / CH;
  constexpr int TAPS = D::KH * D::KW;
  __shared__ float xs[CH * IN_H * PITCH];
  const int image = blockIdx.x / GROUPS;
  const int c0 = (blockIdx.x - image * GROUPS) * CH;
  if (image >= batch) return;
  const int oy0 = blockIdx.y * TH, ox0 = blockIdx.z * TW;
  const int iy0 = oy0 * D::SH - D::PT, ix0 = ox0 * D::SW - D::PL;
  const int tid = threadIdx.x;
  for (int i = tid; i < CH * IN_H * IN_W; i += THREADS) {
    const int cc = i / (IN_H * IN_W);
    const int r = i - cc * (IN_H * IN_W);
    const int yy = r / IN_W, xx = r - (r / IN_W) * IN_W;
    const int c = c0 + cc, iy = iy0 + yy, ix = ix0 + xx;
    const bool in = c < D::C && iy >= 0 && iy < D::IH && ix >= 0 && ix < D::IW;
    xs[(cc * IN_H + yy) * PITCH + xx] =
        in ? x[((long)image * D::IN_CT + D::IN_CO + c) * (D::IH * D::IW) + iy * D::IW + ix] : 0.0f;
  }
  __syncthreads();
  const int cc = tid / PLANE_THREADS;
  const int t = tid - cc * PLANE_THREADS;
  const int ty = t / ROW_THREADS, tx = t - (t / ROW_THREADS) * ROW_THREADS;
  const int c = c0 + cc, oy = oy0 + ty, ox = ox0 + tx * TX;
  if (cc >= CH || c >= D::C || oy >= D::OH || ox >= D::OW) return;
  float wr[TAPS];
#pragma unroll
  for (int k = 0; k < TAPS; ++k) wr[k] = w[(long)c * TAPS + k];
  float acc[TX];
#pragma unroll
  for (int j = 0; j < TX; ++j) acc[j] = 0.0f;
  const float* in = xs + (cc * IN_H + ty * D::SH) * PITCH + tx * TX * D::SW;
#pragma unroll
  for (int ky = 0; ky < D::KH; ++ky) {
    float row[SPAN];
#pragma unroll
    for (int i = 0; i < SPAN; ++i) row[i] = in[ky * D::DH * PITCH + i];
#pragma unroll
    for (int kx = 0; kx < D::KW; ++kx)
#pragma unroll
      for (int j = 0; j < TX; ++j) acc[j] = fmaf(wr[ky * D::KW + kx], row[j * D::SW + kx * D::DW], acc[j]);
  }
  const float b = HAS_BIAS ? bias[c] : 0.0f;
#pragma unroll
  for (int j = 0; j < TX; ++j) {
    if (ox + j >= D::OW) break;
    const int p = oy * D::OW + ox + j;
    y[((long)image * OUT_CT + OUT_CO + c) * D::P + p] = Epi::apply(acc[j] + b, image, c, p, r0);
  }
}

// Decomposes a flat output index into (image, channel, y, x).
struct Index4 {
  int image, c, y, x;
  __device__ __forceinline__ Index4(long i, int C, int H, int W) {
    x = (int)(i % W); i /= W;
    y = (int)(i % H); i /= H;
    c = (int)(i % C);
    image = (int)(i / C);
  }
};

__device__ __forceinline__ long global_thread() { return (long)blockIdx.x * blockDim.x + threadIdx.x; }

__device__ __forceinline__ float negative_infinity() { return __int_as_float(0xff800000); }

// Max or average pooling, as PyTorch's MaxPool2d / AvgPool2d.
template <int C, int IH, int IW, int OH, int OW, int KH, int KW, int SH, int SW, int PH, int PW, int DH, int DW,
          bool MAX, bool COUNT_PAD, int IN_CT, int IN_CO, int OUT_CT, int OUT_CO>
__device__ __forceinline__ void pool(const act* __restrict__ x, act* __restrict__ y, int batch) {
  const long i = global_thread();
  if (i >= (long)batch * C * OH * OW) return;
  const Index4 o(i, C, OH, OW);
  const act* map = x + ((long)o.image * IN_CT + IN_CO + o.c) * (IH * IW);
  float r;
  if (MAX) {
    r = negative_infinity();
    for (int ky = 0; ky < KH; ++ky) {
      const int iy = o.y * SH - PH + ky * DH;
      if (iy < 0 || iy >= IH) continue;
      for (int kx = 0; kx < KW; ++kx) {
        const int ix = o.x * SW - PW + kx * DW;
        if (ix < 0 || ix >= IW) continue;
        const float v = map[iy * IW + ix];
        if (v > r || v != v) r = v;
      }
    }
  } else {
    int y0 = o.y * SH - PH, x0 = o.x * SW - PW;
    int y1 = min(y0 + KH, IH + PH), x1 = min(x0 + KW, IW + PW);
    const int padded_area = (y1 - y0) * (x1 - x0);
    y0 = max(y0, 0); x0 = max(x0, 0); y1 = min(y1, IH); x1 = min(x1, IW);
    float s = 0.0f;
    for (int iy = y0; iy < y1; ++iy)
      for (int ix = x0; ix < x1; ++ix) s += map[iy * IW + ix];
    r = s / (float)(COUNT_PAD ? padded_area : (y1 - y0) * (x1 - x0));
  }
  y[((long)o.image * OUT_CT + OUT_CO + o.c) * (OH * OW) + o.y * OW + o.x] = r;
}

// Adaptive pooling: window [floor(i*I/O), ceil((i+1)*I/O)).
template <int C, int IH, int IW, int OH, int OW, bool MAX, int IN_CT, int IN_CO, int OUT_CT, int OUT_CO>
__device__ __forceinline__ void adaptive_pool(const act* __restrict__ x, act* __restrict__ y, int batch) {
  const long i = global_thread();
  if (i >= (long)batch * C * OH * OW) return;
  const Index4 o(i, C, OH, OW);
  const act* map = x + ((long)o.image * IN_CT + IN_CO + o.c) * (IH * IW);
  const int y0 = o.y * IH / OH, y1 = ((o.y + 1) * IH + OH - 1) / OH;
  const int x0 = o.x * IW / OW, x1 = ((o.x + 1) * IW + OW - 1) / OW;
  float r = MAX ? negative_infinity() : 0.0f;
  for (int iy = y0; iy < y1; ++iy)
    for (int ix = x0; ix < x1; ++ix) {
      const float v = map[iy * IW + ix];
      if (MAX) { if (v > r || v != v) r = v; } else { r += v; }
    }
  if (!MAX) r /= (float)((y1 - y0) * (x1 - x0));
  y[((long)o.image * OUT_CT + OUT_CO + o.c) * (OH * OW) + o.y * OW + o.x] = r;
}

// y = x * scale[c] + shift[c]: a batch norm that was not folded into a layer.
template <int C, int H, int W, int IN_CT, int IN_CO, int OUT_CT, int OUT_CO>
__device__ __forceinline__ void channel_affine(const act* __restrict__ x, const float* __restrict__ scale,
                                               const float* __restrict__ shift, act* __restrict__ y, int batch) {
  const long i = global_thread();
  if (i >= (long)batch * C * H * W) return;
  const Index4 o(i, C, H, W);
  const long p = o.y * W + o.x;
  const float v = x[((long)o.image * IN_CT + IN_CO + o.c) * (H * W) + p];
  y[((long)o.image * OUT_CT + OUT_CO + o.c) * (H * W) + p] = fmaf(v, scale[o.c], shift[o.c]);
}

// Local response norm across channels, as PyTorch's LocalResponseNorm.
template <int C, int H, int W, int SIZE, int IN_CT, int IN_CO, int OUT_CT, int OUT_CO>
__device__ __forceinline__ void lrn(const act* __restrict__ x, act* __restrict__ y, int batch, float alpha,
                                    float beta, float k) {
  const long i = global_thread();
  if (i >= (long)batch * C * H * W) return;
  const Index4 o(i, C, H, W);
  const long p = o.y * W + o.x;
  const act* base = x + ((long)o.image * IN_CT + IN_CO) * (H * W) + p;
  const int lo = max(o.c - SIZE / 2, 0), hi = min(o.c + (SIZE - 1) / 2, C - 1);
  float s = 0.0f;
  for (int j = lo; j <= hi; ++j) { const float v = base[(long)j * H * W]; s += v * v; }
  const float v = base[(long)o.c * H * W];
  y[((long)o.image * OUT_CT + OUT_CO + o.c) * (H * W) + p] = v / powf(k + alpha * s / SIZE, beta);
}

// The kernels that run one thread per (image, pixel) over its channels:
// where this thread's pixel starts in x and in y (its channels a plane of
// H * W apart); false past the last pixel.
template <int H, int W, int IN_CT, int IN_CO, int OUT_CT, int OUT_CO>
__device__ __forceinline__ bool pixel_of_thread(const act* x, act* y, int batch, const act*& in, act*& out) {
  const long i = global_thread();
  if (i >= (long)batch * H * W) return false;
  const int image = (int)(i / (H * W));
  const long p = i - (long)image * H * W;
  in = x + ((long)image * IN_CT + IN_CO) * (H * W) + p;
  out = y + ((long)image * OUT_CT + OUT_CO) * (H * W) + p;
  return true;
}

// Softmax or log-softmax over channels, one thread per (image, pixel).
template <int C, int H, int W, bool LOG, int IN_CT, int IN_CO, int OUT_CT, int OUT_CO>
__device__ __forceinline__ void softmax(const act* __restrict__ x, act* __restrict__ y, int batch) {
  const act* in;
  act* out;
  if (!pixel_of_thread<H, W, IN_CT, IN_CO, OUT_CT, OUT_CO>(x, y, batch, in, out)) return;
  float m = negative_infinity();
  for (int c = 0; c < C; ++c) m = fmaxf(m, in[(long)c * H * W]);
  float s = 0.0f;
  for (int c = 0; c < C; ++c) s += expf(in[(long)c * H * W] - m);
  const float log_s = logf(s);
  for (int c = 0; c < C; ++c) {
    const float shifted = in[(long)c * H * W] - m;
    out[(long)c * H * W] = LOG ? shifted - log_s : expf(shifted) / s;
  }
}

// The statistics of one pixel over the C channels at `in` (a plane of HW
// apart): the mean, then 1/sqrt(mean squared deviation + eps) (biased, as
// nn.LayerNorm).
template <int C, int HW>
__device__ __forceinline__ void pixel_stats(const act* __restrict__ in, float eps, float& mean, float& inv) {
  float s = 0.0f;
  for (int c = 0; c < C; ++c) s += in[(long)c * HW];
  mean = s / (float)C;
  float v = 0.0f;
  for (int c = 0; c < C; ++c) { const float d = in[(long)c * HW] - mean; v += d * d; }
  inv = 1.0f / sqrtf(v / (float)C + eps);
}

// Layer norm over channels, one thread per (image, pixel): the pixel's
// statistics, then weight and bias.
template <int C, int H, int W, int IN_CT, int IN_CO, int OUT_CT, int OUT_CO>
__device__ __forceinline__ void layer_norm(const act* __restrict__ x, const float* __restrict__ weight,
                                           const float* __restrict__ bias, act* __restrict__ y, int batch,
                                           float eps) {
  const act* in;
  act* out;
  if (!pixel_of_thread<H, W, IN_CT, IN_CO, OUT_CT, OUT_CO>(x, y, batch, in, out)) return;
  float mean, inv;
  pixel_stats<C, H * W>(in, eps, mean, inv);
  for (int c = 0; c < C; ++c) out[(long)c * H * W] = (in[(long)c * H * W] - mean) * inv * weight[c] + bias[c];
}

// A layer norm's statistics for the convolution that normalises as it reads
// (Normed): per (image, pixel), the mean over channels at channel 0 of y and
// 1/sqrt(var + eps) at channel 1, computed as layer_norm computes them.
template <int C, int H, int W, int IN_CT, int IN_CO, int OUT_CT, int OUT_CO>
__device__ __forceinline__ void layer_norm_stats(const act* __restrict__ x, act* __restrict__ y, int batch,
                                                 float eps) {
  const act* in;
  act* out;
  if (!pixel_of_thread<H, W, IN_CT, IN_CO, OUT_CT, OUT_CO>(x, y, batch, in, out)) return;
  float mean, inv;
  pixel_stats<C, H * W>(in, eps, mean, inv);
  out[0] = mean;
  out[H * W] = inv;
}

// ShuffleNet's channel shuffle: output channel j * GROUPS + i is input channel
// i * (C / GROUPS) + j; one thread per output element.
template <int C, int H, int W, int GROUPS, int IN_CT, int IN_CO, int OUT_CT, int OUT_CO>
__device__ __forceinline__ void channel_shuffle(const act* __restrict__ x, act* __restrict__ y, int batch) {
  const long i = global_thread();
  if (i >= (long)batch * C * H * W) return;
  const Index4 o(i, C, H, W);
  const long p = o.y * W + o.x;
  const int from = (o.c % GROUPS) * (C / GROUPS) + o.c / GROUPS;
  y[((long)o.image * OUT_CT + OUT_CO + o.c) * (H * W) + p] = x[((long)o.image * IN_CT + IN_CO + from) * (H * W) + p];
}

// Moves element i of a C x H x W tensor between two placements; returns the
// source index through `from` and the destination through `to`.
template <int C, int H, int W, int IN_CT, int IN_CO, int OUT_CT, int OUT_CO>
__device__ __forceinline__ bool element(long i, int batch, long& from, long& to) {
  if (i >= (long)batch * C * H * W) return false;
  const Index4 o(i, C, H, W);
  const long p = o.y * W + o.x;
  from = ((long)o.image * IN_CT + IN_CO + o.c) * (H * W) + p;
  to = ((long)o.image * OUT_CT + OUT_CO + o.c) * (H * W) + p;
  return true;
}


// ---------------------------------------------------------------------------
// Tensor cores (sm_80 and newer). One wrapper per PTX instruction: inline PTX
// on the GPU, the CPU emulation's model of the instruction in the tests
// (tests/emulation/cuda_emulation.h defines CNNC_EMULATION), nothing in
// nvcc's host pass, which never calls device code.
// ---------------------------------------------------------------------------

#if defined(__CUDA_ARCH__)
__device__ __forceinline__ unsigned shared_address(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
#endif

// cvt.rna.tf32.f32: v rounded to TF32 (nearest, ties away from zero).
__device__ __forceinline__ unsigned to_tf32(float v) {
#if defined(__CUDA_ARCH__)
  unsigned r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(v));
  return r;
#elif defined(CNNC_EMULATION)
  return cnnc_emu::cvt_rna_tf32(v);
#else
  return __float_as_uint(v);
#endif
}

// d += a·b on a 16x8x8 TF32 tile (mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32).
__device__ __forceinline__ void mma_tf32(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
#if defined(__CUDA_ARCH__)
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#elif defined(CNNC_EMULATION)
  cnnc_emu::mma_m16n8k8_tf32(d, a, b, d);
#else
  (void)d; (void)a; (void)b;
#endif
}

// cvt.rn.bf16x2.f32 / cvt.rn.f16x2.f32: lo and hi rounded to the nearest
// 16-bit value (ties to even; FP16 overflows to infinity), packed with lo in
// the lower half (the PTX operand order is d, hi, lo).
template <bool FP16>
__device__ __forceinline__ unsigned to_16x2(float lo, float hi) {
#if defined(__CUDA_ARCH__)
  unsigned r;
  if constexpr (FP16) {
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  } else {
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  }
  return r;
#elif defined(CNNC_EMULATION)
  return FP16 ? cnnc_emu::cvt_rn_f16x2(hi, lo) : cnnc_emu::cvt_rn_bf16x2(hi, lo);
#else
  (void)hi;
  return __float_as_uint(lo);
#endif
}

// d += a·b on a 16x8x16 tile of 16-bit operands, FP32 accumulation
// (mma.sync.aligned.m16n8k16.row.col.f32.{bf16.bf16,f16.f16}.f32).
template <bool FP16>
__device__ __forceinline__ void mma_16(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
#if defined(__CUDA_ARCH__)
  if constexpr (FP16) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#elif defined(CNNC_EMULATION)
  cnnc_emu::mma_m16n8k16(FP16, d, a, b, d);
#else
  (void)d; (void)a; (void)b;
#endif
}

// ldmatrix.sync.aligned.m8n8.x{N}.shared.b16: lanes 8i..8i+7 give the 16-byte
// rows of matrix i; r[i] receives this lane's part of it.
template <int N, class T>
__device__ __forceinline__ void ldmatrix(unsigned (&r)[N], const T* row) {
  static_assert(N == 1 || N == 2 || N == 4, "ldmatrix loads 1, 2 or 4 matrices");
#if defined(__CUDA_ARCH__)
  if constexpr (N == 1) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];" : "=r"(r[0]) : "r"(shared_address(row)));
  } else if constexpr (N == 2) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(shared_address(row)));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(shared_address(row)));
  }
#elif defined(CNNC_EMULATION)
  cnnc_emu::ldmatrix(N, false, r, row);
#else
  (void)r; (void)row;
#endif
}

// cp.async of 4 bytes (one float), or zeros when `from` is null.
__device__ __forceinline__ void cp_async4(float* to, const float* from) {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" ::"r"(shared_address(to)), "l"(from ? from : to),
               "r"(from ? 4 : 0) : "memory");
#elif defined(CNNC_EMULATION)
  cnnc_emu::cp_async(to, from, 4, from ? 4 : 0);
#else
  (void)to; (void)from;
#endif
}

// cp.async of 16 bytes (4 floats, both addresses 16-byte aligned), or zeros when `from` is null.
__device__ __forceinline__ void cp_async16(float* to, const float* from) {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(shared_address(to)), "l"(from ? from : to),
               "r"(from ? 16 : 0) : "memory");
#elif defined(CNNC_EMULATION)
  cnnc_emu::cp_async(to, from, 16, from ? 16 : 0);
#else
  (void)to; (void)from;
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.commit_group;" ::: "memory");
#elif defined(CNNC_EMULATION)
  cnnc_emu::cp_async_commit();
#endif
}

// Waits until at most N of this thread's most recent cp.async groups are in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__)
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#elif defined(CNNC_EMULATION)
  cnnc_emu::cp_async_wait(N);
#endif
}

// Where element (r, k) of a shared-memory operand tile lives: rows of BK = 16
// floats (four 16-byte chunks), chunk k/4 stored at chunk (k/4) ^ ((r/2) % 4).
// An ldmatrix phase reads one chunk of 8 consecutive rows; unswizzled, rows
// r and r+2 share banks (a 64-byte row is half the 32 banks), a 4-way
// conflict; swizzled, the 8 rows cover all 32 banks once.
__device__ __forceinline__ int swizzle(int r, int k) { return r * 16 + ((((k >> 2) ^ (r >> 1)) & 3) << 2) + (k & 3); }

// Where element (r, k) of a 16-bit shared-memory operand tile lives: rows of
// BK = 16 halves (two 16-byte chunks, 32 bytes), chunk k/8 stored at chunk
// (k/8) ^ ((r/4) % 2). An ldmatrix phase reads one chunk of 8 consecutive
// rows (8 x 16 bytes): unswizzled, rows r and r+4 are 128 bytes apart and
// share banks, a 2-way conflict; swizzled, rows 0-3 take one half of each
// 128-byte line and rows 4-7 the other, so the 8 rows cover all 32 banks
// once. The 16-byte cp.async stores of a row's two chunks stay within its
// own 32 bytes, so 8 consecutive threads still fill whole 128-byte lines.
__device__ __forceinline__ int swizzle16(int r, int k) { return r * 16 + ((((k >> 3) ^ (r >> 2)) & 1) << 3) + (k & 7); }

// The epilogue of the tensor-core tiles: a warp's MI x NI accumulator tiles
// (its rows from m0, columns from n0) through bias and Epi to y. Accumulator
// e of tile (i, j) is row g + 8 (e / 2), column 2 t + e % 2 of that 16x8
// tile, with g = lane / 4 and t = lane % 4 (the mma's C layout, the same for
// m16n8k8 and m16n8k16).
template <class C, int MI, int NI, class Epi, bool HAS_BIAS, int OUT_CT, int OUT_CO>
__device__ __forceinline__ void store_tc_tile(const float (&acc)[MI][NI][4], const float* __restrict__ bias,
                                              const act* __restrict__ r0, act* __restrict__ y, int g, int m0,
                                              int n0, int n_total, int lane) {
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int m = m0 + i * 16 + lane / 4 + (e / 2) * 8;
      if (m >= C::M) continue;
      const int oc = g * C::M + m;
      const float bv = HAS_BIAS ? bias[oc] : 0.0f;
#pragma unroll
      for (int j = 0; j < NI; ++j) {
        const int n = n0 + j * 8 + (lane % 4) * 2 + e % 2;
        if (n >= n_total) continue;
        const int image = n / C::P;
        const int p = n - image * C::P;
        y[((long)image * OUT_CT + OUT_CO + oc) * C::P + p] = Epi::apply(acc[i][j][e] + bv, image, oc, p, r0);
      }
    }
}

// A SCALED kernel's transform (a gate's factor, a layer norm's
// normalisation) on slice t of B in shared memory, for the tensor-core tiles
// (gemm_tc copies B with cp.async, so it cannot be transformed on the way):
// each element is transformed by the thread that stored it, once it has
// landed; the caller's barrier then makes the slice visible to every warp.
// Zeros past K or the last column stay zeros. T is the shared tile's
// element: float (gemm_tc, the swizzle layout) or a 16-bit act (gemm_tc16,
// swizzle16; the transformed value is rounded to 16 bits once, as the
// fragment would round it).
template <class C, int BN, int BK, int THREADS, class T>
__device__ __forceinline__ void transform_b_slice(T* bw, const act* __restrict__ s, int g, int t, int n0,
                                                  int n_total, int tid) {
  for (int i = tid; i < BN * BK; i += THREADS) {
    const int kk = i / BN, nn = i % BN;
    const int k = t * BK + kk, n = n0 + nn;
    if (k < C::K && n < n_total) {
      T& v = bw[sizeof(T) == 2 ? swizzle16(nn, kk) : swizzle(nn, kk)];
      v = C::transform(v, s, g, k, n);
    }
  }
}

// The implicit GEMM on tensor cores (TF32 in, FP32 accumulation), for
// --precision tf32 and tf32x3. Each block computes a BM x BN output tile with
// (BM/WM) x (BN/WN) warps; each warp a WM x WN tile as (WM/16) x (WN/8)
// mma.m16n8k8 tiles. Operands go global -> shared with cp.async into STAGES
// buffers (the copies of the next STAGES-1 slices of BK = 16 are in flight
// while one is multiplied), stored in the swizzled layout above as A[m][k]
// (weights) and B[n][k] (the input under each filter tap, zeros at the
// padding), so both are read with ldmatrix without bank conflicts. The
// operands are rounded to TF32 (cvt.rna) before each mma; with X3 each is
// split into big + small TF32 parts and the product is
// a_small*b_big + a_big*b_small + a_big*b_big, which keeps about FP32's
// accuracy. The epilogue is the CUDA-core tile's: bias, then Epi. K is never
// split: the compiler gives a tensor-core tile only to a GEMM that fills the
// GPU without splitting.
template <class C, int BM, int BN, int WM, int WN, int STAGES, bool X3, bool VEC_A, class Epi, bool HAS_BIAS,
          int OUT_CT, int OUT_CO>
__device__ __forceinline__ void gemm_tc(const act* __restrict__ x, const float* __restrict__ w,
                                        const float* __restrict__ bias, const act* __restrict__ r0,
                                        act* __restrict__ y, int batch, const act* __restrict__ s = nullptr) {
  static_assert(!C::GLOBAL_POOL_B, "the pooled operand is computed, not copied: CUDA-core tiles only");
  static_assert(sizeof(act) == 4 || C::K < 0, "gemm_tc copies f32 activations; 16-bit ones go to gemm_tc16");
  constexpr int BK = 16;
  constexpr int WARPS_N = BN / WN;
  constexpr int THREADS = 32 * (BM / WM) * WARPS_N;
  constexpr int MI = WM / 16, NI = WN / 8;
  constexpr int SLICES = (C::K + BK - 1) / BK;
  static_assert(STAGES >= 2, "a pipeline has at least two stages");
  __align__(128) __shared__ float As[STAGES][BM * BK];
  __align__(128) __shared__ float Bs[STAGES][BN * BK];
  const int n_total = batch * C::P;
  const int g = blockIdx.z;
  const int m0 = blockIdx.y * BM;
  const int n0 = blockIdx.x * BN;
  const int tid = threadIdx.x;
  const int lane = tid % 32, warp = tid / 32;
  const int wm0 = (warp / WARPS_N) * WM, wn0 = (warp % WARPS_N) * WN;
  // Issues the copies of K-slice k0 into buffer s.
  auto load = [&](int s, int k0) {
    if (VEC_A) {  // 16 bytes: rows start at multiples of K floats, K a multiple of 4
      for (int f = tid; f < BM * BK / 4; f += THREADS) {
        const int mm = f / (BK / 4), kk = (f % (BK / 4)) * 4;
        const int m = m0 + mm, k = k0 + kk;
        cp_async16(&As[s][swizzle(mm, kk)], m < C::M && k < C::K ? w + ((long)g * C::M + m) * C::K + k : nullptr);
      }
    } else {
      for (int f = tid; f < BM * BK; f += THREADS) {
        const int mm = f / BK, kk = f % BK;
        const int m = m0 + mm, k = k0 + kk;
        cp_async4(&As[s][swizzle(mm, kk)], m < C::M && k < C::K ? w + ((long)g * C::M + m) * C::K + k : nullptr);
      }
    }
    // B: consecutive threads read consecutive output pixels (coalesced).
    for (int i = tid; i < BN * BK; i += THREADS) {
      const int kk = i / BN, nn = i % BN;
      const int k = k0 + kk, n = n0 + nn;
      cp_async4(&Bs[s][swizzle(nn, kk)], k < C::K && n < n_total ? C::src_b(x, g, k, n) : nullptr);
    }
  };
  float acc[MI][NI][4];
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int j = 0; j < NI; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;
  // Fill the pipeline: slices 0 .. STAGES-2 in flight, one cp.async group per
  // slice (empty groups past K keep the count uniform).
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < SLICES) load(s, s * BK);
    cp_async_commit();
  }
  // Which row of which 8x8 matrix this lane addresses for ldmatrix: A's x4
  // loads rows 0-7 / 8-15 at k 0-3 / 4-7 (matrices a0 a1 a2 a3); B's x2 loads
  // columns 0-7 at k 0-3 and 4-7 (b0 b1).
  const int a_row = lane % 16, a_col = (lane / 16) * 4;
  const int b_row = lane % 8, b_col = ((lane / 8) % 2) * 4;
  for (int t = 0; t < SLICES; ++t) {
    cp_async_wait<STAGES - 2>();  // this thread's copies of slice t have landed
    __syncthreads();              // everyone's have, and buffer (t - 1) % STAGES is read: free
    if (t + STAGES - 1 < SLICES) load((t + STAGES - 1) % STAGES, (t + STAGES - 1) * BK);
    cp_async_commit();
    if constexpr (C::SCALED) {
      transform_b_slice<C, BN, BK, THREADS>(Bs[t % STAGES], s, g, t, n0, n_total, tid);
      __syncthreads();
    }
    const float* as = As[t % STAGES];
    const float* bs = Bs[t % STAGES];
#pragma unroll
    for (int kk = 0; kk < BK; kk += 8) {
      unsigned a[MI][4], b[NI][2];
#pragma unroll
      for (int i = 0; i < MI; ++i) ldmatrix(a[i], &as[swizzle(wm0 + i * 16 + a_row, kk + a_col)]);
#pragma unroll
      for (int j = 0; j < NI; ++j) ldmatrix(b[j], &bs[swizzle(wn0 + j * 8 + b_row, kk + b_col)]);
      if constexpr (X3) {
        unsigned a_small[MI][4], b_small[NI][2];
#pragma unroll
        for (int i = 0; i < MI; ++i)
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float v = __uint_as_float(a[i][e]);
            a[i][e] = to_tf32(v);
            a_small[i][e] = to_tf32(v - __uint_as_float(a[i][e]));
          }
#pragma unroll
        for (int j = 0; j < NI; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float v = __uint_as_float(b[j][e]);
            b[j][e] = to_tf32(v);
            b_small[j][e] = to_tf32(v - __uint_as_float(b[j][e]));
          }
#pragma unroll
        for (int i = 0; i < MI; ++i)
#pragma unroll
          for (int j = 0; j < NI; ++j) {
            mma_tf32(acc[i][j], a_small[i], b[j]);
            mma_tf32(acc[i][j], a[i], b_small[j]);
            mma_tf32(acc[i][j], a[i], b[j]);
          }
      } else {
#pragma unroll
        for (int i = 0; i < MI; ++i)
#pragma unroll
          for (int e = 0; e < 4; ++e) a[i][e] = to_tf32(__uint_as_float(a[i][e]));
#pragma unroll
        for (int j = 0; j < NI; ++j)
#pragma unroll
          for (int e = 0; e < 2; ++e) b[j][e] = to_tf32(__uint_as_float(b[j][e]));
#pragma unroll
        for (int i = 0; i < MI; ++i)
#pragma unroll
          for (int j = 0; j < NI; ++j) mma_tf32(acc[i][j], a[i], b[j]);
      }
    }
  }
  cp_async_wait<0>();  // the trailing groups are empty; nothing is left in flight
  store_tc_tile<C, MI, NI, Epi, HAS_BIAS, OUT_CT, OUT_CO>(acc, bias, r0, y, g, m0 + wm0, n0 + wn0, n_total, lane);
}


// The implicit GEMM on tensor cores with 16-bit operands (--precision bf16,
// FP16 = false, or fp16), FP32 accumulation. The block, warp and pipeline
// structure is gemm_tc's; what differs:
// - A, the weights, is their 16-bit copy (C is a Weights16: rows of KP = K
//   rounded up to 8 halves, zeros in the padding), so every row starts
//   16-byte aligned and A always goes to shared memory by 16-byte cp.async
//   copies, into the swizzle16 layout; ldmatrix.x4 on it gives each lane its
//   m16n8k16 A fragment directly.
// - B, the input under each filter tap, is 16-bit in global memory (the
//   build's activations, act) and stays 16-bit in shared memory: a row of
//   BK halves per output column, in A's swizzle16 layout, so ldmatrix.x2
//   gives each lane its B fragment (B[2t..2t+1][g], B[2t+8..2t+9][g])
//   directly. cp.async moves at least 4 bytes and two k of a column are not
//   neighbours in memory, so B goes through registers instead: each thread
//   loads its elements of slice t + STAGES - 1 before the mma's of slice t
//   and stores them after them, so the loads are in flight during the
//   arithmetic (zeros at the padding and past the edges).
// - One mma.m16n8k16 per K-slice of 16 for each 16x8 tile.
template <class C, int BM, int BN, int WM, int WN, int STAGES, bool FP16, class Epi, bool HAS_BIAS, int OUT_CT,
          int OUT_CO>
__device__ __forceinline__ void gemm_tc16(const act* __restrict__ x, const float* __restrict__ w,
                                          const float* __restrict__ bias, const act* __restrict__ r0,
                                          act* __restrict__ y, int batch, const act* __restrict__ s = nullptr) {
  static_assert(!C::GLOBAL_POOL_B, "the pooled operand is computed, not copied: CUDA-core tiles only");
  static_assert(sizeof(act) == 2 || C::K < 0, "gemm_tc16 reads 16-bit activations (a bf16 or fp16 build)");
  static_assert(C::W16, "gemm_tc16 reads the weights' 16-bit copy (Weights16)");
  constexpr int BK = 16;
  constexpr int KP = C::KP;
  constexpr int WARPS_N = BN / WN;
  constexpr int THREADS = 32 * (BM / WM) * WARPS_N;
  constexpr int MI = WM / 16, NI = WN / 8;
  constexpr int SLICES = (C::K + BK - 1) / BK;
  constexpr int B_PER = (BN * BK + THREADS - 1) / THREADS;  // B elements a thread moves per slice
  static_assert(STAGES >= 2, "a pipeline has at least two stages");
  __align__(128) __shared__ unsigned short As[STAGES][BM * BK];
  __align__(128) __shared__ act Bs[STAGES][BN * BK];
  const unsigned short* w16 = reinterpret_cast<const unsigned short*>(w);
  const int n_total = batch * C::P;
  const int g = blockIdx.z;
  const int m0 = blockIdx.y * BM;
  const int n0 = blockIdx.x * BN;
  const int tid = threadIdx.x;
  const int lane = tid % 32, warp = tid / 32;
  const int wm0 = (warp / WARPS_N) * WM, wn0 = (warp % WARPS_N) * WN;
  // Issues the copies of A's K-slice k0 into buffer s.
  auto load_a = [&](int s, int k0) {
    for (int f = tid; f < BM * 2; f += THREADS) {  // 8 halves (16 bytes) a copy
      const int mm = f / 2, kk = (f % 2) * 8;
      const int m = m0 + mm, k = k0 + kk;
      cp_async16(reinterpret_cast<float*>(&As[s][swizzle16(mm, kk)]),
                 m < C::M && k < C::K ? reinterpret_cast<const float*>(w16 + ((long)g * C::M + m) * KP + k) : nullptr);
    }
  };
  // B's K-slice k0 into registers (consecutive threads read consecutive
  // output pixels: coalesced), then from them into buffer s.
  act rb[B_PER];
  auto fetch_b = [&](int k0) {
#pragma unroll
    for (int j = 0; j < B_PER; ++j) {
      const int i = tid + j * THREADS;
      const int kk = i / BN, nn = i % BN;
      const int k = k0 + kk, n = n0 + nn;
      const auto* p = i < BN * BK && k < C::K && n < n_total ? C::src_b(x, g, k, n) : nullptr;
      if (p) rb[j] = *p; else rb[j] = 0.0f;
    }
  };
  auto put_b = [&](int s) {
#pragma unroll
    for (int j = 0; j < B_PER; ++j) {
      const int i = tid + j * THREADS;
      if (i < BN * BK) Bs[s][swizzle16(i % BN, i / BN)] = rb[j];
    }
  };
  float acc[MI][NI][4];
#pragma unroll
  for (int i = 0; i < MI; ++i)
#pragma unroll
    for (int j = 0; j < NI; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.0f;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < SLICES) {
      load_a(s, s * BK);
      fetch_b(s * BK);
      put_b(s);
    }
    cp_async_commit();
  }
  // ldmatrix addresses: A's x4 loads rows 0-7 / 8-15 at k 0-7, then at k
  // 8-15 (registers a0 a1 a2 a3 of the fragment); B's x2 loads columns 0-7
  // at k 0-7, then at k 8-15 (registers b0 b1).
  const int a16_row = lane % 16, a16_col = (lane / 16) * 8;
  const int b16_row = lane % 8, b16_col = ((lane / 8) % 2) * 8;
  for (int t = 0; t < SLICES; ++t) {
    cp_async_wait<STAGES - 2>();  // slice t's copies (this thread's) have landed
    __syncthreads();              // everyone's, and buffer (t - 1) % STAGES is free
    const bool more = t + STAGES - 1 < SLICES;
    if (more) {
      load_a((t + STAGES - 1) % STAGES, (t + STAGES - 1) * BK);
      fetch_b((t + STAGES - 1) * BK);
    }
    cp_async_commit();
    if constexpr (C::SCALED) {
      transform_b_slice<C, BN, BK, THREADS>(Bs[t % STAGES], s, g, t, n0, n_total, tid);
      __syncthreads();
    }
    const unsigned short* as = As[t % STAGES];
    const act* bs = Bs[t % STAGES];
    unsigned a[MI][4], b[NI][2];
#pragma unroll
    for (int i = 0; i < MI; ++i) ldmatrix(a[i], &as[swizzle16(wm0 + i * 16 + a16_row, a16_col)]);
#pragma unroll
    for (int j = 0; j < NI; ++j) ldmatrix(b[j], &bs[swizzle16(wn0 + j * 8 + b16_row, b16_col)]);
#pragma unroll
    for (int i = 0; i < MI; ++i)
#pragma unroll
      for (int j = 0; j < NI; ++j) mma_16<FP16>(acc[i][j], a[i], b[j]);
    // Buffer (t + STAGES - 1) % STAGES was last read in step t - 1, before
    // this step's barrier: the staged slice can go there.
    if (more) put_b((t + STAGES - 1) % STAGES);
  }
  cp_async_wait<0>();
  // The accumulators are in the m16n8k8 C layout (the same for m16n8k16).
  store_tc_tile<C, MI, NI, Epi, HAS_BIAS, OUT_CT, OUT_CO>(acc, bias, r0, y, g, m0 + wm0, n0 + wn0, n_total, lane);
}

}  // namespace cnnc

