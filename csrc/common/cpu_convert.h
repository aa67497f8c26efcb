// Bulk conversions between float and the CPU half types (common/cpu_dtypes.h), and the chunked
// way to run a float kernel on bf16/fp16 tensors.
//
// Why not one fused loop over T: the branch-free integer rounding of cpu_dtypes.h costs ~15 vector
// instructions per 16 bf16 stores (NaN test, rounding, packing), and fp16's three-case rounding
// more; measured in cache on the AMD Zen VM (bias_act lrelu+clamp, AVX-512 clone, one thread):
// fp32 0.07 ns/element, bf16 0.16, fp16 0.6-0.8. That made bf16 compute-bound at 2 threads (1.25x
// fp32 instead of ~2x) and fp16 slower than fp32. The conversion instructions (AVX512-BF16
// vcvtne2ps2bf16, F16C vcvtps2ph/vcvtph2ps) do it in one instruction, but GCC never emits them
// from scalar code. So a kernel keeps its fp32 loop, and a half-type pass runs it over L1-resident
// chunks: convert the inputs' chunk into float buffers, run the fp32 loop, convert the output back
// (`for_each_chunk` below). The functions here pick the instruction set once, at first use.
//
// Results are the same on every path: round to nearest even like torch (c10::BFloat16 /
// c10::Half), NaN stays NaN. (vcvtne2ps2bf16 flushes float subnormals to zero; those rare vectors
// are redone by the integer rounding, so bf16 subnormals come out as torch makes them.)
#pragma once
#include <algorithm>
#include <cstdint>

#include "common/cpu_dtypes.h"
#include "common/macros.h"

#if GK_CPU_HAND_SIMD
#include <immintrin.h>
#endif

namespace gk {

// Elements per chunk of a converted pass: 4 KiB of floats per buffer, so a kernel's few buffers
// stay in L1 between the conversion and the fp32 loop.
constexpr std::int64_t kConvertChunk = 1024;

namespace convert_detail {
namespace {  // internal linkage: each module's clones and ifuncs are its own

// Portable loops: GCC vectorizes them in every clone (integer shifts, adds, blends).
template <typename T>
GK_CPU_CLONES void to_float_portable(const T* __restrict src, float* __restrict dst, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}
template <typename T>
GK_CPU_CLONES void from_float_portable(const float* __restrict src, T* __restrict dst, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(src[i]);
}

#if GK_CPU_HAND_SIMD
#define GK_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define GK_F16C __attribute__((target("avx,f16c")))

GK_AVX512_BF16 inline void from_float_avx512bf16(const float* __restrict src, bf16* __restrict dst, std::int64_t n) {
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff), min_normal = _mm512_set1_epi32(0x00800000);
  std::int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 a = _mm512_loadu_ps(src + i), b = _mm512_loadu_ps(src + i + 16);
    // lanes with a nonzero subnormal: the instruction would flush them, the integer rounding not
    const __m512i aa = _mm512_and_si512(_mm512_castps_si512(a), abs_mask);
    const __m512i ba = _mm512_and_si512(_mm512_castps_si512(b), abs_mask);
    const __mmask16 sa = _mm512_cmplt_epu32_mask(aa, min_normal) & _mm512_test_epi32_mask(aa, aa);
    const __mmask16 sb = _mm512_cmplt_epu32_mask(ba, min_normal) & _mm512_test_epi32_mask(ba, ba);
    if (__builtin_expect((sa | sb) != 0, 0)) {
      for (int k = 0; k < 32; ++k) dst[i + k] = bf16(src[i + k]);
      continue;
    }
    _mm512_storeu_si512(dst + i, (__m512i)_mm512_cvtne2ps_pbh(b, a));
  }
  for (; i < n; ++i) dst[i] = bf16(src[i]);
}

GK_F16C inline void to_float_f16c(const fp16* __restrict src, float* __restrict dst, std::int64_t n) {
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
}

GK_F16C inline void from_float_f16c(const float* __restrict src, fp16* __restrict dst, std::int64_t n) {
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  for (; i < n; ++i) dst[i] = fp16(src[i]);
}

inline bool cpu_has_avx512bf16() {
  static const bool has = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl");
  return has;
}
inline bool cpu_has_f16c() {
  static const bool has = __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
  return has;
}
#endif

}  // namespace
}  // namespace convert_detail

// dst[0 .. n) = src converted; exact (every bf16/fp16 is a float).
inline void to_float(const float* src, float* dst, std::int64_t n) { std::copy(src, src + n, dst); }
inline void to_float(const bf16* src, float* dst, std::int64_t n) {
  convert_detail::to_float_portable(src, dst, n);  // a 16-bit shift: as fast as any instruction
}
inline void to_float(const fp16* src, float* dst, std::int64_t n) {
#if GK_CPU_HAND_SIMD
  if (convert_detail::cpu_has_f16c()) return convert_detail::to_float_f16c(src, dst, n);
#endif
  convert_detail::to_float_portable(src, dst, n);
}

// dst[0 .. n) = src rounded to nearest even.
inline void from_float(const float* src, float* dst, std::int64_t n) { std::copy(src, src + n, dst); }
inline void from_float(const float* src, bf16* dst, std::int64_t n) {
#if GK_CPU_HAND_SIMD
  if (convert_detail::cpu_has_avx512bf16()) return convert_detail::from_float_avx512bf16(src, dst, n);
#endif
  convert_detail::from_float_portable(src, dst, n);
}
inline void from_float(const float* src, fp16* dst, std::int64_t n) {
#if GK_CPU_HAND_SIMD
  if (convert_detail::cpu_has_f16c()) return convert_detail::from_float_f16c(src, dst, n);
#endif
  convert_detail::from_float_portable(src, dst, n);
}

// Splits [0, n) into chunks of at most kConvertChunk elements and calls f(pos, len) for each, in
// order: the caller converts its inputs' chunk into float buffers of kConvertChunk, runs its fp32
// loop on them and converts the result back.
template <typename F>
inline void for_each_chunk(std::int64_t n, F&& f) {
  for (std::int64_t pos = 0; pos < n; pos += kConvertChunk) f(pos, std::min(kConvertChunk, n - pos));
}

}  // namespace gk
