// Pointwise activations and their first derivatives, written once for the CPU and CUDA kernels.
//
// The codes (gk::Act: kLinear, kRelu, ...) are generated from gankern/_tables.py: ACTIVATIONS. Each function is a template on the
// activation so the switch happens once outside a loop and the loop body stays vectorizable.
// Semantics follow torch exactly, including NaN propagation and the derivative at kinks
// (relu'(0) = 0, leaky_relu'(0) = slope, elu'(0) = 1, softplus with beta=1, threshold=20).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/macros.h"
#include "common/math.h"
#include "gk_tables.h"

namespace gk {

constexpr float kSeluAlpha = 1.6732632423543772f;
constexpr float kSeluScale = 1.0507009873554805f;
constexpr float kSqrt1_2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;  // 1/sqrt(2*pi)
constexpr float kSqrt2OverPi = 0.79788456080286536f;  // sqrt(2/pi)

GK_HOST_DEVICE inline float sigmoid_f32(float z) { return 1.0f / (1.0f + exp_f32(-z)); }

template <int A>
GK_HOST_DEVICE inline float act_forward(float z, float alpha) {
  if constexpr (A == kLinear) return z;
  if constexpr (A == kRelu) return (z > 0.f || z != z) ? z : 0.f;
  if constexpr (A == kLrelu) return z > 0.f ? z : z * alpha;
  if constexpr (A == kTanh) return tanh_f32(z);
  if constexpr (A == kSigmoid) return sigmoid_f32(z);
  if constexpr (A == kElu) return z > 0.f ? z : expm1_f32(z);
  if constexpr (A == kSelu) return kSeluScale * (z > 0.f ? z : kSeluAlpha * expm1_f32(z));
  if constexpr (A == kSoftplus) return z > 20.f ? z : (z > 0.f ? z : 0.f) + log1p_pos_f32(exp_f32(-std::fabs(z)));
  if constexpr (A == kSwish) return z * sigmoid_f32(z);
  if constexpr (A == kGelu) return 0.5f * z * (1.f + erf_f32(z * kSqrt1_2));
  if constexpr (A == kGeluTanh) {
    float u = kSqrt2OverPi * (z + 0.044715f * z * z * z);
    return 0.5f * z * (1.f + tanh_f32(u));
  }
  return z;
}

// d act(z) / dz
template <int A>
GK_HOST_DEVICE inline float act_derivative(float z, float alpha) {
  if constexpr (A == kLinear) return 1.f;
  if constexpr (A == kRelu) return z > 0.f ? 1.f : 0.f;
  if constexpr (A == kLrelu) return z > 0.f ? 1.f : alpha;
  if constexpr (A == kTanh) { float t = tanh_f32(z); return 1.f - t * t; }
  if constexpr (A == kSigmoid) { float s = sigmoid_f32(z); return s * (1.f - s); }
  if constexpr (A == kElu) return z > 0.f ? 1.f : exp_f32(z);
  if constexpr (A == kSelu) return z > 0.f ? kSeluScale : kSeluScale * kSeluAlpha * exp_f32(z);
  if constexpr (A == kSoftplus) return z > 20.f ? 1.f : sigmoid_f32(z);
  if constexpr (A == kSwish) { float s = sigmoid_f32(z); return s * (1.f + z * (1.f - s)); }
  if constexpr (A == kGelu) return 0.5f * (1.f + erf_f32(z * kSqrt1_2)) + z * kInvSqrt2Pi * exp_f32(-0.5f * z * z);
  if constexpr (A == kGeluTanh) {
    float z2 = z * z;
    float t = tanh_f32(kSqrt2OverPi * (z + 0.044715f * z2 * z));
    return 0.5f * (1.f + t) + 0.5f * z * (1.f - t * t) * kSqrt2OverPi * (1.f + 3.f * 0.044715f * z2);
  }
  return 1.f;
}

// Calls f(std::integral_constant<int, A>{}) with the activation as a compile-time constant, so
// callers write `[&](auto a) { constexpr int A = decltype(a)::value; ... }`.
template <typename F>
inline void dispatch_act(int act, F&& f) {
  switch (act) {
#define GK_ACT_CASE(code) case code: f(std::integral_constant<int, code>{}); break;
    GK_ACT_CASE(kLinear) GK_ACT_CASE(kRelu) GK_ACT_CASE(kLrelu) GK_ACT_CASE(kTanh)
    GK_ACT_CASE(kSigmoid) GK_ACT_CASE(kElu) GK_ACT_CASE(kSelu) GK_ACT_CASE(kSoftplus)
    GK_ACT_CASE(kSwish) GK_ACT_CASE(kGelu) GK_ACT_CASE(kGeluTanh)
#undef GK_ACT_CASE
    default: throw std::invalid_argument("gankern: unknown activation code " + std::to_string(act));
  }
}

}  // namespace gk
