// Vector math written once over the ISA layer (`Isa`, see simd_avx2.h / simd_avx512.h): exp, exact-erf GELU
// and the fused bias + activation epilogue every kernel ends with.
#pragma once

constexpr int ACT_NONE = 0, ACT_RELU = 1, ACT_GELU = 2;

// exp for x in [-88, 88] (Cephes polynomial, ~1 ulp); enough for the erf below.
inline Isa::V exp_v(Isa::V x) {
  using I = Isa;
  x = I::min(x, I::set1(88.3762626647949f));
  x = I::max(x, I::set1(-88.3762626647949f));
  Isa::V fx = I::floor(I::fma(x, I::set1(1.44269504088896341f), I::set1(0.5f)));
  x = I::fnma(fx, I::set1(0.693359375f), x);
  x = I::fnma(fx, I::set1(-2.12194440e-4f), x);
  Isa::V y = I::set1(1.9875691500E-4f);
  y = I::fma(y, x, I::set1(1.3981999507E-3f));
  y = I::fma(y, x, I::set1(8.3334519073E-3f));
  y = I::fma(y, x, I::set1(4.1665795894E-2f));
  y = I::fma(y, x, I::set1(1.6666665459E-1f));
  y = I::fma(y, x, I::set1(5.0000001201E-1f));
  y = I::fma(y, I::mul(x, x), I::add(x, I::set1(1.0f)));
  return I::mul(y, I::pow2i(fx));
}

// GELU(v) = 0.5 v erfc(-v / sqrt 2), with erfc from the Chebyshev fit of Numerical Recipes (erfcc, relative
// error < 1.2e-7 everywhere, so the tiny negative tail stays accurate too). exp(-z^2) is split as
// exp(-hi) * exp(-lo) with hi + lo = z^2 exactly (FMA), so a large z costs no accuracy in the argument.
inline Isa::V gelu_v(Isa::V v) {
  using I = Isa;
  const Isa::V one = I::set1(1.0f);
  const Isa::V z = I::mul(I::abs(v), I::set1(0.70710678118654752f));
  const Isa::V t = I::div(one, I::fma(I::set1(0.5f), z, one));
  Isa::V p = I::set1(0.17087277f);
  p = I::fma(p, t, I::set1(-0.82215223f));
  p = I::fma(p, t, I::set1(1.48851587f));
  p = I::fma(p, t, I::set1(-1.13520398f));
  p = I::fma(p, t, I::set1(0.27886807f));
  p = I::fma(p, t, I::set1(-0.18628806f));
  p = I::fma(p, t, I::set1(0.09678418f));
  p = I::fma(p, t, I::set1(0.37409196f));
  p = I::fma(p, t, I::set1(1.00002368f));
  p = I::fma(p, t, I::set1(-1.26551223f));
  const Isa::V hi = I::mul(z, z);
  const Isa::V lo = I::fms(z, z, hi);
  const Isa::V ans = I::mul(t, I::mul(exp_v(I::neg(hi)), exp_v(I::sub(p, lo))));  // erfc(|v| / sqrt 2)
  const Isa::V erfc_arg = I::select_neg(v, ans, I::sub(I::set1(2.0f), ans));
  return I::mul(I::mul(I::set1(0.5f), v), erfc_arg);
}

inline Isa::V epilogue(Isa::V v, Isa::V b, int act) {
  v = Isa::add(v, b);
  if (act == ACT_RELU) return Isa::max(v, Isa::zero());
  if (act == ACT_GELU) return gelu_v(v);
  return v;
}

inline float epilogue1(float v, float b, int act) {
  v += b;
  if (act == ACT_RELU) return v > 0.f ? v : 0.f;
  if (act == ACT_GELU) {
    alignas(64) float out[Isa::W];
    Isa::store(out, gelu_v(Isa::set1(v)));
    return out[0];
  }
  return v;
}

// Store NV vectors of one output row segment after the epilogue; the last vector holds r valid lanes (1..W).
template <int NV>
inline void store_row(const Isa::V* acc, int r, float bias, int act, float* y) {
  const Isa::V b = Isa::set1(bias);
  #pragma GCC unroll 16
  for (int q = 0; q < NV - 1; ++q) Isa::store(y + Isa::W * q, epilogue(acc[q], b, act));
  const Isa::V last = epilogue(acc[NV - 1], b, act);
  if (r == Isa::W) Isa::store(y + Isa::W * (NV - 1), last);
  else Isa::storem(y + Isa::W * (NV - 1), Isa::tail(r), last);
}
