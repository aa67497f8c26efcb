// bf16 and fp16 storage types for the CPU kernels: loads and stores in the tensor's dtype, math in
// float (static_cast<float>(v), static_cast<gk::bf16>(f)), round-to-nearest-even like torch.
//
// Both convert with branch-free integer/float code that GCC vectorizes inside GK_CPU_CLONES loops
// (AVX2 / AVX-512 integer ops and blends), in every clone including the baseline one. _Float16 was
// tried for fp16: GCC 12 leaves its conversions as per-element libgcc calls, 5x slower than fp32
// here. The AVX512-BF16 / F16C conversion instructions are not used explicitly: these kernels are
// memory-bound and the integer form already runs bf16 at ~2x the fp32 speed.
#pragma once
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common/view.h"

namespace gk {

struct bf16 {
  std::uint16_t bits;
  bf16() = default;
  explicit bf16(float f) {
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    // NaN stays NaN (quiet bit set); otherwise round to nearest, ties to even
    const std::uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
    bits = static_cast<std::uint16_t>(nan ? ((u >> 16) | 0x40u) : rounded);
  }
  explicit operator float() const {
    const std::uint32_t u = static_cast<std::uint32_t>(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};
static_assert(sizeof(bf16) == 2 && std::is_trivially_copyable_v<bf16>);

struct fp16 {
  std::uint16_t bits;
  fp16() = default;
  // Round to nearest even (F. Giesen's float_to_half_fast3_rtne): the three cases are computed
  // branch-free and selected, so GCC vectorizes it. NaN -> quiet NaN, overflow -> inf.
  explicit fp16(float x) {
    std::uint32_t f;
    std::memcpy(&f, &x, 4);
    const std::uint32_t sign = f & 0x80000000u;
    f ^= sign;
    const std::uint32_t big = f > 0x7f800000u ? 0x7e00u : 0x7c00u;  // NaN, or inf (|x| >= 65520)
    const float denorm_magic = 0.5f;                                   // (127 - 15 + 23 - 10 + 1) << 23
    float fx;
    std::memcpy(&fx, &f, 4);
    const float sum = fx + denorm_magic;  // the add rounds the subnormal's bits into place
    std::uint32_t sub;
    std::memcpy(&sub, &sum, 4);
    sub -= 0x3f000000u;
    const std::uint32_t norm = (f + 0xc8000fffu + ((f >> 13) & 1u)) >> 13;  // rebias 127 -> 15, round
    const std::uint32_t o = f >= 0x47800000u ? big : (f < 0x38800000u ? sub : norm);
    bits = static_cast<std::uint16_t>(o | (sign >> 16));
  }
  // Exact: the bits placed in a float and scaled by 2^112 (subnormal halves become normal floats);
  // inf and NaN keep an all-ones exponent.
  explicit operator float() const {
    const std::uint32_t em = bits & 0x7fffu;
    const std::uint32_t u = em << 13;
    float f;
    std::memcpy(&f, &u, 4);
    f *= 5.192296858534828e33f;  // 2^112
    std::uint32_t r;
    std::memcpy(&r, &f, 4);
    r = em >= 0x7c00u ? (u | 0x7f800000u) : r;
    r |= static_cast<std::uint32_t>(bits & 0x8000u) << 16;
    std::memcpy(&f, &r, 4);
    return f;
  }
};
static_assert(sizeof(fp16) == 2 && std::is_trivially_copyable_v<fp16>);
template <> struct dtype_code<fp16> : std::integral_constant<int, kFloat16> {};

template <> struct dtype_code<bf16> : std::integral_constant<int, kBfloat16> {};

}  // namespace gk
