// Philox4x32-10 counter-based random numbers with exactly Triton's conventions (triton/language/
// random.py), written once for the CPU and CUDA kernels.
//
// Contract (docs/random.md): element i (row-major) of randn(shape, seed, offset) is component i % 4
// of randn4(seed, offset + i / 4), which equals Triton's tl.randn4x(seed, offset + i // 4):
//   key     = (seed_lo, seed_hi)                 64-bit seed split in two 32-bit words
//   counter = (ctr_lo, ctr_hi, 0, 0)             64-bit counter split in two 32-bit words
//   10 rounds: c0' = hi(B*c2) ^ c1 ^ k0, c2' = hi(A*c0) ^ c3 ^ k1, c1' = lo(B*c2), c3' = lo(A*c0),
//              then k0 += 0x9E3779B9, k1 += 0xBB67AE85
//   uniform: bitcast the word to int32, x < 0 -> ~x, then float(x) * 4.6566127342e-10f  in [0, 1)
//   normal:  Box-Muller on (u1, u2) and (u3, u4): u1 = max(1e-7, u1), th = 2*pi*u2,
//            r = sqrt(-2 log u1), (r cos th, r sin th)
// The words and uniforms are exact; Box-Muller is fp32 math, so backends agree to a few ulps, not
// bit for bit: the transcendental functions differ (CUDA's accurate logf/sincospif, the
// polynomials below on the CPU, Triton's own on the triton backend).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/macros.h"
#include "common/math.h"

namespace gk {

constexpr std::uint32_t kPhiloxRoundA = 0xD2511F53u;
constexpr std::uint32_t kPhiloxRoundB = 0xCD9E8D57u;
constexpr std::uint32_t kPhiloxKeyA = 0x9E3779B9u;
constexpr std::uint32_t kPhiloxKeyB = 0xBB67AE85u;
constexpr float kUniformScale = 4.6566127342e-10f;  // largest s with (2^31 - 1) * s < 1 in fp32
constexpr float kBoxMullerMinU = 1.0e-7f;
constexpr float kTwoPi = 6.283185307179586f;

GK_HOST_DEVICE inline std::uint32_t mulhi32(std::uint32_t a, std::uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  // A widening multiply GCC vectorizes (vpmuludq) inside the CPU loops.
  return static_cast<std::uint32_t>((static_cast<std::uint64_t>(a) * b) >> 32);
#endif
}

GK_HOST_DEVICE inline void philox4x32_10(std::uint64_t seed, std::uint64_t counter, std::uint32_t out[4]) {
  std::uint32_t k0 = static_cast<std::uint32_t>(seed), k1 = static_cast<std::uint32_t>(seed >> 32);
  std::uint32_t c0 = static_cast<std::uint32_t>(counter), c1 = static_cast<std::uint32_t>(counter >> 32);
  std::uint32_t c2 = 0, c3 = 0;
  // Fully unrolled so the CPU loops over counters vectorize (GCC needs straight-line code).
#if defined(__CUDACC__)
#pragma unroll
#elif defined(__GNUC__) && !defined(__clang__)
#pragma GCC unroll 10
#endif
  for (int round = 0; round < 10; ++round) {
    const std::uint32_t n0 = mulhi32(kPhiloxRoundB, c2) ^ c1 ^ k0;
    const std::uint32_t n2 = mulhi32(kPhiloxRoundA, c0) ^ c3 ^ k1;
    c1 = kPhiloxRoundB * c2;
    c3 = kPhiloxRoundA * c0;
    c0 = n0;
    c2 = n2;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

// Triton's uint_to_uniform_float for 32-bit words: [0, 1), symmetric use of the sign bit.
GK_HOST_DEVICE inline float uint_to_uniform(std::uint32_t w) {
  std::int32_t x = static_cast<std::int32_t>(w);
  x = x < 0 ? ~x : x;
  return static_cast<float>(x) * kUniformScale;
}

// ---- vectorizable fp32 sincos for the CPU loops (log: common/math.h) ------------------------
// libm's sincosf is a call GCC cannot vectorize; this is Cephes' single-precision algorithm
// (about 1 ulp on the range Box-Muller feeds it), branch-free so loops vectorize. On the GPU the
// accurate CUDA sincosf is used instead (never the __sinf-style intrinsics).

// Cephes' single-precision sin and cos polynomials on [-pi/4, pi/4].
GK_HOST_DEVICE inline float sin_poly(float r, float z) {
  return ((-1.9515295891E-4f * z + 8.3321608736E-3f) * z - 1.6666654611E-1f) * z * r + r;
}
GK_HOST_DEVICE inline float cos_poly(float z) {
  return ((2.443315711809948E-5f * z - 1.388731625493765E-3f) * z + 4.166664568298827E-2f) * z * z - 0.5f * z + 1.0f;
}

// sin(2 pi u) and cos(2 pi u) for u in [0, 1). Reducing in u (4u is exact, so the quadrant and the
// remainder u - j/4 are exact) is cheaper than reducing th = 2 pi u, and more accurate than Triton,
// which first rounds th to fp32 (an error of up to 2.4e-7 in th). GPU: sincospif of 2u, exact too.
GK_HOST_DEVICE inline void sincos_2pi(float u, float* s, float* c) {
#if defined(__CUDA_ARCH__)
  sincospif(2.0f * u, s, c);
#else
  const std::int32_t j = static_cast<std::int32_t>(u * 4.0f + 0.5f);  // nearest quarter turn (u >= 0)
  const float r = (u - static_cast<float>(j) * 0.25f) * kTwoPi;       // in [-pi/4, pi/4]
  const float z = r * r;
  const float sp = sin_poly(r, z), cp = cos_poly(z);
  const std::int32_t q = j & 3;  // quadrant
  float sv = (q & 1) ? cp : sp;
  float cv = (q & 1) ? sp : cp;
  sv = (q & 2) ? -sv : sv;
  cv = ((q + 1) & 2) ? -cv : cv;  // cos is negative in quadrants 1 and 2
  *s = sv;
  *c = cv;
#endif
}

// Box-Muller of Triton's pair_uniform_to_normal: th = 2 pi u2, (r cos th, r sin th).
GK_HOST_DEVICE inline void box_muller(float u1, float u2, float* n1, float* n2) {
#if defined(__CUDA_ARCH__)
  u1 = fmaxf(u1, kBoxMullerMinU);
#else
  // u1 >= 0, so its bits order like the floats: an integer max keeps GCC's loop branch-free (a
  // float select next to the log got turned into a branch and blocked vectorization).
  const std::int32_t ub = f32_to_bits(u1), mb = f32_to_bits(kBoxMullerMinU);
  u1 = bits_to_f32(ub > mb ? ub : mb);
#endif
  const float r = std::sqrt(-2.0f * log_pos_f32(u1));
  float s, c;
  sincos_2pi(u2, &s, &c);
  *n1 = r * c;
  *n2 = r * s;
}

// The four normals of one counter: Triton's tl.randn4x(seed, counter).
GK_HOST_DEVICE inline void randn4(std::uint64_t seed, std::uint64_t counter, float out[4]) {
  std::uint32_t w[4];
  philox4x32_10(seed, counter, w);
  box_muller(uint_to_uniform(w[0]), uint_to_uniform(w[1]), &out[0], &out[1]);
  box_muller(uint_to_uniform(w[2]), uint_to_uniform(w[3]), &out[2], &out[3]);
}

}  // namespace gk
