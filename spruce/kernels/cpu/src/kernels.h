// The ISA-neutral interface between the bindings (bindings.cpp, baseline x86-64 code) and the kernels, which
// are compiled once per instruction set (isa_avx2.cpp, isa_avx512.cpp) from the same headers. Plain pointers
// and sizes only: no torch types cross this line, so the kernel translation units build fast.
//
// | buffer | type | shape | layout / invariant |
// |---|---|---|---|
// | Csr::rp | int32 | [rows + 1] | rows = m (CSR) or ceil(m / 4) (BSR 4x1); rp[0] = 0, non-decreasing |
// | Csr::cols | int32 or uint16 (idx16) | [nnz or blocks] | column of each nonzero / block, < k |
// | Csr::v | float32 | [nnz] or [blocks * 4] | values; BSR blocks store 4 consecutive rows of one column |
// | X (matmul) | float32 | [k, n] | row-major, leading dimension n |
// | x (linear) | float32 | [b, k] | row-major (nn.Linear activations) |
// | y (linear) | float32 | [b, m] | row-major |
// | xpad (conv) | float32 | [B, C_in, Hp, Wp] | NCHW, already zero-padded |
// | SpAct, SpspWeight | see spsp_conv.h | | sparse activations and the sparse x sparse kernel's weight |
#pragma once
#include <cstdint>

namespace spruce {

struct Csr {
  const int32_t* rp;
  const void* cols;
  bool idx16;
  const float* v;
  int64_t m, k;
};

struct Epilogue {
  const float* bias;  // [m] or nullptr
  int act;            // 0 none, 1 relu, 2 gelu (exact erf)
};

struct ConvShape {
  int64_t b, ci, hp, wp, kh, kw, sh, sw, dh, dw, ho, wo;
};

// Sparse activations (spsp_conv.h): CSR over the rows (b, c, h) of an NCHW tensor, column = w.
struct SpAct {
  const int32_t* rp;
  const int32_t* cols;
  const float* v;
  int64_t b, c, h, w;
};

// The sparse x sparse kernel's weight: W^T [k = C_in*kh*kw, co] in blocks of `width` output channels.
struct SpspWeight {
  const int32_t* rp;
  const int32_t* blk;
  const float* v;
  int64_t co, k, width;
};

struct SpspGeom {
  int64_t kh, kw, sh, sw, ph, pw, dh, dw, ho, wo;
  int64_t acc_bytes;  // accumulator tile per work item (0: the default)
};

// Where a kernel whose output size is known only at the end puts it: alloc(ctx, nnz, &cols, &vals), called once,
// outside any parallel region (the bindings allocate tensors there).
struct SpOut {
  void* ctx;
  void (*alloc)(void* ctx, int64_t nnz, int32_t** cols, float** vals);
};

// The X panel a thread keeps hot in L2 while it walks its rows (bytes). One value for both ISAs.
constexpr int64_t kL2PanelBytes = 384 * 1024;

#define SPRUCE_ISA_ENTRY_POINTS                                                                           \
  /* Y[m, n] = act(W @ X + b) */                                                                          \
  void csr_spmm(const Csr& w, const float* X, int64_t n, const Epilogue& ep, float* Y, int T, int split); \
  /* y[b, m] = act(x[b, k] @ W^T + b) */                                                                  \
  void csr_linear(const Csr& w, const float* x, int64_t b, const Epilogue& ep, float* y, int T);          \
  /* BSR 4x1: Y[m, n], or y = Y^T [n, m] when transposed */                                               \
  void bsr_spmm(const Csr& w, const float* X, int64_t n, const Epilogue& ep, float* Y, bool transposed,    \
                int T);                                                                                   \
  /* direct sparse convolution, y [B, m, ho, wo] */                                                       \
  void conv_direct(const Csr& w, const float* xpad, const ConvShape& s, const Epilogue& ep, float* y, int T);  \
  /* dense rows [rows, w] -> CSR over the rows (rp [rows + 1]; cols, vals from out) */                      \
  void to_spact(const float* x, int64_t rows, int64_t w, int32_t* rp, const SpOut& out, int T);            \
  /* sparse x sparse convolution: y [B, co, ho, wo] dense, or (out_rp != nullptr) the output as SpAct */   \
  void spsp_conv(const SpspWeight& w, const SpAct& x, const SpspGeom& g, const Epilogue& ep, float* y,       \
                 int32_t* out_rp, const SpOut* out, int T);

namespace avx2 { SPRUCE_ISA_ENTRY_POINTS }
namespace avx512 { SPRUCE_ISA_ENTRY_POINTS }

}  // namespace spruce
