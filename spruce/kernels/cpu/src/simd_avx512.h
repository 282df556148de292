// The AVX-512 (F/BW/DQ/VL) vector layer: 16 float lanes per vector. Included only by isa_avx512.cpp, inside
// its namespace. Same interface as simd_avx2.h, so every kernel header is written once for both.
//
// | name | type | meaning |
// |---|---|---|
// | V | __m512 | 16 floats |
// | Mask | __mmask16 | bit i set = lane i active |
// Masked loads never fault on inactive lanes, so a row tail may end at the last byte of a buffer.
#pragma once

struct Isa {
  using V = __m512;
  using Mask = __mmask16;
  static constexpr int W = 16;
  static constexpr const char* name = "avx512";

  static inline V zero() { return _mm512_setzero_ps(); }
  static inline V set1(float a) { return _mm512_set1_ps(a); }
  static inline V bcast(const float* p) { return _mm512_set1_ps(*p); }
  static inline V load(const float* p) { return _mm512_loadu_ps(p); }
  static inline V loadm(const float* p, Mask m) { return _mm512_maskz_loadu_ps(m, p); }
  static inline void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static inline void storem(float* p, Mask m, V v) { _mm512_mask_storeu_ps(p, m, v); }
  static inline Mask tail(int r) { return static_cast<Mask>(r >= 16 ? 0xFFFFu : ((1u << r) - 1u)); }
  static inline V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static inline V fnma(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }
  static inline V fms(V a, V b, V c) { return _mm512_fmsub_ps(a, b, c); }
  static inline V add(V a, V b) { return _mm512_add_ps(a, b); }
  static inline V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static inline V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static inline V div(V a, V b) { return _mm512_div_ps(a, b); }
  static inline V min(V a, V b) { return _mm512_min_ps(a, b); }
  static inline V max(V a, V b) { return _mm512_max_ps(a, b); }
  static inline V floor(V a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
  static inline V abs(V a) { return _mm512_abs_ps(a); }
  static inline V neg(V a) {
    return _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a), _mm512_set1_epi32(INT32_MIN)));
  }
  static inline V pow2i(V fx) {
    __m512i n = _mm512_add_epi32(_mm512_cvttps_epi32(fx), _mm512_set1_epi32(127));
    n = _mm512_max_epi32(n, _mm512_setzero_si512());
    return _mm512_castsi512_ps(_mm512_slli_epi32(n, 23));
  }
  static inline V select_neg(V x, V if_neg, V otherwise) {
    return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ), otherwise, if_neg);
  }
  static inline float hsum(V v) { return _mm512_reduce_add_ps(v); }
  static inline V gather(const float* x, const int32_t* c) {
    return _mm512_i32gather_ps(_mm512_loadu_si512(c), x, 4);
  }
  static inline V gather(const float* x, const uint16_t* c) {
    return _mm512_i32gather_ps(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(c))), x, 4);
  }
  static inline V gather_stride(const float* base, int64_t stride, Mask m) {
    const __m512i vi = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                          _mm512_set1_epi32(static_cast<int>(stride)));
    return _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, vi, base, 4);
  }
};
