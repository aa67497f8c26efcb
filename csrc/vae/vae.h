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

// out[i] = normal i of (seed, offset), i < n; fp32.
void randn_cpu(float* out, std::int64_t n, std::uint64_t seed, std::uint64_t offset);

// Forward. z: mu + exp(lv_c / 2) * eps (skipped if null); kl: the elementwise KL term of lv_c
// (skipped if null); kl_partials: block sums of the KL term (skipped if null). lv_c = clamp(lv).
void forward_cpu(const float* mu, const float* lv, float* z, float* kl, double* kl_partials, const Layout& L,
                 const Params& p);

// Backward of the above, summed over what was used:
//   dmu = dz + g * mu
//   dlv = [lo <= lv <= hi] * (dz * eps * 0.5 * exp(lv_c / 2) + g * 0.5 * (exp(lv_c) - 1))
// with g = gkl_scale * (gkl ? gkl[i] : 1). dz null: no reparameterization term (no RNG work).
void backward_cpu(const float* dz, const float* gkl, float gkl_scale, const float* mu, const float* lv, float* dmu,
                  float* dlv, const Layout& L, const Params& p);

// CUDA: dtype is the gk::DType of mu/lv/z/kl/dz/gkl/dmu/dlv; partial sums are fp64 per block of
// kKlBlock elements, as on the CPU. stream: a cudaStream_t.
void randn_cuda(void* out, std::int64_t n, std::uint64_t seed, std::uint64_t offset, int dtype,
                std::uintptr_t stream);
void forward_cuda(const void* mu, const void* lv, void* z, void* kl, double* kl_partials, const Layout& L,
                  const Params& p, int dtype, std::uintptr_t stream);
void backward_cuda(const void* dz, const void* gkl, float gkl_scale, const void* mu, const void* lv, void* dmu,
                   void* dlv, const Layout& L, const Params& p, int dtype, std::uintptr_t stream);

}  // namespace gk::vae
