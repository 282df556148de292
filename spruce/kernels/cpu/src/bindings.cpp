// The Python-facing functions of the spruce_cpu extension: argument checks (one-line ValueErrors), output
// allocation and the run-time choice of instruction set. Compiled for baseline x86-64: the only code here that
// could meet an AVX2 / AVX-512 instruction is behind cpu_has_isa.
//
// | argument | type | shape | meaning |
// |---|---|---|---|
// | rp | int32 | [m + 1] or [ceil(m/4) + 1] | (block-)row offsets from pack |
// | cols | int32, or int16 holding uint16 | [nnz or blocks] | column indices from pack |
// | vals | float32 | [nnz] or [blocks * 4] | values from pack |
// | isa | str | - | "avx2" or "avx512": the kernel set to run (the CPU must have it) |
#include <torch/extension.h>

#include <string>

#include "kernels.h"
#include "pack.h"

namespace {

using spruce::Csr;
using spruce::Epilogue;

bool cpu_has_isa(const std::string& isa) {
  __builtin_cpu_init();
  if (isa == "avx2") return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == "avx512")
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  throw pybind11::value_error("unknown instruction set '" + isa + "'; allowed: avx2, avx512");
}

// 0 = avx2, 1 = avx512, after checking that the CPU has it (never an illegal instruction).
int isa_code(const std::string& isa) {
  if (!cpu_has_isa(isa)) throw pybind11::value_error("this CPU lacks the '" + isa + "' instruction set");
  return isa == "avx512" ? 1 : 0;
}

void check_cpu_f32(const torch::Tensor& t, const char* what) {
  if (t.device().type() != torch::kCPU) throw pybind11::value_error(std::string(what) + " must be on the CPU");
  if (t.scalar_type() != torch::kFloat32)
    throw pybind11::value_error(std::string(what) + " must be float32, got " +
                                std::string(c10::toString(t.scalar_type())));
  if (!t.is_contiguous()) throw pybind11::value_error(std::string(what) + " must be contiguous");
}

int act_code(int64_t act) {
  if (act < 0 || act > 2) throw pybind11::value_error("activation code must be 0 (none), 1 (relu) or 2 (gelu)");
  return static_cast<int>(act);
}

const float* bias_ptr(const c10::optional<torch::Tensor>& bias, int64_t m) {
  if (!bias.has_value()) return nullptr;
  check_cpu_f32(*bias, "bias");
  if (bias->dim() != 1 || bias->size(0) != m) throw pybind11::value_error("bias must be [M]");
  return bias->data_ptr<float>();
}

int threads(int64_t n) { return static_cast<int>(std::max<int64_t>(1, n)); }

Csr make_csr(const torch::Tensor& rp, const torch::Tensor& cols, const torch::Tensor& vals, int64_t m, int64_t k,
             int64_t rows) {
  check_cpu_f32(vals, "values");
  if (rp.scalar_type() != torch::kInt32 || !rp.is_contiguous() || rp.numel() != rows + 1)
    throw pybind11::value_error("row pointer must be contiguous int32 with " + std::to_string(rows + 1) +
                                " entries");
  if ((cols.scalar_type() != torch::kInt32 && cols.scalar_type() != torch::kInt16) || !cols.is_contiguous())
    throw pybind11::value_error("column indices must be contiguous int32 or int16 (uint16)");
  const bool idx16 = cols.scalar_type() == torch::kInt16;
  return Csr{rp.data_ptr<int32_t>(), idx16 ? static_cast<const void*>(cols.data_ptr<int16_t>())
                                           : static_cast<const void*>(cols.data_ptr<int32_t>()),
             idx16, vals.data_ptr<float>(), m, k};
}

std::vector<torch::Tensor> pack(torch::Tensor w, bool idx16, int64_t block_rows, int64_t nthreads) {
  check_cpu_f32(w, "weight");
  if (w.dim() != 2) throw pybind11::value_error("weight must be 2-D [M, K]");
  isa_code("avx2");
  const int64_t m = w.size(0), k = w.size(1), R = std::max<int64_t>(1, block_rows);
  if (idx16 && k > 65536)
    throw pybind11::value_error("uint16 column indices need K <= 65536, got K=" + std::to_string(k));
  const int T = threads(nthreads);
  const spruce::PackScan scan = spruce::pack_scan(w.data_ptr<float>(), m, k, R, T);
  if (scan.nonfinite > 0)
    throw pybind11::value_error("weight holds " + std::to_string(scan.nonfinite) +
                                " non-finite value(s) (NaN/Inf); only finite weights are allowed");
  const int64_t nb = scan.offsets.back();
  if (nb >= (int64_t(1) << 31) - 1)
    throw pybind11::value_error("too many nonzeros for int32 row offsets: " + std::to_string(nb));
  auto rp = torch::empty({static_cast<int64_t>(scan.offsets.size())}, torch::kInt32);
  auto ct = torch::empty({nb}, idx16 ? torch::kInt16 : torch::kInt32);
  auto vt = torch::empty({nb * R}, torch::kFloat32);
  void* cp = idx16 ? static_cast<void*>(ct.data_ptr<int16_t>()) : static_cast<void*>(ct.data_ptr<int32_t>());
  spruce::pack_write(scan, rp.data_ptr<int32_t>(), cp, idx16, vt.data_ptr<float>(), T);
  return {rp, ct, vt};
}

// Y = act(W @ X + b): X [K, N] -> Y [M, N].
torch::Tensor csr_spmm(torch::Tensor rp, torch::Tensor cols, torch::Tensor vals, int64_t m, int64_t k,
                       torch::Tensor x, c10::optional<torch::Tensor> bias, int64_t act, int64_t nthreads,
                       int64_t split_mode, const std::string& isa) {
  const int code = isa_code(isa);
  check_cpu_f32(x, "x");
  if (x.dim() != 2 || x.size(0) != k) throw pybind11::value_error("x must be [K, N]");
  const Csr w = make_csr(rp, cols, vals, m, k, m);
  const int64_t n = x.size(1);
  auto y = torch::empty({m, n}, x.options());
  const Epilogue ep{bias_ptr(bias, m), act_code(act)};
  if (code == 1) spruce::avx512::csr_spmm(w, x.data_ptr<float>(), n, ep, y.data_ptr<float>(), threads(nthreads), static_cast<int>(split_mode));
  else spruce::avx2::csr_spmm(w, x.data_ptr<float>(), n, ep, y.data_ptr<float>(), threads(nthreads), static_cast<int>(split_mode));
  return y;
}

// y = act(x @ W^T + b): x [B, K] -> y [B, M], both row-major (nn.Linear).
torch::Tensor csr_linear(torch::Tensor rp, torch::Tensor cols, torch::Tensor vals, int64_t m, int64_t k,
                         torch::Tensor x, c10::optional<torch::Tensor> bias, int64_t act, int64_t nthreads,
                         const std::string& isa) {
  const int code = isa_code(isa);
  check_cpu_f32(x, "x");
  if (x.dim() != 2 || x.size(1) != k) throw pybind11::value_error("x must be [B, K]");
  const Csr w = make_csr(rp, cols, vals, m, k, m);
  const int64_t b = x.size(0);
  auto y = torch::empty({b, m}, x.options());
  const Epilogue ep{bias_ptr(bias, m), act_code(act)};
  if (code == 1) spruce::avx512::csr_linear(w, x.data_ptr<float>(), b, ep, y.data_ptr<float>(), threads(nthreads));
  else spruce::avx2::csr_linear(w, x.data_ptr<float>(), b, ep, y.data_ptr<float>(), threads(nthreads));
  return y;
}

torch::Tensor bsr_spmm(torch::Tensor brp, torch::Tensor cols, torch::Tensor vals, int64_t m, int64_t k,
                       torch::Tensor x, c10::optional<torch::Tensor> bias, int64_t act, bool transposed,
                       int64_t nthreads, const std::string& isa) {
  const int code = isa_code(isa);
  check_cpu_f32(x, "x");
  if (x.dim() != 2 || x.size(0) != k) throw pybind11::value_error("x must be [K, N]");
  const Csr w = make_csr(brp, cols, vals, m, k, (m + 3) / 4);
  const int64_t n = x.size(1);
  auto y = transposed ? torch::empty({n, m}, x.options()) : torch::empty({m, n}, x.options());
  const Epilogue ep{bias_ptr(bias, m), act_code(act)};
  if (code == 1) spruce::avx512::bsr_spmm(w, x.data_ptr<float>(), n, ep, y.data_ptr<float>(), transposed, threads(nthreads));
  else spruce::avx2::bsr_spmm(w, x.data_ptr<float>(), n, ep, y.data_ptr<float>(), transposed, threads(nthreads));
  return y;
}

// Direct sparse convolution. xpad is the zero-padded input [B, C_in, Hp, Wp]; W is CSR over
// [C_out, C_in*kh*kw] with int32 columns in (ci, r, s) order; returns [B, C_out, ho, wo].
torch::Tensor conv_direct(torch::Tensor rp, torch::Tensor cols, torch::Tensor vals, int64_t co_n,
                          torch::Tensor xpad, int64_t kh, int64_t kw, int64_t sh, int64_t sw, int64_t dh,
                          int64_t dw, int64_t ho, int64_t wo, c10::optional<torch::Tensor> bias, int64_t act,
                          int64_t nthreads, const std::string& isa) {
  const int code = isa_code(isa);
  check_cpu_f32(xpad, "x");
  if (xpad.dim() != 4) throw pybind11::value_error("x must be [B, C_in, H, W]");
  if (cols.scalar_type() != torch::kInt32) throw pybind11::value_error("direct convolution needs int32 columns");
  const int64_t b_n = xpad.size(0), ci_n = xpad.size(1), hp = xpad.size(2), wp = xpad.size(3);
  if (ci_n * hp * wp >= (int64_t(1) << 31)) throw pybind11::value_error("input image too large for int32 offsets");
  if (ho < 1 || wo < 1 || (ho - 1) * sh + (kh - 1) * dh >= hp || (wo - 1) * sw + (kw - 1) * dw >= wp)
    throw pybind11::value_error("output size inconsistent with the padded input");
  const Csr w = make_csr(rp, cols, vals, co_n, ci_n * kh * kw, co_n);
  auto y = torch::empty({b_n, co_n, ho, wo}, xpad.options());
  const spruce::ConvShape s{b_n, ci_n, hp, wp, kh, kw, sh, sw, dh, dw, ho, wo};
  const Epilogue ep{bias_ptr(bias, co_n), act_code(act)};
  if (code == 1) spruce::avx512::conv_direct(w, xpad.data_ptr<float>(), s, ep, y.data_ptr<float>(), threads(nthreads));
  else spruce::avx2::conv_direct(w, xpad.data_ptr<float>(), s, ep, y.data_ptr<float>(), threads(nthreads));
  return y;
}

// ---- sparse activations and the sparse x sparse convolution (spsp_conv.h) ------------------------------------
struct TensorOut {  // the SpOut allocator: nnz-sized cols / vals tensors
  torch::Tensor cols, vals;
  static void alloc(void* ctx, int64_t nnz, int32_t** c, float** v) {
    auto* self = static_cast<TensorOut*>(ctx);
    self->cols = torch::empty({nnz}, torch::kInt32);
    self->vals = torch::empty({nnz}, torch::kFloat32);
    *c = self->cols.data_ptr<int32_t>();
    *v = self->vals.data_ptr<float>();
  }
};

void check_i32(const torch::Tensor& t, int64_t n, const char* what) {
  if (t.device().type() != torch::kCPU || t.scalar_type() != torch::kInt32 || !t.is_contiguous() || t.dim() != 1)
    throw pybind11::value_error(std::string(what) + " must be a contiguous 1-D int32 CPU tensor");
  if (n >= 0 && t.numel() != n)
    throw pybind11::value_error(std::string(what) + " must have " + std::to_string(n) + " entries, got " +
                                std::to_string(t.numel()));
}

// rp[0] = 0, non-decreasing, rp[rows] = nnz: else a kernel would read out of bounds.
void check_offsets(const torch::Tensor& rp, int64_t nnz, const char* what) {
  const int32_t* p = rp.data_ptr<int32_t>();
  const int64_t rows = rp.numel() - 1;
  if (p[0] != 0 || p[rows] != nnz)
    throw pybind11::value_error(std::string(what) + " must start at 0 and end at the number of stored entries (" +
                                std::to_string(nnz) + ")");
  for (int64_t r = 0; r < rows; ++r)
    if (p[r + 1] < p[r]) throw pybind11::value_error(std::string(what) + " must be non-decreasing");
}

void check_range(const torch::Tensor& idx, int64_t hi, const char* what) {
  const int32_t* p = idx.data_ptr<int32_t>();
  for (int64_t i = 0, n = idx.numel(); i < n; ++i)
    if (p[i] < 0 || p[i] >= hi)
      throw pybind11::value_error(std::string(what) + " " + std::to_string(p[i]) + " out of range [0, " +
                                  std::to_string(hi) + ")");
}

// Columns strictly ascending within each row and in [0, w): the kernel stops a row at the first column past its
// output band.
void check_rows(const torch::Tensor& rp, const torch::Tensor& cols, int64_t w) {
  const int32_t* p = rp.data_ptr<int32_t>();
  const int32_t* c = cols.data_ptr<int32_t>();
  for (int64_t r = 0, rows = rp.numel() - 1; r < rows; ++r)
    for (int64_t j = p[r]; j < p[r + 1]; ++j) {
      if (c[j] < 0 || c[j] >= w)
        throw pybind11::value_error("input column " + std::to_string(c[j]) + " out of range [0, " +
                                    std::to_string(w) + ")");
      if (j > p[r] && c[j] <= c[j - 1])
        throw pybind11::value_error("input columns must ascend strictly within a row (row " + std::to_string(r) + ")");
    }
}

// Dense x [B, C, H, W] -> (rowptr [B*C*H + 1], cols [nnz], vals [nnz]): CSR over the rows (b, c, h).
std::vector<torch::Tensor> to_spact(torch::Tensor x, int64_t nthreads, const std::string& isa) {
  const int code = isa_code(isa);
  check_cpu_f32(x, "x");
  if (x.dim() != 4) throw pybind11::value_error("x must be [B, C, H, W]");
  if (x.numel() >= (int64_t(1) << 31) - 1)
    throw pybind11::value_error("x has too many elements for int32 offsets: " + std::to_string(x.numel()));
  const int64_t rows = x.size(0) * x.size(1) * x.size(2), w = x.size(3);
  auto rp = torch::empty({rows + 1}, torch::kInt32);
  TensorOut out;
  const spruce::SpOut so{&out, &TensorOut::alloc};
  if (code == 1) spruce::avx512::to_spact(x.data_ptr<float>(), rows, w, rp.data_ptr<int32_t>(), so, threads(nthreads));
  else spruce::avx2::to_spact(x.data_ptr<float>(), rows, w, rp.data_ptr<int32_t>(), so, threads(nthreads));
  return {rp, out.cols, out.vals};
}

// Sparse x sparse convolution: W^T blocks (w_rp, w_blk, w_vals; co output channels, blocks of `width`) times the
// sparse input (x_rp, x_cols, x_vals over [b, c, h, w]); returns [y [B, co, ho, wo]] or, with sparse_out, the
// output as (rowptr, cols, vals) over its rows (b, co, oh).
std::vector<torch::Tensor> spsp_conv(torch::Tensor w_rp, torch::Tensor w_blk, torch::Tensor w_vals, int64_t co,
                                     int64_t width, torch::Tensor x_rp, torch::Tensor x_cols, torch::Tensor x_vals,
                                     int64_t b, int64_t c, int64_t h, int64_t w, int64_t kh, int64_t kw, int64_t sh,
                                     int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
                                     c10::optional<torch::Tensor> bias, int64_t act, bool sparse_out,
                                     int64_t nthreads, const std::string& isa, int64_t acc_kib) {
  const int code = isa_code(isa);
  if (width != 8 && width != 16) throw pybind11::value_error("block width must be 8 or 16, got " + std::to_string(width));
  if (co < 1 || b < 0 || c < 1 || h < 1 || w < 1) throw pybind11::value_error("sizes must be positive");
  if (kh < 1 || kw < 1 || sh < 1 || sw < 1 || dh < 1 || dw < 1 || ph < 0 || pw < 0)
    throw pybind11::value_error("kernel size, stride and dilation must be >= 1 and padding >= 0");
  const int64_t ho = (h + 2 * ph - dh * (kh - 1) - 1) / sh + 1, wo = (w + 2 * pw - dw * (kw - 1) - 1) / sw + 1;
  if (h + 2 * ph - dh * (kh - 1) - 1 < 0 || w + 2 * pw - dw * (kw - 1) - 1 < 0)
    throw pybind11::value_error("input smaller than the dilated kernel");
  if (b * c * h * w >= (int64_t(1) << 31) - 1 || b * co * ho * wo >= (int64_t(1) << 31) - 1)
    throw pybind11::value_error("input or output too large for int32 offsets");
  const int64_t k = c * kh * kw;
  check_i32(w_rp, k + 1, "weight block offsets");
  check_i32(w_blk, -1, "weight block indices");
  check_cpu_f32(w_vals, "weight values");
  if (w_vals.numel() != w_blk.numel() * width)
    throw pybind11::value_error("weight values must hold blocks x width entries");
  check_offsets(w_rp, w_blk.numel(), "weight block offsets");
  check_range(w_blk, (co + width - 1) / width, "weight block index");
  check_i32(x_rp, b * c * h + 1, "input row offsets");
  check_i32(x_cols, -1, "input columns");
  check_cpu_f32(x_vals, "input values");
  if (x_vals.numel() != x_cols.numel()) throw pybind11::value_error("input values and columns differ in length");
  check_offsets(x_rp, x_cols.numel(), "input row offsets");
  check_rows(x_rp, x_cols, w);
  const spruce::SpspWeight wt{w_rp.data_ptr<int32_t>(), w_blk.data_ptr<int32_t>(), w_vals.data_ptr<float>(), co, k, width};
  const spruce::SpAct sx{x_rp.data_ptr<int32_t>(), x_cols.data_ptr<int32_t>(), x_vals.data_ptr<float>(), b, c, h, w};
  const spruce::SpspGeom g{kh, kw, sh, sw, ph, pw, dh, dw, ho, wo, std::max<int64_t>(0, acc_kib) * 1024};
  const Epilogue ep{bias_ptr(bias, co), act_code(act)};
  const int T = threads(nthreads);
  if (!sparse_out) {
    auto y = torch::empty({b, co, ho, wo}, torch::kFloat32);
    if (code == 1) spruce::avx512::spsp_conv(wt, sx, g, ep, y.data_ptr<float>(), nullptr, nullptr, T);
    else spruce::avx2::spsp_conv(wt, sx, g, ep, y.data_ptr<float>(), nullptr, nullptr, T);
    return {y};
  }
  auto rp = torch::empty({b * co * ho + 1}, torch::kInt32);
  TensorOut out;
  const spruce::SpOut so{&out, &TensorOut::alloc};
  if (code == 1) spruce::avx512::spsp_conv(wt, sx, g, ep, nullptr, rp.data_ptr<int32_t>(), &so, T);
  else spruce::avx2::spsp_conv(wt, sx, g, ep, nullptr, rp.data_ptr<int32_t>(), &so, T);
  return {rp, out.cols, out.vals};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  mod.def("pack", &pack, "dense [M,K] -> CSR / R x 1 BSR (rowptr, cols, vals)");
  mod.def("csr_spmm", &csr_spmm, "Y = act(W @ X + b), W CSR, X [K, N]");
  mod.def("csr_linear", &csr_linear, "y = act(x @ W^T + b), W CSR, x [B, K] (nn.Linear layout)");
  mod.def("bsr_spmm", &bsr_spmm, "Y = act(W @ X + b), W BSR with 4 x 1 blocks");
  mod.def("conv_direct", &conv_direct, "direct sparse convolution");
  mod.def("to_spact", &to_spact, "dense [B,C,H,W] -> CSR over rows (b, c, h): (rowptr, cols, vals)");
  mod.def("spsp_conv", &spsp_conv, "sparse weight x sparse input convolution (dense or sparse output)");
  mod.def("cpu_has_isa", &cpu_has_isa, "whether the CPU has an instruction set: 'avx2' (with FMA) or 'avx512'");
  mod.def("l2_panel_bytes", []() { return spruce::kL2PanelBytes; }, "bytes of X a thread keeps hot in L2");
}
