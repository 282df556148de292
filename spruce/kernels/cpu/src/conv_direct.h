// Direct sparse convolution (Park et al., ICLR 2017): out[co, oh, ow] = sum over nonzeros w[co, ci, r, s] of
// w * Xpad[ci, oh*sh + r*dh, ow*sw + s*dw]. Each nonzero is an offset into the padded input, so an output tile
// accumulates shifted input windows with no im2col matrix. Register blocking: a tile is R output rows x NV
// vectors along the output width, so one broadcast of a weight feeds R*NV FMAs and the weights of an output
// channel are read once per R rows instead of once per row. Written once over the ISA layer.
//
// | buffer | type | shape | layout / invariant |
// |---|---|---|---|
// | w.rp, w.cols, w.v | int32, int32, float32 | [C_out+1], [nnz], [nnz] | CSR over [C_out, C_in*kh*kw], cols in (ci, r, s) order |
// | off | int32 | [nnz] | ci*Hp*Wp + r*dh*Wp + s*dw: the nonzero's offset into one padded image |
// | xpad | float32 | [B, C_in, Hp, Wp] | zero-padded NCHW input |
// | y | float32 | [B, C_out, ho, wo] | NCHW output |
#pragma once

constexpr int CONV_NV = 4;                        // vectors along the output width per tile
constexpr int CONV_ACC = Isa::W == 16 ? 24 : 12;  // accumulator registers a tile may hold
constexpr int CONV_R = 14;                        // output rows per tile, at most (a 14x14 plane in one tile)
constexpr int64_t CONV_CHUNK_BYTES = 256 * 1024;  // packed weights of the output channels one work item walks

// How a tile meets the partial sums in y when the input channels are walked in blocks (first block: start
// from zero; later: add to y; last block: bias + activation).
struct TilePass {
  bool first, last;
};

template <int R, int NV>
inline void conv_tile(const float* __restrict v, const int32_t* __restrict off, int64_t s, int64_t e,
                      const float* __restrict base, int64_t rstride, int r_last, float bias, int act, float* y,
                      int64_t wo, TilePass pass) {
  constexpr int W = Isa::W;
  const Isa::Mask mk = Isa::tail(r_last);
  Isa::V acc[R][NV];
  #pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 16
    for (int q = 0; q < NV; ++q)
      acc[r][q] = pass.first ? Isa::zero() : q == NV - 1 ? Isa::loadm(y + r * wo + W * q, mk) : Isa::load(y + r * wo + W * q);
  for (int64_t j = s; j < e; ++j) {
    const Isa::V wv = Isa::bcast(v + j);
    const float* x = base + off[j];
    #pragma GCC unroll 16
    for (int r = 0; r < R; ++r)
      #pragma GCC unroll 16
      for (int q = 0; q < NV; ++q)
        acc[r][q] = Isa::fma(wv, q == NV - 1 ? Isa::loadm(x + r * rstride + W * q, mk) : Isa::load(x + r * rstride + W * q),
                             acc[r][q]);
  }
  if (pass.last) {
    #pragma GCC unroll 16
    for (int r = 0; r < R; ++r) store_row<NV>(acc[r], r_last, bias, act, y + r * wo);
  } else {
    #pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      #pragma GCC unroll 16
      for (int q = 0; q < NV - 1; ++q) Isa::store(y + r * wo + W * q, acc[r][q]);
      Isa::storem(y + r * wo + W * (NV - 1), mk, acc[r][NV - 1]);
    }
  }
}

template <int NV>
inline void conv_tile_rows(int R, const float* v, const int32_t* off, int64_t s, int64_t e, const float* base,
                           int64_t rstride, int r_last, float bias, int act, float* y, int64_t wo, TilePass pass) {
  static_assert(NV * 2 <= CONV_ACC, "tile too wide");
  const int rmax = std::min(CONV_R, CONV_ACC / NV);
  if (R > rmax) {  // never planned so, but a taller block is still computed exactly, in pieces
    for (int r0 = 0; r0 < R; r0 += rmax)
      conv_tile_rows<NV>(std::min(rmax, R - r0), v, off, s, e, base + r0 * rstride, rstride, r_last, bias, act,
                         y + r0 * wo, wo, pass);
    return;
  }
  switch (R) {
#define SPRUCE_CONV_R(RR) \
  case RR:                \
    if constexpr (RR * NV <= CONV_ACC) return conv_tile<RR, NV>(v, off, s, e, base, rstride, r_last, bias, act, y, wo, pass);
    SPRUCE_CONV_R(14) SPRUCE_CONV_R(13) SPRUCE_CONV_R(12) SPRUCE_CONV_R(11) SPRUCE_CONV_R(10) SPRUCE_CONV_R(9)
    SPRUCE_CONV_R(8) SPRUCE_CONV_R(7) SPRUCE_CONV_R(6) SPRUCE_CONV_R(5) SPRUCE_CONV_R(4) SPRUCE_CONV_R(3)
    SPRUCE_CONV_R(2)
#undef SPRUCE_CONV_R
    default:
      return conv_tile<1, NV>(v, off, s, e, base, rstride, r_last, bias, act, y, wo, pass);
  }
}

// Most rows a tile of nv vectors may hold.
inline int conv_rows_max(int nv) { return std::min(CONV_R, CONV_ACC / nv); }

// Stride along the width > 1: one output vector at a time, its input gathered with the stride.
inline void conv_strided_row(const float* v, const int32_t* off, int64_t s, int64_t e, const float* xrow,
                             int64_t sw, int64_t wo, float bias, int act, float* y) {
  for (int64_t o0 = 0; o0 < wo; o0 += Isa::W) {
    const int w = static_cast<int>(std::min<int64_t>(Isa::W, wo - o0));
    const Isa::Mask mk = Isa::tail(w);
    const float* base = xrow + o0 * sw;
    Isa::V a0 = Isa::zero(), a1 = Isa::zero();
    int64_t j = s;
    for (; j + 1 < e; j += 2) {
      a0 = Isa::fma(Isa::bcast(v + j), Isa::gather_stride(base + off[j], sw, mk), a0);
      a1 = Isa::fma(Isa::bcast(v + j + 1), Isa::gather_stride(base + off[j + 1], sw, mk), a1);
    }
    if (j < e) a0 = Isa::fma(Isa::bcast(v + j), Isa::gather_stride(base + off[j], sw, mk), a0);
    const Isa::V acc[1] = {Isa::add(a0, a1)};
    store_row<1>(acc, w, bias, act, y + o0);
  }
}

// Work items are (image, chunk of output channels, range of output rows): a chunk's packed weights
// (<= CONV_CHUNK_BYTES) stay in L2 while its rows are walked tile by tile. Within a tile position the input
// channels are walked in blocks whose input window takes CONV_WINDOW_BYTES, every channel of the chunk adding
// its nonzeros of that block to partial sums kept in y: the window stays cached while all channels of the chunk
// read it, instead of being refetched for every output channel. (Over VGG-16's convs, interleaved in one run:
// 24 / 96 / 384 KiB windows took 59.8 / 60.0 / 56.1 ms with AVX2 and 55.0 / 54.2 / 53.2 ms with AVX-512: an
// L1-sized window's extra partial-sum passes cost what its hits save.) Items are scheduled dynamically.
constexpr int64_t CONV_WINDOW_BYTES = 384 * 1024;

inline void conv_direct_impl(const Csr& w, const float* xp, const ConvShape& cs, const Epilogue& ep, float* Y,
                             int T) {
  const int64_t co_n = w.m, nnz = w.rp[co_n];
  const int32_t* c = static_cast<const int32_t*>(w.cols);
  std::vector<int32_t> off(static_cast<size_t>(nnz));
  const int64_t khw = cs.kh * cs.kw, plane = cs.hp * cs.wp;
  const int64_t seg = static_cast<int64_t>(CONV_NV) * Isa::W;
  // Row blocks: as many rows per tile as the widest segment allows, then balanced so the blocks are equal.
  const int nv0 = static_cast<int>(std::min<int64_t>(CONV_NV, (std::min(cs.wo, seg) + Isa::W - 1) / Isa::W));
  const int64_t rmax = cs.sw == 1 ? conv_rows_max(nv0) : 1;
  const int64_t nblk = (cs.ho + rmax - 1) / rmax, rblk = (cs.ho + nblk - 1) / nblk;
  // Input-channel blocks: the input window of one tile (rows x touched width) for cb channels fits the budget.
  const int64_t win_rows = (rblk - 1) * cs.sh + (cs.kh - 1) * cs.dh + 1;
  const int64_t win_cols = (std::min(cs.wo, seg) - 1) * cs.sw + (cs.kw - 1) * cs.dw + 1;
  const int64_t cb = cs.sw != 1 ? cs.ci : std::max<int64_t>(1, CONV_WINDOW_BYTES / (4 * win_rows * win_cols));
  const int64_t ncb = (cs.ci + cb - 1) / cb;
  // first[co * (ncb + 1) + q]: the first nonzero of row co in input-channel block q (columns ascend).
  std::vector<int32_t> first(static_cast<size_t>(co_n * (ncb + 1)));
#pragma omp parallel for num_threads(T) schedule(static)
  for (int64_t co = 0; co < co_n; ++co) {
    int32_t* f = first.data() + co * (ncb + 1);
    int64_t q = 0;
    for (int64_t j = w.rp[co]; j < w.rp[co + 1]; ++j) {
      const int64_t col = c[j], ci = col / khw, rr = (col / cs.kw) % cs.kh, ss = col % cs.kw;
      off[j] = static_cast<int32_t>(ci * plane + rr * cs.dh * cs.wp + ss * cs.dw);
      while (q <= ci / cb) f[q++] = static_cast<int32_t>(j);
    }
    while (q <= ncb) f[q++] = w.rp[co + 1];
  }
  const int64_t wbytes = std::max<int64_t>(1, nnz * 8);
  const int64_t chunks = std::min<int64_t>(co_n, std::max<int64_t>(1, (wbytes + CONV_CHUNK_BYTES - 1) / CONV_CHUNK_BYTES));
  const int64_t co_per = (co_n + chunks - 1) / chunks;
  const int64_t want = 4 * T, have = cs.b * chunks;
  const int64_t blk_total = (cs.ho + rblk - 1) / rblk;
  const int64_t oh_parts = std::min<int64_t>(blk_total, std::max<int64_t>(1, (want + have - 1) / have));
  const int64_t items = cs.b * chunks * oh_parts;
  const float* v = w.v;
#pragma omp parallel for num_threads(T) schedule(dynamic, 1)
  for (int64_t it = 0; it < items; ++it) {
    const int64_t b = it / (chunks * oh_parts), rest = it % (chunks * oh_parts);
    const int64_t ch = rest / oh_parts, part = rest % oh_parts;
    const int64_t co0 = ch * co_per, co1 = std::min(co_n, co0 + co_per);
    const int64_t oh0 = blk_total * part / oh_parts * rblk, oh1 = std::min(cs.ho, blk_total * (part + 1) / oh_parts * rblk);
    const float* img = xp + b * cs.ci * plane;
    for (int64_t oh = oh0; oh < oh1; oh += rblk) {
      const int rows = static_cast<int>(std::min<int64_t>(rblk, oh1 - oh));
      if (cs.sw != 1) {
        for (int64_t co = co0; co < co1; ++co) {
          float* y = Y + ((b * co_n + co) * cs.ho + oh) * cs.wo;
          for (int r = 0; r < rows; ++r)
            conv_strided_row(v, off.data(), w.rp[co], w.rp[co + 1], img + (oh + r) * cs.sh * cs.wp, cs.sw, cs.wo,
                             ep.bias ? ep.bias[co] : 0.f, ep.act, y + r * cs.wo);
        }
        continue;
      }
      for (int64_t o0 = 0; o0 < cs.wo; o0 += seg) {
        const int64_t wseg = std::min(seg, cs.wo - o0);
        const int nv = static_cast<int>((wseg + Isa::W - 1) / Isa::W);
        const int r_last = static_cast<int>(wseg - Isa::W * (nv - 1));
        const float* base = img + oh * cs.sh * cs.wp + o0;
        const int64_t rstride = cs.sh * cs.wp;
        for (int64_t q = 0; q < ncb; ++q) {
          const TilePass pass{q == 0, q == ncb - 1};
          for (int64_t co = co0; co < co1; ++co) {
            const int32_t* f = first.data() + co * (ncb + 1);
            const int64_t s = f[q], e = f[q + 1];
            if (s == e && !pass.first && !pass.last) continue;  // nothing to add to the partial sums
            const float bias = ep.bias ? ep.bias[co] : 0.f;
            float* y = Y + ((b * co_n + co) * cs.ho + oh) * cs.wo + o0;
            // a narrower tail segment may hold more rows than rblk allows for the widest: rows stays as planned
            switch (nv) {
              case 1: conv_tile_rows<1>(rows, v, off.data(), s, e, base, rstride, r_last, bias, ep.act, y, cs.wo, pass); break;
              case 2: conv_tile_rows<2>(rows, v, off.data(), s, e, base, rstride, r_last, bias, ep.act, y, cs.wo, pass); break;
              case 3: conv_tile_rows<3>(rows, v, off.data(), s, e, base, rstride, r_last, bias, ep.act, y, cs.wo, pass); break;
              default: conv_tile_rows<4>(rows, v, off.data(), s, e, base, rstride, r_last, bias, ep.act, y, cs.wo, pass); break;
            }
          }
        }
      }
    }
  }
}
