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
#include "common/view.h"

namespace gk::vae {

// Fields both passes take: the row layout of mu/logvar, the noise and the logvar clamp.
#define GK_VAE_SHARED_PARAMS(X)                                                             \
  X(std::int64_t, rows, "n = rows * inner elements")                                        \
  X(std::int64_t, inner, "contiguous elements per row")                                     \
  X(std::int64_t, mu_rs, "row stride of mu, in elements")                                   \
  X(std::int64_t, lv_rs, "row stride of logvar, in elements")                               \
  X(std::int64_t, seed, "Philox key (int64 bit pattern)")                                   \
  X(std::int64_t, offset, "first Philox counter (int64 bit pattern)")                       \
  X(float, lv_lo, "logvar clamp: lower bound (-inf: none)")                                 \
  X(float, lv_hi, "logvar clamp: upper bound (inf: none)")

#define GK_VAE_FORWARD_PARAMS(X)                                                            \
  X(gk::View, mu, "mean; float32, float16 or bfloat16")                                     \
  X(gk::View, logvar, "log-variance, mu's dtype")                                           \
  X(gk::View, z, "mu + exp(lv_c / 2) * eps, contiguous, or None")                           \
  X(gk::View, kl, "the elementwise KL term, contiguous, or None")                           \
  X(gk::View, kl_partials, "float64 block sums of the KL term (kl_partial_count), or None") \
  GK_VAE_SHARED_PARAMS(X)
GK_STRUCT(ForwardParams, GK_VAE_FORWARD_PARAMS);

#define GK_VAE_BACKWARD_PARAMS(X)                                                           \
  X(gk::View, dz, "dL/dz, contiguous, mu's dtype; None: no reparameterization term")        \
  X(gk::View, gkl, "float32 dL/dkl: elementwise [n] or reduced [1]; None: no KL term")      \
  X(bool, gkl_elementwise, "gkl has one value per element")                                 \
  X(float, gkl_scale, "g = gkl_scale * gkl")                                                \
  X(gk::View, mu, "mean")                                                                   \
  X(gk::View, logvar, "log-variance")                                                       \
  X(gk::View, dmu, "dL/dmu, contiguous; None: not written (without KL it is dz)")           \
  X(gk::View, dlv, "dL/dlogvar, contiguous")                                                \
  GK_VAE_SHARED_PARAMS(X)
GK_STRUCT(BackwardParams, GK_VAE_BACKWARD_PARAMS);

// Forward: z (if asked), the elementwise KL term of lv_c = clamp(logvar) (if asked), its block
// sums (if asked). Backward, summed over what was used:
//   dmu = dz + g * mu
//   dlv = [lo <= lv <= hi] * (dz * eps * 0.5 * exp(lv_c / 2) + g * 0.5 * (exp(lv_c) - 1))
// with g = gkl_scale * gkl[i] (elementwise) or gkl_scale * gkl[0] (a reduced KL's gradient, read
// on the device: no host sync).
void forward(const ForwardParams& p, Stream stream);
void backward(const BackwardParams& p, Stream stream);

// Deterministic KL partial sums: element block b (kKlBlockCpu / kKlBlockCuda elements, from
// gankern/_tables.py) sums into kl_partials[b] in a fixed order on every thread count; the caller
// adds the partials in order.

// Both backends: mu and logvar present, of one dtype, n elements each; outputs contiguous [n].
inline void check_args(const char* op, const View& mu, const View& logvar, std::int64_t n,
                       std::initializer_list<const View*> outputs) {
  check(!mu.is_none() && !logvar.is_none() && mu.dtype == logvar.dtype, op, "mu and logvar of one dtype are required");
  check(mu.numel >= n && logvar.numel >= n, op, "mu and logvar must hold rows * inner elements");
  for (const View* v : outputs)
    check(v->is_none() || (v->dtype == mu.dtype && v->numel == n), op, "outputs must have mu's dtype and n elements");
}

// What the kernels read of the params.
struct Layout {
  std::int64_t rows, inner;   // n = rows * inner elements
  std::int64_t mu_rs, lv_rs;  // row strides of mu and logvar, in elements
};
struct Sampling {
  std::uint64_t seed, offset;  // Philox key and first counter
  float lv_lo, lv_hi;          // logvar clamp; (-inf, inf) for none
};
struct Grad {
  const float* gkl;
  bool gkl_elementwise;
  float gkl_scale;
};
template <typename P>
Layout layout_of(const P& p) { return {p.rows, p.inner, p.mu_rs, p.lv_rs}; }
template <typename P>
Sampling sampling_of(const P& p) {
  return {static_cast<std::uint64_t>(p.seed), static_cast<std::uint64_t>(p.offset), p.lv_lo, p.lv_hi};
}

GK_HOST_DEVICE inline float clamp_lv(float lv, float lo, float hi) {
  return lv < lo ? lo : (lv > hi ? hi : lv);  // NaN passes, as torch.clamp
}

// 0.5 * (mu^2 + exp(lv) - 1 - lv), var = exp(lv) given
GK_HOST_DEVICE inline float kl_term(float mu, float lv, float var) {
  return 0.5f * (mu * mu + var - 1.0f - lv);
}

}  // namespace gk::vae
