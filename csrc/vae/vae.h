// VAE sampling: counter-based normals (randn), fused reparameterization z = mu + exp(lv / 2) * eps
// with eps generated in-kernel, and the KL(N(mu, exp(lv)) || N(0, I)) term, sharing one pass.
//
// Indexing contract: eps of element i (row-major over the logical shape) is component i % 4 of
// gk::randn4(seed, offset + i / 4) (csrc/common/philox.h). mu and logvar are seen as `rows` rows of
// `inner` contiguous elements, row r starting at r * mu_rs (r * lv_rs): contiguous tensors and the
// channel chunks of a [B, 2C, ...] tensor (latent diffusion's DiagonalGaussian) both fit without a
// copy. Outputs (z, kl, dmu, dlv) and dz / gkl are contiguous.
#pragma once
#include <cstdint>

#include "common/philox.h"

namespace gk::vae {

struct Layout {
  std::int64_t rows, inner;   // n = rows * inner elements
  std::int64_t mu_rs, lv_rs;  // row strides of mu and logvar, in elements
};

struct Params {
  std::uint64_t seed, offset;  // Philox key and first counter
  float lv_lo, lv_hi;          // logvar clamp; (-inf, inf) for none
};

// Deterministic KL partial sums: element block b (kKlBlock elements) sums into partials[b] in a
// fixed order on every thread count; the caller adds the partials in order.
constexpr std::int64_t kKlBlock = 16384;

inline std::int64_t kl_partial_count(std::int64_t n) { return (n + kKlBlock - 1) / kKlBlock; }

GK_HOST_DEVICE inline float clamp_lv(float lv, float lo, float hi) {
  return lv < lo ? lo : (lv > hi ? hi : lv);  // NaN passes, as torch.clamp
}

// 0.5 * (mu^2 + exp(lv) - 1 - lv), var = exp(lv) given
GK_HOST_DEVICE inline float kl_term(float mu, float lv, float var) {
  return 0.5f * (mu * mu + var - 1.0f - lv);
}

// Tests: false forces the portable (auto-vectorized) code where AVX2 intrinsics would run.
void set_cpu_simd(bool enabled);

// out[i] = normal i of (seed, offset), i < n; fp32.
void randn_cpu(float* out, std::int64_t n, std::uint64_t seed, std::uint64_t offset);

// The four normals of each of the m counters counter0, counter0 + 1, ... (interleaved, 4 * m
// floats), single-threaded: the CPU generator (AVX2 where available) for other kernels that draw
// noise in tiles, e.g. the diffusion step.
void randn_counters_cpu(std::uint64_t seed, std::uint64_t counter0, std::int64_t m, float* out);

// Forward. z: mu + exp(lv_c / 2) * eps (skipped if null); kl: the elementwise KL term of lv_c
// (skipped if null); kl_partials: block sums of the KL term (skipped if null). lv_c = clamp(lv).
void forward_cpu(const float* mu, const float* lv, float* z, float* kl, double* kl_partials, const Layout& L,
                 const Params& p);

// Backward of the above, summed over what was used:
//   dmu = dz + g * mu
//   dlv = [lo <= lv <= hi] * (dz * eps * 0.5 * exp(lv_c / 2) + g * 0.5 * (exp(lv_c) - 1))
// dz null: no reparameterization term (and no RNG work). gkl null: no KL term; else
// g = gkl_scale * gkl[i] (gkl_elementwise) or gkl_scale * gkl[0] (a reduced KL's gradient, read on
// the device: no host sync). dmu null: not written (without KL it is dz itself).
struct Grad {
  const float* gkl;
  bool gkl_elementwise;
  float gkl_scale;
};

void backward_cpu(const float* dz, const Grad& g, const float* mu, const float* lv, float* dmu, float* dlv,
                  const Layout& L, const Params& p);

// CUDA: dtype is the gk::DType of mu/lv/z/kl/dz/dmu/dlv; partial sums are fp64, one per
// kl_block_cuda() elements. stream: a cudaStream_t.
std::int64_t kl_block_cuda();  // elements per KL partial sum on CUDA
void randn_cuda(void* out, std::int64_t n, std::uint64_t seed, std::uint64_t offset, int dtype,
                std::uintptr_t stream);
void forward_cuda(const void* mu, const void* lv, void* z, void* kl, double* kl_partials, const Layout& L,
                  const Params& p, int dtype, std::uintptr_t stream);
// gkl stays fp32 (g.gkl) whatever the dtype.
void backward_cuda(const void* dz, const Grad& g, const void* mu, const void* lv, void* dmu, void* dlv,
                   const Layout& L, const Params& p, int dtype, std::uintptr_t stream);

}  // namespace gk::vae
