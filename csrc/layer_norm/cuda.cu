// layer_norm on CUDA: one block per row (grid-stride over rows), fp32 math; the row is read from
// global memory (L1/L2 after the first pass) for the mean, the centered variance and the output.
// Backward: one block per part of rows; each thread owns fixed columns, so it accumulates the
// part's weight/bias partial sums for them in global memory without atomics (deterministic).
#include "common/cuda_utils.cuh"
#include "layer_norm/layer_norm.h"

namespace gk::layer_norm {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads)
forward_kernel(const T* __restrict__ x, const T* __restrict__ res, const float* __restrict__ w,
               const float* __restrict__ b, T* __restrict__ y, T* __restrict__ h, float* __restrict__ mean,
               float* __restrict__ rstd, std::int64_t rows, std::int64_t D, float eps) {
  __shared__ float sh[kThreads / 32];
  for (std::int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const std::int64_t o = row * D;
    const T* src = x + o;
    if (res) {  // h as stored (rounded to T), as eager code normalizing the stored sum
      for (std::int64_t j = threadIdx.x; j < D; j += kThreads) h[o + j] = from_f32<T>(to_f32(x[o + j]) + to_f32(res[o + j]));
      __syncthreads();
      src = h + o;
    }
    float s = 0.f;
    for (std::int64_t j = threadIdx.x; j < D; j += kThreads) s += to_f32(src[j]);
    const float m = block_sum<kThreads>(s, sh) / static_cast<float>(D);
    float q = 0.f;
    for (std::int64_t j = threadIdx.x; j < D; j += kThreads) {
      const float d = to_f32(src[j]) - m;
      q += d * d;
    }
    const float rs = 1.f / sqrtf(block_sum<kThreads>(q, sh) / static_cast<float>(D) + eps);  // (no rsqrtf in the emulator)
    for (std::int64_t j = threadIdx.x; j < D; j += kThreads) {
      float v = (to_f32(src[j]) - m) * rs;
      if (w) v *= __ldg(w + j);
      if (b) v += __ldg(b + j);
      y[o + j] = from_f32<T>(v);
    }
    if (threadIdx.x == 0) {
      mean[row] = m;
      rstd[row] = rs;
    }
    __syncthreads();  // h of this row is read by every thread before the next row's writes
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
backward_kernel(const T* __restrict__ dy, const T* __restrict__ dh, const T* __restrict__ h,
                const float* __restrict__ mean, const float* __restrict__ rstd, const float* __restrict__ w,
                T* __restrict__ dx, float* __restrict__ dw, float* __restrict__ db, std::int64_t rows, std::int64_t D,
                std::int64_t parts) {
  __shared__ float sh[kThreads / 32];
  for (std::int64_t k = blockIdx.x; k < parts; k += gridDim.x) {
    float* dwk = dw + k * D;
    float* dbk = db + k * D;
    for (std::int64_t j = threadIdx.x; j < D; j += kThreads) dwk[j] = dbk[j] = 0.f;
    for (std::int64_t row = part_begin(k, rows, parts); row < part_begin(k + 1, rows, parts); ++row) {
      const std::int64_t o = row * D;
      const float m = mean[row], rs = rstd[row];
      float sg = 0.f, sgx = 0.f;
      for (std::int64_t j = threadIdx.x; j < D; j += kThreads) {
        const float d = to_f32(dy[o + j]), xhat = (to_f32(h[o + j]) - m) * rs;
        const float g = w ? d * __ldg(w + j) : d;
        sg += g;
        sgx += g * xhat;
        dwk[j] += d * xhat;  // column j belongs to this thread in every row
        dbk[j] += d;
      }
      const float mg = block_sum<kThreads>(sg, sh) / static_cast<float>(D);
      const float mgx = block_sum<kThreads>(sgx, sh) / static_cast<float>(D);
      for (std::int64_t j = threadIdx.x; j < D; j += kThreads) {
        const float d = to_f32(dy[o + j]), xhat = (to_f32(h[o + j]) - m) * rs;
        const float g = w ? d * __ldg(w + j) : d;
        float v = rs * (g - mg - xhat * mgx);
        if (dh) v += to_f32(dh[o + j]);
        dx[o + j] = from_f32<T>(v);
      }
    }
  }
}

}  // namespace

void forward(const ForwardParams& p, Stream stream) {
  const char* op = "layer_norm";
  check_forward(op, p);
  if (p.rows == 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_dtype(p.x.dtype, op, [&](auto tag) {
    using T = decltype(tag);
    forward_kernel<T><<<grid_size(p.rows * kThreads, kThreads), kThreads, 0, s>>>(
        p.x.as<const T>("x"), p.residual.as<const T>("residual"), p.weight.as<const float>("weight"),
        p.bias.as<const float>("bias"), p.y.as<T>("y"), p.h.as<T>("h"), p.mean.as<float>("mean"),
        p.rstd.as<float>("rstd"), p.rows, p.D, p.eps);
  });
  GK_CUDA_CHECK_LAUNCH(op);
}

void backward(const BackwardParams& p, Stream stream) {
  const char* op = "layer_norm_backward";
  check_backward(op, p);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_dtype(p.h.dtype, op, [&](auto tag) {
    using T = decltype(tag);
    backward_kernel<T><<<grid_size(p.parts * kThreads, kThreads), kThreads, 0, s>>>(
        p.dy.as<const T>("dy"), p.dh.as<const T>("dh"), p.h.as<const T>("h"), p.mean.as<const float>("mean"),
        p.rstd.as<const float>("rstd"), p.weight.as<const float>("weight"), p.dx.as<T>("dx"),
        p.dweight.as<float>("dweight"), p.dbias.as<float>("dbias"), p.rows, p.D, p.parts);
  });
  GK_CUDA_CHECK_LAUNCH(op);
}

}  // namespace gk::layer_norm
