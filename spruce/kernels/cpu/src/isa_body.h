// The body of one ISA's translation unit: the kernel headers instantiated for `Isa` and the entry points of
// kernels.h. isa_avx2.cpp / isa_avx512.cpp set the target and the namespace, then include this file.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <memory>
#include <vector>

#include "kernels.h"

namespace spruce {
namespace SPRUCE_ISA_NS {
#include SPRUCE_SIMD_HEADER
#include "simd_math.h"
#include "partition.h"
#include "transpose.h"
#include "csr_spmm.h"
#include "bsr_spmm.h"
#include "conv_direct.h"
#include "spsp_conv.h"

void csr_spmm(const Csr& w, const float* X, int64_t n, const Epilogue& ep, float* Y, int T, int split) {
  with_cols(w, [&](auto ci) { csr_spmm_impl(w, ci, X, n, ep, Y, T, split); });
}

void csr_linear(const Csr& w, const float* x, int64_t b, const Epilogue& ep, float* y, int T) {
  with_cols(w, [&](auto ci) { csr_linear_impl(w, ci, x, b, ep, y, T); });
}

void bsr_spmm(const Csr& w, const float* X, int64_t n, const Epilogue& ep, float* Y, bool transposed, int T) {
  with_cols(w, [&](auto ci) { bsr_spmm_impl(w, ci, X, n, ep, Y, transposed, T); });
}

void conv_direct(const Csr& w, const float* xpad, const ConvShape& s, const Epilogue& ep, float* y, int T) {
  conv_direct_impl(w, xpad, s, ep, y, T);
}

void to_spact(const float* x, int64_t rows, int64_t w, int32_t* rp, const SpOut& out, int T) {
  to_spact_impl(x, rows, w, rp, out, T);
}

void spsp_conv(const SpspWeight& w, const SpAct& x, const SpspGeom& g, const Epilogue& ep, float* y,
               int32_t* out_rp, const SpOut* out, int T) {
  if (w.width == 16) spsp_conv_impl<16>(w, x, g, ep, y, out_rp, out, T);
  else spsp_conv_impl<8>(w, x, g, ep, y, out_rp, out, T);
}

}  // namespace SPRUCE_ISA_NS
}  // namespace spruce
