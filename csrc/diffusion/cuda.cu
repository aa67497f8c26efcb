// Diffusion kernels on CUDA. The generic step: one thread per Philox counter (4 consecutive flat
// elements), so each thread makes its four normals once and never touches memory for noise; loads
// and stores are 4-element vectors when the per-sample size and pointers allow it (16 bytes for fp32).
// Bytes per step: model_output (n or 2n, +n variance channels when learned), sample n, history n
// (multistep), prev n, x0 n when requested. Reductions (guidance rescale, loss) write per-chunk
// partials that the caller sums in a fixed order: deterministic, no atomics.
#include <algorithm>

#include "common/cuda_utils.cuh"
#include "common/philox.h"
#include "diffusion/diffusion.h"

namespace gk::diffusion {
namespace {

constexpr int kThreads = 256;
constexpr int kRedThreads = 256;
constexpr int kRedItems = 4;  // elements per thread per reduction chunk
static_assert(kRedThreads * kRedItems == kReductionChunk, "gankern/_tables.py: DIFFUSION_REDUCTION_CHUNK");

// Four elements of row `b` starting at column r: one 16-byte (fp32) / 8-byte (fp16) vector load.
template <typename T>
__device__ __forceinline__ void load_vec4(const T* p, float (&v)[4]) {
  const Vec<T, 4> q = *reinterpret_cast<const Vec<T, 4>*>(p);
#pragma unroll
  for (int j = 0; j < 4; ++j) v[j] = to_f32(q.v[j]);
}

template <typename T>
__device__ __forceinline__ void store_vec4(T* p, const float (&v)[4]) {
  Vec<T, 4> q;
#pragma unroll
  for (int j = 0; j < 4; ++j) q.v[j] = from_f32<T>(v[j]);
  *reinterpret_cast<Vec<T, 4>*>(p) = q;
}

template <typename T, bool kGuided, bool kClamp, bool kHasHist, int kNoise>
__global__ void __launch_bounds__(kThreads)
step_kernel(const T* __restrict__ mo, const T* __restrict__ x, const T* __restrict__ hist, const T* __restrict__ noise,
            const float* __restrict__ rescale, const float* __restrict__ thresh, T* __restrict__ prev,
            T* __restrict__ x0out, StepScalars p, const float* __restrict__ coef_dev,
            const std::int64_t* __restrict__ rng_dev, bool vec_ok) {
  float c[kNumCoefs];
#pragma unroll
  for (int i = 0; i < kNumCoefs; ++i) c[i] = coef_dev ? __ldg(coef_dev + i) : p.c[i];
  std::uint64_t seed = p.seed, offset = p.offset;
  if (rng_dev) {
    seed = static_cast<std::uint64_t>(rng_dev[0]);
    offset = static_cast<std::uint64_t>(rng_dev[1]);
  }
  const std::int64_t S = p.per_sample, n = p.batch * S, groups = (n + 3) / 4;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < groups; k += stride) {
    const std::int64_t i0 = 4 * k;
    float z[4] = {0.f, 0.f, 0.f, 0.f};
    if constexpr (kNoise == 2) randn4(seed, offset + static_cast<std::uint64_t>(k), z);
    // A whole 4-group inside one sample with aligned rows: vector loads and stores. Otherwise (a
    // group straddling two samples, the tail, odd sizes) element by element.
    const std::int64_t b0 = i0 / S, r0 = i0 - b0 * S;
    const bool vec = vec_ok && i0 + 4 <= n && r0 + 4 <= S;
    const std::int64_t vb = kGuided ? p.batch : 0;  // variance channels: conditional (or only) half
    float xv[4], u[4], cv[4] = {0.f, 0.f, 0.f, 0.f}, hv[4] = {0.f, 0.f, 0.f, 0.f}, var[4] = {0.f, 0.f, 0.f, 0.f};
    std::int64_t bj[4];  // sample of each element (per-sample rescale and threshold)
    int cnt = 4;
    if (vec) {
#pragma unroll
      for (int j = 0; j < 4; ++j) bj[j] = b0;
      load_vec4(x + i0, xv);
      load_vec4(mo + b0 * p.mo_stride + r0, u);
      if constexpr (kGuided) load_vec4(mo + (p.batch + b0) * p.mo_stride + r0, cv);
      if constexpr (kHasHist) load_vec4(hist + i0, hv);
      if constexpr (kNoise == 1) load_vec4(noise + i0, z);
      if (kNoise != 0 && (p.flags & (kVarLearnedRange | kVarLearned)))
        load_vec4(mo + (vb + b0) * p.mo_stride + S + r0, var);
    } else {
      cnt = static_cast<int>(n - i0 < 4 ? n - i0 : 4);
      // A fixed trip count with a predicate, not j < cnt: the arrays stay in registers (a runtime
      // bound makes nvcc index them, i.e. put them in local memory, for the vector path too).
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        bj[j] = b0;
        xv[j] = u[j] = 0.f;
        if (j >= cnt) continue;
        std::int64_t b = b0, r = r0 + j;
        if (r >= S) { b += r / S; r -= (r / S) * S; }
        bj[j] = b;
        xv[j] = to_f32(x[i0 + j]);
        u[j] = to_f32(mo[b * p.mo_stride + r]);
        if constexpr (kGuided) cv[j] = to_f32(mo[(p.batch + b) * p.mo_stride + r]);
        if constexpr (kHasHist) hv[j] = to_f32(hist[i0 + j]);
        if constexpr (kNoise == 1) z[j] = to_f32(noise[i0 + j]);
        if (kNoise != 0 && (p.flags & (kVarLearnedRange | kVarLearned)))
          var[j] = to_f32(mo[(vb + b) * p.mo_stride + S + r]);
      }
    }
    float pv[4], x0v[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const std::int64_t b = bj[j];
      float m = u[j];
      if constexpr (kGuided) m = m + c[cG] * (cv[j] - m);
      if (p.flags & kRescale) m *= __ldg(rescale + b);
      const float xp = kNoise != 0 ? xv[j] + term(c[cPre], z[j]) : xv[j];
      float bound = c[cClip], div = 1.f;
      if (p.flags & kThresh) bound = div = __ldg(thresh + b);
      x0v[j] = step_x0<kClamp>(xp, m, c[cPx], c[cPm], bound, div);
      float q = step_prev(xp, m, x0v[j], c);
      if constexpr (kHasHist) q += term(c[cD], hv[j]);
      if constexpr (kNoise != 0) q += term(noise_std(p.flags, var[j], c), z[j]);
      pv[j] = q;
    }
    if (vec) {
      if (prev) store_vec4(prev + i0, pv);
      if (x0out) store_vec4(x0out + i0, x0v);
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if (j >= cnt) continue;
        if (prev) prev[i0 + j] = from_f32<T>(pv[j]);
        if (x0out) x0out[i0 + j] = from_f32<T>(x0v[j]);
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kRedThreads)
rescale_partials_kernel(const T* __restrict__ mo, std::int64_t B, std::int64_t S, std::int64_t mo_stride, float g,
                        float* __restrict__ partials, std::int64_t nchunks) {
  // grid (nchunks, B); fixed-order block reduction of one chunk of one sample
  const std::int64_t b = blockIdx.y, j = blockIdx.x;
  const std::int64_t chunk = static_cast<std::int64_t>(kRedThreads) * kRedItems;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  for (int q = 0; q < kRedItems; ++q) {
    const std::int64_t r = j * chunk + q * kRedThreads + threadIdx.x;
    if (r < S) {
      const float u = to_f32(mo[b * mo_stride + r]), cnd = to_f32(mo[(B + b) * mo_stride + r]);
      const float m = u + g * (cnd - u);
      acc[0] += cnd; acc[1] += cnd * cnd; acc[2] += m; acc[3] += m * m;
    }
  }
  __shared__ float sh[4][kRedThreads];
  for (int q = 0; q < 4; ++q) sh[q][threadIdx.x] = acc[q];
  __syncthreads();
  for (unsigned w = kRedThreads / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w)
      for (int q = 0; q < 4; ++q) sh[q][threadIdx.x] += sh[q][threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0)
    for (int q = 0; q < 4; ++q) partials[(b * nchunks + j) * 4 + q] = sh[q][0];
}

// kMode 0: out = a_b x + c_b y.  kMode 1: out = k_b (m - (a_b x + c_b y)).
template <typename T, int kMode>
__global__ void __launch_bounds__(kThreads)
lincomb_kernel(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ m, const float* __restrict__ a,
               const float* __restrict__ c, const float* __restrict__ k, T* __restrict__ out, std::int64_t n,
               std::int64_t S) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const std::int64_t b = i / S;
    float t = __ldg(a + b) * to_f32(x[i]) + __ldg(c + b) * to_f32(y[i]);
    if constexpr (kMode == 1) t = __ldg(k + b) * (to_f32(m[i]) - t);
    out[i] = from_f32<T>(t);
  }
}

template <typename T>
__global__ void __launch_bounds__(kRedThreads)
loss_partials_kernel(const T* __restrict__ mo, const T* __restrict__ x0, const T* __restrict__ noise,
                     const float* __restrict__ tx, const float* __restrict__ tn, float* __restrict__ partials,
                     std::int64_t nchunks, std::int64_t S) {
  const std::int64_t b = blockIdx.y, j = blockIdx.x;
  const std::int64_t chunk = static_cast<std::int64_t>(kRedThreads) * kRedItems;
  const float a = tx[b], c = tn[b];
  float acc = 0.f;
  for (int q = 0; q < kRedItems; ++q) {
    const std::int64_t r = j * chunk + q * kRedThreads + threadIdx.x;
    if (r < S) {
      const std::int64_t i = b * S + r;
      const float d = to_f32(mo[i]) - (a * to_f32(x0[i]) + c * to_f32(noise[i]));
      acc += d * d;
    }
  }
  __shared__ float sh[kRedThreads];
  sh[threadIdx.x] = acc;
  __syncthreads();
  for (unsigned w = kRedThreads / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) partials[b * nchunks + j] = sh[0];
}

}  // namespace

void step(const StepParams& sp, Stream stream) {
  check_step(sp);
  const StepScalars p = step_scalars(sp);
  const void *mo = sp.model_output.ptr(), *x = sp.sample.ptr(), *hist = sp.history.ptr(), *noise = sp.noise.ptr();
  const float* rescale = sp.rescale.as<const float>("rescale");
  const float* thresh = sp.thresh.as<const float>("thresh");
  void *prev = sp.prev.mut_ptr(), *x0 = sp.x0.mut_ptr();
  const float* coef_dev = sp.coef_dev.as<const float>("coef_dev");
  const std::int64_t* rng_dev = sp.rng_dev.as<const std::int64_t>("rng_dev");
  const int dtype = sp.sample.dtype;
  const std::int64_t n = p.batch * p.per_sample;
  if (n == 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  const bool guided = p.flags & kGuided, clamp = p.flags & (kClip | kThresh), h = hist != nullptr;
  const int noise_kind = (p.flags & kNoisePhilox) ? 2 : ((p.flags & kNoiseTensor) ? 1 : 0);
  const bool vec_ok = p.per_sample % 4 == 0 && p.mo_stride % 4 == 0 && aligned16(mo) && aligned16(x) &&
                      aligned16(hist) && aligned16(noise) && aligned16(prev) && aligned16(x0);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    auto go = [&](auto G, auto C, auto H, auto N) {
      step_kernel<T, decltype(G)::value, decltype(C)::value, decltype(H)::value, decltype(N)::value>
          <<<grid_size((n + 3) / 4, kThreads), kThreads, 0, s>>>(
              static_cast<const T*>(mo), static_cast<const T*>(x), static_cast<const T*>(hist),
              static_cast<const T*>(noise), rescale, thresh, static_cast<T*>(prev), static_cast<T*>(x0), p, coef_dev,
              rng_dev, vec_ok);
    };
    auto with_noise = [&](auto G, auto C, auto H) {
      if (noise_kind == 2) go(G, C, H, std::integral_constant<int, 2>{});
      else if (noise_kind == 1) go(G, C, H, std::integral_constant<int, 1>{});
      else go(G, C, H, std::integral_constant<int, 0>{});
    };
    auto with_hist = [&](auto G, auto C) {
      if (h) with_noise(G, C, std::true_type{});
      else with_noise(G, C, std::false_type{});
    };
    auto with_clamp = [&](auto G) {
      if (clamp) with_hist(G, std::true_type{});
      else with_hist(G, std::false_type{});
    };
    if (guided) with_clamp(std::true_type{});
    else with_clamp(std::false_type{});
  });
  GK_CUDA_CHECK_LAUNCH("diffusion_step");
}

void rescale_partials(const RescaleParams& p, Stream stream) {
  const std::int64_t B = p.batch, S = p.per_sample, mo_stride = S,
                     nchunks = std::max<std::int64_t>((S + kReductionChunk - 1) / kReductionChunk, 1);
  check(p.partials.numel == 4 * B * nchunks && p.model_output.numel >= 2 * B * S,
        "guidance_rescale_factors", "partials must be [B, ceil(S / kReductionChunk), 4] for model_output [2B, S]");
  if (B == 0 || nchunks == 0) return;
  const void* mo = p.model_output.ptr();
  const float g = p.guidance;
  float* partials = p.partials.as<float>("partials");
  const int dtype = p.model_output.dtype;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    rescale_partials_kernel<T><<<dim3(static_cast<unsigned>(nchunks), static_cast<unsigned>(B)), kRedThreads, 0, s>>>(
        static_cast<const T*>(mo), B, S, mo_stride, g, partials, nchunks);
  });
  GK_CUDA_CHECK_LAUNCH("guidance_rescale_factors");
}

void lincomb(const LincombParams& p, Stream stream) {
  check_same("add_noise", p.x, {&p.y, &p.out});
  check(p.x.numel == p.batch * p.per_sample && p.ca.numel == p.batch && p.cb.numel == p.batch, "add_noise",
        "x, y, out must be [B, S] and ca, cb [B]");
  const std::int64_t S = p.per_sample, n = p.batch * S;
  const void *x = p.x.ptr(), *y = p.y.ptr();
  const float *ca = p.ca.as<const float>("ca"), *cb = p.cb.as<const float>("cb");
  void* out = p.out.mut_ptr();
  const int dtype = p.x.dtype;
  if (n == 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    lincomb_kernel<T, 0><<<grid_size(n, kThreads), kThreads, 0, s>>>(
        static_cast<const T*>(x), static_cast<const T*>(y), nullptr, ca, cb, nullptr, static_cast<T*>(out), n, S);
  });
  GK_CUDA_CHECK_LAUNCH("add_noise");
}

void loss_partials(const LossParams& p, Stream stream) {
  check_loss("diffusion_loss", p);
  const std::int64_t B = p.batch, S = p.per_sample, nchunks = std::max<std::int64_t>((S + kReductionChunk - 1) / kReductionChunk, 1);
  check(p.partials.numel == B * nchunks, "diffusion_loss", "partials must be [B, max(ceil(S / kReductionChunk), 1)]");
  if (B == 0) return;
  const void *mo = p.model_output.ptr(), *x0 = p.x0.ptr(), *noise = p.noise.ptr();
  const float *tx = p.tx.as<const float>("tx"), *tn = p.tn.as<const float>("tn");
  float* partials = p.partials.as<float>("partials");
  const int dtype = p.model_output.dtype;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    loss_partials_kernel<T><<<dim3(static_cast<unsigned>(nchunks), static_cast<unsigned>(B)), kRedThreads, 0, s>>>(
        static_cast<const T*>(mo), static_cast<const T*>(x0), static_cast<const T*>(noise), tx, tn, partials, nchunks,
        S);
  });
  GK_CUDA_CHECK_LAUNCH("diffusion_loss");
}

void loss_backward(const LossParams& p, Stream stream) {
  check_loss("diffusion_loss_backward", p);
  check_same("diffusion_loss_backward", p.model_output, {&p.dmo});
  const std::int64_t S = p.per_sample, n = p.batch * S;
  const void *mo = p.model_output.ptr(), *x0 = p.x0.ptr(), *noise = p.noise.ptr();
  const float *tx = p.tx.as<const float>("tx"), *tn = p.tn.as<const float>("tn"), *k = p.k.as<const float>("k");
  void* dmo = p.dmo.mut_ptr();
  const int dtype = p.model_output.dtype;
  if (n == 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    lincomb_kernel<T, 1><<<grid_size(n, kThreads), kThreads, 0, s>>>(
        static_cast<const T*>(x0), static_cast<const T*>(noise), static_cast<const T*>(mo), tx, tn, k,
        static_cast<T*>(dmo), n, S);
  });
  GK_CUDA_CHECK_LAUNCH("diffusion_loss_backward");
}

}  // namespace gk::diffusion
