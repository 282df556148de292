// dense_to_csr.cu: dense float32 [m, k] row-major -> CSR (int32 row_ptr / col_idx, float32 values) on the GPU,
// in three launches: count the non-zeros per row, exclusive scan of the counts, scatter. A value is a non-zero
// when `v != 0.0f` (so -0.0 is dropped and NaN is kept; the Python launcher rejects non-finite weights).
// Column indices come out sorted within each row. m * k must be < 2^31 (so nnz fits in int32).
#include "common.cuh"

// dense_count_rows: counts[r] = number of non-zeros of row r. One warp per row, lanes stride over columns,
// butterfly reduction with __shfl_xor_sync.
//   m       int32             rows
//   k       int32             columns
//   w       const float32[m*k] row-major [m, k]
//   counts  int32[m]          written
// Launch: block (128, 1, 1); grid (ceil(m / 4), 1, 1); no dynamic shared memory.
extern "C" __global__ void __launch_bounds__(128)
    dense_count_rows(int m, int k, const float* __restrict__ w, int* __restrict__ counts) {
  const int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= m) return;  // uniform per warp: all 32 lanes share `row`
  int count = 0;
  const float* wr = w + static_cast<long long>(row) * k;
  for (int c = lane; c < k; c += 32) count += __ldg(wr + c) != 0.0f;
  for (int off = 16; off > 0; off /= 2) count += __shfl_xor_sync(SPRUCE_FULL_MASK, count, off);
  if (lane == 0) counts[row] = count;
}

// exclusive_scan_rows: row_ptr[0] = 0, row_ptr[i + 1] = counts[0] + ... + counts[i]. One block walks the array in
// chunks of blockDim.x: warp-level inclusive scan with __shfl_up_sync, warp totals in shared memory scanned by
// warp 0, plus the running carry of the previous chunks.
//   m        int32         number of counts
//   counts   const int32[m]
//   row_ptr  int32[m + 1]  written
// Launch: block (T, 1, 1) with T a multiple of 32, <= 1024; grid (1, 1, 1); dynamic shared memory T / 32 * 4 bytes.
extern "C" __global__ void __launch_bounds__(1024)
    exclusive_scan_rows(int m, const int* __restrict__ counts, int* __restrict__ row_ptr) {
  SPRUCE_DYNAMIC_SMEM(int, s_warp);  // [T / 32] warp totals
  const int lane = threadIdx.x % 32;
  const int wid = threadIdx.x / 32;
  const int nwarps = blockDim.x / 32;
  if (threadIdx.x == 0) row_ptr[0] = 0;
  int carry = 0;
  for (int base = 0; base < m; base += blockDim.x) {  // uniform trip count
    const int i = base + threadIdx.x;
    int v = i < m ? __ldg(counts + i) : 0;
    for (int off = 1; off < 32; off *= 2) {
      const int t = __shfl_up_sync(SPRUCE_FULL_MASK, v, off);
      if (lane >= off) v += t;
    }
    if (lane == 31) s_warp[wid] = v;
    __syncthreads();
    if (wid == 0) {
      int tot = lane < nwarps ? s_warp[lane] : 0;
      for (int off = 1; off < 32; off *= 2) {
        const int t = __shfl_up_sync(SPRUCE_FULL_MASK, tot, off);
        if (lane >= off) tot += t;
      }
      if (lane < nwarps) s_warp[lane] = tot;
    }
    __syncthreads();
    if (wid > 0) v += s_warp[wid - 1];
    if (i < m) row_ptr[i + 1] = carry + v;
    carry += s_warp[nwarps - 1];
    __syncthreads();  // s_warp is rewritten by the next chunk
  }
}

// dense_scatter_rows: write the non-zeros of each row at row_ptr[row] onwards, in column order. One warp per
// row walks the columns 32 at a time; __ballot_sync + __popc give each lane its slot among the chunk's non-zeros.
//   m        int32              rows
//   k        int32              columns
//   w        const float32[m*k] row-major [m, k]
//   row_ptr  const int32[m + 1] from exclusive_scan_rows
//   col_idx  int32[nnz]         written
//   values   float32[nnz]       written
// Launch: block (128, 1, 1); grid (ceil(m / 4), 1, 1); no dynamic shared memory.
extern "C" __global__ void __launch_bounds__(128)
    dense_scatter_rows(int m, int k, const float* __restrict__ w, const int* __restrict__ row_ptr,
                       int* __restrict__ col_idx, float* __restrict__ values) {
  const int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= m) return;  // uniform per warp
  const float* wr = w + static_cast<long long>(row) * k;
  const unsigned below = (1u << lane) - 1u;  // lanes before this one
  int pos = __ldg(row_ptr + row);
  for (int base = 0; base < k; base += 32) {  // uniform trip count across the warp
    const int c = base + lane;
    const float v = c < k ? __ldg(wr + c) : 0.0f;
    const bool nz = v != 0.0f;
    const unsigned ballot = __ballot_sync(SPRUCE_FULL_MASK, nz);
    if (nz) {
      const int p = pos + __popc(ballot & below);
      col_idx[p] = c;
      values[p] = v;
    }
    pos += __popc(ballot);
  }
}
