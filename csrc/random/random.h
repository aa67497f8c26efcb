// Counter-based normals (gankern.randn): element i of a draw is component i % 4 of
// gk::randn4(seed, offset + i / 4) (csrc/common/philox.h), on every backend. The CPU generator here
// is also the one other CPU kernels use to draw noise in tiles (the VAE, the diffusion step).
#pragma once
#include <cstdint>

#include "common/philox.h"
#include "common/view.h"

namespace gk::random {

#define GK_RANDN_PARAMS(X)                                                                 \
  X(gk::View, out, "the normals, contiguous; float32, float16 or bfloat16")                 \
  X(std::int64_t, seed, "Philox key (the int64 bit pattern of the uint64 key)")            \
  X(std::int64_t, offset, "first Philox counter (int64 bit pattern)")
GK_STRUCT(Params, GK_RANDN_PARAMS);

void randn(const Params& p, Stream stream);

// CPU only ------------------------------------------------------------------------------------
#define GK_RANDN_SIMD_PARAMS(X) X(bool, enabled, "false: the portable loops even where AVX2 is available")
GK_STRUCT(SimdParams, GK_RANDN_SIMD_PARAMS);
void set_simd(const SimdParams& p, Stream stream);  // tests check the portable code on AVX2 machines
void set_cpu_simd(bool enabled);

constexpr int kTile = 1024;  // elements per tile of normals: L1-resident

// Normals of elements [e0, e0 + len) of the draw (seed, offset), e0 % 4 == 0, len <= kTile,
// written to out[0 .. len).
void randn_elements(std::uint64_t seed, std::uint64_t offset, std::int64_t e0, std::int64_t len, float* out);

// The four normals of each of the m counters counter0, counter0 + 1, ... (interleaved, 4 * m
// floats), single-threaded.
void randn_counters_cpu(std::uint64_t seed, std::uint64_t counter0, std::int64_t m, float* out);

}  // namespace gk::random
