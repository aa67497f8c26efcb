// Emulator stand-in for cuda_bf16.h: bfloat16 storage, the top half of an fp32; conversions rounded
// to nearest even with NaN kept quiet, as __float2bfloat16_rn.
#pragma once
#include <cstdint>
#include <cstring>

#include "emulator/runtime.h"

struct __nv_bfloat16 {
  std::uint16_t x;
};

inline float __bfloat162float(__nv_bfloat16 h) {
  const std::uint32_t u = static_cast<std::uint32_t>(h.x) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline __nv_bfloat16 __float2bfloat16_rn(float v) {
  std::uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {static_cast<std::uint16_t>((u >> 16) | 0x40u)};  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return {static_cast<std::uint16_t>(u >> 16)};
}
