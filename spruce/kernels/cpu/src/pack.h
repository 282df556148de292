// Dense [M, K] -> CSR or R x 1 BSR in two phases, so the bindings own the output tensors and no torch type
// enters the packing code: pack_scan (each thread packs its rows into private buffers, counts) and
// pack_write (copy into the caller's arrays after the prefix sum). One pass over the dense weight.
//
// | buffer | type | shape | layout / invariant |
// |---|---|---|---|
// | W | float32 | [m, k] | row-major dense weight |
// | PackScan::offsets | int64 | [mb + 1] | block-row offsets after the scan (mb = ceil(m / R)) |
// | rp (out) | int32 | [mb + 1] | block-row offsets |
// | cols (out) | int32 or uint16 | [blocks] | column of each block, ascending within a row |
// | vals (out) | float32 | [blocks * R] | R consecutive rows per block, zero-filled past row m |
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

namespace spruce {

struct PackParts;  // per-thread buffers (pack.cpp)

struct PackScan {
  std::vector<int64_t> offsets;
  int64_t nonfinite = 0;  // NaN / Inf values seen
  int64_t m = 0, k = 0, R = 1;
  std::shared_ptr<PackParts> parts;
};

// Scan and pack per thread. The compaction of R == 1 uses AVX2: call it only where the CPU has AVX2 + FMA.
PackScan pack_scan(const float* W, int64_t m, int64_t k, int64_t R, int T);
void pack_write(const PackScan& scan, int32_t* rp, void* cols, bool idx16, float* vals, int T);

}  // namespace spruce
