// Emulator stand-in for cuda_fp16.h: IEEE binary16 storage, conversions rounded to nearest even
// (GCC's _Float16 arithmetic conversions, as __float2half_rn).
#pragma once
#include <cstdint>
#include <cstring>

#include "emulator/runtime.h"

struct __half {
  std::uint16_t x;
};

inline float __half2float(__half h) {
  _Float16 f;
  std::memcpy(&f, &h.x, 2);
  return static_cast<float>(f);
}

inline __half __float2half_rn(float v) {
  const _Float16 f = static_cast<_Float16>(v);
  __half h;
  std::memcpy(&h.x, &f, 2);
  return h;
}
