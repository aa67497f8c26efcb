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

// ---- 16-float vectors for the AVX-512 path ------------------------------------------------------
// A 64-byte vector is one zmm register where AVX-512 is enabled, but GCC lowers it badly for AVX2
// (measured 6x slower than vf on a silu loop: spills), so it must only be used in functions
// compiled for x86-64-v4: GK_CPU_WIDE below, picked at run time with cpu_wide() (target_clones
// cannot pick the vector width per clone). Code written over a lane type V (load_as<V>, store,
// hsum, and the templates of common/math.h) serves both widths.
typedef float vf16 __attribute__((vector_size(64)));
typedef std::int32_t vi16 __attribute__((vector_size(64)));

template <>
struct FloatLanes<vf16> {
  using Int = vi16;
  static GK_VINLINE vi16 to_int(vf16 x) { return __builtin_convertvector(x, vi16); }
  static GK_VINLINE vi16 to_bits(vf16 x) { return (vi16)x; }
  static GK_VINLINE vf16 from_bits(vi16 b) { return (vf16)b; }
};

template <typename V>
GK_VINLINE V load_as(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
GK_VINLINE void store(float* p, vf16 v) { std::memcpy(p, &v, sizeof(v)); }
GK_VINLINE float hsum(vf16 v) {
  float s = 0.f;
  for (int l = 0; l < 16; ++l) s += v[l];
  return s;
}
template <typename V>
constexpr int lanes_of = static_cast<int>(sizeof(V) / sizeof(float));

// GK_CPU_WIDE: a function compiled for AVX-512 only (call it only where cpu_wide() is true).
// Absent when the build leaves the AVX-512 clone out (GANKERN_CPU_CLONES=v3 / none).
// GK_CPU_CLONES_NARROW: the clones of the 8-float body of a function that also has a GK_CPU_WIDE
// body (AVX-512 CPUs take that one, so its narrow form needs no AVX-512 clone).
#if GK_CPU_HAND_SIMD && !defined(GK_CPU_CLONES_V3)
#define GK_CPU_WIDE_BUILT 1
#define GK_CPU_WIDE __attribute__((target("arch=x86-64-v4")))
#define GK_CPU_CLONES_NARROW __attribute__((target_clones("arch=x86-64-v3", "default")))
inline bool cpu_wide() {
  static const bool wide = __builtin_cpu_supports("x86-64-v4");
  return wide;
}
#else
#define GK_CPU_WIDE_BUILT 0
#define GK_CPU_WIDE
#define GK_CPU_CLONES_NARROW GK_CPU_CLONES
inline bool cpu_wide() { return false; }
#endif

}  // namespace gk
