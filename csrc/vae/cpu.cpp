// VAE sampling on the CPU. Normals are made in L1-sized tiles of kTile elements (AVX2 intrinsics
// where the CPU has them, else portable code GCC vectorizes); the fused ops consume a tile while it
// is still in L1, so eps never reaches memory. The thread pool splits the elements into fixed blocks of
// kKlBlock, which also makes the KL partial sums independent of the thread count.
// The portable loops rely on -fno-trapping-math (CMakeLists.txt) to vectorize their float selects.
#include <algorithm>
#include <cstring>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

#include "common/activations.h"
#include "common/cpu_memory.h"
#include "common/thread_pool.h"
#include "vae/vae.h"

namespace gk::vae {
namespace {

constexpr int kTileCounters = 256;
constexpr int kTile = 4 * kTileCounters;  // elements
constexpr int kLanes = 16;                // independent fp32 accumulators: vectorizable, fixed order
static_assert(kKlBlock % kTile == 0, "tiles must not straddle KL blocks");
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

// Normals of elements [e0, e0 + len), e0 % 4 == 0, len <= kTile, written to out[0 .. len).
inline void randn_elements(std::uint64_t seed, std::uint64_t offset, std::int64_t e0, std::int64_t len, float* out) {
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

struct Lanes {
  float v[kLanes];
};

template <bool kZ, bool kKl, bool kSum>
GK_CPU_CLONES void forward_segment_portable(const float* __restrict mu, const float* __restrict lv,
                                            const float* __restrict eps, float* __restrict z,
                                            float* __restrict kl, std::int64_t len, float lo, float hi,
                                            Lanes* __restrict acc) {
  auto one = [&](std::int64_t i, int lane) {
    const float m = mu[i];
    const float v = clamp_lv(lv[i], lo, hi);
    const float s = exp_f32(0.5f * v);
    if constexpr (kZ) z[i] = m + s * eps[i];
    if constexpr (kKl || kSum) {
      const float t = kl_term(m, v, s * s);
      if constexpr (kKl) kl[i] = t;
      if constexpr (kSum) acc->v[lane] += t;
    }
  };
  std::int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes)
    for (int l = 0; l < kLanes; ++l) one(i + l, l);
  for (int l = 0; i < len; ++i, ++l) one(i, l);
}

template <bool kZ, bool kKl, bool kKlElem, bool kDmu>
GK_CPU_CLONES void backward_segment_portable(const float* __restrict dz, const float* __restrict gkl,
                                             float gscale, const float* __restrict mu, const float* __restrict lv,
                                             const float* __restrict eps, float* __restrict dmu,
                                             float* __restrict dlv, std::int64_t len, float lo, float hi) {
  const float gconst = kKl && !kKlElem ? gscale * gkl[0] : 0.f;
  for (std::int64_t i = 0; i < len; ++i) {
    const float raw = lv[i];
    const float v = clamp_lv(raw, lo, hi);
    const float s = exp_f32(0.5f * v);
    float gm = 0.f, gv = 0.f;
    if constexpr (kKl) {
      const float g = kKlElem ? gscale * gkl[i] : gconst;
      gm = g * mu[i];
      gv = g * 0.5f * (s * s - 1.0f);
    }
    if constexpr (kZ) {
      gm += dz[i];
      gv += dz[i] * eps[i] * 0.5f * s;
    }
    if constexpr (kDmu) dmu[i] = gm;
    dlv[i] = (raw >= lo && raw <= hi) ? gv : 0.0f;  // torch.clamp's inclusive pass-through mask
  }
}

#ifdef GK_HAVE_AVX2_PHILOX
// exp_f32 (Cephes expf), 8 lanes, with the same overflow/underflow/NaN rules.
GK_AVX2_FMA inline __m256 exp8(__m256 x) {
  const __m256 hi = _mm256_set1_ps(88.72283905206835f), lo = _mm256_set1_ps(-87.3365447504019f);
  __m256 xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
  const __m256 nan = _mm256_cmp_ps(x, x, _CMP_UNORD_Q);
  xc = _mm256_andnot_ps(nan, xc);
  const __m256 n = _mm256_floor_ps(_mm256_fmadd_ps(xc, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f)));
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), xc);
  r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500E-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
  __m256 y = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0f));
  // 2^n in two steps (n/2 and n - n/2), so n = 128 (x right at hi) does not overflow the exponent.
  const __m256i ni = _mm256_cvtps_epi32(n);
  const __m256i h = _mm256_srai_epi32(ni, 1);
  const __m256i bias = _mm256_set1_epi32(127);
  y = _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(h, bias), 23)));
  y = _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, h), bias), 23)));
  y = _mm256_blendv_ps(y, _mm256_set1_ps(INFINITY), _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
  y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
  return _mm256_blendv_ps(y, x, nan);
}

// torch.clamp: NaN passes (max/min return their second operand when either is NaN).
GK_AVX2_FMA inline __m256 clamp8(__m256 v, __m256 lo, __m256 hi) { return _mm256_min_ps(hi, _mm256_max_ps(lo, v)); }

template <bool kZ, bool kKl, bool kSum>
GK_AVX2_FMA inline void forward_step8(const float* __restrict mu, const float* __restrict lv,
                                      const float* __restrict eps, float* __restrict z, float* __restrict kl,
                                      __m256 vlo, __m256 vhi, __m256* acc) {
  const __m256 half = _mm256_set1_ps(0.5f);
  const __m256 m = _mm256_loadu_ps(mu);
  const __m256 v = clamp8(_mm256_loadu_ps(lv), vlo, vhi);
  const __m256 s = exp8(_mm256_mul_ps(half, v));
  if constexpr (kZ) _mm256_storeu_ps(z, _mm256_fmadd_ps(s, _mm256_loadu_ps(eps), m));
  if constexpr (kKl || kSum) {
    // 0.5 * (mu^2 + var - 1 - lv), kl_term's order
    const __m256 t = _mm256_mul_ps(
        half, _mm256_sub_ps(_mm256_sub_ps(_mm256_fmadd_ps(m, m, _mm256_mul_ps(s, s)), _mm256_set1_ps(1.0f)), v));
    if constexpr (kKl) _mm256_storeu_ps(kl, t);
    if constexpr (kSum) *acc = _mm256_add_ps(*acc, t);
  }
}

template <bool kZ, bool kKl, bool kSum>
GK_AVX2_FMA void forward_segment_avx2(const float* __restrict mu, const float* __restrict lv,
                                      const float* __restrict eps, float* __restrict z, float* __restrict kl,
                                      std::int64_t len, float lo, float hi, Lanes* __restrict acc) {
  const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
  __m256 acc0 = _mm256_loadu_ps(acc->v), acc1 = _mm256_loadu_ps(acc->v + 8);
  std::int64_t i = 0;
  for (; i + 16 <= len; i += 16) {  // two accumulators: the adds do not wait on each other
    forward_step8<kZ, kKl, kSum>(mu + i, lv + i, eps + i, z + i, kl + i, vlo, vhi, &acc0);
    forward_step8<kZ, kKl, kSum>(mu + i + 8, lv + i + 8, eps + i + 8, z + i + 8, kl + i + 8, vlo, vhi, &acc1);
  }
  if (i + 8 <= len) {
    forward_step8<kZ, kKl, kSum>(mu + i, lv + i, eps + i, z + i, kl + i, vlo, vhi, &acc0);
    i += 8;
  }
  _mm256_storeu_ps(acc->v, acc0);
  _mm256_storeu_ps(acc->v + 8, acc1);
  if (i < len)
    forward_segment_portable<kZ, kKl, kSum>(mu + i, lv + i, eps + i, z + i, kl + i, len - i, lo, hi, acc);
}

template <bool kZ, bool kKl, bool kKlElem, bool kDmu>
GK_AVX2_FMA void backward_segment_avx2(const float* __restrict dz, const float* __restrict gkl, float gscale,
                                       const float* __restrict mu, const float* __restrict lv,
                                       const float* __restrict eps, float* __restrict dmu, float* __restrict dlv,
                                       std::int64_t len, float lo, float hi) {
  const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi), half = _mm256_set1_ps(0.5f);
  const __m256 one = _mm256_set1_ps(1.0f), vscale = _mm256_set1_ps(gscale);
  const __m256 gconst = _mm256_set1_ps(kKl && !kKlElem ? gscale * gkl[0] : 0.f);
  std::int64_t i = 0;
  for (; i + 8 <= len; i += 8) {
    const __m256 raw = _mm256_loadu_ps(lv + i);
    const __m256 v = clamp8(raw, vlo, vhi);
    const __m256 s = exp8(_mm256_mul_ps(half, v));
    __m256 gm = _mm256_setzero_ps(), gv = _mm256_setzero_ps();
    if constexpr (kKl) {
      const __m256 g = kKlElem ? _mm256_mul_ps(vscale, _mm256_loadu_ps(gkl + i)) : gconst;
      gm = _mm256_mul_ps(g, _mm256_loadu_ps(mu + i));
      gv = _mm256_mul_ps(_mm256_mul_ps(g, half), _mm256_fmsub_ps(s, s, one));
    }
    if constexpr (kZ) {
      const __m256 d = _mm256_loadu_ps(dz + i);
      gm = _mm256_add_ps(gm, d);
      gv = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_mul_ps(d, _mm256_loadu_ps(eps + i)), half), s, gv);
    }
    if constexpr (kDmu) _mm256_storeu_ps(dmu + i, gm);
    const __m256 pass = _mm256_and_ps(_mm256_cmp_ps(raw, vlo, _CMP_GE_OQ), _mm256_cmp_ps(raw, vhi, _CMP_LE_OQ));
    _mm256_storeu_ps(dlv + i, _mm256_and_ps(pass, gv));
  }
  if (i < len)
    backward_segment_portable<kZ, kKl, kKlElem, kDmu>(kZ ? dz + i : nullptr, kKlElem ? gkl + i : gkl, gscale,
                                                      mu + i, lv + i, eps + i, kDmu ? dmu + i : nullptr, dlv + i,
                                                      len - i, lo, hi);
}
#endif

template <bool kZ, bool kKl, bool kSum>
inline void forward_segment(const float* mu, const float* lv, const float* eps, float* z, float* kl, std::int64_t len,
                            float lo, float hi, Lanes* acc) {
#ifdef GK_HAVE_AVX2_PHILOX
  if (kCpuHasAvx2 && g_allow_simd) return forward_segment_avx2<kZ, kKl, kSum>(mu, lv, eps, z, kl, len, lo, hi, acc);
#endif
  forward_segment_portable<kZ, kKl, kSum>(mu, lv, eps, z, kl, len, lo, hi, acc);
}

template <bool kZ, bool kKl, bool kKlElem, bool kDmu>
inline void backward_segment(const float* dz, const float* gkl, float gscale, const float* mu, const float* lv,
                             const float* eps, float* dmu, float* dlv, std::int64_t len, float lo, float hi) {
#ifdef GK_HAVE_AVX2_PHILOX
  if (kCpuHasAvx2 && g_allow_simd)
    return backward_segment_avx2<kZ, kKl, kKlElem, kDmu>(dz, gkl, gscale, mu, lv, eps, dmu, dlv, len, lo, hi);
#endif
  backward_segment_portable<kZ, kKl, kKlElem, kDmu>(dz, gkl, gscale, mu, lv, eps, dmu, dlv, len, lo, hi);
}

// Calls f(i, len, row_offset_mu, row_offset_lv) for each run of [i0, i1) that stays inside one row.
template <typename F>
inline void for_each_row_run(const Layout& L, std::int64_t i0, std::int64_t i1, F&& f) {
  std::int64_t i = i0;
  while (i < i1) {
    const std::int64_t row = i / L.inner, col = i - row * L.inner;
    const std::int64_t len = std::min(L.inner - col, i1 - i);
    f(i, len, row * L.mu_rs + col, row * L.lv_rs + col);
    i += len;
  }
}

// Blocks are handed out dynamically: when another process holds one of the cores (common on small
// shared machines), a static split would make the whole op wait for the descheduled half. Which
// thread runs a block never changes its result (KL partials are per block), so this stays
// deterministic. Below kParallelBlocks (1M elements, ~1 ms on one core) the op runs on the calling
// thread: waking a pool thread that has lost its core cost 4-20 ms (scheduler ticks) on the shared
// 2-core VM this was tuned on, far more than the work.
constexpr std::int64_t kParallelBlocks = 64;

template <typename F>
inline void parallel_blocks(std::int64_t n, F&& f) {
  const std::int64_t nblocks = (n + kKlBlock - 1) / kKlBlock;
  parallel_for(nblocks, 1, [&](std::int64_t blk) { f(blk, blk * kKlBlock, std::min(n, (blk + 1) * kKlBlock)); },
               nblocks >= kParallelBlocks);
}

}  // namespace

void set_cpu_simd(bool enabled) { g_allow_simd = enabled; }

void randn_counters_cpu(std::uint64_t seed, std::uint64_t counter0, std::int64_t m, float* out) {
  for (std::int64_t k = 0; k < m; k += kTileCounters) {
    const int mk = static_cast<int>(std::min<std::int64_t>(kTileCounters, m - k));
    randn_tile(seed, counter0 + static_cast<std::uint64_t>(k), mk, out + 4 * k);
  }
}

void randn_cpu(float* out, std::int64_t n, std::uint64_t seed, std::uint64_t offset) {
  advise_huge_pages(out, n * 4);
  parallel_blocks(n, [&](std::int64_t, std::int64_t b0, std::int64_t b1) {
    for (std::int64_t t = b0; t < b1; t += kTile)
      randn_elements(seed, offset, t, std::min<std::int64_t>(kTile, b1 - t), out + t);
  });
}

void forward_cpu(const float* mu, const float* lv, float* z, float* kl, double* kl_partials, const Layout& L,
                 const Params& p) {
  const std::int64_t n = L.rows * L.inner;
  advise_huge_pages(z, n * 4);
  advise_huge_pages(kl, n * 4);
  auto run = [&](auto zt, auto klt, auto sumt) {
    constexpr bool kZ = decltype(zt)::value, kKl = decltype(klt)::value, kSum = decltype(sumt)::value;
    parallel_blocks(n, [&](std::int64_t blk, std::int64_t b0, std::int64_t b1) {
      alignas(64) float eps[kTile];
      Lanes acc{};
      for (std::int64_t t = b0; t < b1; t += kTile) {
        const std::int64_t len = std::min<std::int64_t>(kTile, b1 - t);
        if constexpr (kZ) randn_elements(p.seed, p.offset, t, len, eps);
        for_each_row_run(L, t, t + len, [&](std::int64_t i, std::int64_t seg, std::int64_t om, std::int64_t ol) {
          forward_segment<kZ, kKl, kSum>(mu + om, lv + ol, eps + (i - t), kZ ? z + i : nullptr, kKl ? kl + i : nullptr,
                                         seg, p.lv_lo, p.lv_hi, &acc);
        });
      }
      if constexpr (kSum) {
        double s = 0.0;
        for (int l = 0; l < kLanes; ++l) s += acc.v[l];
        kl_partials[blk] = s;
      }
    });
  };
  const bool hz = z != nullptr, hk = kl != nullptr, hs = kl_partials != nullptr;
  using T = std::true_type;
  using F = std::false_type;
  if (hz && hk && hs) run(T{}, T{}, T{});
  else if (hz && hk) run(T{}, T{}, F{});
  else if (hz && hs) run(T{}, F{}, T{});
  else if (hz) run(T{}, F{}, F{});
  else if (hk && hs) run(F{}, T{}, T{});
  else if (hk) run(F{}, T{}, F{});
  else if (hs) run(F{}, F{}, T{});
}

void backward_cpu(const float* dz, const Grad& g, const float* mu, const float* lv, float* dmu, float* dlv,
                  const Layout& L, const Params& p) {
  const std::int64_t n = L.rows * L.inner;
  advise_huge_pages(dmu, n * 4);
  advise_huge_pages(dlv, n * 4);
  auto run = [&](auto zt, auto klt, auto elemt, auto dmut) {
    constexpr bool kZ = decltype(zt)::value, kKl = decltype(klt)::value;
    constexpr bool kElem = decltype(elemt)::value, kDmu = decltype(dmut)::value;
    parallel_blocks(n, [&](std::int64_t, std::int64_t b0, std::int64_t b1) {
      alignas(64) float eps[kTile];
      for (std::int64_t t = b0; t < b1; t += kTile) {
        const std::int64_t len = std::min<std::int64_t>(kTile, b1 - t);
        if constexpr (kZ) randn_elements(p.seed, p.offset, t, len, eps);
        for_each_row_run(L, t, t + len, [&](std::int64_t i, std::int64_t seg, std::int64_t om, std::int64_t ol) {
          backward_segment<kZ, kKl, kElem, kDmu>(kZ ? dz + i : nullptr, kElem ? g.gkl + i : g.gkl, g.gkl_scale,
                                                 mu + om, lv + ol, eps + (i - t), kDmu ? dmu + i : nullptr, dlv + i,
                                                 seg, p.lv_lo, p.lv_hi);
        });
      }
    });
  };
  using T = std::true_type;
  using F = std::false_type;
  const bool hz = dz != nullptr, hk = g.gkl != nullptr, he = g.gkl_elementwise, hd = dmu != nullptr;
  if (hz && !hk) {
    if (hd) run(T{}, F{}, F{}, T{});
    else run(T{}, F{}, F{}, F{});
  } else if (hz && hk) {
    if (he) run(T{}, T{}, T{}, T{});
    else run(T{}, T{}, F{}, T{});
  } else if (hk) {
    if (he) run(F{}, T{}, T{}, T{});
    else run(F{}, T{}, F{}, T{});
  }
}

}  // namespace gk::vae
