// common.cuh: helpers shared by Spruce's CUDA kernels (epilogue, dynamic shared memory).
// Compiled by NVRTC (through CuPy or the CI compile test) and by g++ against emu/cuda_emu.h; it must
// therefore use no standard headers (NVRTC has none) and nothing the emulator lacks.
#pragma once

// Epilogue activations; the values are the `act` kernel argument (see launch.py ACT_CODES).
#define SPRUCE_ACT_NONE 0
#define SPRUCE_ACT_RELU 1
#define SPRUCE_ACT_GELU 2

#define SPRUCE_FULL_MASK 0xffffffffu

// Dynamic shared memory as a typed pointer. On the GPU it is the block's `extern __shared__` buffer; in the
// emulator a per-block buffer poisoned with 0xFF (NaN floats, -1 ints) and followed by a canary.
#ifdef SPRUCE_CUDA_EMU
#define SPRUCE_DYNAMIC_SMEM(T, name) T* name = reinterpret_cast<T*>(spruce_emu::dynamic_smem())
#else
#define SPRUCE_DYNAMIC_SMEM(T, name)                                   \
  extern __shared__ __align__(16) unsigned char spruce_smem_raw[];     \
  T* name = reinterpret_cast<T*>(spruce_smem_raw)
#endif

// act(acc + bias[row]); bias may be nullptr. GELU is the exact erf form (as BERT uses), not the tanh one.
__device__ __forceinline__ float spruce_epilogue(float acc, const float* __restrict__ bias, int row, int act) {
  if (bias != nullptr) acc += __ldg(bias + row);
  if (act == SPRUCE_ACT_RELU) {
    acc = fmaxf(acc, 0.0f);
  } else if (act == SPRUCE_ACT_GELU) {
    acc = 0.5f * acc * (1.0f + erff(acc * 0.70710678118654752f));
  }
  return acc;
}
