// Explicit 8-float vectors for CPU loops GCC will not vectorize on its own (norm's reductions and
// activations): GCC vector extensions, AVX2 in the x86-64-v3/v4 clones of GK_CPU_CLONES, two SSE
// registers in the baseline one. The math of common/math.h and common/activations.h takes a vf
// through the FloatLanes specialization below. CPU only.
#pragma once
#include <cstdint>
#include <cstring>

// Every helper taking or returning a vector is force-inlined: an out-of-line call from an AVX clone
// into a helper compiled for the baseline target passes 32-byte vectors by a different ABI and
// reads garbage (GCC's -Wpsabi warning). Inlined, each clone compiles the helper for its own ISA.
#define GK_VINLINE inline __attribute__((always_inline))
#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

#include "common/math.h"  // after the pragma: its templates are instantiated for vf too

namespace gk {

typedef float vf __attribute__((vector_size(32)));
typedef std::int32_t vi __attribute__((vector_size(32)));
constexpr int kV = 8;

template <>
struct FloatLanes<vf> {
  using Int = vi;
  static GK_VINLINE vi to_int(vf x) { return __builtin_convertvector(x, vi); }
  static GK_VINLINE vi to_bits(vf x) { return (vi)x; }  // a vector cast reinterprets the bits
  static GK_VINLINE vf from_bits(vi b) { return (vf)b; }
};

GK_VINLINE vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
GK_VINLINE void store(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }
GK_VINLINE float hsum(vf v) {
  float s = 0.f;
  for (int l = 0; l < kV; ++l) s += v[l];
  return s;
}

}  // namespace gk
