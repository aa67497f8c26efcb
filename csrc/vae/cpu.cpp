// VAE sampling on the CPU. Normals come in L1-sized tiles (csrc/random/cpu.cpp); the fused ops
// consume a tile while it is still in L1, so eps never reaches memory. The thread pool (common/thread_pool.h) splits the elements
// into fixed blocks of kKlBlockCpu, which also makes the KL partial sums independent of the thread
// count.
// The portable loops rely on -fno-trapping-math (CMakeLists.txt) to vectorize their float selects.
#include <algorithm>
#include <cstring>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#endif

#include "common/activations.h"
#include "common/cpu_memory.h"
#include "common/thread_pool.h"
#include "random/random.h"
#include "vae/vae.h"

namespace gk::vae {
namespace {

constexpr int kTile = gk::random::kTile;  // elements per tile of normals
constexpr int kLanes = 16;                // independent fp32 accumulators: vectorizable, fixed order
static_assert(kKlBlockCpu % kTile == 0, "tiles must not straddle KL blocks");
using gk::random::randn_elements;

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
  const std::int64_t nblocks = (n + kKlBlockCpu - 1) / kKlBlockCpu;
  parallel_for(nblocks, 1, [&](std::int64_t blk) { f(blk, blk * kKlBlockCpu, std::min(n, (blk + 1) * kKlBlockCpu)); },
               nblocks >= kParallelBlocks);
}

}  // namespace

void forward(const ForwardParams& fp, Stream) {
  const Layout L = layout_of(fp);
  const Sampling p = sampling_of(fp);
  const std::int64_t n = L.rows * L.inner;
  check_args("vae_forward", fp.mu, fp.logvar, n, {&fp.z, &fp.kl});
  const float* mu = fp.mu.as<const float>("mu");
  const float* lv = fp.logvar.as<const float>("logvar");
  float* z = fp.z.as<float>("z");
  float* kl = fp.kl.as<float>("kl");
  double* kl_partials = fp.kl_partials.as<double>("kl_partials");
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

void backward(const BackwardParams& bp, Stream) {
  const Layout L = layout_of(bp);
  const Sampling p = sampling_of(bp);
  const std::int64_t n = L.rows * L.inner;
  check_args("vae_backward", bp.mu, bp.logvar, n, {&bp.dz, &bp.dmu, &bp.dlv});
  const float* dz = bp.dz.as<const float>("dz");
  const Grad g{bp.gkl.as<const float>("gkl"), bp.gkl_elementwise, bp.gkl_scale};
  const float* mu = bp.mu.as<const float>("mu");
  const float* lv = bp.logvar.as<const float>("logvar");
  float* dmu = bp.dmu.as<float>("dmu");
  float* dlv = bp.dlv.as<float>("dlv");
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
