// Diffusion: the generic fused denoising step (every scheduler step is an instance), its per-sample
// helpers, and the training-side q_sample / loss kernels. The specification, with the meaning of
// every coefficient and flag, is gankern/reference/diffusion.py.
//
// Layout contract (all backends): sample, history, noise, prev and x0 are contiguous [B, S]
// (S = elements per sample); model_output is contiguous [G * B, K * S] with G = 2 when guided
// (unconditional half first) and K = 2 when it carries variance channels after the prediction.
// Noise element i (row-major) is gk::randn4(seed, offset + i / 4)[i % 4] (common/philox.h).
#pragma once
#include <cstdint>

#include "common/macros.h"
#include "gk_tables.h"

namespace gk::diffusion {

// Flags (gk::diffusion::Flag: kGuided, kClip, ...), coefficient slots (Coef: cG, cPre, ...) and
// kNumCoefs are generated from gankern/_tables.py (DIFFUSION_FLAGS, DIFFUSION_COEFS).

struct StepParams {
  std::int64_t batch;       // B
  std::int64_t per_sample;  // S
  std::int64_t mo_stride;   // K * S: elements between two samples of model_output
  int flags;
  std::uint64_t seed, offset;
  float c[kNumCoefs];
};

// c * v, or exactly 0 when the coefficient is 0: a term the step does not have contributes nothing,
// even when its operand is inf or NaN (0 * inf would be NaN). The rule of gankern/reference/diffusion.py.
GK_HOST_DEVICE inline float term(float c, float v) { return c != 0.f ? c * v : 0.f; }

// Per element: everything after loading. m: guided (and rescaled) model output, xp: the sample
// after pre-noise, bound / div: clamp bound and divisor of x0 (clip: c, 1; threshold: s_b, s_b).
template <bool kClamp>
GK_HOST_DEVICE inline float step_x0(float xp, float m, float px, float pm, float bound, float div) {
  float x0 = term(px, xp) + term(pm, m);
  if constexpr (kClamp) x0 = (x0 < -bound ? -bound : (x0 > bound ? bound : x0)) / div;  // NaN passes, as torch.clamp
  return x0;
}

GK_HOST_DEVICE inline float step_prev(float xp, float m, float x0, const float* c) {
  const float eps = term(c[cQx], xp) + term(c[cQm], m) + term(c[cQ0], x0);
  return term(c[cA], xp) + term(c[cB], x0) + term(c[cC], eps);
}

// Noise standard deviation of one element: constant, or from the model's variance channel v.
GK_HOST_DEVICE inline float noise_std(int flags, float v, const float* c) {
  if (flags & kVarLearnedRange) return expf(c[cE0] + c[cE1] * v);
  if (flags & kVarLearned) return c[cS] * sqrtf(v);
  return c[cS];
}

// CPU. prev may be null (x0-only pass); x0 may be null (not requested). rescale / thresh: [B] fp32.
void step_cpu(const float* mo, const float* x, const float* hist, const float* noise, const float* rescale,
              const float* thresh, float* prev, float* x0, const StepParams& p);
// Per-sample sums (cond, cond^2, m, m^2) in double for guidance rescale: out [B, 4].
void rescale_sums_cpu(const float* mo, std::int64_t B, std::int64_t S, std::int64_t mo_stride, float g, double* out);
// s_b = clamp(lerp(a_(lo), a_(lo+1), w), 1, max_value) over a = |x0_b| by selection (nth_element).
void threshold_cpu(const float* x0, std::int64_t B, std::int64_t S, std::int64_t lo, float w, float max_value,
                   float* s);
// out = ca_b * x + cb_b * y (q_sample).
void lincomb_cpu(const float* x, const float* y, const float* ca, const float* cb, float* out, std::int64_t B,
                 std::int64_t S);
// sums_b = sum over the sample of (mo - tx_b x0 - tn_b noise)^2, accumulated in double.
void loss_sums_cpu(const float* mo, const float* x0, const float* noise, const float* tx, const float* tn,
                   double* sums, std::int64_t B, std::int64_t S);
// dmo = k_b * (mo - tx_b x0 - tn_b noise).
void loss_backward_cpu(const float* mo, const float* x0, const float* noise, const float* tx, const float* tn,
                       const float* k, float* dmo, std::int64_t B, std::int64_t S);

// CUDA (storage dtype code `dtype` for every full-size tensor; per-sample tensors fp32). coef_dev /
// rng_dev: when non-null, the coefficients (fp32 [kNumCoefs]) and (seed, offset) (int64 [2]) are read
// from device memory instead of p (graph replay).
void step_cuda(const void* mo, const void* x, const void* hist, const void* noise, const float* rescale,
               const float* thresh, void* prev, void* x0, const StepParams& p, const float* coef_dev,
               const std::int64_t* rng_dev, int dtype, std::uintptr_t stream);
void rescale_partials_cuda(const void* mo, std::int64_t B, std::int64_t S, std::int64_t mo_stride, float g,
                           float* partials, std::int64_t nchunks, int dtype, std::uintptr_t stream);
void lincomb_cuda(const void* x, const void* y, const float* ca, const float* cb, void* out, std::int64_t B,
                  std::int64_t S, int dtype, std::uintptr_t stream);
void loss_partials_cuda(const void* mo, const void* x0, const void* noise, const float* tx, const float* tn,
                        float* partials, std::int64_t nchunks, std::int64_t B, std::int64_t S, int dtype,
                        std::uintptr_t stream);
void loss_backward_cuda(const void* mo, const void* x0, const void* noise, const float* tx, const float* tn,
                        const float* k, void* dmo, std::int64_t B, std::int64_t S, int dtype, std::uintptr_t stream);

}  // namespace gk::diffusion
