// cuda_emu.h: run CUDA C++ kernels on the CPU, one block at a time, one fiber per CUDA thread.
//
// Use: g++ -std=c++17 -include cuda_emu.h -x c++ -fno-strict-aliasing -Wno-unknown-pragmas kernel.cu ...
//
// Model (what the emulator promises, and what it checks):
// * Blocks run one after another on the calling OS thread. Inside a block every CUDA thread is a fiber
//   (ucontext); a fiber runs without interruption until it reaches a synchronisation point:
//   __syncthreads(), __syncwarp(), a __shfl_*_sync, or a vote (__ballot_sync/__any_sync/__all_sync).
//   So code between two barriers runs thread by thread, in the order chosen by the launch (forward,
//   reverse or shuffled every round): a read of shared memory written by another thread without a barrier
//   in between sees stale or poisoned data in at least one of these orders.
// * Dynamic shared memory (SPRUCE_DYNAMIC_SMEM in common.cuh) is poisoned with 0xFF bytes (NaN floats,
//   -1 ints) at the start of every block and followed by a canary checked at the end of the block.
// * Warp operations are rendezvous: every lane named in `mask` must arrive at a warp operation of the same
//   kind with the same mask, otherwise the launch fails with a message (divergent warp op, lane exited,
//   deadlock). Shuffles that read a lane outside `mask` fail. A thread that exits while others wait at
//   __syncthreads fails the launch (undefined behaviour on a GPU).
// * Atomics are plain read-modify-writes (one OS thread). __ldg, __restrict__, __launch_bounds__,
//   __forceinline__ are no-ops; float4/int4 etc. are plain aligned structs.
// Not emulated: memory-model subtleties beyond barriers, clusters, cooperative groups, textures, timing.
#pragma once
#ifndef SPRUCE_CUDA_EMU
#define SPRUCE_CUDA_EMU 1
#endif

#include <ucontext.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) int2 { int x, y; };
struct alignas(16) int4 { int x, y, z, w; };
inline float2 make_float2(float x, float y) { return float2{x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline int2 make_int2(int x, int y) { return int2{x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return int4{x, y, z, w}; }

inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
constexpr int warpSize = 32;

template <typename T> inline T __ldg(const T* p) { return *p; }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __popcll(unsigned long long v) { return __builtin_popcountll(v); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline int __clz(int v) { return v == 0 ? 32 : __builtin_clz(static_cast<unsigned>(v)); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
template <typename T> inline T atomicAdd(T* p, T v) { T old = *p; *p = old + v; return old; }
template <typename T> inline T atomicMax(T* p, T v) { T old = *p; if (v > old) *p = v; return old; }

namespace spruce_emu {

enum State { RUNNABLE, AT_BARRIER, AT_WARP, DONE };
enum WarpKind { W_SYNC, W_SHFL_IDX, W_SHFL_UP, W_SHFL_DOWN, W_SHFL_XOR, W_BALLOT, W_ANY, W_ALL };
inline const char* kind_name(int k) {
  static const char* names[] = {"__syncwarp", "__shfl_sync", "__shfl_up_sync", "__shfl_down_sync",
                                "__shfl_xor_sync", "__ballot_sync", "__any_sync", "__all_sync"};
  return names[k];
}

struct Fiber {
  ucontext_t ctx;
  State state;
  uint3 tid;
  int kind;           // pending warp op
  unsigned mask;
  uint64_t val;
  int arg, width;
  uint64_t result;
};

constexpr size_t kStackBytes = 64 * 1024;
constexpr size_t kCanaryBytes = 64;

struct Context {
  ucontext_t sched;
  std::vector<Fiber> fibers;
  std::vector<std::unique_ptr<char[]>> stacks;  // uninitialised: pages are touched only as deep as used
  int current = 0;
  std::function<void()> body;
  std::string error;
  std::vector<unsigned char> smem;  // dynamic shared memory + canary
  size_t smem_bytes = 0;
};
inline Context& ctx() {
  static Context c;
  return c;
}
inline void fail(const std::string& msg) {
  if (ctx().error.empty()) ctx().error = msg;
}
inline std::string where() {
  const Fiber& f = ctx().fibers[ctx().current];
  return "block (" + std::to_string(blockIdx.x) + "," + std::to_string(blockIdx.y) + "," +
         std::to_string(blockIdx.z) + ") thread (" + std::to_string(f.tid.x) + "," + std::to_string(f.tid.y) +
         "," + std::to_string(f.tid.z) + ")";
}
inline void yield() {
  Context& c = ctx();
  swapcontext(&c.fibers[c.current].ctx, &c.sched);
}
inline void* dynamic_smem() { return ctx().smem.data(); }

inline int lane_of(int linear) { return linear % 32; }

inline uint64_t warp_op(int kind, unsigned mask, uint64_t val, int arg, int width) {
  Context& c = ctx();
  const int linear = c.current;
  if (!(mask & (1u << lane_of(linear))))
    fail(std::string(kind_name(kind)) + " called by lane " + std::to_string(lane_of(linear)) +
         " which is not in its own mask at " + where());
  if (width <= 0 || width > 32 || (width & (width - 1)) != 0)
    fail(std::string(kind_name(kind)) + " width " + std::to_string(width) + " is not a power of 2 <= 32");
  Fiber& f = c.fibers[linear];
  f.kind = kind;
  f.mask = mask;
  f.val = val;
  f.arg = arg;
  f.width = width;
  f.state = AT_WARP;
  yield();
  return c.fibers[linear].result;
}

template <typename T> inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
  uint64_t b = 0;
  memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T> inline T from_bits(uint64_t b) {
  T v;
  memcpy(&v, &b, sizeof(T));
  return v;
}

// Resolve the pending warp ops of one warp; returns how many lanes were released, -1 on error.
inline int resolve_warp(int warp, int nthreads) {
  Context& c = ctx();
  int released = 0;
  const int base = warp * 32;
  unsigned done_lanes = 0;
  for (int l = 0; l < 32 && base + l < nthreads; ++l) {
    Fiber& f = c.fibers[base + l];
    if (f.state != AT_WARP || (done_lanes & (1u << l))) continue;
    const unsigned mask = f.mask;
    bool complete = true;
    for (int j = 0; j < 32; ++j) {
      if (!(mask & (1u << j))) continue;
      if (base + j >= nthreads) {
        fail(std::string(kind_name(f.kind)) + " mask names lane " + std::to_string(j) +
             " which does not exist (blockDim too small) in warp " + std::to_string(warp));
        return -1;
      }
      Fiber& g = c.fibers[base + j];
      if (g.state == DONE) {
        fail(std::string(kind_name(f.kind)) + ": lane " + std::to_string(j) + " of warp " + std::to_string(warp) +
             " exited before joining (mask " + std::to_string(mask) + ")");
        return -1;
      }
      if (g.state != AT_WARP) { complete = false; continue; }
      if (g.kind != f.kind || g.mask != mask) {
        fail(std::string("divergent warp ops in warp ") + std::to_string(warp) + ": lane " + std::to_string(l) +
             " at " + kind_name(f.kind) + " (mask " + std::to_string(mask) + "), lane " + std::to_string(j) +
             " at " + kind_name(g.kind) + " (mask " + std::to_string(g.mask) + ")");
        return -1;
      }
    }
    if (!complete) continue;
    unsigned ballot = 0;
    for (int j = 0; j < 32; ++j)
      if ((mask & (1u << j)) && c.fibers[base + j].val != 0) ballot |= 1u << j;
    for (int j = 0; j < 32; ++j) {
      if (!(mask & (1u << j))) continue;
      Fiber& g = c.fibers[base + j];
      const int w = g.width, seg = (j / w) * w;
      int src = j;
      switch (g.kind) {
        case W_SHFL_IDX: src = seg + (((g.arg % w) + w) % w); break;
        case W_SHFL_UP: src = (j - seg) < g.arg ? j : j - g.arg; break;
        case W_SHFL_DOWN: src = (j - seg) + g.arg >= w ? j : j + g.arg; break;
        case W_SHFL_XOR: src = j ^ g.arg; if (src >= seg + w || src > 31) src = j; break;
        default: break;
      }
      if (g.kind >= W_SHFL_IDX && g.kind <= W_SHFL_XOR && !(mask & (1u << src))) {
        fail(std::string(kind_name(g.kind)) + ": lane " + std::to_string(j) + " reads lane " + std::to_string(src) +
             " which is not in the mask (undefined on a GPU)");
        return -1;
      }
      switch (g.kind) {
        case W_SYNC: g.result = 0; break;
        case W_BALLOT: g.result = ballot; break;
        case W_ANY: g.result = ballot != 0; break;
        case W_ALL: g.result = ballot == mask; break;
        default: g.result = c.fibers[base + src].val; break;
      }
    }
    for (int j = 0; j < 32; ++j)
      if (mask & (1u << j)) { c.fibers[base + j].state = RUNNABLE; ++released; done_lanes |= 1u << j; }
  }
  return released;
}

inline void trampoline() {
  Context& c = ctx();
  c.body();
  c.fibers[c.current].state = DONE;
}

// order: 0 = forward, 1 = reverse, 2 = shuffled every round (xorshift seeded by `seed`).
inline std::string launch(dim3 grid, dim3 block, size_t smem_bytes, std::function<void()> body, int order,
                          uint64_t seed) {
  Context& c = ctx();
  c.error.clear();
  const long long n = 1LL * block.x * block.y * block.z;
  if (n <= 0 || n > 1024) return "invalid block size " + std::to_string(n) + " (1..1024 threads)";
  if (block.z > 64) return "blockDim.z > 64";
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return "grid has a zero dimension";
  if (grid.y > 65535 || grid.z > 65535) return "gridDim.y/z > 65535";
  if (grid.x > 2147483647u) return "gridDim.x > 2^31-1";
  if (smem_bytes > 48 * 1024) return "dynamic shared memory " + std::to_string(smem_bytes) + " B > 48 KiB";
  c.body = std::move(body);
  c.fibers.assign(n, Fiber{});
  while (c.stacks.size() < static_cast<size_t>(n)) c.stacks.emplace_back(new char[kStackBytes]);
  c.smem_bytes = smem_bytes;
  c.smem.assign(smem_bytes + kCanaryBytes, 0);
  gridDim = grid;
  blockDim = block;
  uint64_t rng = seed * 0x9E3779B97F4A7C15ull + 1;
  std::vector<int> ord(n);
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        blockIdx = uint3{bx, by, bz};
        memset(c.smem.data(), 0xFF, smem_bytes);
        memset(c.smem.data() + smem_bytes, 0xAB, kCanaryBytes);
        for (long long i = 0; i < n; ++i) {
          Fiber& f = c.fibers[i];
          f.state = RUNNABLE;
          f.tid = uint3{static_cast<unsigned>(i % block.x), static_cast<unsigned>((i / block.x) % block.y),
                        static_cast<unsigned>(i / (1LL * block.x * block.y))};
          getcontext(&f.ctx);
          f.ctx.uc_stack.ss_sp = c.stacks[i].get();
          f.ctx.uc_stack.ss_size = kStackBytes;
          f.ctx.uc_link = &c.sched;
          makecontext(&f.ctx, trampoline, 0);
        }
        for (;;) {
          for (long long i = 0; i < n; ++i) ord[i] = order == 1 ? static_cast<int>(n - 1 - i) : static_cast<int>(i);
          if (order == 2)
            for (long long i = n - 1; i > 0; --i) {
              rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
              std::swap(ord[i], ord[rng % (i + 1)]);
            }
          for (long long k = 0; k < n; ++k) {
            const int i = ord[k];
            if (c.fibers[i].state != RUNNABLE) continue;
            c.current = i;
            threadIdx = c.fibers[i].tid;
            swapcontext(&c.sched, &c.fibers[i].ctx);
            if (!c.error.empty()) return c.error;
          }
          // Every fiber is now at a barrier, at a warp op, or done.
          int released = 0;
          for (long long w = 0; w * 32 < n; ++w) {
            const int r = resolve_warp(static_cast<int>(w), static_cast<int>(n));
            if (r < 0) return c.error;
            released += r;
          }
          if (released) continue;
          long long at_bar = 0, at_warp = 0, done = 0;
          for (auto& f : c.fibers) {
            at_bar += f.state == AT_BARRIER;
            at_warp += f.state == AT_WARP;
            done += f.state == DONE;
          }
          if (done == n) break;
          if (at_warp) return "deadlock: " + std::to_string(at_warp) + " thread(s) wait at a warp op whose lanes " +
                              "wait at __syncthreads or elsewhere";
          if (done) return "__syncthreads: " + std::to_string(done) + " thread(s) exited while " +
                           std::to_string(at_bar) + " wait at the barrier";
          for (auto& f : c.fibers) f.state = RUNNABLE;
        }
        for (size_t i = 0; i < kCanaryBytes; ++i)
          if (c.smem[smem_bytes + i] != 0xAB) return "dynamic shared memory written past its " +
                                                     std::to_string(smem_bytes) + " bytes";
      }
  return "";
}

}  // namespace spruce_emu

inline void __syncthreads() {
  spruce_emu::ctx().fibers[spruce_emu::ctx().current].state = spruce_emu::AT_BARRIER;
  spruce_emu::yield();
}
inline void __syncwarp(unsigned mask = 0xffffffffu) { spruce_emu::warp_op(spruce_emu::W_SYNC, mask, 0, 0, 32); }
template <typename T> inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  using namespace spruce_emu;
  return from_bits<T>(warp_op(W_SHFL_IDX, mask, to_bits(v), src, width));
}
template <typename T> inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  using namespace spruce_emu;
  return from_bits<T>(warp_op(W_SHFL_UP, mask, to_bits(v), static_cast<int>(delta), width));
}
template <typename T> inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  using namespace spruce_emu;
  return from_bits<T>(warp_op(W_SHFL_DOWN, mask, to_bits(v), static_cast<int>(delta), width));
}
template <typename T> inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  using namespace spruce_emu;
  return from_bits<T>(warp_op(W_SHFL_XOR, mask, to_bits(v), lane_mask, width));
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  return static_cast<unsigned>(spruce_emu::warp_op(spruce_emu::W_BALLOT, mask, pred != 0, 0, 32));
}
inline int __any_sync(unsigned mask, int pred) {
  return static_cast<int>(spruce_emu::warp_op(spruce_emu::W_ANY, mask, pred != 0, 0, 32));
}
inline int __all_sync(unsigned mask, int pred) {
  return static_cast<int>(spruce_emu::warp_op(spruce_emu::W_ALL, mask, pred != 0, 0, 32));
}
