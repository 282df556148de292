// Work partition shared by the kernels (ISA-neutral; included inside each ISA's namespace).
#pragma once

// First row of part t of T when row i costs (rp[i+1]-rp[i]) + overhead: a binary search on the monotone
// prefix cost rp[i] + i * overhead.
inline int64_t balanced_start(const int32_t* rp, int64_t m, int t, int T, int64_t overhead) {
  if (t <= 0) return 0;
  if (t >= T) return m;
  const double total = static_cast<double>(rp[m]) + static_cast<double>(m) * overhead;
  const double target = total * t / T;
  int64_t lo = 0, hi = m;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (static_cast<double>(rp[mid]) + static_cast<double>(mid) * overhead < target) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// Apply f to the column-index array of w with its real type (uint16 or int32).
template <typename F>
inline void with_cols(const Csr& w, F&& f) {
  if (w.idx16) f(static_cast<const uint16_t*>(w.cols));
  else f(static_cast<const int32_t*>(w.cols));
}

// Per-thread scratch that persists across calls (OpenMP threads are pooled): a panel buffer allocated per call
// was zero-filled and, above glibc's mmap threshold, page-faulted in afresh every time (~0.1 ms at 128 x 768).
// Grows only; never zero-filled; 64-byte aligned, so that a panel row whose length is a multiple of 16 floats
// starts a cache line and no vector load of it straddles two lines. slot 0: X panel, slot 1: staging tile.
struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};

inline float* scratch(size_t n, int slot) {
  thread_local std::unique_ptr<float, AlignedFree> buf[2];
  thread_local size_t cap[2] = {0, 0};
  if (cap[slot] < n) {
    const size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
    buf[slot].reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
    if (!buf[slot]) throw std::bad_alloc();
    cap[slot] = n;
  }
  return buf[slot].get();
}

// A row stride of at least n floats that keeps 64-byte alignment from row to row.
inline int64_t aligned_ld(int64_t n) { return (n + 15) / 16 * 16; }
