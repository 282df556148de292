// Spruce CPU sparse kernels: CSR / BSR(4x1) SpMM with fused epilogue, gathered SpMV, direct sparse conv,
// and a parallel dense -> packed conversion. One translation unit, AVX2 + FMA, OpenMP.
//
// Conventions: W is [M, K] fp32; X is [K, N] row-major with leading dimension ldx; Y is [M, N] addressed as
// Y[i * ldy_row + n * ldy_col] so the same kernel writes Y (ldy_row = N, ldy_col = 1) or, for nn.Linear,
// y = Y^T (ldy_row = 1, ldy_col = M). Column indices are int32 or uint16 (stored in an int16 tensor) when K
// fits, which halves the index traffic.
#include <torch/extension.h>

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

namespace {

constexpr int ACT_NONE = 0, ACT_RELU = 1, ACT_GELU = 2;

// ---- vector math -------------------------------------------------------------------------------------
// exp for x in [-88, 88] (Cephes polynomial, ~1 ulp); enough for the erf below.
inline __m256 exp256(__m256 x) {
  x = _mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f));
  x = _mm256_max_ps(x, _mm256_set1_ps(-88.3762626647949f));
  __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
  fx = _mm256_floor_ps(fx);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
  x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
  __m256 x2 = _mm256_mul_ps(x, x);
  y = _mm256_fmadd_ps(y, x2, _mm256_add_ps(x, _mm256_set1_ps(1.0f)));
  __m256i n = _mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127));
  n = _mm256_max_epi32(n, _mm256_setzero_si256());
  return _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(n, 23)));
}

// GELU(v) = 0.5 v erfc(-v / sqrt 2), with erfc from the Chebyshev fit of Numerical Recipes (erfcc, relative
// error < 1.2e-7 everywhere, so the tiny negative tail stays accurate too). exp(-z^2) is split as
// exp(-hi) * exp(-lo) with hi + lo = z^2 exactly (FMA), so a large z costs no accuracy in the argument.
inline __m256 gelu256(__m256 v) {
  const __m256 neg0 = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
  const __m256 z = _mm256_mul_ps(_mm256_andnot_ps(neg0, v), _mm256_set1_ps(0.70710678118654752f));
  const __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(0.5f), z, one));
  __m256 p = _mm256_set1_ps(0.17087277f);
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.82215223f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.48851587f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.13520398f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.27886807f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.18628806f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.09678418f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.37409196f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.00002368f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.26551223f));
  const __m256 hi = _mm256_mul_ps(z, z);
  const __m256 lo = _mm256_fmsub_ps(z, z, hi);
  const __m256 e = _mm256_mul_ps(exp256(_mm256_xor_ps(hi, neg0)), exp256(_mm256_sub_ps(p, lo)));
  const __m256 ans = _mm256_mul_ps(t, e);  // erfc(|v| / sqrt 2)
  const __m256 neg = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ);
  const __m256 erfc_arg = _mm256_blendv_ps(_mm256_sub_ps(_mm256_set1_ps(2.0f), ans), ans, neg);
  return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), v), erfc_arg);
}

inline __m256 epilogue(__m256 v, __m256 b, int act) {
  v = _mm256_add_ps(v, b);
  if (act == ACT_RELU) {
    v = _mm256_max_ps(v, _mm256_setzero_ps());
  } else if (act == ACT_GELU) {
    v = gelu256(v);
  }
  return v;
}

inline float epilogue1(float v, float b, int act) {
  v += b;
  if (act == ACT_RELU) return v > 0.f ? v : 0.f;
  if (act == ACT_GELU) {
    float out[8];
    _mm256_storeu_ps(out, epilogue(_mm256_set1_ps(v), _mm256_setzero_ps(), act));
    return out[0];
  }
  return v;
}

inline __m256i tail_mask(int r) {  // lanes [0, r) set
  alignas(32) static const int32_t m[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m + 8 - r));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// Store NV vectors (the last one holding `r` valid lanes, 1..8) of one output row segment, after the epilogue.
template <int NV>
inline void store_tile(__m256* acc, int r, float bias, int act, float* y, int64_t ldc) {
  const __m256 b = _mm256_set1_ps(bias);
  if (ldc == 1) {
    for (int k = 0; k < NV; ++k) {
      __m256 v = epilogue(acc[k], b, act);
      if (k < NV - 1 || r == 8) _mm256_storeu_ps(y + 8 * k, v);
      else _mm256_maskstore_ps(y + 8 * k, tail_mask(r), v);
    }
  } else {
    alignas(32) float tmp[8 * NV];
    for (int k = 0; k < NV; ++k) _mm256_store_ps(tmp + 8 * k, epilogue(acc[k], b, act));
    const int cnt = 8 * (NV - 1) + r;
    for (int t = 0; t < cnt; ++t) y[t * ldc] = tmp[t];
  }
}

template <typename I>
inline int64_t idx(const I* c, int64_t j) { return static_cast<int64_t>(c[j]); }

// acc[0..NV) = sum_j v[j] * X[c[j] * ldx + 0 .. 8*NV) (last vector masked when MASK). Two interleaved
// accumulator sets give 2*NV independent FMA chains to hide the FMA latency.
template <int NV, bool MASK, typename I>
inline void row_tile(const float* __restrict v, const I* __restrict c, int64_t s, int64_t e,
                     const float* __restrict X, int64_t ldx, __m256i mask, __m256* acc) {
  __m256 a[NV], b[NV];
  for (int k = 0; k < NV; ++k) a[k] = b[k] = _mm256_setzero_ps();
  int64_t j = s;
  for (; j + 1 < e; j += 2) {
    const __m256 w0 = _mm256_broadcast_ss(v + j), w1 = _mm256_broadcast_ss(v + j + 1);
    const float* x0 = X + idx(c, j) * ldx;
    const float* x1 = X + idx(c, j + 1) * ldx;
    for (int k = 0; k < NV; ++k) {
      if (MASK && k == NV - 1) {
        a[k] = _mm256_fmadd_ps(w0, _mm256_maskload_ps(x0 + 8 * k, mask), a[k]);
        b[k] = _mm256_fmadd_ps(w1, _mm256_maskload_ps(x1 + 8 * k, mask), b[k]);
      } else {
        a[k] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x0 + 8 * k), a[k]);
        b[k] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x1 + 8 * k), b[k]);
      }
    }
  }
  if (j < e) {
    const __m256 w0 = _mm256_broadcast_ss(v + j);
    const float* x0 = X + idx(c, j) * ldx;
    for (int k = 0; k < NV; ++k) {
      if (MASK && k == NV - 1) a[k] = _mm256_fmadd_ps(w0, _mm256_maskload_ps(x0 + 8 * k, mask), a[k]);
      else a[k] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x0 + 8 * k), a[k]);
    }
  }
  for (int k = 0; k < NV; ++k) acc[k] = _mm256_add_ps(a[k], b[k]);
}

// One output segment of width w (1..32) for one row: picks the right (NV, MASK) instance.
template <typename I>
inline void row_segment(const float* v, const I* c, int64_t s, int64_t e, const float* X, int64_t ldx, int w,
                        float bias, int act, float* y, int64_t ldc) {
  __m256 acc[4];
  const int nv = (w + 7) / 8, r = w - 8 * (nv - 1);
  const __m256i m = tail_mask(r);
  switch (nv * 2 + (r != 8)) {
    case 8: row_tile<4, false>(v, c, s, e, X, ldx, m, acc); store_tile<4>(acc, 8, bias, act, y, ldc); break;
    case 9: row_tile<4, true>(v, c, s, e, X, ldx, m, acc); store_tile<4>(acc, r, bias, act, y, ldc); break;
    case 6: row_tile<3, false>(v, c, s, e, X, ldx, m, acc); store_tile<3>(acc, 8, bias, act, y, ldc); break;
    case 7: row_tile<3, true>(v, c, s, e, X, ldx, m, acc); store_tile<3>(acc, r, bias, act, y, ldc); break;
    case 4: row_tile<2, false>(v, c, s, e, X, ldx, m, acc); store_tile<2>(acc, 8, bias, act, y, ldc); break;
    case 5: row_tile<2, true>(v, c, s, e, X, ldx, m, acc); store_tile<2>(acc, r, bias, act, y, ldc); break;
    case 2: row_tile<1, false>(v, c, s, e, X, ldx, m, acc); store_tile<1>(acc, 8, bias, act, y, ldc); break;
    default: row_tile<1, true>(v, c, s, e, X, ldx, m, acc); store_tile<1>(acc, r, bias, act, y, ldc); break;
  }
}

// 64 columns for one row: 8 accumulators, one index and one broadcast per 8 FMAs (fewer loads per FMA than
// the 32-wide tile; 8 independent chains cover the FMA latency).
template <typename I>
inline void row_tile64(const float* __restrict v, const I* __restrict c, int64_t s, int64_t e,
                       const float* __restrict X, int64_t ldx, __m256* acc) {
  __m256 a[8];
  for (int k = 0; k < 8; ++k) a[k] = _mm256_setzero_ps();
  for (int64_t j = s; j < e; ++j) {
    const __m256 w = _mm256_broadcast_ss(v + j);
    const float* x = X + idx(c, j) * ldx;
    for (int k = 0; k < 8; ++k) a[k] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + 8 * k), a[k]);
  }
  for (int k = 0; k < 8; ++k) acc[k] = a[k];
}

// One output segment of width w (1..64) for one row.
template <typename I>
inline void row_span(const float* v, const I* c, int64_t s, int64_t e, const float* X, int64_t ldx, int w,
                     float bias, int act, float* y, int64_t ldc) {
  if (w == 64) {
    __m256 acc[8];
    row_tile64(v, c, s, e, X, ldx, acc);
    store_tile<8>(acc, 8, bias, act, y, ldc);
  } else if (w > 32) {
    row_segment(v, c, s, e, X, ldx, 32, bias, act, y, ldc);
    row_segment(v, c, s, e, X + 32, ldx, w - 32, bias, act, y + 32 * ldc, ldc);
  } else {
    row_segment(v, c, s, e, X, ldx, w, bias, act, y, ldc);
  }
}

// Gathered SpMV row: sum_j v[j] * x[c[j]].
inline __m256i load_idx8(const int32_t* c) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c)); }
inline __m256i load_idx8(const uint16_t* c) {
  return _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c)));
}

template <typename I>
inline float spmv_row(const float* __restrict v, const I* __restrict c, int64_t s, int64_t e,
                      const float* __restrict x) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  int64_t j = s;
  for (; j + 16 <= e; j += 16) {
    _mm_prefetch(reinterpret_cast<const char*>(v + j + 256), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(c + j + 256), _MM_HINT_T0);
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + j), _mm256_i32gather_ps(x, load_idx8(c + j), 4), a0);
    a1 = _mm256_fmadd_ps(_mm256_loadu_ps(v + j + 8), _mm256_i32gather_ps(x, load_idx8(c + j + 8), 4), a1);
  }
  if (j + 8 <= e) {
    a0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + j), _mm256_i32gather_ps(x, load_idx8(c + j), 4), a0);
    j += 8;
  }
  float t0 = 0.f, t1 = 0.f;
  for (; j + 1 < e; j += 2) {
    t0 += v[j] * x[c[j]];
    t1 += v[j + 1] * x[c[j + 1]];
  }
  if (j < e) t0 += v[j] * x[c[j]];
  return hsum(_mm256_add_ps(a0, a1)) + t0 + t1;
}

// A growable array that does not zero-fill (std::vector::resize would write every slot once more).
template <typename T>
struct RawBuf {
  std::unique_ptr<T[]> p;
  size_t size = 0, cap = 0;
  void reserve(size_t n) {
    if (n <= cap) return;
    std::unique_ptr<T[]> q(new T[n]);
    if (size) std::memcpy(q.get(), p.get(), size * sizeof(T));
    p = std::move(q);
    cap = n;
  }
  void push_back(T v) {
    if (size == cap) reserve(std::max<size_t>(16, 2 * cap));
    p[size++] = v;
  }
  T* data() { return p.get(); }
  const T* begin() const { return p.get(); }
  const T* end() const { return p.get() + size; }
};

// kCompress[mask] lists the set lanes of an 8-bit mask first (for the AVX2 compaction in pack).
struct CompressTable {
  int32_t t[256][8];
  CompressTable() {
    for (int m = 0; m < 256; ++m) {
      int c = 0;
      for (int b = 0; b < 8; ++b)
        if (m & (1 << b)) t[m][c++] = b;
      for (; c < 8; ++c) t[m][c] = 0;
    }
  }
};
const CompressTable kCompressTable;
const int32_t (*const kCompress)[8] = kCompressTable.t;

// ---- work partition ----------------------------------------------------------------------------------
// First row of part t of T when row i costs (rp[i+1]-rp[i]) + overhead: a binary search on the monotone
// prefix cost rp[i] + i * overhead.
int64_t balanced_start(const int32_t* rp, int64_t m, int t, int T, int64_t overhead) {
  if (t <= 0) return 0;
  if (t >= T) return m;
  const double total = static_cast<double>(rp[m]) + static_cast<double>(m) * overhead;
  const double target = total * t / T;
  int64_t lo = 0, hi = m;
  while (lo < hi) {
    int64_t mid = (lo + hi) / 2;
    if (static_cast<double>(rp[mid]) + static_cast<double>(mid) * overhead < target) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

int resolve_threads(int64_t nthreads) { return static_cast<int>(std::max<int64_t>(1, nthreads)); }

constexpr int64_t L2_PANEL_BYTES = 384 * 1024;  // the X panel kept hot per thread (L2 is 1 MiB here)
constexpr int64_t SPAN = 64;  // output columns per row tile

// Y = act(W @ X + bias) for CSR W [m, k]; X [k, n] with leading dimension ldx.
// n == 1: gathered SpMV, rows balanced by nnz. n > 1: N is cut into panels of NT columns whose K x NT slice
// of X stays in L2; threads split either the rows (balanced by nnz) or, when there are many panels and few
// rows, the columns (each thread streams its own part of X once).
template <typename I>
void csr_spmm_impl(const int32_t* rp, const I* ci, const float* v, int64_t m, int64_t k, const float* X,
                   int64_t ldx, int64_t n, const float* bias, int act, float* Y, int64_t ldy_row, int64_t ldy_col,
                   int T, int split_mode) {
  if (m == 0 || n == 0) return;
  if (n == 1) {
#pragma omp parallel num_threads(T)
    {
      const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
      const int64_t r0 = balanced_start(rp, m, tid, nt, 4), r1 = balanced_start(rp, m, tid + 1, nt, 4);
      for (int64_t i = r0; i < r1; ++i) {
        const float s = spmv_row(v, ci, rp[i], rp[i + 1], X);
        Y[i * ldy_row] = epilogue1(s, bias ? bias[i] : 0.f, act);
      }
    }
    return;
  }
  // Panels are a multiple of SPAN wide when that fits the budget, else 32 (large K).
  // (A 2.3x larger budget, i.e. 64-wide panels for K = 3072..4608, measured the same.)
  int64_t NT = L2_PANEL_BYTES / (4 * std::max<int64_t>(k, 1));
  NT = NT >= SPAN ? NT / SPAN * SPAN : 32;
  const int64_t tiles = (n + NT - 1) / NT;
  // split_mode (for experiments): 0 auto, 1 rows, 2 columns; +4 disables packing.
  // A panel narrower than X is strided (ldx > NT): copy it into a contiguous K x NT buffer first, so the
  // row kernels read dense cache lines and few pages (TLB) — the copy is amortised over all M rows.
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
      r0 = balanced_start(rp, m, tid, nt, 8);
      r1 = balanced_start(rp, m, tid + 1, nt, 8);
    }
    std::vector<float> buf(pack_x && c1 > c0 && r1 > r0 ? static_cast<size_t>(k * NT) : 0);
    std::vector<float> tbuf;  // RB x NT staging tile for the transposed (nn.Linear) output
    for (int64_t p0 = c0; p0 < c1; p0 += NT) {
      const int64_t p1 = std::min(c1, p0 + NT), pw = p1 - p0;
      const float* xp = X + p0;
      int64_t ld = ldx;
      if (pack_x && r1 > r0) {
        for (int64_t kk = 0; kk < k; ++kk) std::memcpy(buf.data() + kk * pw, X + kk * ldx + p0, 4 * pw);
        xp = buf.data();
        ld = pw;
      }
      if (ldy_col == 1) {
        for (int64_t i = r0; i < r1; ++i) {
          const int64_t s = rp[i], e = rp[i + 1];
          const float b = bias ? bias[i] : 0.f;
          for (int64_t n0 = 0; n0 < pw; n0 += SPAN) {
            const int w = static_cast<int>(std::min<int64_t>(SPAN, pw - n0));
            row_span(v, ci, s, e, xp + n0, ld, w, b, act, Y + i * ldy_row + p0 + n0, 1);
          }
        }
      } else {
        // Transposed output (nn.Linear, y[n, i]): a column of y has stride M, and for M a multiple of 1024
        // all lines of a column tile fall into one L1 set. Compute RB whole rows of the panel into a staging
        // buffer (each row's W stays in L1 across its spans), then write RB contiguous floats per column.
        constexpr int RB = 16;
        tbuf.resize(static_cast<size_t>(RB * NT));
        for (int64_t i0 = r0; i0 < r1; i0 += RB) {
          const int rows = static_cast<int>(std::min<int64_t>(RB, r1 - i0));
          for (int r = 0; r < rows; ++r) {
            const int64_t i = i0 + r;
            for (int64_t n0 = 0; n0 < pw; n0 += SPAN) {
              const int w = static_cast<int>(std::min<int64_t>(SPAN, pw - n0));
              row_span(v, ci, rp[i], rp[i + 1], xp + n0, ld, w, bias ? bias[i] : 0.f, act,
                       tbuf.data() + r * NT + n0, 1);
            }
          }
          for (int64_t t = 0; t < pw; ++t) {
            float* yc = Y + (p0 + t) * ldy_col + i0 * ldy_row;
            for (int r = 0; r < rows; ++r) yc[r] = tbuf[r * NT + t];
          }
        }
      }
    }
  }
}

// ---- BSR with R x 1 blocks (R = 4): one X row load feeds R output rows ---------------------------------
constexpr int BR = 4;

template <int NV, bool MASK, typename I>
inline void bsr_tile(const float* __restrict v, const I* __restrict c, int64_t s, int64_t e,
                     const float* __restrict X, int64_t ldx, __m256i mask, __m256 (*acc)[2]) {
  for (int r = 0; r < BR; ++r)
    for (int q = 0; q < NV; ++q) acc[r][q] = _mm256_setzero_ps();
  for (int64_t j = s; j < e; ++j) {
    const float* x = X + idx(c, j) * ldx;
    __m256 xv[NV];
    for (int q = 0; q < NV; ++q)
      xv[q] = (MASK && q == NV - 1) ? _mm256_maskload_ps(x + 8 * q, mask) : _mm256_loadu_ps(x + 8 * q);
    for (int r = 0; r < BR; ++r) {
      const __m256 w = _mm256_broadcast_ss(v + j * BR + r);
      for (int q = 0; q < NV; ++q) acc[r][q] = _mm256_fmadd_ps(w, xv[q], acc[r][q]);
    }
  }
}

template <typename I>
void bsr_spmm_impl(const int32_t* brp, const I* ci, const float* v, int64_t m, const float* X, int64_t ldx,
                   int64_t n, const float* bias, int act, float* Y, int64_t ldy_row, int64_t ldy_col, int T) {
  const int64_t mb = (m + BR - 1) / BR;
  if (m == 0 || n == 0) return;
#pragma omp parallel num_threads(T)
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    const int64_t b0 = balanced_start(brp, mb, tid, nt, 4), b1 = balanced_start(brp, mb, tid + 1, nt, 4);
    for (int64_t bi = b0; bi < b1; ++bi) {
      const int64_t s = brp[bi], e = brp[bi + 1], i0 = bi * BR;
      const int rows = static_cast<int>(std::min<int64_t>(BR, m - i0));
      if (n == 1) {
        __m128 a0 = _mm_setzero_ps(), a1 = _mm_setzero_ps();
        int64_t j = s;
        for (; j + 1 < e; j += 2) {
          a0 = _mm_fmadd_ps(_mm_loadu_ps(v + j * BR), _mm_set1_ps(X[idx(ci, j) * ldx]), a0);
          a1 = _mm_fmadd_ps(_mm_loadu_ps(v + (j + 1) * BR), _mm_set1_ps(X[idx(ci, j + 1) * ldx]), a1);
        }
        if (j < e) a0 = _mm_fmadd_ps(_mm_loadu_ps(v + j * BR), _mm_set1_ps(X[idx(ci, j) * ldx]), a0);
        alignas(16) float out[4];
        _mm_store_ps(out, _mm_add_ps(a0, a1));
        for (int r = 0; r < rows; ++r)
          Y[(i0 + r) * ldy_row] = epilogue1(out[r], bias ? bias[i0 + r] : 0.f, act);
        continue;
      }
      for (int64_t n0 = 0; n0 < n; n0 += 16) {
        const int w = static_cast<int>(std::min<int64_t>(16, n - n0));
        const int nv = (w + 7) / 8, r = w - 8 * (nv - 1);
        const __m256i mask = tail_mask(r);
        __m256 acc[BR][2];
        const float* x = X + n0;
        if (nv == 2 && r == 8) bsr_tile<2, false>(v, ci, s, e, x, ldx, mask, acc);
        else if (nv == 2) bsr_tile<2, true>(v, ci, s, e, x, ldx, mask, acc);
        else if (r == 8) bsr_tile<1, false>(v, ci, s, e, x, ldx, mask, acc);
        else bsr_tile<1, true>(v, ci, s, e, x, ldx, mask, acc);
        for (int rr = 0; rr < rows; ++rr) {
          float* y = Y + (i0 + rr) * ldy_row + n0 * ldy_col;
          const float b = bias ? bias[i0 + rr] : 0.f;
          if (nv == 2) store_tile<2>(acc[rr], r, b, act, y, ldy_col);
          else store_tile<1>(acc[rr], r, b, act, y, ldy_col);
        }
      }
    }
  }
}

// ---- direct sparse convolution (Park et al., ICLR 2017) --------------------------------------------------
// For output channel co and output row oh, out[ow] = sum over nonzeros w[co, ci, r, s] of
// w * Xpad[ci, oh*sh + r*dh, ow*sw + s*dw]: each nonzero is an offset into the padded input, so the CSR
// row-tile kernel runs on shifted windows of the input with no im2col matrix.
void conv_direct_impl(const int32_t* rp, const int32_t* off, const float* v, int64_t co_n, const float* xp,
                      int64_t b_n, int64_t ci_n, int64_t hp, int64_t wp, int64_t sh, int64_t sw, int64_t ho,
                      int64_t wo, const float* bias, int act, float* Y, int T) {
  const int64_t items = b_n * ho;
  const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
#pragma omp parallel for num_threads(T) schedule(static)
  for (int64_t it = 0; it < items; ++it) {
    const int64_t b = it / ho, oh = it % ho;
    const float* xrow = xp + b * ci_n * hp * wp + oh * sh * wp;
    for (int64_t co = 0; co < co_n; ++co) {
      const int64_t s = rp[co], e = rp[co + 1];
      const float bb = bias ? bias[co] : 0.f;
      float* y = Y + ((b * co_n + co) * ho + oh) * wo;
      if (sw == 1) {
        for (int64_t o0 = 0; o0 < wo; o0 += 32) {
          const int w = static_cast<int>(std::min<int64_t>(32, wo - o0));
          row_segment(v, off, s, e, xrow + o0, 1, w, bb, act, y + o0, 1);
        }
      } else {
        const __m256i vi = _mm256_mullo_epi32(lanes, _mm256_set1_epi32(static_cast<int>(sw)));
        for (int64_t o0 = 0; o0 < wo; o0 += 8) {
          const int w = static_cast<int>(std::min<int64_t>(8, wo - o0));
          const __m256 mk = _mm256_castsi256_ps(tail_mask(w));
          const float* base = xrow + o0 * sw;
          __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
          int64_t j = s;
          for (; j + 1 < e; j += 2) {
            a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(v + j),
                                 _mm256_mask_i32gather_ps(_mm256_setzero_ps(), base + off[j], vi, mk, 4), a0);
            a1 = _mm256_fmadd_ps(_mm256_broadcast_ss(v + j + 1),
                                 _mm256_mask_i32gather_ps(_mm256_setzero_ps(), base + off[j + 1], vi, mk, 4), a1);
          }
          if (j < e)
            a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(v + j),
                                 _mm256_mask_i32gather_ps(_mm256_setzero_ps(), base + off[j], vi, mk, 4), a0);
          __m256 acc[1] = {_mm256_add_ps(a0, a1)};
          store_tile<1>(acc, w, bb, act, y + o0, 1);
        }
      }
    }
  }
}

}  // namespace

// ---- Python-facing functions ---------------------------------------------------------------------------

static void check_cpu_f32(const torch::Tensor& t, const char* what) {
  if (t.device().type() != torch::kCPU) throw pybind11::value_error(std::string(what) + " must be on the CPU");
  if (t.scalar_type() != torch::kFloat32)
    throw pybind11::value_error(std::string(what) + " must be float32, got " + std::string(c10::toString(t.scalar_type())));
  if (!t.is_contiguous()) throw pybind11::value_error(std::string(what) + " must be contiguous");
}

// Dense [M, K] -> CSR (rowptr int32 [M+1], cols int32 or uint16-as-int16 [nnz], vals [nnz]) and, with
// block_rows = R > 1, the R x 1 BSR (block rowptr [ceil(M/R)+1], block cols [nb], vals [nb * R]).
// One pass over the dense weight: each thread packs its own row range into private buffers, then copies
// them into place after a prefix sum. Non-finite values are counted and reported (ValueError).
std::vector<torch::Tensor> pack(torch::Tensor w, bool idx16, int64_t block_rows, int64_t nthreads) {
  check_cpu_f32(w, "weight");
  if (w.dim() != 2) throw pybind11::value_error("weight must be 2-D [M, K]");
  const int64_t m = w.size(0), k = w.size(1);
  const int64_t R = std::max<int64_t>(1, block_rows);
  if (idx16 && k > 65536) throw pybind11::value_error("uint16 column indices need K <= 65536, got K=" + std::to_string(k));
  const int64_t mb = (m + R - 1) / R;  // block rows
  const float* W = w.data_ptr<float>();
  const int T = resolve_threads(nthreads);
  std::vector<int64_t> bcount(mb + 1, 0);
  std::vector<RawBuf<int32_t>> tcols(T);
  std::vector<RawBuf<float>> tvals(T);
  std::vector<int64_t> tfirst(T + 1, 0);
  int64_t bad = 0;
  int parts = 1;  // threads actually started: the second pass must use the same partition
#pragma omp parallel num_threads(T) reduction(+ : bad)
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    if (tid == 0) parts = nt;
    const int64_t b0 = mb * tid / nt, b1 = mb * (tid + 1) / nt;
    auto& cols = tcols[tid];
    auto& vals = tvals[tid];
    cols.reserve(static_cast<size_t>((b1 - b0) * R * k / 8 + 16));
    vals.reserve(static_cast<size_t>((b1 - b0) * R * k / 8 + 16));
    for (int64_t bi = b0; bi < b1; ++bi) {
      const int64_t before = static_cast<int64_t>(cols.size);
      const int64_t r0 = bi * R, r1 = std::min(m, r0 + R);
      if (R == 1) {
        // Branch-free AVX2 compaction: a compare mask selects the nonzeros of 8 columns, a lookup table
        // permutes them to the front, and the write position advances by the popcount.
        const float* row = W + r0 * k;
        size_t pos = cols.size;
        if (cols.cap < pos + k + 8) {
          cols.reserve(std::max(2 * cols.cap, pos + k + 8));
          vals.reserve(cols.cap);
        }
        int32_t* cp = cols.data();
        float* vp = vals.data();
        const __m256 zero = _mm256_setzero_ps(), inf = _mm256_set1_ps(INFINITY);
        const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
        __m256 nonfinite = zero;
        __m256i jv = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        const __m256i eight = _mm256_set1_epi32(8);
        int64_t j = 0;
        for (; j + 8 <= k; j += 8) {
          const __m256 x = _mm256_loadu_ps(row + j);
          nonfinite = _mm256_or_ps(nonfinite, _mm256_cmp_ps(_mm256_and_ps(x, absmask), inf, _CMP_NLT_UQ));
          const int mask = _mm256_movemask_ps(_mm256_cmp_ps(x, zero, _CMP_NEQ_UQ));
          const __m256i perm = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kCompress[mask]));
          _mm256_storeu_ps(vp + pos, _mm256_permutevar8x32_ps(x, perm));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(cp + pos), _mm256_permutevar8x32_epi32(jv, perm));
          pos += static_cast<size_t>(__builtin_popcount(mask));
          jv = _mm256_add_epi32(jv, eight);
        }
        if (_mm256_movemask_ps(nonfinite)) {
          for (int64_t jj = 0; jj < j; ++jj) bad += !std::isfinite(row[jj]);
        }
        for (; j < k; ++j) {
          const float x = row[j];
          if (x != 0.f) {
            if (!std::isfinite(x)) ++bad;
            cp[pos] = static_cast<int32_t>(j);
            vp[pos++] = x;
          }
        }
        cols.size = pos;
        vals.size = pos;
      } else {
        for (int64_t j = 0; j < k; ++j) {
          bool any = false;
          for (int64_t r = r0; r < r1; ++r) any |= (W[r * k + j] != 0.f);
          if (!any) continue;
          cols.push_back(static_cast<int32_t>(j));
          for (int64_t r = r0; r < r0 + R; ++r) {
            const float x = r < r1 ? W[r * k + j] : 0.f;
            if (!std::isfinite(x)) ++bad;
            vals.push_back(x);
          }
        }
      }
      bcount[bi + 1] = static_cast<int64_t>(cols.size) - before;
    }
  }
  if (bad > 0)
    throw pybind11::value_error("weight holds " + std::to_string(bad) +
                                " non-finite value(s) (NaN/Inf); only finite weights are allowed");
  for (int64_t i = 0; i < mb; ++i) bcount[i + 1] += bcount[i];
  const int64_t nb = bcount[mb];
  if (nb >= (int64_t(1) << 31) - 1)
    throw pybind11::value_error("too many nonzeros for int32 row offsets: " + std::to_string(nb));
  auto rp = torch::empty({mb + 1}, torch::kInt32);
  auto ct = torch::empty({nb}, idx16 ? torch::kInt16 : torch::kInt32);
  auto vt = torch::empty({nb * R}, torch::kFloat32);
  int32_t* rpp = rp.data_ptr<int32_t>();
  for (int64_t i = 0; i <= mb; ++i) rpp[i] = static_cast<int32_t>(bcount[i]);
  float* vp = vt.data_ptr<float>();
#pragma omp parallel num_threads(T)
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    {
      for (int part = tid; part < parts; part += nt) {
        const int64_t b0 = mb * part / parts;
        const int64_t off = bcount[b0];
        const auto& cols = tcols[part];
        const auto& vals = tvals[part];
        if (idx16) {
          uint16_t* cp = reinterpret_cast<uint16_t*>(ct.data_ptr<int16_t>()) + off;
          for (size_t j = 0; j < cols.size; ++j) cp[j] = static_cast<uint16_t>(cols.begin()[j]);
        } else {
          std::copy(cols.begin(), cols.end(), ct.data_ptr<int32_t>() + off);
        }
        std::copy(vals.begin(), vals.end(), vp + off * R);
      }
    }
  }
  return {rp, ct, vt};
}

static int act_code(int64_t act) {
  if (act < 0 || act > 2) throw pybind11::value_error("activation code must be 0 (none), 1 (relu) or 2 (gelu)");
  return static_cast<int>(act);
}

static const float* bias_ptr(const c10::optional<torch::Tensor>& bias, int64_t m) {
  if (!bias.has_value()) return nullptr;
  check_cpu_f32(*bias, "bias");
  if (bias->dim() != 1 || bias->size(0) != m) throw pybind11::value_error("bias must be [M]");
  return bias->data_ptr<float>();
}

// Y = act(W @ X + b) with W in CSR; transposed=true returns y = Y^T ([N, M], the nn.Linear layout).
torch::Tensor csr_spmm(torch::Tensor rp, torch::Tensor cols, torch::Tensor vals, int64_t m, int64_t k,
                       torch::Tensor x, c10::optional<torch::Tensor> bias, int64_t act, bool transposed,
                       int64_t nthreads, int64_t split_mode) {
  check_cpu_f32(x, "x");
  check_cpu_f32(vals, "values");
  if (x.dim() != 2 || x.size(0) != k) throw pybind11::value_error("x must be [K, N]");
  if (rp.numel() != m + 1) throw pybind11::value_error("row pointer must have M+1 entries");
  const int64_t n = x.size(1);
  auto y = transposed ? torch::empty({n, m}, x.options()) : torch::empty({m, n}, x.options());
  const float* b = bias_ptr(bias, m);
  const int a = act_code(act), T = resolve_threads(nthreads);
  const int64_t ldy_row = transposed ? 1 : n, ldy_col = transposed ? m : 1;
  if (cols.scalar_type() == torch::kInt16) {
    csr_spmm_impl(rp.data_ptr<int32_t>(), reinterpret_cast<const uint16_t*>(cols.data_ptr<int16_t>()),
                  vals.data_ptr<float>(), m, k, x.data_ptr<float>(), n, n, b, a, y.data_ptr<float>(), ldy_row,
                  ldy_col, T, static_cast<int>(split_mode));
  } else {
    csr_spmm_impl(rp.data_ptr<int32_t>(), cols.data_ptr<int32_t>(), vals.data_ptr<float>(), m, k,
                  x.data_ptr<float>(), n, n, b, a, y.data_ptr<float>(), ldy_row, ldy_col, T,
                  static_cast<int>(split_mode));
  }
  return y;
}

torch::Tensor bsr_spmm(torch::Tensor brp, torch::Tensor cols, torch::Tensor vals, int64_t m, int64_t k,
                       torch::Tensor x, c10::optional<torch::Tensor> bias, int64_t act, bool transposed,
                       int64_t nthreads) {
  check_cpu_f32(x, "x");
  check_cpu_f32(vals, "values");
  if (x.dim() != 2 || x.size(0) != k) throw pybind11::value_error("x must be [K, N]");
  if (brp.numel() != (m + BR - 1) / BR + 1) throw pybind11::value_error("block row pointer has the wrong size");
  const int64_t n = x.size(1);
  auto y = transposed ? torch::empty({n, m}, x.options()) : torch::empty({m, n}, x.options());
  const float* b = bias_ptr(bias, m);
  const int a = act_code(act), T = resolve_threads(nthreads);
  const int64_t ldy_row = transposed ? 1 : n, ldy_col = transposed ? m : 1;
  if (cols.scalar_type() == torch::kInt16) {
    bsr_spmm_impl(brp.data_ptr<int32_t>(), reinterpret_cast<const uint16_t*>(cols.data_ptr<int16_t>()),
                  vals.data_ptr<float>(), m, x.data_ptr<float>(), n, n, b, a, y.data_ptr<float>(), ldy_row,
                  ldy_col, T);
  } else {
    bsr_spmm_impl(brp.data_ptr<int32_t>(), cols.data_ptr<int32_t>(), vals.data_ptr<float>(), m,
                  x.data_ptr<float>(), n, n, b, a, y.data_ptr<float>(), ldy_row, ldy_col, T);
  }
  return y;
}

// Direct sparse convolution. xpad is the zero-padded input [B, C_in, Hp, Wp]; W is CSR over
// [C_out, C_in*kh*kw] with columns in (ci, r, s) order; returns [B, C_out, ho, wo].
torch::Tensor conv_direct(torch::Tensor rp, torch::Tensor cols, torch::Tensor vals, int64_t co_n,
                          torch::Tensor xpad, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t dh,
                          int64_t dw, int64_t ho, int64_t wo, c10::optional<torch::Tensor> bias, int64_t act,
                          int64_t nthreads) {
  check_cpu_f32(xpad, "x");
  check_cpu_f32(vals, "values");
  if (xpad.dim() != 4) throw pybind11::value_error("x must be [B, C_in, H, W]");
  const int64_t b_n = xpad.size(0), ci_n = xpad.size(1), hp = xpad.size(2), wp = xpad.size(3);
  if (ci_n * hp * wp >= (int64_t(1) << 31)) throw pybind11::value_error("input image too large for int32 offsets");
  if ((ho - 1) * sh + (kh - 1) * dh >= hp || (wo - 1) * sw + (kw - 1) * dw >= wp)
    throw pybind11::value_error("output size inconsistent with the padded input");
  auto y = torch::empty({b_n, co_n, ho, wo}, xpad.options());
  const int64_t nnz = vals.numel();
  std::vector<int32_t> off(static_cast<size_t>(nnz));
  const int32_t* c = cols.data_ptr<int32_t>();
  for (int64_t j = 0; j < nnz; ++j) {
    const int64_t col = c[j], ci = col / (kh * kw), rr = (col / kw) % kh, ss = col % kw;
    off[j] = static_cast<int32_t>(ci * hp * wp + rr * dh * wp + ss * dw);
  }
  conv_direct_impl(rp.data_ptr<int32_t>(), off.data(), vals.data_ptr<float>(), co_n, xpad.data_ptr<float>(), b_n,
                   ci_n, hp, wp, sh, sw, ho, wo, bias_ptr(bias, co_n), act_code(act), y.data_ptr<float>(),
                   resolve_threads(nthreads));
  return y;
}

bool cpu_supported() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  mod.def("pack", &pack, "dense [M,K] -> CSR / R x 1 BSR (rowptr, cols, vals)");
  mod.def("csr_spmm", &csr_spmm, "Y = act(W @ X + b), W CSR");
  mod.def("bsr_spmm", &bsr_spmm, "Y = act(W @ X + b), W BSR with 4 x 1 blocks");
  mod.def("conv_direct", &conv_direct, "direct sparse convolution");
  mod.def("cpu_supported", &cpu_supported, "AVX2 and FMA present");
}
