// CUDA emulation for the CPU: enough of the CUDA C++ programming model to
// compile cnnc's generated `.cu` files with g++ or clang (C++20) and run them
// with CUDA's semantics where those decide the numbers.
//
// What it provides (see docs/testing.md for what this proves and what not):
//   * keywords: __global__, __device__, __host__, __forceinline__,
//     __noinline__, __launch_bounds__, __constant__, __shared__, __align__;
//   * built-ins: threadIdx, blockIdx, blockDim, gridDim, warpSize, dim3, uint3;
//   * every thread of a block is a fiber; a block's fibers run on one OS
//     thread and switch only at barriers, so __syncthreads() is a real
//     barrier: no thread continues before every thread of the block arrived.
//     A barrier that only some threads reach (the others exited), or a set of
//     waits that can never complete, is reported as an error, not a hang;
//   * __shared__ memory is per block (each block runs on one OS thread at a
//     time; __shared__ variables are thread_local statics), dynamic shared
//     memory through cnnc_emu::dynamic_shared() (the harness rewrites
//     `extern __shared__ T name[];` into a pointer to it);
//   * warp intrinsics: __syncwarp, __shfl{,_up,_down,_xor}_sync, __ballot_sync,
//     __any_sync, __all_sync: each is a barrier over the lanes in its mask
//     followed by the exchange, as on Volta and later;
//   * math: the C library's float functions (expf, erff, tanhf, fmaf, ...)
//     plus __int_as_float, __float_as_int, __expf, __logf, __fdividef,
//     rsqrtf, __saturatef, min, max; atomics as real CPU atomics, __threadfence
//     as a fence, __ldcg as a plain load;
//   * launches: cnnc_emu::launch_kernel() runs a grid, blocks spread over a
//     few OS threads (CNNC_EMU_THREADS, default: the number of CPUs), with
//     CUDA's launch limits checked. Errors come back as a message, never as
//     an exception across the C boundary. A crash inside a kernel (a wild
//     pointer, a fiber stack overflow) prints the kernel, block and thread
//     before the process dies;
//   * scheduling order: threads of a block run in increasing index between
//     barriers, or (launch flag CNNC_EMU_REVERSE) in decreasing order, blocks
//     too. A kernel whose result depends on the order has a race (say a
//     missing __syncthreads()); the harness runs both orders and compares.
//
// Include it once per translation unit (it defines the fiber switch in
// assembly); compile with -fvisibility=hidden so that several emulated
// modules can be loaded into one process.

#pragma once

// The device library (cuda_prelude.cuh) calls the emulation's tensor-core
// instructions where a GPU build uses inline PTX.
#define CNNC_EMULATION 1

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <math.h>
#include <mutex>
#include <signal.h>
#include <string>
#include <sys/mman.h>
#include <thread>
#include <tuple>
#include <type_traits>
#include <unistd.h>
#include <utility>
#include <vector>

// The fiber switch: a few instructions on x86-64 Linux, POSIX ucontext
// elsewhere (or with -DCNNC_EMU_UCONTEXT, to test that path).
#if defined(__x86_64__) && defined(__ELF__) && !defined(CNNC_EMU_UCONTEXT)
#define CNNC_EMU_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

// ---------------------------------------------------------------------------
// Keywords
// ---------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __constant__
#define __align__(n) alignas(n)
// One block runs on one OS thread at a time, so a thread_local static is
// exactly one copy per running block, shared by its threads (fibers).
#define __shared__ static thread_local

// ---------------------------------------------------------------------------
// Built-in types and variables
// ---------------------------------------------------------------------------
struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// Vector types: as CUDA's, 16-byte aligned.
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(8) float2 {
  float x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline float2 make_float2(float x, float y) { return float2{x, y}; }

namespace cnnc_emu {
inline thread_local uint3 t_thread_idx;
inline thread_local uint3 t_block_idx;
inline thread_local dim3 t_block_dim;
inline thread_local dim3 t_grid_dim;
}  // namespace cnnc_emu

// Read-only, as in CUDA.
#define threadIdx (static_cast<const uint3&>(::cnnc_emu::t_thread_idx))
#define blockIdx (static_cast<const uint3&>(::cnnc_emu::t_block_idx))
#define blockDim (static_cast<const dim3&>(::cnnc_emu::t_block_dim))
#define gridDim (static_cast<const dim3&>(::cnnc_emu::t_grid_dim))
constexpr int warpSize = 32;

// ---------------------------------------------------------------------------
// Math
// ---------------------------------------------------------------------------
template <class A, class B>
inline constexpr std::common_type_t<A, B> min(A a, B b) {
  return b < a ? b : a;
}
template <class A, class B>
inline constexpr std::common_type_t<A, B> max(A a, B b) {
  return a < b ? b : a;
}
inline float __int_as_float(int v) {
  float f;
  std::memcpy(&f, &v, sizeof f);
  return f;
}
inline int __float_as_int(float f) {
  int v;
  std::memcpy(&v, &f, sizeof v);
  return v;
}
inline float __uint_as_float(unsigned v) { return __int_as_float(static_cast<int>(v)); }
inline unsigned __float_as_uint(float f) { return static_cast<unsigned>(__float_as_int(f)); }
inline float __expf(float v) { return expf(v); }
inline float __logf(float v) { return logf(v); }
inline float __powf(float a, float b) { return powf(a, b); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float v) { return 1.0f / sqrtf(v); }
inline float __saturatef(float v) { return v != v ? 0.0f : fminf(fmaxf(v, 0.0f), 1.0f); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }

// ---------------------------------------------------------------------------
// Fibers: a minimal context switch (x86-64 System V), ucontext elsewhere.
// ---------------------------------------------------------------------------
#if defined(CNNC_EMU_ASM_SWITCH)
extern "C" __attribute__((visibility("hidden"))) void cnnc_emu_switch(void** save_sp, void* to_sp);
// Saves the callee-saved registers on the current stack, stores the stack
// pointer in *save_sp, loads to_sp and restores the registers saved there.
asm(R"(
  .text
  .p2align 4
  .globl cnnc_emu_switch
  .hidden cnnc_emu_switch
  .type cnnc_emu_switch, @function
cnnc_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size cnnc_emu_switch, .-cnnc_emu_switch
)");
#endif

namespace cnnc_emu {

enum State : unsigned char { READY, AT_BLOCK_BARRIER, AT_WARP_BARRIER, DONE };

struct Fiber {
  void* sp = nullptr;
#if !defined(CNNC_EMU_ASM_SWITCH)
  ucontext_t ctx;
#endif
  uint3 tid{};
  State state = READY;
  unsigned mask = 0;  // lanes a warp-level wait waits for
  int barriers = 0;   // __syncthreads() passed, for error messages
  // Tensor-core collectives (ldmatrix, mma): the registers or address this
  // lane contributes, in two sets used alternately (see `collective`).
  uint64_t fragment[2][8] = {};
  unsigned collectives = 0;
  // cp.async copies this thread issued that have not landed yet, and how
  // many groups it has committed (see `cp_async`).
  struct Copy {
    void* dst;
    const void* src;
    unsigned bytes, src_bytes, group;
  };
  std::vector<Copy> pending;
  unsigned committed = 0;
};

constexpr size_t kStackBytes = 64 * 1024;
constexpr size_t kGuardBytes = 4096;

// Runs the blocks handed to one OS thread. Owns the fibers' stacks.
struct BlockRunner {
  std::vector<Fiber> fibers;
  char* stacks = nullptr;
  size_t capacity = 0;  // fibers the stacks hold
  void* scheduler_sp = nullptr;
#if !defined(CNNC_EMU_ASM_SWITCH)
  ucontext_t scheduler_ctx;
#endif
  int current = 0;
  void (*body)(void*) = nullptr;
  void* closure = nullptr;
  std::vector<uint64_t> slots;  // warp exchanges
  std::vector<unsigned char> dynamic_shared;
  unsigned long block_serial = 0;                           // blocks run so far
  std::vector<std::pair<void*, unsigned long>> shared_seen;  // static __shared__ arrays, last block poisoned

  bool reserve(size_t n) {
    if (n <= capacity) return true;
    if (stacks) munmap(stacks, capacity * (kStackBytes + kGuardBytes));
    const size_t bytes = n * (kStackBytes + kGuardBytes);
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) {
      stacks = nullptr;
      capacity = 0;
      return false;
    }
    stacks = static_cast<char*>(p);
    capacity = n;
    // A guard page below each stack turns an overflow into a crash, not corruption.
    for (size_t i = 0; i < n; ++i) mprotect(stacks + i * (kStackBytes + kGuardBytes), kGuardBytes, PROT_NONE);
    return true;
  }
  char* stack_top(size_t i) { return stacks + (i + 1) * (kStackBytes + kGuardBytes); }
  ~BlockRunner() {
    if (stacks) munmap(stacks, capacity * (kStackBytes + kGuardBytes));
  }
};

inline thread_local BlockRunner* t_runner = nullptr;

// Runners are reused across launches (their stacks are mapped once).
inline std::mutex g_runners_mutex;
inline std::vector<BlockRunner*> g_runners;
inline BlockRunner* take_runner() {
  std::lock_guard<std::mutex> lock(g_runners_mutex);
  if (g_runners.empty()) return new BlockRunner();
  BlockRunner* r = g_runners.back();
  g_runners.pop_back();
  return r;
}
inline void give_runner(BlockRunner* r) {
  std::lock_guard<std::mutex> lock(g_runners_mutex);
  g_runners.push_back(r);
}
// Frees the pooled runners and their stacks. Each runner's stacks take two
// memory mappings per fiber (stack and guard page), and modules stay loaded,
// so a process that loads many modules must give them back (Linux allows
// about 65,000 mappings; past that even malloc fails).
inline void release_runners() {
  std::lock_guard<std::mutex> lock(g_runners_mutex);
  for (BlockRunner* r : g_runners) delete r;
  g_runners.clear();
}

inline void switch_to_scheduler() {
  BlockRunner* r = t_runner;
#if defined(CNNC_EMU_ASM_SWITCH)
  cnnc_emu_switch(&r->fibers[r->current].sp, r->scheduler_sp);
#else
  swapcontext(&r->fibers[r->current].ctx, &r->scheduler_ctx);
#endif
}

[[noreturn]] inline void fiber_main() {
  BlockRunner* r = t_runner;
  r->body(r->closure);
  r->fibers[r->current].state = DONE;
  switch_to_scheduler();
  std::abort();  // a finished fiber is never resumed
}

#if defined(CNNC_EMU_ASM_SWITCH)
// Builds a stack that cnnc_emu_switch "returns" into fiber_main from, with the
// stack pointer aligned as at a function's entry.
inline void* initial_stack(char* top) {
  auto* sp = reinterpret_cast<uintptr_t*>(reinterpret_cast<uintptr_t>(top) & ~uintptr_t(15));
  *--sp = 0;                                           // fiber_main's return address: never used
  *--sp = reinterpret_cast<uintptr_t>(&fiber_main);    // where `ret` goes
  for (int i = 0; i < 6; ++i) *--sp = 0;               // rbp rbx r12 r13 r14 r15
  return sp;
}
#else
inline void fiber_trampoline() { fiber_main(); }
#endif

// ---------------------------------------------------------------------------
// Barriers
// ---------------------------------------------------------------------------
inline void syncthreads() {
  BlockRunner* r = t_runner;
  Fiber& f = r->fibers[r->current];
  f.state = AT_BLOCK_BARRIER;
  switch_to_scheduler();
  ++f.barriers;
}

inline unsigned lane_id() { return static_cast<unsigned>(t_runner->current) % warpSize; }

// Waits until every lane in `mask` (that exists in this block) has arrived at a warp-level wait.
inline void warp_wait(unsigned mask) {
  BlockRunner* r = t_runner;
  Fiber& f = r->fibers[r->current];
  f.state = AT_WARP_BARRIER;
  f.mask = mask;
  switch_to_scheduler();
}

}  // namespace cnnc_emu

inline void __syncthreads() { ::cnnc_emu::syncthreads(); }
inline int __syncthreads_count(int p) {
  auto* r = ::cnnc_emu::t_runner;
  r->slots[r->current] = p != 0;
  __syncthreads();
  int n = 0;
  for (size_t i = 0; i < r->fibers.size(); ++i) n += static_cast<int>(r->slots[i]);
  __syncthreads();
  return n;
}
inline void __syncwarp(unsigned mask = 0xffffffffu) { ::cnnc_emu::warp_wait(mask); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

namespace cnnc_emu {
// Every lane writes its value, waits for the others, reads the source lane's,
// and waits again so that no lane overwrites its slot before all have read.
template <class T>
inline T warp_exchange(unsigned mask, T v, int src) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "warp exchange of a value wider than 8 bytes");
  BlockRunner* r = t_runner;
  const int me = r->current;
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  r->slots[me] = bits;
  warp_wait(mask);
  const int base = me - me % warpSize;
  T out = v;
  if (src >= 0 && src < static_cast<int>(r->fibers.size()) && src / warpSize == me / warpSize &&
      (mask >> (src - base) & 1u)) {
    std::memcpy(&out, &r->slots[src], sizeof(T));
  }
  warp_wait(mask);
  return out;
}
inline unsigned warp_vote(unsigned mask, int predicate) {
  BlockRunner* r = t_runner;
  const int me = r->current;
  r->slots[me] = predicate != 0;
  warp_wait(mask);
  const int base = me - me % warpSize;
  unsigned ballot = 0;
  for (int l = 0; l < warpSize && base + l < static_cast<int>(r->fibers.size()); ++l)
    if ((mask >> l & 1u) && r->slots[base + l]) ballot |= 1u << l;
  warp_wait(mask);
  return ballot;
}
}  // namespace cnnc_emu

template <class T>
inline T __shfl_sync(unsigned mask, T v, int src_lane, int width = warpSize) {
  const int lane = static_cast<int>(::cnnc_emu::lane_id());
  const int me = ::cnnc_emu::t_runner->current;
  const int base = lane - lane % width;
  return ::cnnc_emu::warp_exchange(mask, v, me - lane + base + ((src_lane % width) + width) % width);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
  const int lane = static_cast<int>(::cnnc_emu::lane_id());
  const int me = ::cnnc_emu::t_runner->current;
  const int base = lane - lane % width;
  const int src = lane - static_cast<int>(delta);
  return ::cnnc_emu::warp_exchange(mask, v, src < base ? me : me - lane + src);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = warpSize) {
  const int lane = static_cast<int>(::cnnc_emu::lane_id());
  const int me = ::cnnc_emu::t_runner->current;
  const int base = lane - lane % width;
  const int src = lane + static_cast<int>(delta);
  return ::cnnc_emu::warp_exchange(mask, v, src >= base + width ? me : me - lane + src);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = warpSize) {
  const int lane = static_cast<int>(::cnnc_emu::lane_id());
  const int me = ::cnnc_emu::t_runner->current;
  const int base = lane - lane % width;
  const int src = lane ^ lane_mask;
  return ::cnnc_emu::warp_exchange(mask, v, src >= base + width ? me : me - lane + src);
}
inline unsigned __ballot_sync(unsigned mask, int predicate) { return ::cnnc_emu::warp_vote(mask, predicate); }
inline int __any_sync(unsigned mask, int predicate) { return ::cnnc_emu::warp_vote(mask, predicate) != 0; }
inline int __all_sync(unsigned mask, int predicate) { return ::cnnc_emu::warp_vote(mask, !predicate) == 0; }
inline unsigned __activemask() { return 0xffffffffu; }

// ---------------------------------------------------------------------------
// Atomics (blocks may run on different OS threads at the same time)
// ---------------------------------------------------------------------------
// Cache-hinted loads (through L2 on the GPU, skipping a possibly stale L1
// line): plain loads here, ordered by the fences and atomics around them.
template <class T>
inline T __ldcg(const T* p) {
  return *p;
}
template <class T>
inline T atomicAdd(T* p, T v) {
  if constexpr (std::is_floating_point_v<T>) {
    std::atomic_ref<T> a(*p);
    T old = a.load();
    while (!a.compare_exchange_weak(old, old + v)) {
    }
    return old;
  } else {
    return std::atomic_ref<T>(*p).fetch_add(v);
  }
}
template <class T>
inline T atomicSub(T* p, T v) {
  return std::atomic_ref<T>(*p).fetch_sub(v);
}
template <class T>
inline T atomicExch(T* p, T v) {
  return std::atomic_ref<T>(*p).exchange(v);
}
template <class T>
inline T atomicMax(T* p, T v) {
  std::atomic_ref<T> a(*p);
  T old = a.load();
  while (old < v && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}
template <class T>
inline T atomicMin(T* p, T v) {
  std::atomic_ref<T> a(*p);
  T old = a.load();
  while (v < old && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}
template <class T>
inline T atomicCAS(T* p, T compare, T v) {
  std::atomic_ref<T>(*p).compare_exchange_strong(compare, v);
  return compare;
}

// ---------------------------------------------------------------------------
// Vector loads: on a GPU a misaligned 16-byte access is a fatal error
// ("misaligned address"); here it names the kernel, block and thread and ends
// the process, as a crash does. The device library calls CNNC_CHECK_ALIGN(p)
// before every float4 access.
// ---------------------------------------------------------------------------
namespace cnnc_emu {
[[noreturn]] inline void misaligned(const void* p);
}  // namespace cnnc_emu
#define CNNC_CHECK_ALIGN(p)                                                        \
  do {                                                                             \
    if (reinterpret_cast<std::uintptr_t>(p) % 16 != 0) ::cnnc_emu::misaligned(p); \
  } while (0)
// ... and before every 8-byte load of four 16-bit weights.
#define CNNC_CHECK_ALIGN8(p)                                                                     \
  do {                                                                                           \
    if (reinterpret_cast<std::uintptr_t>(p) % 8 != 0) ::cnnc_emu::misaligned(p, 8, "8-byte load"); \
  } while (0)

// ---------------------------------------------------------------------------
// Tensor cores (sm_80): mma.sync, ldmatrix, cp.async, cvt to TF32, as the PTX
// ISA documents them. The device library wraps each in a function that uses
// inline PTX on the GPU and these on the CPU, so a kernel that assumes the
// wrong fragment layout, forgets a wait or reads a buffer in the wrong layout
// computes wrong numbers here too.
// ---------------------------------------------------------------------------
namespace cnnc_emu {

[[noreturn]] inline void misaligned(const void* p, unsigned bytes, const char* what);

// `cvt.rna.tf32.f32`: round to the nearest TF32 value (10 mantissa bits),
// ties away from zero; the 13 low bits of the result are zero. NaN and
// infinity pass through.
inline uint32_t cvt_rna_tf32(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  if ((bits & 0x7f800000u) == 0x7f800000u) return bits;
  return (bits + 0x1000u) & 0xffffe000u;
}

// How a tensor core reads a .tf32 operand register: the sign, exponent and
// top 10 mantissa bits; the 13 low bits are ignored (an operand the kernel did
// not convert is truncated).
inline double tf32_operand(uint32_t bits) {
  bits &= 0xffffe000u;
  float f;
  std::memcpy(&f, &bits, 4);
  return static_cast<double>(f);
}

// One warp-wide collective: each lane deposits `n` 64-bit words, waits for
// every lane of the warp (all 32 must take part, as `.aligned` requires),
// then `body(lanes)` reads any lane's deposit. Deposits alternate between
// two sets, so no lane can overwrite a set another lane may still read: to
// reuse a set, a lane must pass the next collective, which waits for all.
template <class Body>
inline void collective(const uint64_t* deposit, int n, Body body) {
  BlockRunner* r = t_runner;
  const int me = r->current;
  Fiber& f = r->fibers[me];
  const unsigned set = f.collectives++ & 1u;
  std::memcpy(f.fragment[set], deposit, sizeof(uint64_t) * n);
  warp_wait(0xffffffffu);
  const int base = me - me % warpSize;
  auto lane = [&](int l) -> const uint64_t* { return r->fibers[base + l].fragment[set]; };
  body(lane);
}

// `mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 d, a, b, c`: D = A·B + C
// for a 16×8×8 tile held by the warp. With groupID = lane / 4 and t = lane % 4,
// lane holds A[g][t] in a0, A[g+8][t] in a1, A[g][t+4] in a2, A[g+8][t+4] in
// a3; B[t][g] in b0, B[t+4][g] in b1; C and D [g][2t], [g][2t+1], [g+8][2t],
// [g+8][2t+1]. Products of TF32 operands are exact; the PTX ISA leaves the
// order and internal precision of the sum open, so this model adds the eight
// products and C in double and rounds once to f32 (docs/testing.md bounds the
// difference).
inline void mma_m16n8k8_tf32(float* d, const uint32_t* a, const uint32_t* b, const float* c) {
  uint64_t mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
  float acc[4] = {c[0], c[1], c[2], c[3]};
  collective(mine, 6, [&](auto lane) {
    const int l = static_cast<int>(lane_id()), g = l / 4, t = l % 4;
    for (int i = 0; i < 4; ++i) {
      const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
      double sum = acc[i];
      for (int k = 0; k < 8; ++k) {
        const uint64_t* ha = lane((row % 8) * 4 + k % 4);  // holds A[row][k]
        const uint64_t* hb = lane(col * 4 + k % 4);        // holds B[k][col]
        const double av = tf32_operand(static_cast<uint32_t>(ha[(row >= 8 ? 1 : 0) + (k >= 4 ? 2 : 0)]));
        const double bv = tf32_operand(static_cast<uint32_t>(hb[4 + (k >= 4 ? 1 : 0)]));
        sum += av * bv;
      }
      d[i] = static_cast<float>(sum);
    }
  });
}

// `cvt.rn.bf16x2.f32 d, hi, lo` and `cvt.rn.f16x2.f32 d, hi, lo` (PTX ISA,
// "cvt"): each f32 rounded to the nearest 16-bit value, ties to even; the
// value converted from the first source goes to the upper half of d, the
// second to the lower half. Overflow: bf16 has f32's exponent range, so only
// a value within half a bf16 step of FLT_MAX rounds up to infinity; FP16's
// largest finite value is 65504, and .rn without .satfinite turns anything
// from 65520 (the midpoint to 2^16, which rounds to even, up) into ±inf.
// Infinities stay infinities; a NaN becomes the canonical NaN 0x7fff (the
// kernels never convert a NaN on purpose; the emulator's shared memory
// starts as NaN, so one read too early stays visible).
inline uint16_t cvt_rn_bf16(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
  // Adding 0x7fff plus the lowest kept bit rounds to nearest, ties to even;
  // a carry out of the mantissa correctly bumps the exponent (up to inf).
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

inline uint16_t cvt_rn_f16(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, 4);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t mag = bits & 0x7fffffffu;
  if (mag > 0x7f800000u) return 0x7fffu;                  // NaN
  if (mag >= 0x477ff000u) return sign | 0x7c00u;          // >= 65520 (and inf): inf
  if (mag < 0x38800000u) {                                // below 2^-14: subnormal or zero
    // In units of FP16's subnormal step 2^-24 (scaling by a power of two is
    // exact), rounded to the nearest integer, ties to even (the default
    // rounding mode of nearbyint); 1024 is the smallest normal's encoding.
    float magnitude;
    std::memcpy(&magnitude, &mag, 4);
    return sign | static_cast<uint16_t>(std::nearbyint(static_cast<double>(magnitude) * 16777216.0));
  }
  const uint32_t exponent = (mag >> 23) - 127 + 15, mantissa = mag & 0x7fffffu;
  uint32_t h = (exponent << 10) | (mantissa >> 13);
  const uint32_t rest = mantissa & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // a carry bumps the exponent
  return sign | static_cast<uint16_t>(h);
}

inline uint32_t cvt_rn_bf16x2(float hi, float lo) {
  return (static_cast<uint32_t>(cvt_rn_bf16(hi)) << 16) | cvt_rn_bf16(lo);
}
inline uint32_t cvt_rn_f16x2(float hi, float lo) {
  return (static_cast<uint32_t>(cvt_rn_f16(hi)) << 16) | cvt_rn_f16(lo);
}

// A .bf16 or .f16 operand as the tensor core reads it, exactly (every such
// value is a double).
inline double bf16_operand(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return static_cast<double>(f);
}
inline double f16_operand(uint16_t h) {
  const int exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
  const double sign = (h & 0x8000u) ? -1.0 : 1.0;
  if (exponent == 0x1f) return mantissa ? std::numeric_limits<double>::quiet_NaN() : sign * INFINITY;
  if (exponent == 0) return sign * std::ldexp(static_cast<double>(mantissa), -24);
  return sign * std::ldexp(static_cast<double>(mantissa | 0x400), exponent - 25);
}

// `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 d, a, b, c` (and
// `.f32.f16.f16.f32` with `fp16`): D = A·B + C on a 16×8×16 tile. The
// fragments follow the PTX ISA's "Matrix Fragments for mma.m16n8k16 with
// floating point type" (under "Warp Level Matrix Multiply-Accumulate
// Instructions", mma): with groupID
// g = lane / 4 and t = lane % 4, A's four registers each hold two 16-bit
// elements, a0 a1 in register 0 ... a6 a7 in register 3, element i at row g
// (i < 2 or 4 <= i < 6; else g + 8) and column 2t + (i & 1) (+ 8 for i >= 4),
// the lower index in the lower half: register 0 A[g][2t..2t+1], 1
// A[g+8][2t..2t+1], 2 A[g][2t+8..2t+9], 3 A[g+8][2t+8..2t+9]. B's two
// registers hold b0..b3, element i at row (k) 2t + (i & 1) (+ 8 for i >= 2)
// and column g: register 0 B[2t..2t+1][g], 1 B[2t+8..2t+9][g]. C and D are
// the m16n8k8 layout (four f32: [g][2t], [g][2t+1], [g+8][2t], [g+8][2t+1]).
// Operands are decoded exactly and products of 16-bit values are exact in
// double; as for TF32, the PTX ISA leaves the order and internal precision of
// the FP32 accumulation open, so this model adds the 16 products and C in
// double and rounds once to f32 (docs/testing.md bounds the difference).
inline void mma_m16n8k16(bool fp16, float* d, const uint32_t* a, const uint32_t* b, const float* c) {
  uint64_t mine[6] = {a[0], a[1], a[2], a[3], b[0], b[1]};
  float acc[4] = {c[0], c[1], c[2], c[3]};
  auto operand = [&](uint32_t reg, int half) {
    const uint16_t h = static_cast<uint16_t>(half ? reg >> 16 : reg & 0xffffu);
    return fp16 ? f16_operand(h) : bf16_operand(h);
  };
  collective(mine, 6, [&](auto lane) {
    const int l = static_cast<int>(lane_id()), g = l / 4, t = l % 4;
    for (int i = 0; i < 4; ++i) {
      const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
      double sum = acc[i];
      for (int k = 0; k < 16; ++k) {
        // A[row][k] is in lane (row % 8)·4 + (k % 8) / 2, register
        // (row >= 8) + 2·(k >= 8), half k % 2; B[k][col] in lane
        // col·4 + (k % 8) / 2, register 4 + (k >= 8), half k % 2.
        const uint64_t* ha = lane((row % 8) * 4 + (k % 8) / 2);
        const uint64_t* hb = lane(col * 4 + (k % 8) / 2);
        const double av = operand(static_cast<uint32_t>(ha[(row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)]), k % 2);
        const double bv = operand(static_cast<uint32_t>(hb[4 + (k >= 8 ? 1 : 0)]), k % 2);
        sum += av * bv;
      }
      d[i] = static_cast<float>(sum);
    }
  });
}

// `ldmatrix.sync.aligned.m8n8.x{count}{.trans}.shared.b16`: loads `count` 8×8
// matrices of 16-bit elements; lanes 8i..8i+7 give the addresses of matrix
// i's rows (16 bytes each, 16-byte aligned; the other lanes' addresses are
// ignored). Lane l receives in register i the elements (l / 4, 2(l % 4)) and
// (l / 4, 2(l % 4) + 1) of matrix i, the first in the low half; with .trans,
// the elements (2(l % 4), l / 4) and (2(l % 4) + 1, l / 4). (A 32-bit element
// such as a TF32 operand is two 16-bit halves: without .trans, lane l gets
// element (l / 4, l % 4) of an 8×4 matrix of 32-bit values.)
inline void ldmatrix(int count, bool trans, uint32_t* regs, const void* row) {
  if (reinterpret_cast<std::uintptr_t>(row) % 16 != 0) misaligned(row, 16, "ldmatrix row");
  const uint64_t mine[1] = {static_cast<uint64_t>(reinterpret_cast<std::uintptr_t>(row))};
  collective(mine, 1, [&](auto lane) {
    const int l = static_cast<int>(lane_id());
    for (int i = 0; i < count; ++i) {
      auto element = [&](int r, int c) {
        const auto* p = reinterpret_cast<const uint16_t*>(static_cast<std::uintptr_t>(lane(8 * i + r)[0]));
        return static_cast<uint32_t>(p[c]);
      };
      const uint32_t lo = trans ? element(2 * (l % 4), l / 4) : element(l / 4, 2 * (l % 4));
      const uint32_t hi = trans ? element(2 * (l % 4) + 1, l / 4) : element(l / 4, 2 * (l % 4) + 1);
      regs[i] = lo | (hi << 16);
    }
  });
}

// `cp.async.{ca,cg}.shared.global [dst], [src], bytes, src_bytes`: copies
// src_bytes bytes and fills the rest of `bytes` with zeros, asynchronously.
// Here the copy is really deferred: it lands when this thread's
// `cp.async.wait_group` covers its group, never before, so a kernel that
// reads the buffer without waiting reads the NaN shared memory starts with.
inline void cp_async(void* dst, const void* src, unsigned bytes, unsigned src_bytes) {
  if (reinterpret_cast<std::uintptr_t>(dst) % bytes != 0) misaligned(dst, bytes, "cp.async destination");
  if (src_bytes > 0 && reinterpret_cast<std::uintptr_t>(src) % bytes != 0) misaligned(src, bytes, "cp.async source");
  Fiber& f = t_runner->fibers[t_runner->current];
  f.pending.push_back(Fiber::Copy{dst, src, bytes, std::min(src_bytes, bytes), f.committed});
}

// `cp.async.commit_group`: the copies issued since the last commit form a group.
inline void cp_async_commit() { ++t_runner->fibers[t_runner->current].committed; }

// `cp.async.wait_group n`: waits until at most the n most recent committed
// groups are pending: every older group's copies land now. (Copies not yet
// committed are not waited for.)
inline void cp_async_wait(unsigned n) {
  Fiber& f = t_runner->fibers[t_runner->current];
  const unsigned keep_from = f.committed >= n ? f.committed - n : 0;
  size_t kept = 0;
  for (size_t i = 0; i < f.pending.size(); ++i) {
    const Fiber::Copy& c = f.pending[i];
    if (c.group < keep_from) {
      std::memcpy(c.dst, c.src, c.src_bytes);
      std::memset(static_cast<char*>(c.dst) + c.src_bytes, 0, c.bytes - c.src_bytes);
    } else {
      f.pending[kept++] = c;
    }
  }
  f.pending.resize(kept);
}

}  // namespace cnnc_emu

// ---------------------------------------------------------------------------
// Launching a grid
// ---------------------------------------------------------------------------
// Launch flags.
#define CNNC_EMU_REVERSE 1u

namespace cnnc_emu {

inline void* dynamic_shared() { return t_runner->dynamic_shared.data(); }

// Called (by the harness's rewrite) after each static `__shared__` declaration:
// the first thread of a block to reach it fills the array with NaN bytes, as
// uninitialised as on a GPU, and no trace of the previous block is left.
inline void shared_declared(void* p, size_t bytes) {
  BlockRunner* r = t_runner;
  if (!r) return;
  for (auto& seen : r->shared_seen) {
    if (seen.first != p) continue;
    if (seen.second != r->block_serial) {
      seen.second = r->block_serial;
      std::memset(p, 0xff, bytes);
    }
    return;
  }
  if (r->shared_seen.size() > 4096) r->shared_seen.clear();
  r->shared_seen.emplace_back(p, r->block_serial);
  std::memset(p, 0xff, bytes);
}

struct Launch {
  const char* kernel;
  dim3 grid, block;
  size_t dynamic_shared_bytes;
  void (*body)(void*);
  void* closure;
  bool reverse = false;
  std::atomic<unsigned long> next_block{0};
  std::atomic<bool> failed{false};
  std::mutex error_mutex;
  std::string error;

  void fail(std::string message) {
    std::lock_guard<std::mutex> lock(error_mutex);
    if (!failed.exchange(true)) error = std::move(message);
  }
};

inline std::string describe_thread(const Fiber& f) {
  char text[64];
  std::snprintf(text, sizeof text, "(%u,%u,%u)", f.tid.x, f.tid.y, f.tid.z);
  return text;
}

// Runs one block to completion; returns false (after recording why) on a barrier error.
inline bool run_block(Launch& L, BlockRunner& r, uint3 block) {
  const unsigned threads = L.block.x * L.block.y * L.block.z;
  ++r.block_serial;
  r.fibers.assign(threads, Fiber{});
  r.slots.assign(threads, 0);
  // Uninitialised on a GPU: NaN bytes here, so a read before any write shows.
  std::memset(r.dynamic_shared.data(), 0xff, r.dynamic_shared.size());
  t_block_idx = block;
  for (unsigned i = 0; i < threads; ++i) {
    Fiber& f = r.fibers[i];
    f.tid = uint3{i % L.block.x, (i / L.block.x) % L.block.y, i / (L.block.x * L.block.y)};
#if defined(CNNC_EMU_ASM_SWITCH)
    f.sp = initial_stack(r.stack_top(i));
#else
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = r.stack_top(i) - kStackBytes;
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_trampoline, 0);
#endif
  }
  for (;;) {
    for (unsigned k = 0; k < threads; ++k) {
      const unsigned i = L.reverse ? threads - 1 - k : k;
      Fiber& f = r.fibers[i];
      if (f.state != READY) continue;
      r.current = static_cast<int>(i);
      t_thread_idx = f.tid;
#if defined(CNNC_EMU_ASM_SWITCH)
      cnnc_emu_switch(&r.scheduler_sp, f.sp);
#else
      swapcontext(&r.scheduler_ctx, &f.ctx);
#endif
    }
    // Every fiber has finished or waits. Release what can be released.
    unsigned done = 0, at_block = 0, at_warp = 0;
    for (const Fiber& f : r.fibers) {
      done += f.state == DONE;
      at_block += f.state == AT_BLOCK_BARRIER;
      at_warp += f.state == AT_WARP_BARRIER;
    }
    if (done == threads) return true;
    bool released = false;
    if (at_block == threads) {
      for (Fiber& f : r.fibers) f.state = READY;
      continue;
    }
    // Warp-level waits: a warp's waiting lanes go on once every lane their masks name has arrived.
    for (unsigned w = 0; w * warpSize < threads; ++w) {
      const unsigned first = w * warpSize, end = std::min(threads, first + warpSize);
      unsigned waiting = 0, named = 0, exited = 0;
      for (unsigned i = first; i < end; ++i) {
        const Fiber& f = r.fibers[i];
        if (f.state == AT_WARP_BARRIER) {
          waiting |= 1u << (i - first);
          named |= f.mask;
        }
        if (f.state == DONE) exited |= 1u << (i - first);
      }
      if (!waiting) continue;
      const unsigned lanes = end - first == 32 ? 0xffffffffu : ((1u << (end - first)) - 1);
      named &= lanes;
      if (named & exited) {
        char text[256];
        std::snprintf(text, sizeof text,
                      "kernel `%s`, block (%u,%u,%u): a warp-level operation's mask 0x%08x names lanes "
                      "0x%08x of warp %u that have exited",
                      L.kernel, block.x, block.y, block.z, named, named & exited, w);
        L.fail(text);
        return false;
      }
      if ((named & ~waiting) == 0) {
        for (unsigned i = first; i < end; ++i)
          if (waiting >> (i - first) & 1u) r.fibers[i].state = READY;
        released = true;
      }
    }
    if (released) continue;
    // Nothing can move: a divergent __syncthreads() or a deadlock.
    std::string message = "kernel `" + std::string(L.kernel) + "`, block (" + std::to_string(block.x) + "," +
                          std::to_string(block.y) + "," + std::to_string(block.z) + "): ";
    const Fiber* waiter = nullptr;
    const Fiber* leaver = nullptr;
    for (const Fiber& f : r.fibers) {
      if (!waiter && f.state != DONE) waiter = &f;
      if (!leaver && f.state == DONE) leaver = &f;
    }
    if (at_block > 0 && done > 0 && at_warp == 0) {
      message += "divergent __syncthreads(): " + std::to_string(at_block) + " of " + std::to_string(threads) +
                 " threads wait at barrier #" + std::to_string(waiter->barriers + 1) + " (e.g. thread " +
                 describe_thread(*waiter) + ") but " + std::to_string(done) + " have exited (e.g. thread " +
                 describe_thread(*leaver) + "); on a GPU this hangs or corrupts shared memory";
    } else {
      message += "deadlock: " + std::to_string(at_block) + " threads wait at __syncthreads(), " +
                 std::to_string(at_warp) + " at warp-level operations, " + std::to_string(done) +
                 " have exited (e.g. thread " + describe_thread(*waiter) + " waits)";
    }
    L.fail(message);
    return false;
  }
}

// ---------------------------------------------------------------------------
// A crash inside a kernel names the kernel, block and thread, then the process
// dies as it would have (the previous handler or the default action).
// ---------------------------------------------------------------------------
inline thread_local const char* t_kernel = nullptr;
inline struct sigaction g_previous_segv, g_previous_bus;

inline void chain(int sig, siginfo_t* info, void* context) {
  const struct sigaction& prev = sig == SIGSEGV ? g_previous_segv : g_previous_bus;
  if ((prev.sa_flags & SA_SIGINFO) && prev.sa_sigaction) {
    prev.sa_sigaction(sig, info, context);
    return;
  }
  if (prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN && prev.sa_handler) {
    prev.sa_handler(sig);
    return;
  }
  signal(sig, SIG_DFL);  // returning re-executes the access, which now kills the process
}

inline void crash_handler(int sig, siginfo_t* info, void* context) {
  if (t_kernel && t_runner) {
    static char text[512];
    const Fiber& f = t_runner->fibers[t_runner->current];
    const int n = std::snprintf(text, sizeof text,
                                "\ncnnc CUDA emulation: kernel `%s` crashed (%s at address %p) in block (%u,%u,%u), "
                                "thread (%u,%u,%u): an out-of-bounds access or a stack overflow\n",
                                t_kernel, sig == SIGSEGV ? "SIGSEGV" : "SIGBUS", info->si_addr, t_block_idx.x,
                                t_block_idx.y, t_block_idx.z, f.tid.x, f.tid.y, f.tid.z);
    if (n > 0) {
      ssize_t ignored = write(2, text, static_cast<size_t>(std::min(n, static_cast<int>(sizeof text) - 1)));
      (void)ignored;
    }
    t_kernel = nullptr;
    signal(sig, SIG_DFL);
    return;
  }
  chain(sig, info, context);
}

[[noreturn]] inline void misaligned(const void* p) {
  if (t_runner) {
    const Fiber& f = t_runner->fibers[t_runner->current];
    std::fprintf(stderr,
                 "\ncnnc CUDA emulation: kernel `%s`: misaligned 16-byte access at address %p in block (%u,%u,%u), "
                 "thread (%u,%u,%u) (a GPU stops with `misaligned address`)\n",
                 t_kernel ? t_kernel : "?", p, t_block_idx.x, t_block_idx.y, t_block_idx.z, f.tid.x, f.tid.y, f.tid.z);
  } else {
    std::fprintf(stderr, "\ncnnc CUDA emulation: misaligned 16-byte access at address %p\n", p);
  }
  std::abort();
}

[[noreturn]] inline void misaligned(const void* p, unsigned bytes, const char* what) {
  std::fprintf(stderr,
               "\ncnnc CUDA emulation: kernel `%s`: misaligned %s (needs %u-byte alignment) at address %p in block "
               "(%u,%u,%u), thread %d (a GPU stops with `misaligned address`)\n",
               t_kernel ? t_kernel : "?", what, bytes, p, t_block_idx.x, t_block_idx.y, t_block_idx.z,
               t_runner ? t_runner->current : -1);
  std::abort();
}

inline void install_crash_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa;
    std::memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = crash_handler;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &g_previous_segv);
    sigaction(SIGBUS, &sa, &g_previous_bus);
  });
}

// A fault on a fiber's guard page needs another stack to report it from.
inline void ensure_signal_stack() {
  stack_t current;
  if (sigaltstack(nullptr, &current) == 0 && !(current.ss_flags & SS_DISABLE)) return;
  static thread_local std::vector<char> stack(64 * 1024);
  stack_t ss;
  ss.ss_sp = stack.data();
  ss.ss_size = stack.size();
  ss.ss_flags = 0;
  sigaltstack(&ss, nullptr);
}

inline void worker(Launch& L) {
  BlockRunner* r = take_runner();
  BlockRunner* saved = t_runner;
  t_runner = r;
  ensure_signal_stack();
  const char* saved_kernel = t_kernel;
  t_kernel = L.kernel;
  t_grid_dim = L.grid;
  t_block_dim = L.block;
  r->body = L.body;
  r->closure = L.closure;
  r->dynamic_shared.assign(L.dynamic_shared_bytes, 0);
  const unsigned long total = static_cast<unsigned long>(L.grid.x) * L.grid.y * L.grid.z;
  if (!r->reserve(static_cast<size_t>(L.block.x) * L.block.y * L.block.z)) {
    L.fail("cannot map fiber stacks");
  } else {
    for (;;) {
      if (L.failed.load()) break;
      const unsigned long k = L.next_block.fetch_add(1);
      if (k >= total) break;
      const unsigned long b = L.reverse ? total - 1 - k : k;
      const uint3 block{static_cast<unsigned>(b % L.grid.x), static_cast<unsigned>((b / L.grid.x) % L.grid.y),
                        static_cast<unsigned>(b / (static_cast<unsigned long>(L.grid.x) * L.grid.y))};
      if (!run_block(L, *r, block)) break;
    }
  }
  t_kernel = saved_kernel;
  t_runner = saved;
  give_runner(r);
}

inline unsigned worker_count(unsigned long blocks) {
  unsigned n = std::thread::hardware_concurrency();
  if (const char* s = std::getenv("CNNC_EMU_THREADS")) n = static_cast<unsigned>(std::atoi(s));
  if (n == 0) n = 1;
  if (blocks < n) n = static_cast<unsigned>(blocks);
  return n;
}

inline thread_local std::string t_last_error;

// Runs body(closure) as every thread of the grid. Returns 0, or 1 with the
// reason in last_error().
inline int launch(const char* kernel, dim3 grid, dim3 block, size_t dynamic_shared_bytes, void (*body)(void*),
                  void* closure, unsigned flags) {
  const unsigned long threads = static_cast<unsigned long>(block.x) * block.y * block.z;
  char text[512];
  // The limits of every GPU since compute capability 3.0.
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || block.x == 0 || block.y == 0 || block.z == 0 ||
      grid.x > 2147483647u || grid.y > 65535 || grid.z > 65535 || block.x > 1024 || block.y > 1024 ||
      block.z > 64 || threads > 1024 || dynamic_shared_bytes > 48 * 1024) {
    std::snprintf(text, sizeof text,
                  "kernel `%s`: invalid launch configuration grid (%u,%u,%u) block (%u,%u,%u) dynamic shared %zu "
                  "bytes (limits: block <= 1024 threads, grid.y and grid.z <= 65535, no empty dimension)",
                  kernel, grid.x, grid.y, grid.z, block.x, block.y, block.z, dynamic_shared_bytes);
    t_last_error = text;
    return 1;
  }
  Launch L;
  L.kernel = kernel;
  L.grid = grid;
  L.block = block;
  L.dynamic_shared_bytes = dynamic_shared_bytes;
  L.body = body;
  L.closure = closure;
  L.reverse = (flags & CNNC_EMU_REVERSE) != 0;
  install_crash_handler();
  const unsigned long blocks = static_cast<unsigned long>(grid.x) * grid.y * grid.z;
  const unsigned n = worker_count(blocks);
  if (n == 1) {
    worker(L);
  } else {
    std::vector<std::thread> pool;
    for (unsigned i = 1; i < n; ++i) pool.emplace_back([&L] { worker(L); });
    worker(L);
    for (auto& t : pool) t.join();
  }
  if (L.failed.load()) {
    t_last_error = L.error;
    return 1;
  }
  return 0;
}

inline const char* last_error() { return t_last_error.c_str(); }

// Unpacks cuLaunchKernel-style arguments (an array of pointers to each
// argument's value) for kernel k and launches it.
template <class... P>
struct KernelCall {
  void (*kernel)(P...);
  std::tuple<std::decay_t<P>...> args;
  static void run(void* self) {
    auto* c = static_cast<KernelCall*>(self);
    std::apply(c->kernel, c->args);
  }
};

template <class... P, size_t... I>
inline KernelCall<P...> unpack(void (*kernel)(P...), void** args, std::index_sequence<I...>) {
  return KernelCall<P...>{kernel, std::tuple<std::decay_t<P>...>(*static_cast<std::decay_t<P>*>(args[I])...)};
}

template <class... P>
inline int launch_kernel(const char* name, void (*kernel)(P...), unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                         unsigned by, unsigned bz, unsigned dynamic_shared_bytes, void** args, unsigned nargs,
                         unsigned flags) {
  if (nargs != sizeof...(P)) {
    t_last_error = "kernel `" + std::string(name) + "` takes " + std::to_string(sizeof...(P)) +
                   " arguments; the launch passed " + std::to_string(nargs);
    return 1;
  }
  auto call = unpack(kernel, args, std::index_sequence_for<P...>{});
  return launch(name, dim3(gx, gy, gz), dim3(bx, by, bz), dynamic_shared_bytes, &KernelCall<P...>::run, &call,
                flags);
}

}  // namespace cnnc_emu

// Defines the exported launcher of one kernel: `cnnc_emu_launch_<name>`.
#define CNNC_EMU_EXPORT(name)                                                                                   \
  extern "C" __attribute__((visibility("default"))) int cnnc_emu_launch_##name(                                 \
      unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned dynamic_shared,    \
      void** args, unsigned nargs, unsigned flags) {                                                            \
    return ::cnnc_emu::launch_kernel(#name, &name, gx, gy, gz, bx, by, bz, dynamic_shared, args, nargs, flags); \
  }

// The module's error message accessor, defined once per module.
#define CNNC_EMU_MODULE                                                                                         \
  extern "C" __attribute__((visibility("default"))) const char* cnnc_emu_last_error() {                        \
    return ::cnnc_emu::last_error();                                                                            \
  }                                                                                                             \
  extern "C" __attribute__((visibility("default"))) void cnnc_emu_release() { ::cnnc_emu::release_runners(); }
