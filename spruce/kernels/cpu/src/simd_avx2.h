// The AVX2 + FMA vector layer: 8 float lanes per vector. Included only by isa_avx2.cpp, inside its namespace.
//
// | name | type | meaning |
// |---|---|---|
// | V | __m256 | 8 floats |
// | Mask | __m256i | lane i is active when its sign bit is set (vmaskmovps convention) |
// Masked loads never fault on inactive lanes, so a row tail may end at the last byte of a buffer.
#pragma once

struct Isa {
  using V = __m256;
  using Mask = __m256i;
  static constexpr int W = 8;
  static constexpr const char* name = "avx2";

  static inline V zero() { return _mm256_setzero_ps(); }
  static inline V set1(float a) { return _mm256_set1_ps(a); }
  static inline V bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static inline V load(const float* p) { return _mm256_loadu_ps(p); }
  static inline V loadm(const float* p, Mask m) { return _mm256_maskload_ps(p, m); }
  static inline void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static inline void storem(float* p, Mask m, V v) { _mm256_maskstore_ps(p, m, v); }
  static inline Mask tail(int r) {  // lanes [0, r) active, 0 <= r <= 8
    alignas(32) static const int32_t t[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(t + 8 - r));
  }
  static inline V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }    // a*b + c
  static inline V fnma(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }  // c - a*b
  static inline V fms(V a, V b, V c) { return _mm256_fmsub_ps(a, b, c); }    // a*b - c
  static inline V add(V a, V b) { return _mm256_add_ps(a, b); }
  static inline V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static inline V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static inline V div(V a, V b) { return _mm256_div_ps(a, b); }
  static inline V min(V a, V b) { return _mm256_min_ps(a, b); }
  static inline V max(V a, V b) { return _mm256_max_ps(a, b); }
  static inline V floor(V a) { return _mm256_floor_ps(a); }
  static inline V abs(V a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  static inline V neg(V a) { return _mm256_xor_ps(a, _mm256_set1_ps(-0.0f)); }
  static inline V pow2i(V fx) {  // 2^fx for integral fx in [-127, 128], flushed to 0 below
    __m256i n = _mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127));
    n = _mm256_max_epi32(n, _mm256_setzero_si256());
    return _mm256_castsi256_ps(_mm256_slli_epi32(n, 23));
  }
  static inline V select_neg(V x, V if_neg, V otherwise) {  // lane-wise x < 0 ? if_neg : otherwise
    return _mm256_blendv_ps(otherwise, if_neg, _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ));
  }
  static inline float hsum(V v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
  }
  // x[c[0..8)] for 32-bit or 16-bit (unsigned) column indices
  static inline V gather(const float* x, const int32_t* c) {
    return _mm256_i32gather_ps(x, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c)), 4);
  }
  static inline V gather(const float* x, const uint16_t* c) {
    return _mm256_i32gather_ps(x, _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(c))), 4);
  }
  // base[lane * stride] for active lanes, 0 elsewhere (stride in floats; lane * stride < 2^31)
  static inline V gather_stride(const float* base, int64_t stride, Mask m) {
    const __m256i vi = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                          _mm256_set1_epi32(static_cast<int>(stride)));
    return _mm256_mask_i32gather_ps(_mm256_setzero_ps(), base, vi, _mm256_castsi256_ps(m), 4);
  }
};
