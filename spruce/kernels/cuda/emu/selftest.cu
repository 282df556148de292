// selftest.cu: test-only kernels that pin down the CPU emulator's semantics (shuffles and votes as the CUDA C++
// Programming Guide defines them) and its fault detection. Valid CUDA: CI compiles it with NVRTC like the real
// kernels, so the expectations in tests/test_kernels_cuda.py can be checked on a GPU too.
#include "common.cuh"

// emu_shuffle_semantics: every lane shuffles v = 10 * threadIdx.x. out is int32[7 * blockDim.x]:
//   out[0*T + t] = __shfl_sync(v, delta, width)      out[1*T + t] = __shfl_up_sync(v, delta, width)
//   out[2*T + t] = __shfl_down_sync(v, delta, width) out[3*T + t] = __shfl_xor_sync(v, delta, width)
//   out[4*T + t] = __ballot_sync(lane % 3 == 0)      out[5*T + t] = __any_sync(lane == 5)
//   out[6*T + t] = __all_sync(lane < 31)
// Launch: block (T, 1, 1) with T a multiple of 32; grid (1, 1, 1).
extern "C" __global__ void emu_shuffle_semantics(int width, int delta, int* __restrict__ out) {
  const int t = threadIdx.x, n = blockDim.x, lane = threadIdx.x % 32;
  const int v = 10 * t;
  out[0 * n + t] = __shfl_sync(SPRUCE_FULL_MASK, v, delta, width);
  out[1 * n + t] = __shfl_up_sync(SPRUCE_FULL_MASK, v, delta, width);
  out[2 * n + t] = __shfl_down_sync(SPRUCE_FULL_MASK, v, delta, width);
  out[3 * n + t] = __shfl_xor_sync(SPRUCE_FULL_MASK, v, delta, width);
  out[4 * n + t] = static_cast<int>(__ballot_sync(SPRUCE_FULL_MASK, lane % 3 == 0));
  out[5 * n + t] = __any_sync(SPRUCE_FULL_MASK, lane == 5);
  out[6 * n + t] = __all_sync(SPRUCE_FULL_MASK, lane < 31);
}

// emu_exit_before_barrier: thread 0 returns before a __syncthreads the others reach (undefined on a GPU).
// out int32[blockDim.x]. Launch: block (T, 1, 1), grid (1, 1, 1).
extern "C" __global__ void emu_exit_before_barrier(int* __restrict__ out) {
  if (threadIdx.x == 0) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

// emu_half_warp_shuffle: only lanes 0..15 reach a full-mask shuffle (undefined on a GPU: lanes 16..31 never
// arrive). out int32[blockDim.x]. Launch: block (32, 1, 1), grid (1, 1, 1).
extern "C" __global__ void emu_half_warp_shuffle(int* __restrict__ out) {
  int v = threadIdx.x;
  if (threadIdx.x % 32 < 16) v = __shfl_xor_sync(SPRUCE_FULL_MASK, v, 1);
  out[threadIdx.x] = v;
}

// emu_read_neighbour_without_barrier: each thread writes its index to shared memory and reads its right
// neighbour's slot with no __syncthreads in between (a race). Correct output would be out[t] = (t + 1) % T.
// out int32[blockDim.x]. Launch: block (T, 1, 1), grid (1, 1, 1), dynamic shared memory T * 4 bytes.
extern "C" __global__ void emu_read_neighbour_without_barrier(int* __restrict__ out) {
  SPRUCE_DYNAMIC_SMEM(int, s);
  s[threadIdx.x] = threadIdx.x;
  out[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}
