// geglu on CUDA: one thread per output element (grid-stride), math in fp32.
// Bytes: forward reads 2 D and writes D per row; backward reads D + 2 D and writes 2 D.
#include "common/cuda_utils.cuh"
#include "geglu/geglu.h"

namespace gk::geglu {
namespace {

constexpr int kThreads = 256;

template <typename T, int A, bool kBwd>
__global__ void __launch_bounds__(kThreads)
geglu_kernel(const T* __restrict__ x, const T* __restrict__ dy, T* __restrict__ out, std::int64_t n, std::int64_t D) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const std::int64_t r = i / D, j = i - r * D;
    const std::int64_t hi = r * 2 * D + j;
    const float h = to_f32(x[hi]), g = to_f32(x[hi + D]);
    if constexpr (kBwd) {
      const float d = to_f32(dy[i]);
      out[hi] = from_f32<T>(d * act_forward<A>(g, 0.f));
      out[hi + D] = from_f32<T>(d * h * act_derivative<A>(g, 0.f));
    } else {
      out[i] = from_f32<T>(h * act_forward<A>(g, 0.f));
    }
  }
}

template <bool kBwd>
void launch(const Params& p, Stream stream) {
  const char* op = kBwd ? "geglu_backward" : "geglu";
  check_args(op, p, kBwd);
  const std::int64_t n = p.rows * p.D;
  if (n == 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_dtype(p.x.dtype, op, [&](auto tag) {
    using T = decltype(tag);
    dispatch_gelu(p.tanh, [&](auto a) {
      constexpr int A = decltype(a)::value;
      geglu_kernel<T, A, kBwd><<<grid_size(n, kThreads), kThreads, 0, s>>>(
          p.x.as<const T>("x"), p.dy.as<const T>("dy"), p.out.as<T>("out"), n, p.D);
    });
  });
  GK_CUDA_CHECK_LAUNCH(op);
}

}  // namespace

void forward(const Params& p, Stream stream) { launch<false>(p, stream); }
void backward(const Params& p, Stream stream) { launch<true>(p, stream); }

}  // namespace gk::geglu
