// Pointwise activations and their first derivatives, written once for the CPU and CUDA kernels.
//
// The codes match gankern/reference/activations.py (ACT_CODES). Each function is a template on the
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

namespace gk {

enum Act : int {
  kLinear = 0, kRelu = 1, kLrelu = 2, kTanh = 3, kSigmoid = 4, kElu = 5, kSelu = 6,
  kSoftplus = 7, kSwish = 8, kGelu = 9, kGeluTanh = 10,
};

constexpr float kSeluAlpha = 1.6732632423543772f;
constexpr float kSeluScale = 1.0507009873554805f;
constexpr float kSqrt1_2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;  // 1/sqrt(2*pi)
constexpr float kSqrt2OverPi = 0.79788456080286536f;  // sqrt(2/pi)

// exp(x) with a vectorizable body on the CPU, the hardware path on the GPU. libm's expf (and
// std::floor, which GCC emits as a call to floorf) would keep GCC from vectorizing the loops it
// appears in. Cephes' expf polynomial (~1 ulp) with round-to-nearest by the 1.5 * 2^23 trick, and
// 2^n applied in two steps so n = 128 (x up to log(FLT_MAX)) does not overflow the exponent
// field. Overflow, underflow and NaN as expf. Needs -fno-trapping-math to if-convert the selects.
GK_HOST_DEVICE inline float exp_f32(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  const float hi = 88.72283905206835f, lo = -87.3365447504019f;
  float xc = x > hi ? hi : (x < lo ? lo : x);
  xc = x == x ? xc : 0.f;  // NaN: compute anything finite, fixed up below
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // nearest integer
  const float r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;            // |r| <= ln(2) / 2
  float p = 1.9875691500E-4f;
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  const float y = p * r * r + r + 1.0f;
  const std::int32_t ni = static_cast<std::int32_t>(n);
  const float v = y * bits_to_f32((ni / 2 + 127) << 23) * bits_to_f32((ni - ni / 2 + 127) << 23);
  return x != x ? x : (x > hi ? INFINITY : (x < lo ? 0.f : v));
#endif
}

GK_HOST_DEVICE inline float sigmoid_f32(float z) { return 1.0f / (1.0f + exp_f32(-z)); }

template <int A>
GK_HOST_DEVICE inline float act_forward(float z, float alpha) {
  if constexpr (A == kLinear) return z;
  if constexpr (A == kRelu) return (z > 0.f || z != z) ? z : 0.f;
  if constexpr (A == kLrelu) return z > 0.f ? z : z * alpha;
  if constexpr (A == kTanh) return std::tanh(z);
  if constexpr (A == kSigmoid) return sigmoid_f32(z);
  if constexpr (A == kElu) return z > 0.f ? z : std::expm1(z);
  if constexpr (A == kSelu) return kSeluScale * (z > 0.f ? z : kSeluAlpha * std::expm1(z));
  if constexpr (A == kSoftplus) return z > 20.f ? z : std::log1p(exp_f32(z));
  if constexpr (A == kSwish) return z * sigmoid_f32(z);
  if constexpr (A == kGelu) return 0.5f * z * (1.f + std::erf(z * kSqrt1_2));
  if constexpr (A == kGeluTanh) {
    float u = kSqrt2OverPi * (z + 0.044715f * z * z * z);
    return 0.5f * z * (1.f + std::tanh(u));
  }
  return z;
}

// d act(z) / dz
template <int A>
GK_HOST_DEVICE inline float act_derivative(float z, float alpha) {
  if constexpr (A == kLinear) return 1.f;
  if constexpr (A == kRelu) return z > 0.f ? 1.f : 0.f;
  if constexpr (A == kLrelu) return z > 0.f ? 1.f : alpha;
  if constexpr (A == kTanh) { float t = std::tanh(z); return 1.f - t * t; }
  if constexpr (A == kSigmoid) { float s = sigmoid_f32(z); return s * (1.f - s); }
  if constexpr (A == kElu) return z > 0.f ? 1.f : exp_f32(z);
  if constexpr (A == kSelu) return z > 0.f ? kSeluScale : kSeluScale * kSeluAlpha * exp_f32(z);
  if constexpr (A == kSoftplus) return z > 20.f ? 1.f : sigmoid_f32(z);
  if constexpr (A == kSwish) { float s = sigmoid_f32(z); return s * (1.f + z * (1.f - s)); }
  if constexpr (A == kGelu) return 0.5f * (1.f + std::erf(z * kSqrt1_2)) + z * kInvSqrt2Pi * exp_f32(-0.5f * z * z);
  if constexpr (A == kGeluTanh) {
    float z2 = z * z;
    float t = std::tanh(kSqrt2OverPi * (z + 0.044715f * z2 * z));
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
