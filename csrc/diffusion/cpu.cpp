// Diffusion kernels on the CPU: the thread pool (common/thread_pool.h) over fixed-size chunks of the flat [B, S] index space, each
// chunk split at sample boundaries into runs with constant per-sample factors, each run processed in
// L1-sized tiles by one branch-free, vectorized loop. Noise is generated per tile into a stack
// buffer (never materialized in memory). Full-size tensors are float, bf16 or fp16 (the storage type
// S), math in fp32: a half-type tile is converted into float buffers, run by the fp32 loop and its
// outputs converted back (common/cpu_convert.h); per-sample factors and sums stay fp32 / fp64.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "common/cpu_convert.h"
#include "common/philox.h"
#include "common/thread_pool.h"
#include "random/random.h"
#include "diffusion/diffusion.h"

namespace gk::diffusion {
namespace {

constexpr std::int64_t kChunk = 1 << 15;  // elements per parallel task (128 KiB of fp32 per stream)
constexpr std::int64_t kTile = 1024;      // elements per inner tile: noise / scratch buffers stay in L1
// Below this many elements one thread streams the data faster than waking a pool thread costs
// on shared, loaded cores (a futex wake-up can take milliseconds there).
constexpr std::int64_t kParallelMin = 1 << 18;

// Normals for flat indices [i0, i0 + n): element i is randn4(seed, offset + i / 4)[i % 4]. The tile
// is generated from whole counters, so buf holds (i0 % 4) leading extra values. The generator is
// randn's (csrc/random/cpu.cpp: AVX2 Philox and Box-Muller where the CPU has them).
inline void gen_normals(float* buf, std::uint64_t seed, std::uint64_t offset, std::int64_t i0, std::int64_t n) {
  const std::int64_t c0 = i0 >> 2;
  const std::int64_t m = ((i0 + n + 3) >> 2) - c0;
  random::randn_counters_cpu(seed, offset + static_cast<std::uint64_t>(c0), m, buf);
}

// One tile: the generic step on L elements with per-sample factors k (rescale), bound and div.
template <bool kGuided, bool kClamp, bool kHasHist, bool kNoise>
GK_CPU_CLONES void step_tile(float* __restrict prev, float* __restrict x0o, const float* __restrict u,
                             const float* __restrict cnd, const float* __restrict x, const float* __restrict h,
                             const float* __restrict z, const float* __restrict zs, std::int64_t L, float k,
                             float bound, float div, const float* __restrict c) {
  const float g = c[cG], pre = c[cPre], px = c[cPx], pm = c[cPm], qx = c[cQx], qm = c[cQm], q0 = c[cQ0];
  const float ca = c[cA], cb = c[cB], cc = c[cC], cd = c[cD];
  for (std::int64_t i = 0; i < L; ++i) {
    float m = u[i];
    if constexpr (kGuided) m = m + g * (cnd[i] - m);
    m *= k;
    float xp = x[i];
    if constexpr (kNoise) xp += term(pre, z[i]);
    const float x0 = step_x0<kClamp>(xp, m, px, pm, bound, div);
    const float eps = term(qx, xp) + term(qm, m) + term(q0, x0);
    float p = term(ca, xp) + term(cb, x0) + term(cc, eps);
    if constexpr (kHasHist) p += term(cd, h[i]);
    if constexpr (kNoise) p += zs[i];
    prev[i] = p;
    x0o[i] = x0;
  }
}

template <typename S, bool kGuided, bool kClamp, bool kHasHist, bool kNoise>
void step_impl(const S* mo, const S* x, const S* hist, const S* noise, const float* rescale, const float* thresh,
               S* prev, S* x0, const StepScalars& p) {
  constexpr bool kHalf = !std::is_same_v<S, float>;
  static_assert(kTile <= kConvertChunk, "a tile fits the conversion buffers");
  const std::int64_t Sn = p.per_sample, n = p.batch * Sn;
  const std::int64_t nchunks = (n + kChunk - 1) / kChunk;
  const float* c = p.c;
  // dynamic: on shared cores one thread is often descheduled; the other then takes the remaining
  // chunks instead of idling at the barrier (chunks are independent: results do not depend on it)
  parallel_for(nchunks, 1, [&](std::int64_t ch) {
    alignas(64) float zbuf[kTile + 8], zs[kTile], prev_scratch[kTile], x0_scratch[kTile];
    // half types: the tile's operands in fp32
    constexpr std::int64_t kH = kHalf ? kTile : 1;
    alignas(64) float uf[kH], cf[kGuided ? kH : 1], xf[kH], hf[kHasHist ? kH : 1], nf[kNoise ? kH : 1],
        vf[kNoise ? kH : 1];
    const std::int64_t hi = std::min(n, (ch + 1) * kChunk);
    std::int64_t pos = ch * kChunk;
    while (pos < hi) {
      const std::int64_t b = pos / Sn, r = pos - b * Sn;
      const std::int64_t run_end = std::min(hi, (b + 1) * Sn);
      const float k = (p.flags & kRescale) ? rescale[b] : 1.f;
      float bound = 0.f, div = 1.f;
      if (p.flags & kThresh) bound = div = thresh[b];
      else if (p.flags & kClip) bound = c[cClip];
      const S* u = mo + b * p.mo_stride + r;
      const S* cnd = kGuided ? mo + (p.batch + b) * p.mo_stride + r : nullptr;
      // variance channels of the conditional (or only) half
      const S* var = mo + ((kGuided ? p.batch : 0) + b) * p.mo_stride + Sn + r;
      const bool var_noise = p.flags & (kVarLearnedRange | kVarLearned);
      for (std::int64_t t0 = pos; t0 < run_end; t0 += kTile) {
        const std::int64_t L = std::min(kTile, run_end - t0), o = t0 - pos;
        // the tile's fp32 operands: the tensors themselves, or converted copies
        const float *ut, *ct = nullptr, *xt, *ht = nullptr, *vt = nullptr;
        if constexpr (kHalf) {
          to_float(u + o, uf, L);
          ut = uf;
          if constexpr (kGuided) to_float(cnd + o, cf, L), ct = cf;
          to_float(x + t0, xf, L);
          xt = xf;
          if constexpr (kHasHist) to_float(hist + t0, hf, L), ht = hf;
          if (kNoise && var_noise) to_float(var + o, vf, L), vt = vf;
        } else {
          ut = u + o;
          ct = kGuided ? cnd + o : nullptr;
          xt = x + t0;
          ht = kHasHist ? hist + t0 : nullptr;
          vt = var + o;
        }
        const float* z = nullptr;
        if constexpr (kNoise) {
          if (p.flags & kNoisePhilox) {
            gen_normals(zbuf, p.seed, p.offset, t0, L);
            z = zbuf + (t0 & 3);
          } else if constexpr (kHalf) {
            to_float(noise + t0, nf, L);
            z = nf;
          } else {
            z = noise + t0;
          }
          if (var_noise) {
            for (std::int64_t i = 0; i < L; ++i) zs[i] = term(noise_std(p.flags, vt[i], c), z[i]);
          } else {
            const float s = c[cS];
            for (std::int64_t i = 0; i < L; ++i) zs[i] = term(s, z[i]);
          }
        }
        if constexpr (kHalf) {
          step_tile<kGuided, kClamp, kHasHist, kNoise>(prev_scratch, x0_scratch, ut, ct, xt, ht, z, zs, L, k, bound,
                                                       div, c);
          if (prev) from_float(prev_scratch, prev + t0, L);
          if (x0) from_float(x0_scratch, x0 + t0, L);
        } else {
          step_tile<kGuided, kClamp, kHasHist, kNoise>(prev ? prev + t0 : prev_scratch, x0 ? x0 + t0 : x0_scratch, ut,
                                                       ct, xt, ht, z, zs, L, k, bound, div, c);
        }
      }
      pos = run_end;
    }
  }, n >= kParallelMin);
}

template <typename F>
void dispatch_step(const StepScalars& p, const void* hist, F&& f) {
  const bool guided = p.flags & kGuided, clamp = p.flags & (kClip | kThresh), h = hist != nullptr,
             noise = p.flags & (kNoiseTensor | kNoisePhilox);
  auto b = [](bool v) { return v; };
  (void)b;
  // 16 variants: each of the four features is either compiled in or out of the inner loop.
#define GK_DIFF_CASE(G, C, H, N) \
  if (guided == G && clamp == C && h == H && noise == N) return f(std::bool_constant<G>{}, std::bool_constant<C>{}, std::bool_constant<H>{}, std::bool_constant<N>{});
  GK_DIFF_CASE(false, false, false, false) GK_DIFF_CASE(false, false, false, true)
  GK_DIFF_CASE(false, false, true, false) GK_DIFF_CASE(false, false, true, true)
  GK_DIFF_CASE(false, true, false, false) GK_DIFF_CASE(false, true, false, true)
  GK_DIFF_CASE(false, true, true, false) GK_DIFF_CASE(false, true, true, true)
  GK_DIFF_CASE(true, false, false, false) GK_DIFF_CASE(true, false, false, true)
  GK_DIFF_CASE(true, false, true, false) GK_DIFF_CASE(true, false, true, true)
  GK_DIFF_CASE(true, true, false, false) GK_DIFF_CASE(true, true, false, true)
  GK_DIFF_CASE(true, true, true, false) GK_DIFF_CASE(true, true, true, true)
#undef GK_DIFF_CASE
}

// Deterministic two-stage sums: fixed chunks per sample, combined in order.
constexpr std::int64_t kSumChunk = 1 << 14;

template <typename S>
void step_cpu(const S* mo, const S* x, const S* hist, const S* noise, const float* rescale, const float* thresh,
              S* prev, S* x0, const StepScalars& p) {
  dispatch_step(p, hist, [&](auto G, auto C, auto H, auto N) {
    step_impl<S, decltype(G)::value, decltype(C)::value, decltype(H)::value, decltype(N)::value>(
        mo, x, hist, noise, rescale, thresh, prev, x0, p);
  });
}

// The per-sample reductions and selections read half types by static_cast<float> (a shift for bf16).
template <typename T>
void rescale_sums_cpu(const T* mo, std::int64_t B, std::int64_t S, std::int64_t mo_stride, float g, double* out) {
  const std::int64_t per = (S + kSumChunk - 1) / kSumChunk, tasks = B * per;
  std::vector<double> part(static_cast<std::size_t>(tasks) * 4);
  parallel_for(tasks, 1, [&](std::int64_t t) {
    const std::int64_t b = t / per, j = t - b * per;
    const std::int64_t lo = j * kSumChunk, hi = std::min(S, lo + kSumChunk);
    const T* u = mo + b * mo_stride;
    const T* cnd = mo + (B + b) * mo_stride;
    double sc = 0, sc2 = 0, sm = 0, sm2 = 0;
    for (std::int64_t i = lo; i < hi; ++i) {
      const float ui = static_cast<float>(u[i]), ci = static_cast<float>(cnd[i]);
      const float m = ui + g * (ci - ui);
      sc += ci; sc2 += static_cast<double>(ci) * ci;
      sm += m; sm2 += static_cast<double>(m) * m;
    }
    double* o = part.data() + 4 * t;
    o[0] = sc; o[1] = sc2; o[2] = sm; o[3] = sm2;
  }, B * S >= kParallelMin);
  for (std::int64_t b = 0; b < B; ++b) {
    double acc[4] = {0, 0, 0, 0};
    for (std::int64_t j = 0; j < per; ++j)
      for (int q = 0; q < 4; ++q) acc[q] += part[4 * (b * per + j) + q];
    for (int q = 0; q < 4; ++q) out[4 * b + q] = acc[q];
  }
}

template <typename T>
void threshold_cpu(const T* x0, std::int64_t B, std::int64_t S, std::int64_t lo, float w, float max_value,
                   float* s) {
  parallel_for(B, 1, [&](std::int64_t b) {
    std::vector<float> a(static_cast<std::size_t>(S));
    const T* src = x0 + b * S;
    for (std::int64_t i = 0; i < S; ++i) a[i] = std::fabs(static_cast<float>(src[i]));
    // selection, not a sort: the lo-th smallest, then the smallest of the rest
    std::nth_element(a.begin(), a.begin() + lo, a.end());
    const float v_lo = a[lo];
    const float v_hi = lo + 1 < S ? *std::min_element(a.begin() + lo + 1, a.end()) : v_lo;
    // torch.lerp's rounding
    const float d = v_hi - v_lo;
    float q = w < 0.5f ? v_lo + w * d : v_hi - d * (1.f - w);
    // torch.clamp(q, min=1, max=max_value): the max bound is applied last, so max_value < 1 gives
    // max_value (diffusers' _threshold_sample relies on it)
    q = q < 1.f ? 1.f : q;
    q = q > max_value ? max_value : q;
    s[b] = q;
  }, B > 1 && B * S >= kParallelMin);
}

// Calls f(dst, i0, m) to write elements i0 .. i0 + m - 1 of a run of len elements of out as dst[0 .. m):
// straight into out for float, through a float buffer and from_float for the half types.
template <typename T, typename F>
inline void write_run(T* out, std::int64_t len, F&& f) {
  if constexpr (std::is_same_v<T, float>) {
    f(out, 0, len);  // dst = out, i0 = 0
  } else {
    alignas(64) float buf[kConvertChunk];
    for_each_chunk(len, [&](std::int64_t i0, std::int64_t m) {
      f(buf, i0, m);
      from_float(buf, out + i0, m);
    });
  }
}

template <typename T>
void lincomb_cpu(const T* x, const T* y, const float* ca, const float* cb, T* out, std::int64_t B, std::int64_t S) {
  const std::int64_t n = B * S, nchunks = (n + kChunk - 1) / kChunk;
  parallel_for(nchunks, 1, [&](std::int64_t ch) {
    const std::int64_t hi = std::min(n, (ch + 1) * kChunk);
    for (std::int64_t pos = ch * kChunk; pos < hi;) {
      const std::int64_t b = pos / S, end = std::min(hi, (b + 1) * S);
      const float a = ca[b], c = cb[b];
      const T* __restrict xs = x + pos;
      const T* __restrict ys = y + pos;
      write_run(out + pos, end - pos, [&](float* __restrict o, std::int64_t i0, std::int64_t m) {
        for (std::int64_t j = 0; j < m; ++j)
          o[j] = a * static_cast<float>(xs[i0 + j]) + c * static_cast<float>(ys[i0 + j]);
      });
      pos = end;
    }
  }, n >= kParallelMin);
}

template <typename T>
void loss_sums_cpu(const T* mo, const T* x0, const T* noise, const float* tx, const float* tn, double* sums,
                   std::int64_t B, std::int64_t S) {
  const std::int64_t per = (S + kSumChunk - 1) / kSumChunk, tasks = B * per;
  std::vector<double> part(static_cast<std::size_t>(tasks));
  parallel_for(tasks, 1, [&](std::int64_t t) {
    const std::int64_t b = t / per, j = t - b * per;
    const std::int64_t lo = b * S + j * kSumChunk, hi = b * S + std::min(S, (j + 1) * kSumChunk);
    const float a = tx[b], c = tn[b];
    // fp32 partial sums over 64-element groups, then double: vectorizes and stays accurate
    double acc = 0;
    for (std::int64_t g0 = lo; g0 < hi; g0 += 64) {
      const std::int64_t g1 = std::min(hi, g0 + 64);
      float f = 0.f;
      for (std::int64_t i = g0; i < g1; ++i) {
        const float r = static_cast<float>(mo[i]) - (a * static_cast<float>(x0[i]) + c * static_cast<float>(noise[i]));
        f += r * r;
      }
      acc += f;
    }
    part[t] = acc;
  }, B * S >= kParallelMin);
  for (std::int64_t b = 0; b < B; ++b) {
    double acc = 0;
    for (std::int64_t j = 0; j < per; ++j) acc += part[b * per + j];
    sums[b] = acc;
  }
}

template <typename T>
void loss_backward_cpu(const T* mo, const T* x0, const T* noise, const float* tx, const float* tn, const float* k,
                       T* dmo, std::int64_t B, std::int64_t S) {
  const std::int64_t n = B * S, nchunks = (n + kChunk - 1) / kChunk;
  parallel_for(nchunks, 1, [&](std::int64_t ch) {
    const std::int64_t hi = std::min(n, (ch + 1) * kChunk);
    for (std::int64_t pos = ch * kChunk; pos < hi;) {
      const std::int64_t b = pos / S, end = std::min(hi, (b + 1) * S);
      const float a = tx[b], c = tn[b], s = k[b];
      const T* __restrict m0 = mo + pos;
      const T* __restrict x0s = x0 + pos;
      const T* __restrict ns = noise + pos;
      write_run(dmo + pos, end - pos, [&](float* __restrict o, std::int64_t i0, std::int64_t m) {
        for (std::int64_t j = 0; j < m; ++j) {
          const std::int64_t i = i0 + j;
          o[j] = s * (static_cast<float>(m0[i]) - (a * static_cast<float>(x0s[i]) + c * static_cast<float>(ns[i])));
        }
      });
      pos = end;
    }
  }, n >= kParallelMin);
}

}  // namespace

// The storage types of the full-size tensors (one dtype per call, checked by the callers).
template <typename F>
void dispatch_storage(int dtype, const char* op, F&& f) {
  dispatch_types<float, bf16, fp16>(dtype, op, [&](auto tag) { f(tag); });
}

void step(const StepParams& sp, Stream) {
  check_step(sp);
  check(sp.coef_dev.is_none() && sp.rng_dev.is_none(), "diffusion_step", "the CPU reads coefs and seed, not buffers");
  const StepScalars p = step_scalars(sp);
  if (p.batch * p.per_sample == 0) return;
  dispatch_storage(sp.sample.dtype, "diffusion_step", [&](auto tag) {
    using S = decltype(tag);
    step_cpu<S>(sp.model_output.as<const S>("model_output"), sp.sample.as<const S>("sample"),
                sp.history.as<const S>("history"), sp.noise.as<const S>("noise"), sp.rescale.as<const float>("rescale"),
                sp.thresh.as<const float>("thresh"), sp.prev.as<S>("prev"), sp.x0.as<S>("x0"), p);
  });
}

void rescale_partials(const RescaleParams& p, Stream) {
  check(p.partials.numel == 4 * p.batch && p.model_output.numel >= 2 * p.batch * p.per_sample,
        "guidance_rescale_factors", "the CPU writes partials [B, 1, 4] of model_output [2B, S]");
  dispatch_storage(p.model_output.dtype, "guidance_rescale_factors", [&](auto tag) {
    using S = decltype(tag);
    rescale_sums_cpu(p.model_output.as<const S>("model_output"), p.batch, p.per_sample, p.per_sample, p.guidance,
                     p.partials.as<double>("partials"));
  });
}

void threshold(const ThresholdParams& p, Stream) {
  check(p.x0.numel == p.batch * p.per_sample && p.scales.numel == p.batch && p.rank_lo >= 0 &&
            (p.per_sample == 0 || p.rank_lo < p.per_sample),
        "diffusion_threshold_scales", "x0 must be [B, S], scales [B], 0 <= rank_lo < S");
  dispatch_storage(p.x0.dtype, "diffusion_threshold_scales", [&](auto tag) {
    using S = decltype(tag);
    threshold_cpu(p.x0.as<const S>("x0"), p.batch, p.per_sample, p.rank_lo, p.rank_w, p.max_value,
                  p.scales.as<float>("scales"));
  });
}

void lincomb(const LincombParams& p, Stream) {
  check_same("add_noise", p.x, {&p.y, &p.out});
  check(p.x.numel == p.batch * p.per_sample && p.ca.numel == p.batch && p.cb.numel == p.batch, "add_noise",
        "x, y, out must be [B, S] and ca, cb [B]");
  dispatch_storage(p.x.dtype, "add_noise", [&](auto tag) {
    using S = decltype(tag);
    lincomb_cpu(p.x.as<const S>("x"), p.y.as<const S>("y"), p.ca.as<const float>("ca"), p.cb.as<const float>("cb"),
                p.out.as<S>("out"), p.batch, p.per_sample);
  });
}

void loss_partials(const LossParams& p, Stream) {
  check_loss("diffusion_loss", p);
  check(p.partials.numel == p.batch, "diffusion_loss", "the CPU writes partials [B, 1]");
  dispatch_storage(p.model_output.dtype, "diffusion_loss", [&](auto tag) {
    using S = decltype(tag);
    loss_sums_cpu(p.model_output.as<const S>("model_output"), p.x0.as<const S>("x0"), p.noise.as<const S>("noise"),
                  p.tx.as<const float>("tx"), p.tn.as<const float>("tn"), p.partials.as<double>("partials"), p.batch,
                  p.per_sample);
  });
}

void loss_backward(const LossParams& p, Stream) {
  check_loss("diffusion_loss_backward", p);
  check_same("diffusion_loss_backward", p.model_output, {&p.dmo});
  dispatch_storage(p.model_output.dtype, "diffusion_loss_backward", [&](auto tag) {
    using S = decltype(tag);
    loss_backward_cpu(p.model_output.as<const S>("model_output"), p.x0.as<const S>("x0"),
                      p.noise.as<const S>("noise"), p.tx.as<const float>("tx"), p.tn.as<const float>("tn"),
                      p.k.as<const float>("k"), p.dmo.as<S>("dmo"), p.batch, p.per_sample);
  });
}

}  // namespace gk::diffusion
