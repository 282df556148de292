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

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, mod) {
  mod.def("pack", &pack, "dense [M,K] -> CSR / R x 1 BSR (rowptr, cols, vals)");
  mod.def("csr_spmm", &csr_spmm, "Y = act(W @ X + b), W CSR, X [K, N]");
  mod.def("csr_linear", &csr_linear, "y = act(x @ W^T + b), W CSR, x [B, K] (nn.Linear layout)");
  mod.def("bsr_spmm", &bsr_spmm, "Y = act(W @ X + b), W BSR with 4 x 1 blocks");
  mod.def("conv_direct", &conv_direct, "direct sparse convolution");
  mod.def("cpu_has_isa", &cpu_has_isa, "whether the CPU has an instruction set: 'avx2' (with FMA) or 'avx512'");
  mod.def("l2_panel_bytes", []() { return spruce::kL2PanelBytes; }, "bytes of X a thread keeps hot in L2");
}
