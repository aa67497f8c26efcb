// VAE sampling on the CPU. The normals are made in L1-sized tiles of kTile elements: a loop over
// Philox counters that GCC vectorizes (widening multiplies, the branch-free log/sincos of
// common/philox.h) into four component arrays, then interleaved into element order. The fused ops
// consume a tile while it is still in L1, so eps never reaches memory.
// OpenMP splits the elements into fixed blocks of kKlBlock, which also makes the KL partial sums
// independent of the thread count.
#include <algorithm>
#include <cstring>

#include "common/activations.h"
#include "vae/vae.h"

namespace gk::vae {
namespace {

constexpr int kTileCounters = 256;
constexpr int kTile = 4 * kTileCounters;  // elements
constexpr int kLanes = 16;                // independent fp32 accumulators: vectorizable, fixed order
static_assert(kKlBlock % kTile == 0, "tiles must not straddle KL blocks");

// out[0 .. 4m) = the normals of counters counter0 .. counter0 + m - 1, m <= kTileCounters.
GK_CPU_CLONES void randn_tile(std::uint64_t seed, std::uint64_t counter0, int m, float* __restrict out) {
  alignas(64) float a[kTileCounters], b[kTileCounters], c[kTileCounters], d[kTileCounters];
  for (int k = 0; k < m; ++k) {
    std::uint32_t w[4];
    philox4x32_10(seed, counter0 + static_cast<std::uint64_t>(k), w);
    box_muller(uint_to_uniform(w[0]), uint_to_uniform(w[1]), &a[k], &b[k]);
    box_muller(uint_to_uniform(w[2]), uint_to_uniform(w[3]), &c[k], &d[k]);
  }
  for (int k = 0; k < m; ++k) {
    out[4 * k + 0] = a[k];
    out[4 * k + 1] = b[k];
    out[4 * k + 2] = c[k];
    out[4 * k + 3] = d[k];
  }
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
GK_CPU_CLONES void forward_segment(const float* __restrict mu, const float* __restrict lv,
                                   const float* __restrict eps, float* __restrict z, float* __restrict kl,
                                   std::int64_t len, float lo, float hi, Lanes* __restrict acc) {
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

template <bool kZ>
GK_CPU_CLONES void backward_segment(const float* __restrict dz, const float* __restrict gkl, float gscale,
                                    const float* __restrict mu, const float* __restrict lv,
                                    const float* __restrict eps, float* __restrict dmu, float* __restrict dlv,
                                    std::int64_t len, float lo, float hi) {
  for (std::int64_t i = 0; i < len; ++i) {
    const float raw = lv[i];
    const float v = clamp_lv(raw, lo, hi);
    const float s = exp_f32(0.5f * v);
    const float g = gkl ? gscale * gkl[i] : gscale;
    float gm = g * mu[i];
    float gv = g * 0.5f * (s * s - 1.0f);
    if constexpr (kZ) {
      gm += dz[i];
      gv += dz[i] * eps[i] * 0.5f * s;
    }
    dmu[i] = gm;
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

template <typename F>
inline void parallel_blocks(std::int64_t n, F&& f) {
  const std::int64_t nblocks = (n + kKlBlock - 1) / kKlBlock;
#pragma omp parallel for schedule(static)
  for (std::int64_t blk = 0; blk < nblocks; ++blk) f(blk, blk * kKlBlock, std::min(n, (blk + 1) * kKlBlock));
}

}  // namespace

void randn_cpu(float* out, std::int64_t n, std::uint64_t seed, std::uint64_t offset) {
  parallel_blocks(n, [&](std::int64_t, std::int64_t b0, std::int64_t b1) {
    for (std::int64_t t = b0; t < b1; t += kTile) randn_elements(seed, offset, t, std::min<std::int64_t>(kTile, b1 - t), out + t);
  });
}

void forward_cpu(const float* mu, const float* lv, float* z, float* kl, double* kl_partials, const Layout& L,
                 const Params& p) {
  const std::int64_t n = L.rows * L.inner;
  auto run = [&](auto zt, auto klt, auto sumt) {
    constexpr bool kZ = decltype(zt)::value, kKl = decltype(klt)::value, kSum = decltype(sumt)::value;
    parallel_blocks(n, [&](std::int64_t blk, std::int64_t b0, std::int64_t b1) {
      alignas(64) float eps[kTile];
      Lanes acc{};
      for (std::int64_t t = b0; t < b1; t += kTile) {
        const std::int64_t len = std::min<std::int64_t>(kTile, b1 - t);
        if constexpr (kZ) randn_elements(p.seed, p.offset, t, len, eps);
        for_each_row_run(L, t, t + len, [&](std::int64_t i, std::int64_t seg, std::int64_t om, std::int64_t ol) {
          forward_segment<kZ, kKl, kSum>(mu + om, lv + ol, eps + (i - t), z + i, kl + i, seg, p.lv_lo, p.lv_hi, &acc);
        });
      }
      if constexpr (kSum) {
        double s = 0.0;
        for (int l = 0; l < kLanes; ++l) s += acc.v[l];
        kl_partials[blk] = s;
      }
    });
  };
  // kl + i / z + i are only formed when used (null pointers otherwise are never dereferenced).
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

void backward_cpu(const float* dz, const float* gkl, float gkl_scale, const float* mu, const float* lv, float* dmu,
                  float* dlv, const Layout& L, const Params& p) {
  const std::int64_t n = L.rows * L.inner;
  auto run = [&](auto zt) {
    constexpr bool kZ = decltype(zt)::value;
    parallel_blocks(n, [&](std::int64_t, std::int64_t b0, std::int64_t b1) {
      alignas(64) float eps[kTile];
      for (std::int64_t t = b0; t < b1; t += kTile) {
        const std::int64_t len = std::min<std::int64_t>(kTile, b1 - t);
        if constexpr (kZ) randn_elements(p.seed, p.offset, t, len, eps);
        for_each_row_run(L, t, t + len, [&](std::int64_t i, std::int64_t seg, std::int64_t om, std::int64_t ol) {
          backward_segment<kZ>(kZ ? dz + i : nullptr, gkl ? gkl + i : nullptr, gkl_scale, mu + om, lv + ol,
                               eps + (i - t), dmu + i, dlv + i, seg, p.lv_lo, p.lv_hi);
        });
      }
    });
  };
  if (dz != nullptr) run(std::true_type{});
  else run(std::false_type{});
}

}  // namespace gk::vae
