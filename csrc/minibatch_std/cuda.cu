// minibatch_std on CUDA: a statistic kernel (one block per (group, slice), deterministic block
// reduction) and an output kernel (grid-stride copy + broadcast); backward: a reduction kernel for
// ds and an elementwise-per-group kernel for dx. Math in fp32.
#include "common/cuda_utils.cuh"
#include "minibatch_std/minibatch_std.h"

namespace gk::minibatch_std {
namespace {

constexpr int kThreads = 256;

// The group's mean and sqrt(var + eps) at (j, ch, pixel q).
template <typename T>
__device__ __forceinline__ void group_moments(const T* __restrict__ x, const Params& p, std::int64_t j, std::int64_t ch,
                                              std::int64_t q, float& mu, float& sd) {
  const std::int64_t n = p.N / p.G, gstride = n * p.C * p.HW;
  const T* base = x + (j * p.C + ch) * p.HW + q;
  float sum = 0.f;
  for (std::int64_t g = 0; g < p.G; ++g) sum += to_f32(base[g * gstride]);
  mu = sum / static_cast<float>(p.G);
  float m2 = 0.f;
  for (std::int64_t g = 0; g < p.G; ++g) {
    const float d = to_f32(base[g * gstride]) - mu;
    m2 += d * d;
  }
  sd = sqrtf(m2 / static_cast<float>(p.G) + p.eps);
}

// blockIdx.x = j * F + f: s[j, f] = mean of sd over the slice's c channels and HW pixels.
template <typename T>
__global__ void __launch_bounds__(kThreads) stat_kernel(const T* __restrict__ x, float* __restrict__ s, Params p) {
  const std::int64_t j = blockIdx.x / p.F, f = blockIdx.x % p.F, c = p.C / p.F, len = c * p.HW;
  float acc = 0.f;
  for (std::int64_t e = threadIdx.x; e < len; e += kThreads) {
    float mu, sd;
    group_moments(x, p, j, f * c + e / p.HW, e % p.HW, mu, sd);
    acc += sd;
  }
  __shared__ float sh[kThreads / 32];
  const float t = block_sum<kThreads>(acc, sh);
  if (threadIdx.x == 0) s[blockIdx.x] = t / static_cast<float>(len);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
output_kernel(const T* __restrict__ x, const float* __restrict__ s, T* __restrict__ out, Params p) {
  const std::int64_t n = p.N / p.G, CF = p.C + p.F, total = p.N * CF * p.HW;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t e = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    const std::int64_t plane = e / p.HW, q = e % p.HW, i = plane / CF, ch = plane % CF;
    out[e] = ch < p.C ? x[(i * p.C + ch) * p.HW + q] : from_f32<T>(s[(i % n) * p.F + (ch - p.C)]);
  }
}

// blockIdx.x = j * F + f: ds[j, f] = sum over (g, pixel) of dout's statistic channel / (c * HW).
template <typename T>
__global__ void __launch_bounds__(kThreads) ds_kernel(const T* __restrict__ dout, float* __restrict__ ds, Params p) {
  const std::int64_t n = p.N / p.G, j = blockIdx.x / p.F, f = blockIdx.x % p.F, c = p.C / p.F;
  float acc = 0.f;
  for (std::int64_t e = threadIdx.x; e < p.G * p.HW; e += kThreads) {
    const std::int64_t g = e / p.HW, q = e % p.HW;
    acc += to_f32(dout[((g * n + j) * (p.C + p.F) + p.C + f) * p.HW + q]);
  }
  __shared__ float sh[kThreads / 32];
  const float t = block_sum<kThreads>(acc, sh);
  if (threadIdx.x == 0) ds[blockIdx.x] = t / static_cast<float>(c * p.HW);
}

// One thread per (j, ch, pixel): the group's moments, then the G gradients.
template <typename T>
__global__ void __launch_bounds__(kThreads)
dx_kernel(const T* __restrict__ x, const T* __restrict__ dout, const float* __restrict__ ds, T* __restrict__ dx,
          Params p) {
  const std::int64_t n = p.N / p.G, c = p.C / p.F, total = n * p.C * p.HW;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t e = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += stride) {
    const std::int64_t q = e % p.HW, plane = e / p.HW, j = plane / p.C, ch = plane % p.C;
    float mu, sd;
    group_moments(x, p, j, ch, q, mu, sd);
    const float scale = ds[j * p.F + ch / c] / (static_cast<float>(p.G) * sd);
    for (std::int64_t g = 0; g < p.G; ++g) {
      const std::int64_t i = g * n + j;
      const float d = to_f32(x[(i * p.C + ch) * p.HW + q]) - mu;
      dx[(i * p.C + ch) * p.HW + q] = from_f32<T>(to_f32(dout[(i * (p.C + p.F) + ch) * p.HW + q]) + scale * d);
    }
  }
}

}  // namespace

void forward(const Params& p, Stream stream) {
  check_args("minibatch_std", p, false);
  auto st = reinterpret_cast<cudaStream_t>(stream);
  dispatch_dtype(p.x.dtype, "minibatch_std", [&](auto tag) {
    using T = decltype(tag);
    const T* x = p.x.as<const T>("x");
    float* s = p.s.as<float>("s");
    stat_kernel<T><<<static_cast<unsigned>((p.N / p.G) * p.F), kThreads, 0, st>>>(x, s, p);
    output_kernel<T><<<grid_size(p.out.numel, kThreads), kThreads, 0, st>>>(x, s, p.out.as<T>("out"), p);
  });
  GK_CUDA_CHECK_LAUNCH("minibatch_std");
}

void backward(const Params& p, Stream stream) {
  check_args("minibatch_std_backward", p, true);
  auto st = reinterpret_cast<cudaStream_t>(stream);
  dispatch_dtype(p.x.dtype, "minibatch_std_backward", [&](auto tag) {
    using T = decltype(tag);
    float* ds = p.s.as<float>("s");
    const T* dout = p.dout.as<const T>("dout");
    ds_kernel<T><<<static_cast<unsigned>((p.N / p.G) * p.F), kThreads, 0, st>>>(dout, ds, p);
    dx_kernel<T><<<grid_size((p.N / p.G) * p.C * p.HW, kThreads), kThreads, 0, st>>>(p.x.as<const T>("x"), dout, ds,
                                                                                      p.out.as<T>("out"), p);
  });
  GK_CUDA_CHECK_LAUNCH("minibatch_std_backward");
}

}  // namespace gk::minibatch_std
