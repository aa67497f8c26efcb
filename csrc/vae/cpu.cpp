// VAE sampling on the CPU. Normals come in L1-sized tiles (csrc/random/cpu.cpp); the fused ops
// consume a tile while it is still in L1, so eps never reaches memory. The thread pool (common/thread_pool.h) splits the elements
// into fixed blocks of kKlBlockCpu, which also makes the KL partial sums independent of the thread
// count.
// The segment loops are plain C++ that GCC vectorizes in every GK_CPU_CLONES clone, exp by the one
// common exp_f32 (common/math.h); they rely on -fno-trapping-math (CMakeLists.txt) to vectorize
// their float selects.
#include <algorithm>
#include <cstring>
#include <type_traits>

#include "common/activations.h"
#include "common/cpu_convert.h"
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
GK_CPU_CLONES void forward_segment(const float* __restrict mu, const float* __restrict lv,
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
GK_CPU_CLONES void backward_segment(const float* __restrict dz, const float* __restrict gkl,
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

// S: the storage type of mu, logvar and the outputs (float, bf16, fp16); math in fp32. A half-type
// segment (at most one tile) is converted into float buffers, run by the fp32 loop, and its outputs
// converted back (common/cpu_convert.h). The KL partials stay float64 whatever S is.
static_assert(kTile <= kConvertChunk, "a segment fits the conversion buffers");

template <typename S>
void forward_impl(const ForwardParams& fp) {
  const Layout L = layout_of(fp);
  const Sampling p = sampling_of(fp);
  const std::int64_t n = L.rows * L.inner;
  const S* mu = fp.mu.as<const S>("mu");
  const S* lv = fp.logvar.as<const S>("logvar");
  S* z = fp.z.as<S>("z");
  S* kl = fp.kl.as<S>("kl");
  double* kl_partials = fp.kl_partials.as<double>("kl_partials");
  advise_huge_pages(z, n * static_cast<std::int64_t>(sizeof(S)));
  advise_huge_pages(kl, n * static_cast<std::int64_t>(sizeof(S)));
  auto run = [&](auto zt, auto klt, auto sumt) {
    constexpr bool kZ = decltype(zt)::value, kKl = decltype(klt)::value, kSum = decltype(sumt)::value;
    parallel_blocks(n, [&](std::int64_t blk, std::int64_t b0, std::int64_t b1) {
      alignas(64) float eps[kTile];
      Lanes acc{};
      for (std::int64_t t = b0; t < b1; t += kTile) {
        const std::int64_t len = std::min<std::int64_t>(kTile, b1 - t);
        if constexpr (kZ) randn_elements(p.seed, p.offset, t, len, eps);
        for_each_row_run(L, t, t + len, [&](std::int64_t i, std::int64_t seg, std::int64_t om, std::int64_t ol) {
          const float* e = eps + (i - t);
          if constexpr (std::is_same_v<S, float>) {
            forward_segment<kZ, kKl, kSum>(mu + om, lv + ol, e, kZ ? z + i : nullptr, kKl ? kl + i : nullptr, seg,
                                           p.lv_lo, p.lv_hi, &acc);
          } else {
            alignas(64) float muf[kTile], lvf[kTile], zf[kZ ? kTile : 1], klf[kKl ? kTile : 1];
            to_float(mu + om, muf, seg);
            to_float(lv + ol, lvf, seg);
            forward_segment<kZ, kKl, kSum>(muf, lvf, e, zf, klf, seg, p.lv_lo, p.lv_hi, &acc);
            if constexpr (kZ) from_float(zf, z + i, seg);
            if constexpr (kKl) from_float(klf, kl + i, seg);
          }
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

template <typename S>
void backward_impl(const BackwardParams& bp) {
  const Layout L = layout_of(bp);
  const Sampling p = sampling_of(bp);
  const std::int64_t n = L.rows * L.inner;
  const S* dz = bp.dz.as<const S>("dz");
  const Grad g{bp.gkl.as<const float>("gkl"), bp.gkl_elementwise, bp.gkl_scale};
  const S* mu = bp.mu.as<const S>("mu");
  const S* lv = bp.logvar.as<const S>("logvar");
  S* dmu = bp.dmu.as<S>("dmu");
  S* dlv = bp.dlv.as<S>("dlv");
  advise_huge_pages(dmu, n * static_cast<std::int64_t>(sizeof(S)));
  advise_huge_pages(dlv, n * static_cast<std::int64_t>(sizeof(S)));
  auto run = [&](auto zt, auto klt, auto elemt, auto dmut) {
    constexpr bool kZ = decltype(zt)::value, kKl = decltype(klt)::value;
    constexpr bool kElem = decltype(elemt)::value, kDmu = decltype(dmut)::value;
    parallel_blocks(n, [&](std::int64_t, std::int64_t b0, std::int64_t b1) {
      alignas(64) float eps[kTile];
      for (std::int64_t t = b0; t < b1; t += kTile) {
        const std::int64_t len = std::min<std::int64_t>(kTile, b1 - t);
        if constexpr (kZ) randn_elements(p.seed, p.offset, t, len, eps);
        for_each_row_run(L, t, t + len, [&](std::int64_t i, std::int64_t seg, std::int64_t om, std::int64_t ol) {
          const float* e = eps + (i - t);
          const float* gk = kElem ? g.gkl + i : g.gkl;
          if constexpr (std::is_same_v<S, float>) {
            backward_segment<kZ, kKl, kElem, kDmu>(kZ ? dz + i : nullptr, gk, g.gkl_scale, mu + om, lv + ol, e,
                                                   kDmu ? dmu + i : nullptr, dlv + i, seg, p.lv_lo, p.lv_hi);
          } else {
            alignas(64) float dzf[kZ ? kTile : 1], muf[kTile], lvf[kTile], dmuf[kDmu ? kTile : 1], dlvf[kTile];
            if constexpr (kZ) to_float(dz + i, dzf, seg);
            to_float(mu + om, muf, seg);
            to_float(lv + ol, lvf, seg);
            backward_segment<kZ, kKl, kElem, kDmu>(dzf, gk, g.gkl_scale, muf, lvf, e, dmuf, dlvf, seg, p.lv_lo,
                                                   p.lv_hi);
            if constexpr (kDmu) from_float(dmuf, dmu + i, seg);
            from_float(dlvf, dlv + i, seg);
          }
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

}  // namespace

void forward(const ForwardParams& fp, Stream) {
  check_args("vae_forward", fp.mu, fp.logvar, fp.rows * fp.inner, {&fp.z, &fp.kl});
  dispatch_types<float, bf16, fp16>(fp.mu.dtype, "vae_forward", [&](auto tag) { forward_impl<decltype(tag)>(fp); });
}

void backward(const BackwardParams& bp, Stream) {
  check_args("vae_backward", bp.mu, bp.logvar, bp.rows * bp.inner, {&bp.dz, &bp.dmu, &bp.dlv});
  dispatch_types<float, bf16, fp16>(bp.mu.dtype, "vae_backward", [&](auto tag) { backward_impl<decltype(tag)>(bp); });
}

}  // namespace gk::vae
