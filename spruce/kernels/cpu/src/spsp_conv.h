// Sparse weight x sparse input convolution (input-stationary scatter), the dense -> sparse activation
// conversion ("input2CSR") and the variant that writes its output in the sparse form the next layer reads.
//
// Every nonzero input x[b, ci, h, w] meets, for each kernel tap (r, s) it reaches an output with,
// the weight's nonzeros of column (ci, r, s): out[b, :, oh, ow] += x * W[:, ci, r, s]. The weight is kept as
// W^T [C_in*kh*kw, C_out] cut into blocks of WB output channels, only the blocks holding a nonzero stored
// (zero-filled), so one input nonzero costs one vector FMA per nonempty block: the work is about
// (1 - act sparsity) x (share of nonempty blocks) of the dense convolution's, at vector speed. Zero inputs cost
// nothing, and padding costs nothing (positions outside the image are never stored). Outputs accumulate
// channels-last in a per-thread buffer ([rows x cols x C_out], a few hundred KiB, in L2) and leave through the
// fused bias + activation epilogue, either dense NCHW or directly as the next layer's sparse input.
//
// | buffer | type | shape | layout / invariant |
// |---|---|---|---|
// | SpAct::rp | int32 | [B*C*H + 1] | row (b, c, h) offsets; rp[0] = 0, non-decreasing |
// | SpAct::cols | int32 | [nnz] | the column w of each nonzero, ascending within a row (checked by the bindings) |
// | SpAct::v | float32 | [nnz] | values |
// | SpspWeight::rp | int32 | [C_in*kh*kw + 1] | block offsets per weight column (ci, r, s) |
// | SpspWeight::blk | int32 | [nblocks] | output-channel block index (co / WB) of each stored block |
// | SpspWeight::v | float32 | [nblocks * WB] | WB consecutive output channels per block, zero-filled |
// | y (dense out) | float32 | [B, C_out, ho, wo] | NCHW |
#pragma once

constexpr int64_t SPSP_ACC_BYTES = 64 * 1024;  // accumulator tile per work item (best of 16/32/64/256 KiB on VGG convs)

// The nonzeros of one row (branch-free; the compiler vectorises the count).
inline int32_t spact_count_row(const float* __restrict x, int64_t w) {
  int32_t n = 0;
  for (int64_t i = 0; i < w; ++i) n += x[i] != 0.f;
  return n;
}

// Dense rows [rows, w] -> CSR over the rows. rp has rows + 1 entries; out.alloc gives the nnz-sized arrays.
inline void to_spact_impl(const float* x, int64_t rows, int64_t w, int32_t* rp, const SpOut& out, int T) {
  rp[0] = 0;
#pragma omp parallel for num_threads(T) schedule(static)
  for (int64_t r = 0; r < rows; ++r) rp[r + 1] = spact_count_row(x + r * w, w);
  for (int64_t r = 0; r < rows; ++r) rp[r + 1] += rp[r];
  int32_t* cols = nullptr;
  float* v = nullptr;
  out.alloc(out.ctx, rp[rows], &cols, &v);
#pragma omp parallel for num_threads(T) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    // branch-free compaction through a stack buffer (63 inputs -> at most 63 kept + 1 slot written past them)
    const int64_t s = rp[r];
    if (rp[r + 1] == s) continue;
    int32_t tc[64];
    float tv[64];
    int64_t p = s;
    for (int64_t i0 = 0; i0 < w; i0 += 63) {
      const int64_t n = std::min<int64_t>(63, w - i0);
      int64_t q = 0;
      for (int64_t i = 0; i < n; ++i) {
        tc[q] = static_cast<int32_t>(i0 + i);
        tv[q] = x[r * w + i0 + i];
        q += tv[q] != 0.f;
      }
      std::memcpy(cols + p, tc, q * sizeof(int32_t));
      std::memcpy(v + p, tv, q * sizeof(float));
      p += q;
    }
  }
}

// One stored block of WB output channels: d[0..WB) += x * wv[0..WB). A block of 8 is one 256-bit vector with
// either ISA: a masked 512-bit store there defeats store-to-load forwarding when the next input nonzero updates the
// same outputs (measured 4x slower on Zen 4).
template <int WB>
inline void spsp_block_fma(float* __restrict d, const float* __restrict wv, Isa::V xv, __m256 x8) {
  if constexpr (WB >= Isa::W) {
#pragma GCC unroll 4
    for (int q = 0; q < WB / Isa::W; ++q)
      Isa::store(d + q * Isa::W, Isa::fma(xv, Isa::load(wv + q * Isa::W), Isa::load(d + q * Isa::W)));
  } else {
    static_assert(WB == 8, "blocks narrower than a vector are 8 wide");
    _mm256_storeu_ps(d, _mm256_fmadd_ps(x8, _mm256_loadu_ps(wv), _mm256_loadu_ps(d)));
  }
}

// What one work item produced for the sparse output: per (co, output row of the item) the count, and the
// nonzeros in that order (columns ascending within a row).
struct SpspPart {
  std::vector<int32_t> cnt, cols;
  std::vector<float> v;
};

template <int WB>
inline void spsp_conv_impl(const SpspWeight& w, const SpAct& x, const SpspGeom& g, const Epilogue& ep, float* Y,
                           int32_t* out_rp, const SpOut* out, int T) {
  const int64_t co_n = w.co, cp = (co_n + WB - 1) / WB * WB, H = x.h;
  // work items: (image, band of output rows, band of output columns); the accumulator of one item fits
  // acc_bytes; bands are halved until there are about 4 items per thread.
  const int64_t acc_bytes = g.acc_bytes > 0 ? g.acc_bytes : SPSP_ACC_BYTES;
  int64_t wband = std::max<int64_t>(1, std::min<int64_t>(g.wo, acc_bytes / (4 * cp)));
  int64_t band = std::max<int64_t>(1, std::min<int64_t>(g.ho, acc_bytes / (4 * cp * wband)));
  auto count = [&](int64_t hb, int64_t wb) { return x.b * ((g.ho + hb - 1) / hb) * ((g.wo + wb - 1) / wb); };
  while (count(band, wband) < 4 * T && band > 1) band = (band + 1) / 2;
  while (count(band, wband) < 4 * T && wband > 8) wband = (wband + 1) / 2;
  const int64_t nhb = (g.ho + band - 1) / band, nwb = (g.wo + wband - 1) / wband;
  const int64_t items = x.b * nhb * nwb;
  const bool sparse_out = out_rp != nullptr;
  std::vector<SpspPart> parts(sparse_out ? static_cast<size_t>(items) : 0);
#pragma omp parallel num_threads(T)
  {
    std::vector<float> acc(static_cast<size_t>(band * wband * cp));
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it) {
      const int64_t b = it / (nhb * nwb), hb = (it / nwb) % nhb, wb = it % nwb;
      const int64_t oh0 = hb * band, oh1 = std::min(g.ho, oh0 + band);
      const int64_t ow0 = wb * wband, ow1 = std::min(g.wo, ow0 + wband);
      const int64_t nr = oh1 - oh0, nw = ow1 - ow0;
      float* a = acc.data();
      std::fill(a, a + nr * nw * cp, 0.f);
      for (int64_t ci = 0; ci < x.c; ++ci) {
        for (int64_t r = 0; r < g.kh; ++r) {
          for (int64_t oh = oh0; oh < oh1; ++oh) {
            const int64_t h = oh * g.sh - g.ph + r * g.dh;
            if (h < 0 || h >= H) continue;
            const int64_t row = (b * x.c + ci) * H + h;
            const int64_t s0 = x.rp[row], s1 = x.rp[row + 1];
            float* drow = a + (oh - oh0) * nw * cp;
            const int64_t wcol = (ci * g.kh + r) * g.kw;
            // taps outside, nonzeros inside: consecutive updates go to different outputs (adjacent nonzeros
            // meet the same output at neighbouring taps) and a tap's weight blocks stay hot (conv3_3, one
            // thread: 18% faster at 90% weight / 80% activation sparsity, the same at 98% weight sparsity).
            // The update loop is bound by the read-modify-write of the L2-resident accumulators.
            for (int64_t s = 0; s < g.kw; ++s) {
              const int64_t qs = w.rp[wcol + s], qe = w.rp[wcol + s + 1];
              if (qs == qe) continue;
              const int64_t shift = g.pw - s * g.dw;  // ow * sw = w_in + shift
              for (int64_t j = s0; j < s1; ++j) {
                const int64_t t = x.cols[j] + shift;
                if (t < 0) continue;
                // no 64-bit division at unit stride
                if (g.sw != 1 && t % g.sw != 0) continue;
                const int64_t ow = g.sw == 1 ? t : t / g.sw;
                if (ow < ow0) continue;
                if (ow >= ow1) break;  // columns ascend within a row
                float* d = drow + (ow - ow0) * cp;
                const Isa::V xv = Isa::set1(x.v[j]);
                const __m256 x8 = _mm256_set1_ps(x.v[j]);
                for (int64_t q = qs; q < qe; ++q) spsp_block_fma<WB>(d + w.blk[q] * WB, w.v + q * WB, xv, x8);
              }
            }
          }
        }
      }
      if (!sparse_out) {
        for (int64_t co = 0; co < co_n; ++co) {
          const float bias = ep.bias ? ep.bias[co] : 0.f;
          for (int64_t oh = oh0; oh < oh1; ++oh) {
            float* yr = Y + ((b * co_n + co) * g.ho + oh) * g.wo;
            const float* ar = a + (oh - oh0) * nw * cp + co;
            for (int64_t ow = ow0; ow < ow1; ++ow) yr[ow] = epilogue1(ar[(ow - ow0) * cp], bias, ep.act);
          }
        }
      } else {
        SpspPart& p = parts[static_cast<size_t>(it)];
        p.cnt.assign(static_cast<size_t>(co_n * nr), 0);
        for (int64_t co = 0; co < co_n; ++co) {
          const float bias = ep.bias ? ep.bias[co] : 0.f;
          for (int64_t oh = oh0; oh < oh1; ++oh) {
            const float* ar = a + (oh - oh0) * nw * cp + co;
            int32_t n = 0;
            for (int64_t ow = ow0; ow < ow1; ++ow) {
              const float val = epilogue1(ar[(ow - ow0) * cp], bias, ep.act);
              if (val != 0.f) {
                p.cols.push_back(static_cast<int32_t>(ow));
                p.v.push_back(val);
                ++n;
              }
            }
            p.cnt[static_cast<size_t>(co * nr + (oh - oh0))] = n;
          }
        }
      }
    }
  }
  if (!sparse_out) return;
  // rows of the output CSR are (b, co, oh); the items of one (b, row band) fill each row in column order
  const int64_t rows = x.b * co_n * g.ho;
  std::fill(out_rp, out_rp + rows + 1, 0);
  for (int64_t it = 0; it < items; ++it) {
    const int64_t b = it / (nhb * nwb), hb = (it / nwb) % nhb;
    const int64_t oh0 = hb * band, nr = std::min(g.ho, oh0 + band) - oh0;
    const SpspPart& p = parts[static_cast<size_t>(it)];
    for (int64_t co = 0; co < co_n; ++co)
      for (int64_t i = 0; i < nr; ++i) out_rp[(b * co_n + co) * g.ho + oh0 + i + 1] += p.cnt[co * nr + i];
  }
  for (int64_t r = 0; r < rows; ++r) out_rp[r + 1] += out_rp[r];
  int32_t* oc = nullptr;
  float* ov = nullptr;
  out->alloc(out->ctx, out_rp[rows], &oc, &ov);
#pragma omp parallel for num_threads(T) schedule(dynamic, 1)
  for (int64_t grp = 0; grp < x.b * nhb; ++grp) {
    const int64_t b = grp / nhb, hb = grp % nhb;
    const int64_t oh0 = hb * band, nr = std::min(g.ho, oh0 + band) - oh0;
    std::vector<int64_t> cursor(static_cast<size_t>(co_n * nr));
    for (int64_t co = 0; co < co_n; ++co)
      for (int64_t i = 0; i < nr; ++i) cursor[co * nr + i] = out_rp[(b * co_n + co) * g.ho + oh0 + i];
    for (int64_t wb = 0; wb < nwb; ++wb) {
      const SpspPart& p = parts[static_cast<size_t>(grp * nwb + wb)];
      int64_t src = 0;
      for (int64_t q = 0; q < co_n * nr; ++q) {
        const int64_t n = p.cnt[q];
        std::memcpy(oc + cursor[q], p.cols.data() + src, n * sizeof(int32_t));
        std::memcpy(ov + cursor[q], p.v.data() + src, n * sizeof(float));
        cursor[q] += n;
        src += n;
      }
    }
  }
}
