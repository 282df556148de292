// CSR SpMM / SpMV with a fused bias + activation epilogue, in both layouts a network needs:
//   csr_spmm   Y[m, n] = act(W @ X + b)        X [k, n] row-major (im2col columns, W @ X studies)
//   csr_linear y[b, m] = act(x @ W^T + b)      x [b, k] row-major (nn.Linear activations, BERT)
// Written once over the ISA layer (Isa::W lanes per vector); included inside each ISA's namespace.
//
// | buffer | type | shape | layout / invariant |
// |---|---|---|---|
// | w.rp, w.cols, w.v | int32, int32/uint16, float32 | [m+1], [nnz], [nnz] | CSR, columns < k |
// | panel (linear) | float32 | [k, NT] | x[p0:p0+NT, :]^T, per thread (L2-sized) |
// | panel (matmul) | float32 | [k, NT] | X[:, p0:p0+NT] copied when X is wider than one panel (per thread) |
// | stage (linear) | float32 | [W, NT] | W output rows of one panel, transposed to y in 8 x 8 tiles |
#pragma once

constexpr int64_t SPAN = 64;  // output columns per row tile: 8 AVX2 or 4 AVX-512 accumulators
constexpr int NV_MAX = static_cast<int>(SPAN) / Isa::W;

// acc[0..NV) = sum_j v[j] * X[c[j] * ldx + 0 .. W*NV) (last vector masked when MASK). Up to 4 vectors use two
// interleaved accumulator sets, so there are always >= 8 independent FMA chains to hide the FMA latency.
template <int NV, bool MASK, typename I>
inline void row_tile(const float* __restrict v, const I* __restrict c, int64_t s, int64_t e,
                     const float* __restrict X, int64_t ldx, Isa::Mask mask, Isa::V* acc) {
  constexpr int W = Isa::W;
  Isa::V a[NV];
  #pragma GCC unroll 16
  for (int q = 0; q < NV; ++q) a[q] = Isa::zero();
  if constexpr (NV <= 4) {
    Isa::V b[NV];
    #pragma GCC unroll 16
    for (int q = 0; q < NV; ++q) b[q] = Isa::zero();
    int64_t j = s;
    for (; j + 1 < e; j += 2) {
      const Isa::V w0 = Isa::bcast(v + j), w1 = Isa::bcast(v + j + 1);
      const float* x0 = X + static_cast<int64_t>(c[j]) * ldx;
      const float* x1 = X + static_cast<int64_t>(c[j + 1]) * ldx;
      #pragma GCC unroll 16
      for (int q = 0; q < NV; ++q) {
        if (MASK && q == NV - 1) {
          a[q] = Isa::fma(w0, Isa::loadm(x0 + W * q, mask), a[q]);
          b[q] = Isa::fma(w1, Isa::loadm(x1 + W * q, mask), b[q]);
        } else {
          a[q] = Isa::fma(w0, Isa::load(x0 + W * q), a[q]);
          b[q] = Isa::fma(w1, Isa::load(x1 + W * q), b[q]);
        }
      }
    }
    if (j < e) {
      const Isa::V w0 = Isa::bcast(v + j);
      const float* x0 = X + static_cast<int64_t>(c[j]) * ldx;
      #pragma GCC unroll 16
      for (int q = 0; q < NV; ++q)
        a[q] = Isa::fma(w0, (MASK && q == NV - 1) ? Isa::loadm(x0 + W * q, mask) : Isa::load(x0 + W * q), a[q]);
    }
    #pragma GCC unroll 16
    for (int q = 0; q < NV; ++q) acc[q] = Isa::add(a[q], b[q]);
  } else {
    for (int64_t j = s; j < e; ++j) {
      const Isa::V w0 = Isa::bcast(v + j);
      const float* x0 = X + static_cast<int64_t>(c[j]) * ldx;
      #pragma GCC unroll 16
      for (int q = 0; q < NV; ++q)
        a[q] = Isa::fma(w0, (MASK && q == NV - 1) ? Isa::loadm(x0 + W * q, mask) : Isa::load(x0 + W * q), a[q]);
    }
    #pragma GCC unroll 16
    for (int q = 0; q < NV; ++q) acc[q] = a[q];
  }
}

template <int NV, typename I>
inline void row_span_nv(const float* v, const I* c, int64_t s, int64_t e, const float* X, int64_t ldx, int r,
                        float bias, int act, float* y) {
  Isa::V acc[NV];
  if (r == Isa::W) row_tile<NV, false>(v, c, s, e, X, ldx, Isa::tail(r), acc);
  else row_tile<NV, true>(v, c, s, e, X, ldx, Isa::tail(r), acc);
  store_row<NV>(acc, r, bias, act, y);
}

// One output row segment of width w (1..SPAN): y[0..w) = act(sum_j v[j] X[c[j], 0..w) + bias).
template <typename I>
inline void row_span(const float* v, const I* c, int64_t s, int64_t e, const float* X, int64_t ldx, int w,
                     float bias, int act, float* y) {
  const int nv = (w + Isa::W - 1) / Isa::W, r = w - Isa::W * (nv - 1);
  switch (nv) {
    case 1: row_span_nv<1>(v, c, s, e, X, ldx, r, bias, act, y); break;
    case 2: row_span_nv<2>(v, c, s, e, X, ldx, r, bias, act, y); break;
    case 3: row_span_nv<3>(v, c, s, e, X, ldx, r, bias, act, y); break;
    case 4: row_span_nv<4>(v, c, s, e, X, ldx, r, bias, act, y); break;
    default:
      if constexpr (NV_MAX > 4) {
        switch (nv) {
          case 5: row_span_nv<5>(v, c, s, e, X, ldx, r, bias, act, y); break;
          case 6: row_span_nv<6>(v, c, s, e, X, ldx, r, bias, act, y); break;
          case 7: row_span_nv<7>(v, c, s, e, X, ldx, r, bias, act, y); break;
          default: row_span_nv<NV_MAX>(v, c, s, e, X, ldx, r, bias, act, y); break;
        }
      }
  }
}

// Gathered SpMV row: sum_j v[j] * x[c[j]].
template <typename I>
inline float spmv_row(const float* __restrict v, const I* __restrict c, int64_t s, int64_t e,
                      const float* __restrict x) {
  constexpr int W = Isa::W;
  Isa::V a0 = Isa::zero(), a1 = Isa::zero();
  int64_t j = s;
  for (; j + 2 * W <= e; j += 2 * W) {
    _mm_prefetch(reinterpret_cast<const char*>(v + j + 256), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + j + 256), _MM_HINT_T0);
    a0 = Isa::fma(Isa::load(v + j), Isa::gather(x, c + j), a0);
    a1 = Isa::fma(Isa::load(v + j + W), Isa::gather(x, c + j + W), a1);
  }
  if (j + W <= e) {
    a0 = Isa::fma(Isa::load(v + j), Isa::gather(x, c + j), a0);
    j += W;
  }
  float t0 = 0.f, t1 = 0.f;
  for (; j + 1 < e; j += 2) {
    t0 += v[j] * x[c[j]];
    t1 += v[j + 1] * x[c[j + 1]];
  }
  if (j < e) t0 += v[j] * x[c[j]];
  return Isa::hsum(Isa::add(a0, a1)) + t0 + t1;
}

// y[i * ldy] = act(W[i, :] . x + b[i]) for all rows, rows balanced over threads by nnz.
template <typename I>
void spmv(const Csr& w, const I* ci, const float* x, const Epilogue& ep, float* y, int64_t ldy, int T) {
#pragma omp parallel num_threads(T)
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t r0 = balanced_start(w.rp, w.m, tid, nt, 4), r1 = balanced_start(w.rp, w.m, tid + 1, nt, 4);
    for (int64_t i = r0; i < r1; ++i)
      y[i * ldy] = epilogue1(spmv_row(w.v, ci, w.rp[i], w.rp[i + 1], x), ep.bias ? ep.bias[i] : 0.f, ep.act);
  }
}

// Panel width: a multiple of SPAN whose K x NT slice of X fits the L2 budget, else 32 (large K).
inline int64_t panel_width(int64_t k) {
  const int64_t nt = kL2PanelBytes / (4 * std::max<int64_t>(k, 1));
  return nt >= SPAN ? nt / SPAN * SPAN : 32;
}

// Y = act(W @ X + bias). n == 1: gathered SpMV. n > 1: N is cut into panels of NT columns whose K x NT slice
// of X stays in L2; threads split either the rows (balanced by nnz) or, when there are many panels and few
// rows, the panels (each thread streams its own part of X once).
template <typename I>
void csr_spmm_impl(const Csr& w, const I* ci, const float* X, int64_t n, const Epilogue& ep, float* Y, int T,
                   int split_mode) {
  const int64_t m = w.m, k = w.k;
  if (m == 0 || n == 0) return;
  if (n == 1) return spmv(w, ci, X, ep, Y, 1, T);
  const int64_t NT = panel_width(k), tiles = (n + NT - 1) / NT;
  // split_mode (for experiments): 0 auto, 1 rows, 2 panels; +4 disables packing. A panel narrower than X is
  // strided (ldx > NT): it is copied into a contiguous K x NT buffer so the row kernels read dense cache lines
  // and few pages (TLB); the copy is amortised over all M rows.
  const bool pack_x = tiles > 1 && !(split_mode & 4);
  split_mode &= 3;
  bool by_cols = split_mode == 2 || (split_mode == 0 && tiles >= 2 * T);
  if (T == 1 || split_mode == 1) by_cols = false;
#pragma omp parallel num_threads(T)
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    int64_t r0 = 0, r1 = m, c0 = 0, c1 = n;
    if (by_cols) {
      c0 = std::min(n, (tiles * tid / nt) * NT);
      c1 = std::min(n, (tiles * (tid + 1) / nt) * NT);
    } else {
      r0 = balanced_start(w.rp, m, tid, nt, 8);
      r1 = balanced_start(w.rp, m, tid + 1, nt, 8);
    }
    float* buf = pack_x && c1 > c0 && r1 > r0 ? scratch(static_cast<size_t>(k * aligned_ld(NT)), 0) : nullptr;
    for (int64_t p0 = c0; p0 < c1; p0 += NT) {
      const int64_t pw = std::min(c1, p0 + NT) - p0;
      const float* xp = X + p0;
      int64_t ld = n;
      if (pack_x && r1 > r0) {
        ld = aligned_ld(pw);
        for (int64_t kk = 0; kk < k; ++kk) std::memcpy(buf + kk * ld, X + kk * n + p0, 4 * pw);
        xp = buf;
      }
      for (int64_t i = r0; i < r1; ++i) {
        const float b = ep.bias ? ep.bias[i] : 0.f;
        for (int64_t n0 = 0; n0 < pw; n0 += SPAN)
          row_span(w.v, ci, w.rp[i], w.rp[i + 1], xp + n0, ld, static_cast<int>(std::min<int64_t>(SPAN, pw - n0)),
                   b, ep.act, Y + i * n + p0 + n0);
      }
    }
  }
}

// y[b, m] = act(x[b, k] @ W^T + bias), x and y row-major as nn.Linear holds them. Per panel of NT rows of x,
// a thread transposes x[p0:p0+NT, :] into its own [k, NT] buffer (8 x 8 register transposes, transpose.h), runs
// the same register-tiled row kernel as csr_spmm over its rows of W into a [W, NT] staging tile, and writes the
// tile to y transposed the same way: no transposed scalar stores and no copy of x outside the kernel.
// Threads split the rows of x when each gets at least SPAN of them: a thread then reads only its own x and
// writes only its own rows of y, with no barrier and no cache line that both cores write. With fewer rows of x
// they split the rows of W (balanced by nnz) and each transposes the whole, small panel itself: a shared panel
// written by one core and read by the other cost a coherence miss per line (measured: 1.8x slower at 128x768).
template <typename I>
void csr_linear_impl(const Csr& w, const I* ci, const float* x, int64_t nb, const Epilogue& ep, float* y, int T) {
  const int64_t m = w.m, k = w.k;
  constexpr int W = Isa::W;
  if (m == 0 || nb == 0) return;
  if (nb == 1) return spmv(w, ci, x, ep, y, 1, T);
  const bool by_cols = T > 1 && nb >= SPAN * T;
#pragma omp parallel num_threads(T)
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    int64_t b0 = 0, b1 = nb, r0 = 0, r1 = m;
    if (by_cols) {
      const int64_t units = nb / 16;  // 16-row units, the remainder goes to the last thread
      b0 = units * tid / nt * 16;
      b1 = tid + 1 == nt ? nb : units * (tid + 1) / nt * 16;
    } else {
      r0 = balanced_start(w.rp, m, tid, nt, 8);
      r1 = balanced_start(w.rp, m, tid + 1, nt, 8);
    }
    const int64_t NT = aligned_ld(std::min(panel_width(k), b1 - b0));
    float* panel = scratch(static_cast<size_t>(k * NT), 0);
    float* stage = scratch(static_cast<size_t>(W * NT), 1);
    for (int64_t p0 = b0; p0 < b1 && r1 > r0; p0 += NT) {
      const int64_t pw = std::min(NT, b1 - p0), ld = aligned_ld(pw);
      transpose_block(x + p0 * k, k, pw, k, panel, ld);
      for (int64_t i0 = r0; i0 < r1; i0 += W) {
        const int rows = static_cast<int>(std::min<int64_t>(W, r1 - i0));
        for (int r = 0; r < rows; ++r) {
          const int64_t i = i0 + r;
          const float b = ep.bias ? ep.bias[i] : 0.f;
          for (int64_t n0 = 0; n0 < pw; n0 += SPAN)
            row_span(w.v, ci, w.rp[i], w.rp[i + 1], panel + n0, ld,
                     static_cast<int>(std::min<int64_t>(SPAN, pw - n0)), b, ep.act, stage + r * NT + n0);
        }
        transpose_block(stage, NT, rows, pw, y + p0 * m + i0, m);
      }
    }
  }
}
