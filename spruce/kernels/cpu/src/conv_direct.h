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
constexpr int CONV_R = 8;                         // output rows per tile, at most
constexpr int64_t CONV_CHUNK_BYTES = 256 * 1024;  // packed weights of the output channels one work item walks

template <int R, int NV>
inline void conv_tile(const float* __restrict v, const int32_t* __restrict off, int64_t s, int64_t e,
                      const float* __restrict base, int64_t rstride, int r_last, float bias, int act, float* y,
                      int64_t wo) {
  constexpr int W = Isa::W;
  const Isa::Mask mk = Isa::tail(r_last);
  Isa::V acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < NV; ++q) acc[r][q] = Isa::zero();
  for (int64_t j = s; j < e; ++j) {
    const Isa::V wv = Isa::bcast(v + j);
    const float* x = base + off[j];
    for (int r = 0; r < R; ++r)
      for (int q = 0; q < NV; ++q)
        acc[r][q] = Isa::fma(wv, q == NV - 1 ? Isa::loadm(x + r * rstride + W * q, mk) : Isa::load(x + r * rstride + W * q),
                             acc[r][q]);
  }
  for (int r = 0; r < R; ++r) store_row<NV>(acc[r], r_last, bias, act, y + r * wo);
}

template <int NV>
inline void conv_tile_rows(int R, const float* v, const int32_t* off, int64_t s, int64_t e, const float* base,
                           int64_t rstride, int r_last, float bias, int act, float* y, int64_t wo) {
  static_assert(NV * 2 <= CONV_ACC, "tile too wide");
  const int rmax = std::min(CONV_R, CONV_ACC / NV);
  if (R > rmax) {  // never planned so, but a taller block is still computed exactly, in pieces
    for (int r0 = 0; r0 < R; r0 += rmax)
      conv_tile_rows<NV>(std::min(rmax, R - r0), v, off, s, e, base + r0 * rstride, rstride, r_last, bias, act,
                         y + r0 * wo, wo);
    return;
  }
  switch (R) {
#define SPRUCE_CONV_R(RR) \
  case RR:                \
    if constexpr (RR * NV <= CONV_ACC) return conv_tile<RR, NV>(v, off, s, e, base, rstride, r_last, bias, act, y, wo);
    SPRUCE_CONV_R(8) SPRUCE_CONV_R(7) SPRUCE_CONV_R(6) SPRUCE_CONV_R(5) SPRUCE_CONV_R(4) SPRUCE_CONV_R(3)
    SPRUCE_CONV_R(2)
#undef SPRUCE_CONV_R
    default:
      return conv_tile<1, NV>(v, off, s, e, base, rstride, r_last, bias, act, y, wo);
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
// (<= CONV_CHUNK_BYTES) stay in L2 while its rows are walked tile by tile, and the input rows of one tile
// serve every channel of the chunk. Items are scheduled dynamically (rows differ in nnz).
inline void conv_direct_impl(const Csr& w, const float* xp, const ConvShape& cs, const Epilogue& ep, float* Y,
                             int T) {
  const int64_t co_n = w.m, nnz = w.rp[co_n];
  const int32_t* c = static_cast<const int32_t*>(w.cols);
  std::vector<int32_t> off(static_cast<size_t>(nnz));
  const int64_t khw = cs.kh * cs.kw, plane = cs.hp * cs.wp;
#pragma omp parallel for num_threads(T) schedule(static)
  for (int64_t j = 0; j < nnz; ++j) {
    const int64_t col = c[j], ci = col / khw, rr = (col / cs.kw) % cs.kh, ss = col % cs.kw;
    off[j] = static_cast<int32_t>(ci * plane + rr * cs.dh * cs.wp + ss * cs.dw);
  }
  const int64_t wbytes = std::max<int64_t>(1, nnz * 8);
  const int64_t chunks = std::min<int64_t>(co_n, std::max<int64_t>(1, (wbytes + CONV_CHUNK_BYTES - 1) / CONV_CHUNK_BYTES));
  const int64_t co_per = (co_n + chunks - 1) / chunks;
  const int64_t seg = static_cast<int64_t>(CONV_NV) * Isa::W;
  // Row blocks: as many rows per tile as the widest segment allows, then balanced so the blocks are equal.
  const int nv0 = static_cast<int>(std::min<int64_t>(CONV_NV, (std::min(cs.wo, seg) + Isa::W - 1) / Isa::W));
  const int64_t rmax = cs.sw == 1 ? conv_rows_max(nv0) : 1;
  const int64_t nblk = (cs.ho + rmax - 1) / rmax, rblk = (cs.ho + nblk - 1) / nblk;
  const int64_t want = 4 * T, have = cs.b * chunks;
  const int64_t oh_parts = std::min<int64_t>((cs.ho + rblk - 1) / rblk, std::max<int64_t>(1, (want + have - 1) / have));
  const int64_t blk_total = (cs.ho + rblk - 1) / rblk;
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
      for (int64_t co = co0; co < co1; ++co) {
        const int64_t s = w.rp[co], e = w.rp[co + 1];
        const float bias = ep.bias ? ep.bias[co] : 0.f;
        float* y = Y + ((b * co_n + co) * cs.ho + oh) * cs.wo;
        if (cs.sw != 1) {
          for (int r = 0; r < rows; ++r)
            conv_strided_row(v, off.data(), s, e, img + (oh + r) * cs.sh * cs.wp, cs.sw, cs.wo, bias, ep.act,
                             y + r * cs.wo);
          continue;
        }
        for (int64_t o0 = 0; o0 < cs.wo; o0 += seg) {
          const int64_t wseg = std::min(seg, cs.wo - o0);
          const int nv = static_cast<int>((wseg + Isa::W - 1) / Isa::W);
          const int r_last = static_cast<int>(wseg - Isa::W * (nv - 1));
          const float* base = img + oh * cs.sh * cs.wp + o0;
          const int64_t rstride = cs.sh * cs.wp;
          // a narrower tail segment may hold more rows than rblk allows for the widest: rows stays as planned
          switch (nv) {
            case 1: conv_tile_rows<1>(rows, v, off.data(), s, e, base, rstride, r_last, bias, ep.act, y + o0, cs.wo); break;
            case 2: conv_tile_rows<2>(rows, v, off.data(), s, e, base, rstride, r_last, bias, ep.act, y + o0, cs.wo); break;
            case 3: conv_tile_rows<3>(rows, v, off.data(), s, e, base, rstride, r_last, bias, ep.act, y + o0, cs.wo); break;
            default: conv_tile_rows<4>(rows, v, off.data(), s, e, base, rstride, r_last, bias, ep.act, y + o0, cs.wo); break;
          }
        }
      }
    }
  }
}
