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

#include <array>

#include "common/macros.h"
#include "common/view.h"

namespace gk::diffusion {

// Flags (gk::diffusion::Flag: kGuided, kClip, ...), coefficient slots (Coef: cG, cPre, ...) and
// kNumCoefs are generated from gankern/_tables.py (DIFFUSION_FLAGS, DIFFUSION_COEFS).

// ---- entry points (cpu.cpp for gankern._C, cuda.cu for gankern._cuda) ------------------------
// Every full-size tensor: float32, float16 or bfloat16, one dtype; per-sample tensors
// float32 [B].

using Coefs = std::array<float, kNumCoefs>;

#define GK_DIFFUSION_STEP_PARAMS(X)                                                              \
  X(gk::View, model_output, "[G*B, K*S]: G = 2 when guided, K = 2 with variance channels")       \
  X(gk::View, sample, "[B, S]")                                                                  \
  X(gk::View, history, "[B, S] previous x0 (flag hist), or None")                                \
  X(gk::View, noise, "[B, S] (flag noise_tensor), or None")                                      \
  X(gk::View, rescale, "float32 [B] guidance-rescale factors (flag rescale), or None")           \
  X(gk::View, thresh, "float32 [B] dynamic-thresholding scales (flag thresh), or None")          \
  X(gk::View, prev, "[B, S] the next sample, or None (an x0-only pass)")                         \
  X(gk::View, x0, "[B, S] the predicted x0, or None")                                            \
  X(gk::View, coef_dev, "CUDA graph replay: float32 [kNumCoefs] read instead of coefs, or None")  \
  X(gk::View, rng_dev, "CUDA graph replay: int64 [seed, offset] read instead of them, or None")  \
  X(std::int64_t, batch, "B")                                                                    \
  X(std::int64_t, per_sample, "S, elements per sample")                                          \
  X(std::int64_t, mo_stride, "K * S: elements between two samples of model_output")              \
  X(int, flags, "gk::diffusion::Flag bits")                                                      \
  X(std::int64_t, seed, "Philox key (int64 bit pattern)")                                        \
  X(std::int64_t, offset, "first Philox counter (int64 bit pattern)")                            \
  X(gk::diffusion::Coefs, coefs, "kNumCoefs floats in the Coef slots")
GK_STRUCT(StepParams, GK_DIFFUSION_STEP_PARAMS);
void step(const StepParams& p, Stream stream);

// Per-sample partial sums (sum c, sum c^2, sum m, sum m^2) for guidance rescale, c the conditional
// half, m the guided output: partials [B, nchunks, 4], float64 with nchunks = 1 on the CPU, float32
// with nchunks = ceil(S / kReductionChunk) on CUDA; the caller adds them in order.
#define GK_DIFFUSION_RESCALE_PARAMS(X)                                                   \
  X(gk::View, model_output, "[2B, S], unconditional half first")                         \
  X(std::int64_t, batch, "B")                                                            \
  X(std::int64_t, per_sample, "S")                                                       \
  X(float, guidance, "g")                                                                \
  X(gk::View, partials, "[B, nchunks, 4] partial sums")
GK_STRUCT(RescaleParams, GK_DIFFUSION_RESCALE_PARAMS);
void rescale_partials(const RescaleParams& p, Stream stream);

// out = ca_b * x + cb_b * y (q_sample).
#define GK_DIFFUSION_LINCOMB_PARAMS(X)  \
  X(gk::View, x, "[B, S]")              \
  X(gk::View, y, "[B, S]")              \
  X(gk::View, ca, "float32 [B]")        \
  X(gk::View, cb, "float32 [B]")        \
  X(gk::View, out, "[B, S]")            \
  X(std::int64_t, batch, "B")           \
  X(std::int64_t, per_sample, "S")
GK_STRUCT(LincombParams, GK_DIFFUSION_LINCOMB_PARAMS);
void lincomb(const LincombParams& p, Stream stream);

// The loss with r = model_output - (tx_b x0 + tn_b noise):
//   loss_partials: partials [B, nchunks] of sum r^2 (float64, nchunks = 1 on the CPU; float32,
//                  nchunks = ceil(S / kReductionChunk) on CUDA)
//   loss_backward: dmo = k_b * r
#define GK_DIFFUSION_LOSS_PARAMS(X)                                             \
  X(gk::View, model_output, "[B, S]")                                           \
  X(gk::View, x0, "[B, S]")                                                     \
  X(gk::View, noise, "[B, S]")                                                  \
  X(gk::View, tx, "float32 [B] target coefficient of x0")                       \
  X(gk::View, tn, "float32 [B] target coefficient of noise")                    \
  X(gk::View, k, "backward: float32 [B] gradient scale; partials: None")        \
  X(gk::View, partials, "partials: [B, nchunks] sums of r^2; backward: None")   \
  X(gk::View, dmo, "backward: [B, S] dL/dmodel_output; partials: None")         \
  X(std::int64_t, batch, "B")                                                   \
  X(std::int64_t, per_sample, "S")
GK_STRUCT(LossParams, GK_DIFFUSION_LOSS_PARAMS);
void loss_partials(const LossParams& p, Stream stream);
void loss_backward(const LossParams& p, Stream stream);

// CPU only: s_b = clamp(lerp(a_(lo), a_(lo+1), w), 1, max_value) over a = |x0_b|, by selection.
#define GK_DIFFUSION_THRESHOLD_PARAMS(X)                    \
  X(gk::View, x0, "[B, S]")                                 \
  X(std::int64_t, batch, "B")                               \
  X(std::int64_t, per_sample, "S")                          \
  X(std::int64_t, rank_lo, "rank of the lower order statistic")   \
  X(float, rank_w, "interpolation weight")                  \
  X(float, max_value, "upper clamp of the scale")           \
  X(gk::View, scales, "float32 [B] out")
GK_STRUCT(ThresholdParams, GK_DIFFUSION_THRESHOLD_PARAMS);
void threshold(const ThresholdParams& p, Stream stream);

// ---- what the kernels read ------------------------------------------------------------------

struct StepScalars {
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

inline StepScalars step_scalars(const StepParams& p) {
  StepScalars s{p.batch, p.per_sample, p.mo_stride, p.flags, static_cast<std::uint64_t>(p.seed),
                static_cast<std::uint64_t>(p.offset), {}};
  for (int i = 0; i < kNumCoefs; ++i) s.c[i] = p.coefs[i];
  return s;
}

// Both backends: the operands of a step share the sample's dtype and sizes.
inline void check_step(const StepParams& p) {
  const char* op = "diffusion_step";
  check(!p.sample.is_none() && !p.model_output.is_none(), op, "sample and model_output are required");
  const std::int64_t n = p.batch * p.per_sample;
  check(p.sample.numel == n && p.model_output.dtype == p.sample.dtype, op, "sample must be [B, S], model_output of its dtype");
  check(p.model_output.numel >= p.batch * p.mo_stride, op, "model_output is smaller than B * mo_stride");
  check_same(op, p.sample, {&p.history, &p.noise, &p.prev, &p.x0});
  p.rescale.as<const float>("rescale");
  p.thresh.as<const float>("thresh");
}

inline void check_loss(const char* op, const LossParams& p) {
  check(p.model_output.numel == p.batch * p.per_sample && p.tx.numel == p.batch && p.tn.numel == p.batch, op,
        "model_output, x0, noise must be [B, S] and tx, tn [B]");
  check_same(op, p.model_output, {&p.x0, &p.noise});
  p.tx.as<const float>("tx");
  p.tn.as<const float>("tn");
  p.k.as<const float>("k");
}

}  // namespace gk::diffusion
