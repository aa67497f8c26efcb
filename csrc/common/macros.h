// Macros shared by every native kernel. Header-only; no torch anywhere in csrc/.
#pragma once
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define GK_HOST_DEVICE __host__ __device__
#else
#define GK_HOST_DEVICE
#endif

// Hot CPU loops are compiled three times and the best version is picked when the module loads
// (GCC function multi-versioning through an ifunc): one binary, AVX-512 where the CPU has it.
// The build switch GANKERN_CPU_CLONES (setup.py) narrows the set so CI can run the other paths on
// whatever CPU it has: "v3" leaves the AVX-512 clone out, "none" compiles baseline x86-64 only
// (and turns off the hand-written AVX2 code, see GK_CPU_HAND_SIMD).
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__CUDACC__) && \
    !defined(GK_CPU_CLONES_NONE)
#if defined(GK_CPU_CLONES_V3)
#define GK_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define GK_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#endif
#define GK_CPU_HAND_SIMD 1
#else
#define GK_CPU_CLONES
#define GK_CPU_HAND_SIMD 0
#endif

namespace gk {

inline void check(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

// "<op>: <what>" as a ValueError in Python. The three-argument check builds no string unless it
// fails: use it in checks that run on every call.
[[noreturn]] inline void fail(const char* op, const std::string& what) {
  throw std::invalid_argument(std::string(op) + ": " + what);
}
inline void check(bool ok, const char* op, const char* what) {
  if (!ok) fail(op, what);
}

GK_HOST_DEVICE inline float bits_to_f32(std::int32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

#if !defined(__CUDACC__)
// Which GK_CPU_CLONES version this CPU runs, given the clones this module was built with.
inline const char* cpu_clone() {
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(GK_CPU_CLONES_NONE)
#if !defined(GK_CPU_CLONES_V3)
  if (__builtin_cpu_supports("x86-64-v4")) return "x86-64-v4";
#endif
  if (__builtin_cpu_supports("x86-64-v3")) return "x86-64-v3";
#endif
  return "x86-64 baseline";
}
#endif

}  // namespace gk

#if defined(__CUDACC__)
#include <cuda_runtime.h>
// After every launch: a CUDA error becomes a RuntimeError that names the op.
#define GK_CUDA_CHECK_LAUNCH(opname)                                                        \
  do {                                                                                      \
    cudaError_t err_ = cudaGetLastError();                                                  \
    if (err_ != cudaSuccess)                                                                \
      throw std::runtime_error(std::string("gankern.") + (opname) +                         \
                               ": CUDA kernel launch failed: " + cudaGetErrorString(err_)); \
  } while (0)
#endif
