// Vectorizable float math for the CPU kernels, shared by CPU and CUDA code (on the GPU each
// function is the CUDA library's accurate version). libm's expf/logf/tanhf/expm1f calls, and
// std::floor (a call to floorf), keep GCC from vectorizing the loops they appear in; these are
// branch-free polynomials of about 1 ulp that vectorize under GK_CPU_CLONES with
// -fno-trapping-math (CMakeLists.txt). NaN/Inf behave as in libm unless a comment says otherwise.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/macros.h"

// The functions below that take any lane type are force-inlined on the CPU: an out-of-line call
// from an AVX clone (GK_CPU_CLONES) into a copy compiled for the baseline target would pass a
// 32-byte vector by a different ABI and read garbage (GCC's -Wpsabi warning).
#if defined(__GNUC__) && !defined(__CUDACC__)
#define GK_LANES_INLINE inline __attribute__((always_inline))
#else
#define GK_LANES_INLINE GK_HOST_DEVICE inline
#endif

namespace gk {

GK_HOST_DEVICE inline std::int32_t f32_to_bits(float f) { std::int32_t b; std::memcpy(&b, &f, 4); return b; }

// log(x) for positive normal x (Box-Muller passes x in [1e-7, 1)); no NaN/Inf/denormal handling.
GK_HOST_DEVICE inline float log_pos_f32(float x) {
#if defined(__CUDA_ARCH__)
  return logf(x);
#else
  // x = 2^k * (1 + m) with 1 + m in [sqrt(1/2), sqrt(2)), by integer ops (musl's reduction): GCC
  // will not if-convert float arithmetic (it could trap), and a branch would stop vectorization.
  std::int32_t ix = f32_to_bits(x) + (0x3f800000 - 0x3f3504f3);
  const float e = static_cast<float>((ix >> 23) - 0x7f);
  ix = (ix & 0x007fffff) + 0x3f3504f3;
  const float m = bits_to_f32(ix) - 1.0f;
  const float z = m * m;
  float p = 7.0376836292E-2f;
  p = p * m - 1.1514610310E-1f;
  p = p * m + 1.1676998740E-1f;
  p = p * m - 1.2420140846E-1f;
  p = p * m + 1.4249322787E-1f;
  p = p * m - 1.6668057665E-1f;
  p = p * m + 2.0000714765E-1f;
  p = p * m - 2.4999993993E-1f;
  p = p * m + 3.3333331174E-1f;
  float y = p * m * z;
  y += -2.12194440e-4f * e;  // log(2) split as 0.693359375 - 2.12194440e-4: the first part is exact
  y += -0.5f * z;
  return (m + y) + 0.693359375f * e;
#endif
}

// Bit access for the lane types the templates below are written over: float, and on the CPU a GCC
// vector of floats (csrc/common/cpu_vec.h specializes FloatLanes for it). One body per function
// serves the scalar loops that GCC auto-vectorizes (bias_act, vae) and the explicitly vectorized
// ones (norm).
template <typename T>
struct FloatLanes;
template <>
struct FloatLanes<float> {
  using Int = std::int32_t;
  GK_HOST_DEVICE static Int to_int(float x) { return static_cast<Int>(x); }
  GK_HOST_DEVICE static Int to_bits(float x) { return f32_to_bits(x); }
  GK_HOST_DEVICE static float from_bits(Int b) { return bits_to_f32(b); }
};

// |x| and copysign(m, x) by the sign bit (std::fabs/copysign take no vectors).
template <typename T>
GK_LANES_INLINE T abs_lanes(T x) {
  using L = FloatLanes<T>;
  return L::from_bits(L::to_bits(x) & 0x7fffffff);
}
template <typename T>
GK_LANES_INLINE T copysign_lanes(T m, T x) {
  using L = FloatLanes<T>;
  return L::from_bits((L::to_bits(m) & 0x7fffffff) | (L::to_bits(x) & static_cast<std::int32_t>(0x80000000u)));
}

// exp(x) with a vectorizable body on the CPU, the hardware path on the GPU. libm's expf (and
// std::floor, which GCC emits as a call to floorf) would keep GCC from vectorizing the loops it
// appears in. Cephes' expf polynomial (~1 ulp) with round-to-nearest by the 1.5 * 2^23 trick.
// The one overflow cut-off is hi = log(FLT_MAX) = 88.7228: exp(x) is finite up to there. Scaling by
// 2^n in one step can only build 2^127 (n = 128 is the exponent field of Inf), which is why norm's
// former copy stopped at 127.5 * log(2) = 88.3763 and returned Inf for x in (88.3763, 88.7228]
// where exp is finite. Here 2^n is applied in two steps (2^(n/2) * 2^(n - n/2)), so every n up to
// 128 is exact and the cut-off can be the true one. Below lo = log(FLT_MIN) the result is 0 (no
// denormals). Overflow and NaN as expf. Needs -fno-trapping-math to if-convert the selects.
template <typename T>
GK_LANES_INLINE T exp_f32(T x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  using L = FloatLanes<T>;
  const float hi = 88.72283905206835f, lo = -87.3365447504019f;
  T xc = x > hi ? T{} + hi : x;
  xc = xc < lo ? T{} + lo : xc;
  xc = x == x ? xc : T{};  // NaN: compute anything finite, fixed up below
  const T n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // nearest integer
  const T r = (xc - n * 0.693359375f) + n * 2.12194440e-4f;            // |r| <= ln(2) / 2
  T p = r * 1.9875691500E-4f + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  const T y = p * r * r + r + 1.0f;
  const auto ni = L::to_int(n);
  const auto h = ni >> 1;
  T v = y * L::from_bits((h + 127) << 23) * L::from_bits((ni - h + 127) << 23);
  v = x > hi ? T{} + INFINITY : v;
  v = x < lo ? T{} : v;
  return x == x ? v : x;
#endif
}

// expm1 without the cancellation of exp(x) - 1 near 0: Taylor series through x^7 for |x| < 1/4
// (truncation < 2e-9 relative), exp_f32(x) - 1 beyond. Vectorizable, like exp_f32.
template <typename T>
GK_LANES_INLINE T expm1_f32(T x) {
#if defined(__CUDA_ARCH__)
  return expm1f(x);
#else
  const T small =
      x + x * x * (0.5f + x * (1.f / 6.f + x * (1.f / 24.f + x * (1.f / 120.f + x * (1.f / 720.f + x * (1.f / 5040.f))))));
  return ((x < 0.25f) & (x > -0.25f)) ? small : exp_f32(x) - 1.f;
#endif
}

// tanh(x) = -expm1(-2|x|) / (2 + expm1(-2|x|)) with x's sign: relative accuracy near 0 from expm1,
// saturates to +-1, NaN passes. Vectorizable.
template <typename T>
GK_LANES_INLINE T tanh_f32(T x) {
#if defined(__CUDA_ARCH__)
  return tanhf(x);
#else
  const T em = expm1_f32(abs_lanes(x) * -2.f);
  return copysign_lanes(-em / (2.f + em), x);
#endif
}

// tanh as a [13/6] rational function on [-7.9053, 7.9053] (Eigen's generic_fast_tanh_float; tanh
// rounds to +-1 in fp32 outside): |error| < 4e-7 ABSOLUTE, ~14 vector ops against ~25 for the
// exp-based tanh_f32, so only for callers that need no more than absolute accuracy (activations.h:
// tanh_fast_f32, sigmoid_fast_f32, which use tanhf / expf on the GPU). At +-lim the value is within
// 4e-7 of +-1, not exactly +-1, and NaN maps to a bound in the clamps: callers fix both up.
// Horner's rule on purpose: Estrin's scheme forms x^16, which is subnormal for |x| < 0.004 and
// costs a microcode assist per vector (30x slower on random data).
template <typename T>
GK_LANES_INLINE T tanh_rational_f32(T x) {
  const float lim = 7.90531110763549805f;
  x = x < lim ? x : T{} + lim;
  x = x > -lim ? x : T{} - lim;
  const T x2 = x * x;
  T p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  p = p * x;
  T q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  return p / q;
}

// log1p(u) for u >= 0 (e.g. u = exp(-|z|) in softplus): log(w) * u / (w - 1) with w = 1 + u cancels
// the rounding of w (Goldberg), so it keeps full relative accuracy for small u.
GK_HOST_DEVICE inline float log1p_pos_f32(float u) {
#if defined(__CUDA_ARCH__)
  return log1pf(u);
#else
  const float w = 1.f + u;
  return w == 1.f ? u : log_pos_f32(w) * u / (w - 1.f);
#endif
}

// erf by Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7; the approximation PyTorch's own
// vectorized CPU erf uses), so gelu(z) = 0.5 z (1 + erf(z / sqrt 2)) is as accurate as torch's.
template <typename T>
GK_LANES_INLINE T erf_f32(T x) {
#if defined(__CUDA_ARCH__)
  return erff(x);
#else
  const T a = abs_lanes(x);
  const T t = 1.f / (a * 0.3275911f + 1.f);
  const T p = ((((t * 1.061405429f - 1.453152027f) * t + 1.421413741f) * t - 0.284496736f) * t + 0.254829592f) * t;
  return copysign_lanes(1.f - p * exp_f32(-a * a), x);
#endif
}

}  // namespace gk
