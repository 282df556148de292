// csr_spmm.cu: Y = act(W @ X + bias) for a CSR weight W (float32 values, int32 indices), three entry points.
//
// Shared conventions (all kernels below):
//   m        int32            rows of W and of the output (output features)
//   k        int32            columns of W (input features)
//   n        int32            columns of X / Y (tokens x batch, or pixels); the batch size B in the linear form
//   row_perm const int32[m]   "row swizzle": a permutation of 0..m-1 ordering rows by descending length, so that
//                             the rows a warp or block processes together have similar lengths (load balance)
//   row_ptr  const int32[m+1] CSR offsets: row_ptr[0] = 0, non-decreasing, row_ptr[m] = nnz
//   col_idx  const int32[nnz] column of each non-zero, each in [0, k); sorted within a row (not required)
//   values   const float32[nnz] non-zero values
//   bias     const float32[m] or nullptr
//   act      int32            0 none, 1 ReLU, 2 GELU (exact erf); see common.cuh
// Every output element is written exactly once; nothing is accumulated into y, so y may be uninitialised.
// Index arithmetic into X and Y is 64-bit, so k*n and m*n may exceed 2^31; nnz and m must be < 2^31.
#include "common.cuh"

// Subwarp body shared by the small-N matmul and the linear form. A subwarp of SW consecutive lanes owns one
// (row, 4-column tile) pair: its lanes stride over the row's non-zeros (lane j takes nnz j, j+SW, ...),
// each lane keeps 4 partial sums (one per column of the tile), and a butterfly of __shfl_xor_sync within the
// SW-lane segment reduces them. Lane 0 of the subwarp applies the epilogue and writes the 4 outputs.
// LINEAR = false: x is [k, n] row-major, y is [m, n] row-major; VEC4 loads the 4 X values of a non-zero
//                 with one float4 (needs n % 4 == 0 and x 16-byte aligned).
// LINEAR = true:  x is [n, k] row-major (nn.Linear input, n = batch), y is [n, m] row-major (nn.Linear output).
template <int SW, bool VEC4, bool LINEAR>
__device__ __forceinline__ void subwarp_body(int m, int n, int k, const int* __restrict__ row_perm,
                                             const int* __restrict__ row_ptr, const int* __restrict__ col_idx,
                                             const float* __restrict__ values, const float* __restrict__ x,
                                             const float* __restrict__ bias, int act, float* __restrict__ y) {
  const int lane = threadIdx.x % SW;
  const int slot = blockIdx.x * (blockDim.x / SW) + threadIdx.x / SW;
  const int col0 = blockIdx.y * 4;
  int row = -1, start = 0, end = 0;
  if (slot < m) {
    row = __ldg(row_perm + slot);
    start = __ldg(row_ptr + row);
    end = __ldg(row_ptr + row + 1);
  }
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  // No early exit: every lane of the warp must reach the shuffles below (full mask). Unrolled so that several
  // independent value/index/X loads are in flight per lane (long rows at N = 1 are bandwidth-bound).
#pragma unroll 4
#ifdef SPRUCE_PLANTED_BUG_OFF_BY_ONE
  for (int j = start + lane; j <= end; j += SW) {
#else
  for (int j = start + lane; j < end; j += SW) {
#endif
    const float v = __ldg(values + j);
    const int c = __ldg(col_idx + j);
    if constexpr (LINEAR) {
#pragma unroll
      for (int t = 0; t < 4; ++t)
        if (col0 + t < n) acc[t] += v * __ldg(x + static_cast<long long>(col0 + t) * k + c);
    } else if constexpr (VEC4) {
      const float4 xv = __ldg(reinterpret_cast<const float4*>(x + static_cast<long long>(c) * n + col0));
      acc[0] += v * xv.x;
      acc[1] += v * xv.y;
      acc[2] += v * xv.z;
      acc[3] += v * xv.w;
    } else {
#pragma unroll
      for (int t = 0; t < 4; ++t)
        if (col0 + t < n) acc[t] += v * __ldg(x + static_cast<long long>(c) * n + col0 + t);
    }
  }
#ifdef SPRUCE_PLANTED_BUG_SHUFFLE
  for (int off = SW / 2; off > 1; off /= 2) {
#else
  for (int off = SW / 2; off > 0; off /= 2) {
#endif
#pragma unroll
    for (int t = 0; t < 4; ++t) acc[t] += __shfl_xor_sync(SPRUCE_FULL_MASK, acc[t], off, SW);
  }
  if (row < 0 || lane != 0) return;
  if constexpr (!LINEAR && VEC4) {
    float4 out;
    out.x = spruce_epilogue(acc[0], bias, row, act);
    out.y = spruce_epilogue(acc[1], bias, row, act);
    out.z = spruce_epilogue(acc[2], bias, row, act);
    out.w = spruce_epilogue(acc[3], bias, row, act);
    *reinterpret_cast<float4*>(y + static_cast<long long>(row) * n + col0) = out;
  } else {
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      if (col0 + t >= n) continue;
      const float out = spruce_epilogue(acc[t], bias, row, act);
      if constexpr (LINEAR) {
        y[static_cast<long long>(col0 + t) * m + row] = out;
      } else {
        y[static_cast<long long>(row) * n + col0 + t] = out;
      }
    }
  }
}

// csr_spmm_subwarp<SW, VEC4>: small-N SpMM (decode, N <= 16), several threads per row.
//   x  const float32[k * n]  row-major [k, n]; 16-byte aligned and n % 4 == 0 when VEC4
//   y  float32[m * n]        row-major [m, n]; 16-byte aligned when VEC4
// Launch: block (128, 1, 1); grid (ceil(m / (128 / SW)), ceil(n / 4), 1); no dynamic shared memory.
// SW in {4, 8, 16, 32}, chosen from the mean row length (longer rows -> wider subwarps).
template <int SW, bool VEC4>
__global__ void __launch_bounds__(128)
    csr_spmm_subwarp(int m, int n, int k, const int* __restrict__ row_perm, const int* __restrict__ row_ptr,
                     const int* __restrict__ col_idx, const float* __restrict__ values,
                     const float* __restrict__ x, const float* __restrict__ bias, int act, float* __restrict__ y) {
  subwarp_body<SW, VEC4, false>(m, n, k, row_perm, row_ptr, col_idx, values, x, bias, act, y);
}

// csr_linear_subwarp<SW>: the nn.Linear form y = act(x @ W^T + bias) for a small batch n (= B <= 16).
//   x  const float32[n * k]  row-major [B, k] (the layer input, no transpose needed)
//   y  float32[n * m]        row-major [B, m] (the layer output)
// Launch: block (128, 1, 1); grid (ceil(m / (128 / SW)), ceil(n / 4), 1); no dynamic shared memory.
template <int SW>
__global__ void __launch_bounds__(128)
    csr_linear_subwarp(int m, int n, int k, const int* __restrict__ row_perm, const int* __restrict__ row_ptr,
                       const int* __restrict__ col_idx, const float* __restrict__ values,
                       const float* __restrict__ x, const float* __restrict__ bias, int act, float* __restrict__ y) {
  subwarp_body<SW, false, true>(m, n, k, row_perm, row_ptr, col_idx, values, x, bias, act, y);
}

// csr_spmm_rowtile<VEC>: large-N SpMM (N >= 32: prefill, im2col convolutions). One thread block owns a tile of
// `rows_per_block` consecutive swizzled rows times blockDim.x * VEC columns; threads run along N (coalesced
// loads of X rows, VEC = 4 -> one float4 per thread and non-zero). The non-zeros of the current row are staged
// in shared memory in chunks of blockDim.x (values then column indices), so each is read from global memory once
// per block and broadcast from shared memory to all threads; rows longer than a chunk take several chunks.
//   rows_per_block int32         rows of the tile, >= 1
//   x  const float32[k * n]      row-major [k, n]; 16-byte aligned and n % 4 == 0 when VEC == 4
//   y  float32[m * n]            row-major [m, n]; 16-byte aligned when VEC == 4
// Launch: block (T, 1, 1), T in {32, 64, 128}; grid (ceil(m / rows_per_block), ceil(n / (T * VEC)), 1);
// dynamic shared memory T * 8 bytes (T floats, then T int32).
template <int VEC>
__global__ void __launch_bounds__(128)
    csr_spmm_rowtile(int m, int n, int rows_per_block, const int* __restrict__ row_perm,
                     const int* __restrict__ row_ptr, const int* __restrict__ col_idx,
                     const float* __restrict__ values, const float* __restrict__ x, const float* __restrict__ bias,
                     int act, float* __restrict__ y) {
  SPRUCE_DYNAMIC_SMEM(float, s_val);
  int* s_col = reinterpret_cast<int*>(s_val + blockDim.x);
  const int col = (blockIdx.y * blockDim.x + threadIdx.x) * VEC;
  const bool active = col < n;  // with VEC == 4, n % 4 == 0 so col < n implies col + 3 < n
  const int first = blockIdx.x * rows_per_block;
  const int last = min(m, first + rows_per_block);
  for (int s = first; s < last; ++s) {  // uniform across the block: every thread reaches every barrier
    const int row = __ldg(row_perm + s);
    const int start = __ldg(row_ptr + row);
    const int end = __ldg(row_ptr + row + 1);
    float acc[VEC];
#pragma unroll
    for (int t = 0; t < VEC; ++t) acc[t] = 0.0f;
    for (int base = start; base < end; base += blockDim.x) {
      const int j = base + threadIdx.x;
      if (j < end) {
        s_val[threadIdx.x] = __ldg(values + j);
        s_col[threadIdx.x] = __ldg(col_idx + j);
      }
      __syncthreads();  // the chunk is complete before anyone reads it
      const int count = min(static_cast<int>(blockDim.x), end - base);
      if (active) {
        for (int t = 0; t < count; ++t) {
          const float v = s_val[t];
          const float* xr = x + static_cast<long long>(s_col[t]) * n + col;
          if constexpr (VEC == 4) {
            const float4 xv = __ldg(reinterpret_cast<const float4*>(xr));
            acc[0] += v * xv.x;
            acc[1] += v * xv.y;
            acc[2] += v * xv.z;
            acc[3] += v * xv.w;
          } else {
            acc[0] += v * __ldg(xr);
          }
        }
      }
#ifndef SPRUCE_PLANTED_BUG_BARRIER
      __syncthreads();  // everyone is done with the chunk before it is overwritten
#endif
    }
    if (active) {
      float* yr = y + static_cast<long long>(row) * n + col;
      if constexpr (VEC == 4) {
        float4 out;
        out.x = spruce_epilogue(acc[0], bias, row, act);
        out.y = spruce_epilogue(acc[1], bias, row, act);
        out.z = spruce_epilogue(acc[2], bias, row, act);
        out.w = spruce_epilogue(acc[3], bias, row, act);
        *reinterpret_cast<float4*>(yr) = out;
      } else {
        yr[0] = spruce_epilogue(acc[0], bias, row, act);
      }
    }
  }
}
