// minibatch_std on the CPU: the thread pool over (group, channel) planes; the G samples of a group
// are read in pixel chunks so each chunk's mean and deviation stay in L1. Sums in double.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common/cpu_dtypes.h"
#include "common/thread_pool.h"
#include "minibatch_std/minibatch_std.h"

namespace gk::minibatch_std {
namespace {

constexpr std::int64_t kChunk = 256;  // pixels per chunk

// For the plane (j, ch): calls f(p0, len, mu, rsd) per chunk of pixels, with mu[k] the group mean
// and sd[k] = sqrt(var + eps) of pixel p0 + k.
template <typename T, typename Fn>
void for_each_chunk(const T* x, const Params& p, std::int64_t j, std::int64_t ch, Fn&& f) {
  const std::int64_t n = p.N / p.G;
  float mu[kChunk], sd[kChunk];
  for (std::int64_t p0 = 0; p0 < p.HW; p0 += kChunk) {
    const std::int64_t len = std::min(kChunk, p.HW - p0);
    std::fill(mu, mu + len, 0.f);
    std::fill(sd, sd + len, 0.f);
    for (std::int64_t g = 0; g < p.G; ++g) {
      const T* row = x + ((g * n + j) * p.C + ch) * p.HW + p0;
      for (std::int64_t k = 0; k < len; ++k) mu[k] += static_cast<float>(row[k]);
    }
    const float inv_g = 1.f / static_cast<float>(p.G);
    for (std::int64_t k = 0; k < len; ++k) mu[k] *= inv_g;
    for (std::int64_t g = 0; g < p.G; ++g) {
      const T* row = x + ((g * n + j) * p.C + ch) * p.HW + p0;
      for (std::int64_t k = 0; k < len; ++k) {
        const float d = static_cast<float>(row[k]) - mu[k];
        sd[k] += d * d;
      }
    }
    for (std::int64_t k = 0; k < len; ++k) sd[k] = std::sqrt(sd[k] * inv_g + p.eps);
    f(p0, len, mu, sd);
  }
}

template <typename T>
void forward_t(const Params& p) {
  const T* x = p.x.as<const T>("x");
  T* out = p.out.as<T>("out");
  float* s = p.s.as<float>("s");
  const std::int64_t n = p.N / p.G, c = p.C / p.F;
  // 1. the statistic, one task per (group, slice); the slice's channels summed in order
  parallel_for(n * p.F, 1, [&](std::int64_t t) {
    const std::int64_t j = t / p.F, f = t % p.F;
    double acc = 0;
    for (std::int64_t ch = f * c; ch < (f + 1) * c; ++ch)
      for_each_chunk(x, p, j, ch, [&](std::int64_t, std::int64_t len, const float*, const float* sd) {
        double part = 0;
        for (std::int64_t k = 0; k < len; ++k) part += sd[k];
        acc += part;
      });
    s[t] = static_cast<float>(acc / static_cast<double>(c * p.HW));
  });
  // 2. the output: x's planes copied, the F statistic planes filled
  parallel_for(p.N * (p.C + p.F), 8, [&](std::int64_t t) {
    const std::int64_t i = t / (p.C + p.F), ch = t % (p.C + p.F);
    T* dst = out + t * p.HW;
    if (ch < p.C) std::memcpy(dst, x + (i * p.C + ch) * p.HW, sizeof(T) * p.HW);
    else std::fill(dst, dst + p.HW, static_cast<T>(s[(i % n) * p.F + (ch - p.C)]));
  });
}

template <typename T>
void backward_t(const Params& p) {
  const T* x = p.x.as<const T>("x");
  const T* dout = p.dout.as<const T>("dout");
  T* dx = p.out.as<T>("out");
  float* ds = p.s.as<float>("s");
  const std::int64_t n = p.N / p.G, c = p.C / p.F;
  // 1. ds[j, f]: the gradient of the statistic channels, summed over the group and the pixels
  parallel_for(n * p.F, 1, [&](std::int64_t t) {
    const std::int64_t j = t / p.F, f = t % p.F;
    double acc = 0;
    for (std::int64_t g = 0; g < p.G; ++g) {
      const T* row = dout + ((g * n + j) * (p.C + p.F) + p.C + f) * p.HW;
      double part = 0;
      for (std::int64_t k = 0; k < p.HW; ++k) part += static_cast<float>(row[k]);
      acc += part;
    }
    ds[t] = static_cast<float>(acc / static_cast<double>(c * p.HW));
  });
  // 2. dx over (group, channel) planes
  parallel_for(n * p.C, 1, [&](std::int64_t t) {
    const std::int64_t j = t / p.C, ch = t % p.C;
    const float scale = ds[j * p.F + ch / c] / static_cast<float>(p.G);
    for_each_chunk(x, p, j, ch, [&](std::int64_t p0, std::int64_t len, const float* mu, const float* sd) {
      for (std::int64_t g = 0; g < p.G; ++g) {
        const std::int64_t i = g * n + j;
        const T* xr = x + (i * p.C + ch) * p.HW + p0;
        const T* gr = dout + (i * (p.C + p.F) + ch) * p.HW + p0;
        T* dr = dx + (i * p.C + ch) * p.HW + p0;
        for (std::int64_t k = 0; k < len; ++k)
          dr[k] = static_cast<T>(static_cast<float>(gr[k]) + scale * (static_cast<float>(xr[k]) - mu[k]) / sd[k]);
      }
    });
  });
}

}  // namespace

void forward(const Params& p, Stream) {
  check_args("minibatch_std", p, false);
  dispatch_types<float, bf16, fp16>(p.x.dtype, "minibatch_std", [&](auto tag) { forward_t<decltype(tag)>(p); });
}

void backward(const Params& p, Stream) {
  check_args("minibatch_std_backward", p, true);
  dispatch_types<float, bf16, fp16>(p.x.dtype, "minibatch_std_backward",
                                    [&](auto tag) { backward_t<decltype(tag)>(p); });
}

}  // namespace gk::minibatch_std
