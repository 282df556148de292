// BSR SpMM with 4 x 1 blocks (4 rows of one column): one X row load feeds 4 output rows, so it pays on masks
// pruned in 4 x 1 blocks. Written once over the ISA layer; included inside each ISA's namespace.
//
// | buffer | type | shape | layout / invariant |
// |---|---|---|---|
// | w.rp | int32 | [ceil(m/4) + 1] | block-row offsets |
// | w.cols | int32/uint16 | [blocks] | column of each block |
// | w.v | float32 | [blocks * 4] | the 4 rows of a block consecutive, zero-filled past row m |
// | X | float32 | [k, n] | row-major; Y [m, n], or y = Y^T [n, m] when transposed |
#pragma once

constexpr int BR = 4;

template <int NV, bool MASK, typename I>
inline void bsr_tile(const float* __restrict v, const I* __restrict c, int64_t s, int64_t e,
                     const float* __restrict X, int64_t ldx, Isa::Mask mask, Isa::V (*acc)[2]) {
  #pragma GCC unroll 16
  for (int r = 0; r < BR; ++r)
    #pragma GCC unroll 16
    for (int q = 0; q < NV; ++q) acc[r][q] = Isa::zero();
  for (int64_t j = s; j < e; ++j) {
    const float* x = X + static_cast<int64_t>(c[j]) * ldx;
    Isa::V xv[NV];
    #pragma GCC unroll 16
    for (int q = 0; q < NV; ++q)
      xv[q] = (MASK && q == NV - 1) ? Isa::loadm(x + Isa::W * q, mask) : Isa::load(x + Isa::W * q);
    #pragma GCC unroll 16
    for (int r = 0; r < BR; ++r) {
      const Isa::V wv = Isa::bcast(v + j * BR + r);
      #pragma GCC unroll 16
      for (int q = 0; q < NV; ++q) acc[r][q] = Isa::fma(wv, xv[q], acc[r][q]);
    }
  }
}

// Store one row segment (NV vectors, r valid lanes in the last) at y with column stride ldc.
template <int NV>
inline void store_strided(const Isa::V* acc, int r, float bias, int act, float* y, int64_t ldc) {
  if (ldc == 1) return store_row<NV>(acc, r, bias, act, y);
  alignas(64) float tmp[Isa::W * NV];
  #pragma GCC unroll 16
  for (int q = 0; q < NV; ++q) Isa::store(tmp + Isa::W * q, epilogue(acc[q], Isa::set1(bias), act));
  for (int t = 0; t < Isa::W * (NV - 1) + r; ++t) y[t * ldc] = tmp[t];
}

template <typename I>
void bsr_spmm_impl(const Csr& w, const I* ci, const float* X, int64_t n, const Epilogue& ep, float* Y,
                   bool transposed, int T) {
  const int64_t m = w.m, mb = (m + BR - 1) / BR, ldx = n;
  const int64_t ldy_row = transposed ? 1 : n, ldy_col = transposed ? m : 1;
  if (m == 0 || n == 0) return;
  const float* v = w.v;
#pragma omp parallel num_threads(T)
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t b0 = balanced_start(w.rp, mb, tid, nt, 4), b1 = balanced_start(w.rp, mb, tid + 1, nt, 4);
    for (int64_t bi = b0; bi < b1; ++bi) {
      const int64_t s = w.rp[bi], e = w.rp[bi + 1], i0 = bi * BR;
      const int rows = static_cast<int>(std::min<int64_t>(BR, m - i0));
      if (n == 1) {
        __m128 a0 = _mm_setzero_ps(), a1 = _mm_setzero_ps();
        int64_t j = s;
        for (; j + 1 < e; j += 2) {
          a0 = _mm_fmadd_ps(_mm_loadu_ps(v + j * BR), _mm_set1_ps(X[static_cast<int64_t>(ci[j]) * ldx]), a0);
          a1 = _mm_fmadd_ps(_mm_loadu_ps(v + (j + 1) * BR), _mm_set1_ps(X[static_cast<int64_t>(ci[j + 1]) * ldx]), a1);
        }
        if (j < e) a0 = _mm_fmadd_ps(_mm_loadu_ps(v + j * BR), _mm_set1_ps(X[static_cast<int64_t>(ci[j]) * ldx]), a0);
        alignas(16) float out[4];
        _mm_store_ps(out, _mm_add_ps(a0, a1));
        for (int r = 0; r < rows; ++r)
          Y[(i0 + r) * ldy_row] = epilogue1(out[r], ep.bias ? ep.bias[i0 + r] : 0.f, ep.act);
        continue;
      }
      for (int64_t n0 = 0; n0 < n; n0 += 2 * Isa::W) {
        const int wdt = static_cast<int>(std::min<int64_t>(2 * Isa::W, n - n0));
        const int nv = (wdt + Isa::W - 1) / Isa::W, r = wdt - Isa::W * (nv - 1);
        const Isa::Mask mask = Isa::tail(r);
        Isa::V acc[BR][2];
        const float* x = X + n0;
        if (nv == 2 && r == Isa::W) bsr_tile<2, false>(v, ci, s, e, x, ldx, mask, acc);
        else if (nv == 2) bsr_tile<2, true>(v, ci, s, e, x, ldx, mask, acc);
        else if (r == Isa::W) bsr_tile<1, false>(v, ci, s, e, x, ldx, mask, acc);
        else bsr_tile<1, true>(v, ci, s, e, x, ldx, mask, acc);
        for (int rr = 0; rr < rows; ++rr) {
          float* y = Y + (i0 + rr) * ldy_row + n0 * ldy_col;
          const float b = ep.bias ? ep.bias[i0 + rr] : 0.f;
          if (nv == 2) store_strided<2>(acc[rr], r, b, ep.act, y, ldy_col);
          else store_strided<1>(acc[rr], r, b, ep.act, y, ldy_col);
        }
      }
    }
  }
}
