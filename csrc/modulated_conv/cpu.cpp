// modulated_conv on the CPU: the thread pool (common/thread_pool.h) over output channels (modulate)
// or over planes / pixel rows (epilogue); inner loops vectorized by GCC, storage types via
// common/cpu_dtypes.h with fp32 math.
#include <algorithm>
#include <cmath>
#include <vector>

#include "common/cpu_dtypes.h"
#include "common/cpu_memory.h"
#include "common/thread_pool.h"
#include "modulated_conv/modulated_conv.h"

namespace gk::modulated_conv {
namespace {

// w2[i] = sum_k w[i*K + k]^2
GK_CPU_CLONES void row_sumsq(const float* __restrict w, float* __restrict w2, std::int64_t I, std::int64_t K) {
  for (std::int64_t i = 0; i < I; ++i) {
    float s = 0.f;
    for (std::int64_t k = 0; k < K; ++k) s += w[i * K + k] * w[i * K + k];
    w2[i] = s;
  }
}

// sum_i s[i]^2 * w2[i], in 8 fixed partial sums (vectorizable, and the same order on every run).
GK_CPU_CLONES float styled_sumsq(const float* __restrict s, const float* __restrict w2, std::int64_t I) {
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  std::int64_t i = 0;
  for (; i + 8 <= I; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += s[i + j] * s[i + j] * w2[i + j];
  float t = 0.f;
  for (; i < I; ++i) t += s[i] * s[i] * w2[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + t;
}

// out[i*K + k] = w[i*K + k] * s[i] * d
GK_CPU_CLONES void modulate_row(float* __restrict out, const float* __restrict w, const float* __restrict s, float d,
                                std::int64_t I, std::int64_t K) {
  for (std::int64_t i = 0; i < I; ++i) {
    const float c = s[i] * d;
    for (std::int64_t k = 0; k < K; ++k) out[i * K + k] = w[i * K + k] * c;
  }
}

}  // namespace

void modulate(const ModulateParams& p, Stream) {
  check_modulate(p);
  const float* w = p.weight.as<const float>("weight");
  const float* st = p.styles.as<const float>("styles");
  float* wmod = p.wmod.as<float>("wmod");
  float* dc = p.dcoefs.as<float>("dcoefs");
  const bool need_d = p.demodulate && (dc != nullptr || wmod != nullptr);
  const std::int64_t IK = p.I * p.K;
  if (wmod) advise_huge_pages(wmod, p.N * p.O * IK * static_cast<std::int64_t>(sizeof(float)));
  std::vector<std::vector<float>> w2(cpu_threads(), std::vector<float>(need_d ? p.I : 0));
  // One output channel per task: its squared row is summed once and serves all N samples.
  const std::int64_t grain = std::max<std::int64_t>(1, p.O / (8 * cpu_threads()));
  parallel_for_slots(p.O, grain, [&](std::int64_t o, int slot) {
    const float* wo = w + o * IK;
    if (need_d) row_sumsq(wo, w2[slot].data(), p.I, p.K);
    for (std::int64_t n = 0; n < p.N; ++n) {
      float d = 1.f;
      if (need_d) {
        d = 1.f / std::sqrt(styled_sumsq(st + n * p.I, w2[slot].data(), p.I) + kDemodEps);
        if (dc) dc[n * p.O + o] = d;
      }
      if (wmod) modulate_row(wmod + (n * p.O + o) * IK, wo, st + n * p.I, d, p.I, p.K);
    }
  });
}

namespace {

// NCHW: one plane of len pixels, one scale and bias; noise per pixel (kNoise) or none.
template <typename T, int A, bool kClamp, bool kNoise>
GK_CPU_CLONES void plane_run(T* __restrict out, const T* __restrict y, const T* __restrict noise, std::int64_t len,
                             float sc, float b, float alpha, float gain, float clamp) {
  for (std::int64_t i = 0; i < len; ++i) {
    const float nv = kNoise ? static_cast<float>(noise[i]) : 0.f;
    out[i] = static_cast<T>(epilogue_value<A, kClamp>(static_cast<float>(y[i]), sc, nv, b, alpha, gain, clamp));
  }
}

// channels_last: one pixel's C channels, scale and bias per channel; noise one value for the
// pixel (kNoise == 1), per channel at stride snc (2), or none (0).
template <typename T, int A, bool kClamp, int kNoise>
GK_CPU_CLONES void row_run(T* __restrict out, const T* __restrict y, const T* __restrict noise, std::int64_t snc,
                           std::int64_t C, const float* __restrict sc, const float* __restrict b, float alpha,
                           float gain, float clamp) {
  const float n0 = kNoise == 1 ? static_cast<float>(noise[0]) : 0.f;
  for (std::int64_t c = 0; c < C; ++c) {
    const float nv = kNoise == 2 ? static_cast<float>(noise[c * snc]) : n0;
    out[c] = static_cast<T>(epilogue_value<A, kClamp>(static_cast<float>(y[c]), sc[c], nv, b[c], alpha, gain, clamp));
  }
}

constexpr std::int64_t kChunk = 1 << 14;  // elements per claimed unit of work (64 KiB of fp32)

template <typename T>
void run_epilogue(const EpilogueParams& p) {
  const T* y = p.y.as<const T>("y");
  T* out = p.out.as<T>("out");
  const T* noise = p.noise.as<const T>("noise");
  const float* sc = p.scale.as<const float>("scale");
  const float* b = p.bias.as<const float>("bias");
  advise_huge_pages(out, p.y.numel * static_cast<std::int64_t>(sizeof(T)));
  dispatch_act(p.act, [&](auto a) {
    constexpr int A = decltype(a)::value;
    auto go = [&](auto clamp_tag) {
      constexpr bool K = decltype(clamp_tag)::value;
      if (!p.channels_last) {
        const std::int64_t planes = p.N * p.C;
        const std::int64_t grain = std::max<std::int64_t>(1, kChunk / std::max<std::int64_t>(p.HW, 1));
        parallel_for(planes, grain, [&](std::int64_t nc) {
          const std::int64_t n = nc / p.C, c = nc % p.C, off = nc * p.HW;
          const float s = sc ? sc[nc] : 1.f, bv = b ? b[c] : 0.f;
          if (noise) plane_run<T, A, K, true>(out + off, y + off, noise + n * p.snn + c * p.snc, p.HW, s, bv,
                                              p.alpha, p.gain, p.clamp);
          else plane_run<T, A, K, false>(out + off, y + off, nullptr, p.HW, s, bv, p.alpha, p.gain, p.clamp);
        });
      } else {
        // Per-channel vectors for missing operands, so the row loop has no branches.
        std::vector<float> ones(sc ? 0 : p.C, 1.f), zeros(b ? 0 : p.C, 0.f);
        const float* bb = b ? b : zeros.data();
        const std::int64_t rows = p.N * p.HW;
        const std::int64_t grain = std::max<std::int64_t>(1, kChunk / p.C);
        parallel_for(rows, grain, [&](std::int64_t r) {
          const std::int64_t n = r / p.HW, px = r % p.HW, off = r * p.C;
          const float* s = sc ? sc + n * p.C : ones.data();
          if (!noise) row_run<T, A, K, 0>(out + off, y + off, nullptr, 0, p.C, s, bb, p.alpha, p.gain, p.clamp);
          else if (p.snc == 0) row_run<T, A, K, 1>(out + off, y + off, noise + n * p.snn + px, 0, p.C, s, bb,
                                                  p.alpha, p.gain, p.clamp);
          else row_run<T, A, K, 2>(out + off, y + off, noise + n * p.snn + px, p.snc, p.C, s, bb, p.alpha, p.gain,
                                   p.clamp);
        });
      }
    };
    if (p.clamp >= 0.f) go(std::true_type{});
    else go(std::false_type{});
  });
}

}  // namespace

void epilogue(const EpilogueParams& p, Stream) {
  check_epilogue(p);
  if (p.y.numel == 0) return;
  dispatch_types<float, bf16, fp16>(p.y.dtype, "modconv_epilogue", [&](auto tag) { run_epilogue<decltype(tag)>(p); });
}

}  // namespace gk::modulated_conv
