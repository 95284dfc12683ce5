// ---------------------------------------------------------------------------
// cnnc device library (the same in every generated file)
// ---------------------------------------------------------------------------
namespace cnnc {

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
  // B[k][n] for group g.
  static __device__ __forceinline__ float load_b(const float* __restrict__ x, int g, int k, int n) {
    const int image = n / P;
    const int p = n - image * P;
    if (GLOBAL_POOL) {  // the mean of input map k (adaptive_avgpool(1) fused in)
      const float* map = x + ((long)image * IN_CT + IN_CO + k) * (IH * IW);
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
__device__ __forceinline__ void gemm(const float* __restrict__ x, const float* __restrict__ w,
                                     const float* __restrict__ bias, const float* __restrict__ r0,
                                     float* __restrict__ y, int batch, float* __restrict__ ws,
                                     unsigned* __restrict__ counters) {
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
      const float* p = w + ((long)g * C::M + m) * C::K + k;
      if (VEC_A) {
        ra[j] = in ? load4(p) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      } else {
        ra[j].x = in ? *p : 0.0f;
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
      rb[j] = (i < BK * BN && k < k_end && n < n_total) ? C::load_b(x, g, k, n) : 0.0f;
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
__device__ __forceinline__ void gemv(const float* __restrict__ x, const float* __restrict__ w,
                                     const float* __restrict__ bias, const float* __restrict__ r0,
                                     float* __restrict__ y, int batch) {
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
        const float* p = w + (long)m * C::K + k0 + kk;
        if (VEC4) wv[r] = load4(p); else wv[r].x = *p;
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
__device__ __forceinline__ void pool(const float* __restrict__ x, float* __restrict__ y, int batch) {
  const long i = global_thread();
  if (i >= (long)batch * C * OH * OW) return;
  const Index4 o(i, C, OH, OW);
  const float* map = x + ((long)o.image * IN_CT + IN_CO + o.c) * (IH * IW);
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
__device__ __forceinline__ void adaptive_pool(const float* __restrict__ x, float* __restrict__ y, int batch) {
  const long i = global_thread();
  if (i >= (long)batch * C * OH * OW) return;
  const Index4 o(i, C, OH, OW);
  const float* map = x + ((long)o.image * IN_CT + IN_CO + o.c) * (IH * IW);
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
__device__ __forceinline__ void channel_affine(const float* __restrict__ x, const float* __restrict__ scale,
                                               const float* __restrict__ shift, float* __restrict__ y, int batch) {
  const long i = global_thread();
  if (i >= (long)batch * C * H * W) return;
  const Index4 o(i, C, H, W);
  const long p = o.y * W + o.x;
  const float v = x[((long)o.image * IN_CT + IN_CO + o.c) * (H * W) + p];
  y[((long)o.image * OUT_CT + OUT_CO + o.c) * (H * W) + p] = fmaf(v, scale[o.c], shift[o.c]);
}

// Local response norm across channels, as PyTorch's LocalResponseNorm.
template <int C, int H, int W, int SIZE, int IN_CT, int IN_CO, int OUT_CT, int OUT_CO>
__device__ __forceinline__ void lrn(const float* __restrict__ x, float* __restrict__ y, int batch, float alpha,
                                    float beta, float k) {
  const long i = global_thread();
  if (i >= (long)batch * C * H * W) return;
  const Index4 o(i, C, H, W);
  const long p = o.y * W + o.x;
  const float* base = x + ((long)o.image * IN_CT + IN_CO) * (H * W) + p;
  const int lo = max(o.c - SIZE / 2, 0), hi = min(o.c + (SIZE - 1) / 2, C - 1);
  float s = 0.0f;
  for (int j = lo; j <= hi; ++j) { const float v = base[(long)j * H * W]; s += v * v; }
  const float v = base[(long)o.c * H * W];
  y[((long)o.image * OUT_CT + OUT_CO + o.c) * (H * W) + p] = v / powf(k + alpha * s / SIZE, beta);
}

// Softmax or log-softmax over channels, one thread per (image, pixel).
template <int C, int H, int W, bool LOG, int IN_CT, int IN_CO, int OUT_CT, int OUT_CO>
__device__ __forceinline__ void softmax(const float* __restrict__ x, float* __restrict__ y, int batch) {
  const long i = global_thread();
  if (i >= (long)batch * H * W) return;
  const int image = (int)(i / (H * W));
  const long p = i - (long)image * H * W;
  const float* in = x + ((long)image * IN_CT + IN_CO) * (H * W) + p;
  float* out = y + ((long)image * OUT_CT + OUT_CO) * (H * W) + p;
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

}  // namespace cnnc

