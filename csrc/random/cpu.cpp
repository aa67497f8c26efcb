// Counter-based normals on the CPU. Normals are made in L1-sized tiles of kTile elements (AVX2
// intrinsics where the CPU has them, else portable code GCC vectorizes), so the ops that consume
// noise (the VAE's reparameterization, the diffusion step) use a tile while it is still in L1.
// The portable loops rely on -fno-trapping-math (CMakeLists.txt) to vectorize their float selects.
#include <algorithm>
#include <cstring>
#include <type_traits>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

#include "common/cpu_convert.h"
#include "common/cpu_memory.h"
#include "common/thread_pool.h"
#include "random/random.h"

namespace gk::random {
namespace {

constexpr int kTileCounters = kTile / 4;
static_assert(kTileCounters % 16 == 0, "the AVX2 Philox fills whole groups of 16 counters");

// ---- one tile of normals: out[0 .. 4m) = the normals of counters counter0 .. counter0 + m - 1 ----
// Three steps over L1-resident component arrays: Philox words -> uniforms (u0..u3), Box-Muller
// (vectorized by GCC, see common/philox.h), interleave into element order. Philox is written with
// AVX2 intrinsics where the CPU has them: GCC's own vectorization of the 32x32->64 multiplies was
// 5x slower (it unpacks every vector to 64-bit lanes and back), and Philox is most of the work.

struct Uniforms {
  alignas(64) float u[4][kTileCounters];
};

GK_CPU_CLONES void philox_uniforms_portable(std::uint64_t seed, std::uint64_t counter0, int m,
                                            Uniforms* __restrict U) {
  for (int k = 0; k < m; ++k) {
    std::uint32_t w[4];
    philox4x32_10(seed, counter0 + static_cast<std::uint64_t>(k), w);
    for (int j = 0; j < 4; ++j) U->u[j][k] = uint_to_uniform(w[j]);
  }
}

#if defined(__GNUC__) && defined(__x86_64__)
#define GK_HAVE_AVX2_PHILOX 1
#define GK_AVX2 __attribute__((target("avx2")))

// hi and lo words of a * m for 8 lanes: products of even lanes, then of odd lanes shifted down.
GK_AVX2 inline void mulhilo8(__m256i a, __m256i m, __m256i* hi, __m256i* lo) {
  const __m256i pe = _mm256_mul_epu32(a, m);
  const __m256i po = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  *hi = _mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA);
  *lo = _mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xAA);
}

GK_AVX2 inline __m256 to_uniform8(__m256i w) {
  const __m256i x = _mm256_xor_si256(w, _mm256_srai_epi32(w, 31));  // x < 0 -> ~x
  return _mm256_mul_ps(_mm256_cvtepi32_ps(x), _mm256_set1_ps(kUniformScale));
}

// Counter words (c0, c1) of counters base .. base + 7: lanes whose low word wrapped past 2^32
// carry into the high word (64-bit counters).
GK_AVX2 inline void counter_words8(std::uint64_t base, __m256i* c0, __m256i* c1) {
  const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  const __m256i blo = _mm256_set1_epi32(static_cast<int>(static_cast<std::uint32_t>(base)));
  *c0 = _mm256_add_epi32(blo, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  const __m256i carry = _mm256_cmpgt_epi32(_mm256_xor_si256(blo, sign), _mm256_xor_si256(*c0, sign));
  *c1 = _mm256_sub_epi32(_mm256_set1_epi32(static_cast<int>(base >> 32)), carry);
}

GK_AVX2 inline void philox_round8(__m256i& c0, __m256i& c1, __m256i& c2, __m256i& c3, __m256i k0, __m256i k1) {
  __m256i hb, lb, ha, la;
  mulhilo8(c2, _mm256_set1_epi32(static_cast<int>(kPhiloxRoundB)), &hb, &lb);
  mulhilo8(c0, _mm256_set1_epi32(static_cast<int>(kPhiloxRoundA)), &ha, &la);
  c0 = _mm256_xor_si256(_mm256_xor_si256(hb, c1), k0);
  c2 = _mm256_xor_si256(_mm256_xor_si256(ha, c3), k1);
  c1 = lb;
  c3 = la;
}

GK_AVX2 void philox_uniforms_avx2(std::uint64_t seed, std::uint64_t counter0, int m, Uniforms* __restrict U) {
  __m256i key0[10], key1[10];  // the key schedule is the same for every counter
  {
    std::uint32_t k0 = static_cast<std::uint32_t>(seed), k1 = static_cast<std::uint32_t>(seed >> 32);
    for (int r = 0; r < 10; ++r, k0 += kPhiloxKeyA, k1 += kPhiloxKeyB) {
      key0[r] = _mm256_set1_epi32(static_cast<int>(k0));
      key1[r] = _mm256_set1_epi32(static_cast<int>(k1));
    }
  }
  // Two groups of 8 counters per step: each round is a chain of dependent multiplies, so two
  // independent chains keep the multiplier busy. m may end mid-group: the extra lanes land in U's
  // slack (kTileCounters is a multiple of 16).
  for (int k = 0; k < m; k += 16) {
    __m256i a0, a1, b0, b1;
    counter_words8(counter0 + static_cast<std::uint64_t>(k), &a0, &a1);
    counter_words8(counter0 + static_cast<std::uint64_t>(k + 8), &b0, &b1);
    __m256i a2 = _mm256_setzero_si256(), a3 = a2, b2 = a2, b3 = a2;
    for (int r = 0; r < 10; ++r) {
      philox_round8(a0, a1, a2, a3, key0[r], key1[r]);
      philox_round8(b0, b1, b2, b3, key0[r], key1[r]);
    }
    _mm256_store_ps(U->u[0] + k, to_uniform8(a0));
    _mm256_store_ps(U->u[1] + k, to_uniform8(a1));
    _mm256_store_ps(U->u[2] + k, to_uniform8(a2));
    _mm256_store_ps(U->u[3] + k, to_uniform8(a3));
    _mm256_store_ps(U->u[0] + k + 8, to_uniform8(b0));
    _mm256_store_ps(U->u[1] + k + 8, to_uniform8(b1));
    _mm256_store_ps(U->u[2] + k + 8, to_uniform8(b2));
    _mm256_store_ps(U->u[3] + k + 8, to_uniform8(b3));
  }
}

// The same Box-Muller as common/philox.h (log_pos_f32, sincos_2pi), 8 pairs at a time with FMA.
#define GK_AVX2_FMA __attribute__((target("avx2,fma")))

GK_AVX2_FMA inline __m256 log_pos8(__m256 x) {
  __m256i ix = _mm256_add_epi32(_mm256_castps_si256(x), _mm256_set1_epi32(0x3f800000 - 0x3f3504f3));
  const __m256 e = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srai_epi32(ix, 23), _mm256_set1_epi32(0x7f)));
  ix = _mm256_add_epi32(_mm256_and_si256(ix, _mm256_set1_epi32(0x007fffff)), _mm256_set1_epi32(0x3f3504f3));
  const __m256 m = _mm256_sub_ps(_mm256_castsi256_ps(ix), _mm256_set1_ps(1.0f));
  const __m256 z = _mm256_mul_ps(m, m);
  __m256 p = _mm256_set1_ps(7.0376836292E-2f);
  p = _mm256_fmadd_ps(p, m, _mm256_set1_ps(-1.1514610310E-1f));
  p = _mm256_fmadd_ps(p, m, _mm256_set1_ps(1.1676998740E-1f));
  p = _mm256_fmadd_ps(p, m, _mm256_set1_ps(-1.2420140846E-1f));
  p = _mm256_fmadd_ps(p, m, _mm256_set1_ps(1.4249322787E-1f));
  p = _mm256_fmadd_ps(p, m, _mm256_set1_ps(-1.6668057665E-1f));
  p = _mm256_fmadd_ps(p, m, _mm256_set1_ps(2.0000714765E-1f));
  p = _mm256_fmadd_ps(p, m, _mm256_set1_ps(-2.4999993993E-1f));
  p = _mm256_fmadd_ps(p, m, _mm256_set1_ps(3.3333331174E-1f));
  __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, m), z);
  y = _mm256_fmadd_ps(_mm256_set1_ps(-2.12194440e-4f), e, y);
  y = _mm256_fmadd_ps(_mm256_set1_ps(-0.5f), z, y);
  return _mm256_fmadd_ps(_mm256_set1_ps(0.693359375f), e, _mm256_add_ps(m, y));
}

GK_AVX2_FMA inline void sincos_2pi8(__m256 u, __m256* s, __m256* c) {
  const __m256i j = _mm256_cvttps_epi32(_mm256_fmadd_ps(u, _mm256_set1_ps(4.0f), _mm256_set1_ps(0.5f)));
  const __m256 r = _mm256_mul_ps(_mm256_fnmadd_ps(_mm256_cvtepi32_ps(j), _mm256_set1_ps(0.25f), u),
                                 _mm256_set1_ps(kTwoPi));
  const __m256 z = _mm256_mul_ps(r, r);
  __m256 sp = _mm256_fmadd_ps(_mm256_set1_ps(-1.9515295891E-4f), z, _mm256_set1_ps(8.3321608736E-3f));
  sp = _mm256_fmadd_ps(sp, z, _mm256_set1_ps(-1.6666654611E-1f));
  sp = _mm256_fmadd_ps(_mm256_mul_ps(sp, z), r, r);
  __m256 cp = _mm256_fmadd_ps(_mm256_set1_ps(2.443315711809948E-5f), z, _mm256_set1_ps(-1.388731625493765E-3f));
  cp = _mm256_fmadd_ps(cp, z, _mm256_set1_ps(4.166664568298827E-2f));
  cp = _mm256_fmadd_ps(_mm256_mul_ps(cp, z), z, _mm256_fnmadd_ps(_mm256_set1_ps(0.5f), z, _mm256_set1_ps(1.0f)));
  // Quadrant q = j & 3: swap sin/cos for odd q; negate sin for q in {2, 3}, cos for q in {1, 2}.
  const __m256 swap = _mm256_castsi256_ps(_mm256_slli_epi32(j, 31));  // sign bit = q & 1 (blendv key)
  const __m256 sv = _mm256_blendv_ps(sp, cp, swap);
  const __m256 cv = _mm256_blendv_ps(cp, sp, swap);
  const __m256 sneg = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_and_si256(j, _mm256_set1_epi32(2)), 30));
  const __m256 cneg = _mm256_castsi256_ps(
      _mm256_slli_epi32(_mm256_and_si256(_mm256_add_epi32(j, _mm256_set1_epi32(1)), _mm256_set1_epi32(2)), 30));
  *s = _mm256_xor_ps(sv, sneg);
  *c = _mm256_xor_ps(cv, cneg);
}

GK_AVX2_FMA inline void box_muller8(__m256 u1, __m256 u2, __m256* n1, __m256* n2) {
  u1 = _mm256_max_ps(u1, _mm256_set1_ps(kBoxMullerMinU));
  const __m256 r = _mm256_sqrt_ps(_mm256_mul_ps(_mm256_set1_ps(-2.0f), log_pos8(u1)));
  __m256 s, c;
  sincos_2pi8(u2, &s, &c);
  *n1 = _mm256_mul_ps(r, c);
  *n2 = _mm256_mul_ps(r, s);
}

// Box-Muller of 8 counters and their interleaving into 32 consecutive elements.
// 4x8 transpose: lane i of (a, b, c, d) -> o[4 i + 0..3]
GK_AVX2 inline void store_interleaved(float* o, __m256 a, __m256 b, __m256 c, __m256 d) {
  const __m256 ab_lo = _mm256_unpacklo_ps(a, b), ab_hi = _mm256_unpackhi_ps(a, b);
  const __m256 cd_lo = _mm256_unpacklo_ps(c, d), cd_hi = _mm256_unpackhi_ps(c, d);
  const __m256 r0 = _mm256_shuffle_ps(ab_lo, cd_lo, 0x44), r1 = _mm256_shuffle_ps(ab_lo, cd_lo, 0xEE);
  const __m256 r2 = _mm256_shuffle_ps(ab_hi, cd_hi, 0x44), r3 = _mm256_shuffle_ps(ab_hi, cd_hi, 0xEE);
  _mm256_storeu_ps(o + 0, _mm256_permute2f128_ps(r0, r1, 0x20));
  _mm256_storeu_ps(o + 8, _mm256_permute2f128_ps(r2, r3, 0x20));
  _mm256_storeu_ps(o + 16, _mm256_permute2f128_ps(r0, r1, 0x31));
  _mm256_storeu_ps(o + 24, _mm256_permute2f128_ps(r2, r3, 0x31));
}

GK_AVX2_FMA void box_muller_interleave_avx2(const Uniforms* __restrict U, int m, float* __restrict out) {
  int k = 0;
  for (; k + 16 <= m; k += 16) {  // four independent log/sqrt/sincos chains in flight
    __m256 a, b, c, d, e, f, g, h;
    box_muller8(_mm256_load_ps(U->u[0] + k), _mm256_load_ps(U->u[1] + k), &a, &b);
    box_muller8(_mm256_load_ps(U->u[2] + k), _mm256_load_ps(U->u[3] + k), &c, &d);
    box_muller8(_mm256_load_ps(U->u[0] + k + 8), _mm256_load_ps(U->u[1] + k + 8), &e, &f);
    box_muller8(_mm256_load_ps(U->u[2] + k + 8), _mm256_load_ps(U->u[3] + k + 8), &g, &h);
    store_interleaved(out + 4 * k, a, b, c, d);
    store_interleaved(out + 4 * k + 32, e, f, g, h);
  }
  for (; k + 8 <= m; k += 8) {
    __m256 a, b, c, d;
    box_muller8(_mm256_load_ps(U->u[0] + k), _mm256_load_ps(U->u[1] + k), &a, &b);
    box_muller8(_mm256_load_ps(U->u[2] + k), _mm256_load_ps(U->u[3] + k), &c, &d);
    store_interleaved(out + 4 * k, a, b, c, d);
  }
  if (k < m) {  // tail: one more vector computed into a buffer, the needed part copied
    alignas(32) float buf[32];
    __m256 a, b, c, d;
    box_muller8(_mm256_load_ps(U->u[0] + k), _mm256_load_ps(U->u[1] + k), &a, &b);
    box_muller8(_mm256_load_ps(U->u[2] + k), _mm256_load_ps(U->u[3] + k), &c, &d);
    alignas(32) float t[4][8];
    _mm256_store_ps(t[0], a); _mm256_store_ps(t[1], b); _mm256_store_ps(t[2], c); _mm256_store_ps(t[3], d);
    for (int i = 0; i < 8; ++i)
      for (int q = 0; q < 4; ++q) buf[4 * i + q] = t[q][i];
    std::memcpy(out + 4 * k, buf, sizeof(float) * 4 * (m - k));
  }
}

const bool kCpuHasAvx2 = GK_CPU_HAND_SIMD && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif

// Tests switch the SIMD paths off to check the portable code on AVX2 machines too.
bool g_allow_simd = true;

GK_CPU_CLONES void box_muller_interleave(const Uniforms* __restrict U, int m, float* __restrict out) {
  alignas(64) float a[kTileCounters], b[kTileCounters], c[kTileCounters], d[kTileCounters];
  for (int k = 0; k < m; ++k) {
    box_muller(U->u[0][k], U->u[1][k], &a[k], &b[k]);
    box_muller(U->u[2][k], U->u[3][k], &c[k], &d[k]);
  }
  for (int k = 0; k < m; ++k) {
    out[4 * k + 0] = a[k];
    out[4 * k + 1] = b[k];
    out[4 * k + 2] = c[k];
    out[4 * k + 3] = d[k];
  }
}

void randn_tile(std::uint64_t seed, std::uint64_t counter0, int m, float* out) {
  Uniforms U;
#ifdef GK_HAVE_AVX2_PHILOX
  if (kCpuHasAvx2 && g_allow_simd) {
    philox_uniforms_avx2(seed, counter0, m, &U);
    box_muller_interleave_avx2(&U, m, out);
    return;
  }
#endif
  philox_uniforms_portable(seed, counter0, m, &U);
  box_muller_interleave(&U, m, out);
}


// Blocks of elements handed out dynamically, on the calling thread below kParallelBlocks (see
// csrc/vae/cpu.cpp: parallel_blocks, the same policy).
constexpr std::int64_t kBlock = 16384;
constexpr std::int64_t kParallelBlocks = 64;

}  // namespace

// Normals of elements [e0, e0 + len), e0 % 4 == 0, len <= kTile, written to out[0 .. len).
void randn_elements(std::uint64_t seed, std::uint64_t offset, std::int64_t e0, std::int64_t len, float* out) {
  const int m = static_cast<int>((len + 3) / 4);
  const std::uint64_t c0 = offset + static_cast<std::uint64_t>(e0 / 4);  // wraps mod 2^64, as Triton's int64
  if (len % 4 == 0) {
    randn_tile(seed, c0, m, out);
  } else {  // the last counter is only partly used
    alignas(64) float buf[kTile];
    randn_tile(seed, c0, m, buf);
    std::memcpy(out, buf, sizeof(float) * len);
  }
}


void set_cpu_simd(bool enabled) { g_allow_simd = enabled; }

void randn_counters_cpu(std::uint64_t seed, std::uint64_t counter0, std::int64_t m, float* out) {
  for (std::int64_t k = 0; k < m; k += kTileCounters) {
    const int mk = static_cast<int>(std::min<std::int64_t>(kTileCounters, m - k));
    randn_tile(seed, counter0 + static_cast<std::uint64_t>(k), mk, out + 4 * k);
  }
}

// S: the output's storage type; normals are made in fp32 and rounded per tile (common/cpu_convert.h).
template <typename S>
void randn_impl(const Params& p) {
  S* out = p.out.as<S>("out");
  const std::int64_t n = p.out.numel;
  const auto seed = static_cast<std::uint64_t>(p.seed), offset = static_cast<std::uint64_t>(p.offset);
  advise_huge_pages(out, n * static_cast<std::int64_t>(sizeof(S)));
  const std::int64_t nblocks = (n + kBlock - 1) / kBlock;
  parallel_for(nblocks, 1, [&](std::int64_t blk) {
    const std::int64_t b1 = std::min(n, (blk + 1) * kBlock);
    for (std::int64_t t = blk * kBlock; t < b1; t += kTile) {
      const std::int64_t len = std::min<std::int64_t>(kTile, b1 - t);
      if constexpr (std::is_same_v<S, float>) {
        randn_elements(seed, offset, t, len, out + t);
      } else {
        alignas(64) float tile[kTile];
        randn_elements(seed, offset, t, len, tile);
        from_float(tile, out + t, len);
      }
    }
  }, nblocks >= kParallelBlocks);
}

void randn(const Params& p, Stream) {
  dispatch_types<float, bf16, fp16>(p.out.dtype, "randn", [&](auto tag) { randn_impl<decltype(tag)>(p); });
}

void set_simd(const SimdParams& p, Stream) { set_cpu_simd(p.enabled); }

}  // namespace gk::random
