// Dense -> CSR / R x 1 BSR packing (see pack.h). AVX2 compaction for CSR: a compare mask selects the nonzeros
// of 8 columns, a lookup table permutes them to the front, and the write position advances by the popcount.
#pragma GCC target("avx2,fma,bmi,bmi2,popcnt")
#include "pack.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace spruce {
namespace {

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

// kCompress[mask] lists the set lanes of an 8-bit mask first.
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

// Append the nonzeros of one dense row (k floats) to cols/vals; returns the non-finite count.
int64_t pack_row(const float* row, int64_t k, RawBuf<int32_t>& cols, RawBuf<float>& vals) {
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
  int64_t j = 0, bad = 0;
  for (; j + 8 <= k; j += 8) {
    const __m256 x = _mm256_loadu_ps(row + j);
    nonfinite = _mm256_or_ps(nonfinite, _mm256_cmp_ps(_mm256_and_ps(x, absmask), inf, _CMP_NLT_UQ));
    const int mask = _mm256_movemask_ps(_mm256_cmp_ps(x, zero, _CMP_NEQ_UQ));
    const __m256i perm = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kCompressTable.t[mask]));
    _mm256_storeu_ps(vp + pos, _mm256_permutevar8x32_ps(x, perm));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(cp + pos), _mm256_permutevar8x32_epi32(jv, perm));
    pos += static_cast<size_t>(__builtin_popcount(mask));
    jv = _mm256_add_epi32(jv, eight);
  }
  if (_mm256_movemask_ps(nonfinite))
    for (int64_t jj = 0; jj < j; ++jj) bad += !std::isfinite(row[jj]);
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
  return bad;
}

}  // namespace

struct PackParts {
  std::vector<RawBuf<int32_t>> cols;
  std::vector<RawBuf<float>> vals;
  int parts = 1;  // threads actually started: the write phase must use the same partition
};

PackScan pack_scan(const float* W, int64_t m, int64_t k, int64_t R, int T) {
  PackScan out;
  out.m = m;
  out.k = k;
  out.R = R = std::max<int64_t>(1, R);
  const int64_t mb = (m + R - 1) / R;
  out.parts = std::make_shared<PackParts>();
  PackParts& P = *out.parts;
  P.cols.resize(T);
  P.vals.resize(T);
  out.offsets.assign(mb + 1, 0);
  int64_t bad = 0;
  int parts = 1;
#pragma omp parallel num_threads(T) reduction(+ : bad)
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    if (tid == 0) parts = nt;
    const int64_t b0 = mb * tid / nt, b1 = mb * (tid + 1) / nt;
    auto& cols = P.cols[tid];
    auto& vals = P.vals[tid];
    cols.reserve(static_cast<size_t>((b1 - b0) * R * k / 8 + 16));
    vals.reserve(static_cast<size_t>((b1 - b0) * R * k / 8 + 16));
    for (int64_t bi = b0; bi < b1; ++bi) {
      const int64_t before = static_cast<int64_t>(cols.size);
      const int64_t r0 = bi * R, r1 = std::min(m, r0 + R);
      if (R == 1) {
        bad += pack_row(W + r0 * k, k, cols, vals);
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
      out.offsets[bi + 1] = static_cast<int64_t>(cols.size) - before;
    }
  }
  P.parts = parts;
  out.nonfinite = bad;
  for (int64_t i = 0; i < mb; ++i) out.offsets[i + 1] += out.offsets[i];
  return out;
}

void pack_write(const PackScan& scan, int32_t* rp, void* cols_out, bool idx16, float* vals_out, int T) {
  const int64_t mb = static_cast<int64_t>(scan.offsets.size()) - 1, R = scan.R;
  for (int64_t i = 0; i <= mb; ++i) rp[i] = static_cast<int32_t>(scan.offsets[i]);
  const PackParts& P = *scan.parts;
  const int parts = P.parts;
#pragma omp parallel num_threads(T)
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    for (int part = tid; part < parts; part += nt) {
      const int64_t off = scan.offsets[mb * part / parts];
      const auto& cols = P.cols[part];
      const auto& vals = P.vals[part];
      if (idx16) {
        uint16_t* cp = static_cast<uint16_t*>(cols_out) + off;
        for (size_t j = 0; j < cols.size; ++j) cp[j] = static_cast<uint16_t>(cols.begin()[j]);
      } else {
        std::copy(cols.begin(), cols.end(), static_cast<int32_t*>(cols_out) + off);
      }
      std::copy(vals.begin(), vals.end(), vals_out + off * R);
    }
  }
}

}  // namespace spruce
