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

// kSeluAlpha, kSeluScale: gk_tables.h (gankern/_tables.py: REALS)
constexpr float kSqrt1_2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;  // 1/sqrt(2*pi)
constexpr float kSqrt2OverPi = 0.79788456080286536f;  // sqrt(2/pi)

// sigmoid(z) = 1 / (1 + exp(-z)): relative accuracy in both tails (the sigmoid activation itself).
template <typename T>
GK_LANES_INLINE T sigmoid_f32(T z) { return 1.0f / (1.0f + exp_f32(-z)); }

// tanh where absolute accuracy is enough (gelu_tanh takes 1 + tanh and 1 - tanh^2): the rational
// form on the CPU (|error| < 4e-7, no exp: ~1/3 of the time of tanh_f32 in norm's fused loops),
// tanhf on the GPU.
template <typename T>
GK_LANES_INLINE T tanh_fast_f32(T u) {
#if defined(__CUDA_ARCH__)
  return tanhf(u);
#else
  // exactly +-1 beyond the rational's range, so gelu_tanh(-inf) = -inf * 0 = NaN as in torch
  const float lim = 7.90531110763549805f;
  const T t = tanh_rational_f32(u);
  return u > -lim ? (u < lim ? t : T{} + 1.f) : T{} - 1.f;
#endif
}

// sigmoid(z) = (1 + tanh(z / 2)) / 2 with the rational tanh: |error| < 2e-7 ABSOLUTE, for swish
// (silu), where the error is scaled by |z| and the result is dominated by z * 1 or is tiny anyway;
// it is the hot loop of the fused norm + silu, and about half the vector operations of the exp form (~14 against ~25).
// Exactly 0 below -2 * 7.9053 (where the rational form stops at ~3e-8), so silu(-inf) = -inf * 0 =
// NaN as in torch; a NaN z gives a finite value here that z * sigmoid_fast(z) turns back into NaN.
template <typename T>
GK_LANES_INLINE T sigmoid_fast_f32(T z) {
#if defined(__CUDA_ARCH__)
  return sigmoid_f32(z);
#else
  const T s = tanh_rational_f32(z * 0.5f) * 0.5f + 0.5f;
  return z > -15.8106222f ? s : T{};
#endif
}

// T: float, or on the CPU a GCC vector of floats (csrc/common/cpu_vec.h) for the activations whose
// functions take one (all but softplus: a vector kernel dispatches over a list without it).
template <int A, typename T>
GK_LANES_INLINE T act_forward(T z, float alpha) {
  if constexpr (A == kLinear) return z;
  // one comparison and one select: NaN fails z <= 0 and passes through, -0 -> +0 (torch's values).
  // (The former OR of two comparisons, (z > 0) | (z != z), is what GCC 12 turned into code ~25x
  // slower than lrelu's on 16-float vectors.)
  if constexpr (A == kRelu) return z <= 0.f ? T{} : z;
  if constexpr (A == kLrelu) return z > 0.f ? z : z * alpha;
  if constexpr (A == kTanh) return tanh_f32(z);
  if constexpr (A == kSigmoid) return sigmoid_f32(z);
  if constexpr (A == kElu) return z > 0.f ? z : expm1_f32(z);
  if constexpr (A == kSelu) return kSeluScale * (z > 0.f ? z : kSeluAlpha * expm1_f32(z));
  if constexpr (A == kSoftplus) return z > 20.f ? z : (z > 0.f ? z : 0.f) + log1p_pos_f32(exp_f32(-std::fabs(z)));
  if constexpr (A == kSwish) return z * sigmoid_fast_f32(z);
  if constexpr (A == kGelu) return 0.5f * z * (1.f + erf_f32(z * kSqrt1_2));
  if constexpr (A == kGeluTanh) {
    const T u = kSqrt2OverPi * (z + 0.044715f * z * z * z);
    return 0.5f * z * (1.f + tanh_fast_f32(u));
  }
  return z;
}

// d act(z) / dz
template <int A, typename T>
GK_LANES_INLINE T act_derivative(T z, float alpha) {
  const T one = T{} + 1.f;
  if constexpr (A == kLinear) return one;
  if constexpr (A == kRelu) return z > 0.f ? one : T{};
  if constexpr (A == kLrelu) return z > 0.f ? one : T{} + alpha;
  if constexpr (A == kTanh) { const T t = tanh_f32(z); return 1.f - t * t; }
  if constexpr (A == kSigmoid) { const T s = sigmoid_f32(z); return s * (1.f - s); }
  if constexpr (A == kElu) return z > 0.f ? one : exp_f32(z);
  if constexpr (A == kSelu) return z > 0.f ? T{} + kSeluScale : kSeluScale * kSeluAlpha * exp_f32(z);
  if constexpr (A == kSoftplus) return z > 20.f ? one : sigmoid_f32(z);
  if constexpr (A == kSwish) { const T s = sigmoid_fast_f32(z); return s * (1.f + z * (1.f - s)); }
  if constexpr (A == kGelu) return 0.5f * (1.f + erf_f32(z * kSqrt1_2)) + z * kInvSqrt2Pi * exp_f32(-0.5f * z * z);
  if constexpr (A == kGeluTanh) {
    const T z2 = z * z;
    const T t = tanh_fast_f32(kSqrt2OverPi * (z + 0.044715f * z2 * z));
    return 0.5f * (1.f + t) + 0.5f * z * (1.f - t * t) * kSqrt2OverPi * (1.f + 3.f * 0.044715f * z2);
  }
  return one;
}

// The activations a kernel is instantiated for (a family that supports fewer lists its own).
template <int... Codes>
struct ActList {};
using AllActs = ActList<kLinear, kRelu, kLrelu, kTanh, kSigmoid, kElu, kSelu, kSoftplus, kSwish, kGelu, kGeluTanh>;

// Calls f(std::integral_constant<int, A>{}) with the activation as a compile-time constant, so
// callers write `[&](auto a) { constexpr int A = decltype(a)::value; ... }`. A code outside the
// list is a ValueError.
template <int... Codes, typename F>
inline void dispatch_act(ActList<Codes...>, int act, F&& f) {
  const bool known = ((act == Codes ? (f(std::integral_constant<int, Codes>{}), true) : false) || ...);
  if (!known) throw std::invalid_argument("gankern: unsupported activation code " + std::to_string(act));
}
template <typename F>
inline void dispatch_act(int act, F&& f) {
  dispatch_act(AllActs{}, act, static_cast<F&&>(f));
}

}  // namespace gk
