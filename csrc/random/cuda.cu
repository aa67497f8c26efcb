// Counter-based normals on CUDA: one thread per Philox counter writes its four elements.
// Bytes: n * sizeof(T) written.
#include "common/cuda_utils.cuh"
#include "random/random.h"

namespace gk::random {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads) randn_kernel(T* __restrict__ out, std::int64_t n, std::uint64_t seed,
                                                         std::uint64_t offset) {
  const std::int64_t m = (n + 3) / 4;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < m; k += stride) {
    float r[4];
    randn4(seed, offset + static_cast<std::uint64_t>(k), r);
    const std::int64_t i0 = 4 * k;
    if (i0 + 4 <= n) {  // one 4-element store (16 bytes for fp32, 8 for fp16/bf16)
      Vec<T, 4> v;
#pragma unroll
      for (int j = 0; j < 4; ++j) v.v[j] = from_f32<T>(r[j]);
      *reinterpret_cast<Vec<T, 4>*>(out + i0) = v;
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j)  // fixed trip count: r stays in registers
        if (i0 + j < n) out[i0 + j] = from_f32<T>(r[j]);
    }
  }
}

}  // namespace

void randn(const Params& p, Stream stream) {
  const std::int64_t n = p.out.numel;
  if (n == 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_dtype(p.out.dtype, "randn", [&](auto tag) {
    using T = decltype(tag);
    randn_kernel<T><<<grid_size((n + 3) / 4, kThreads), kThreads, 0, s>>>(
        p.out.as<T>("out"), n, static_cast<std::uint64_t>(p.seed), static_cast<std::uint64_t>(p.offset));
  });
  GK_CUDA_CHECK_LAUNCH("randn");
}

}  // namespace gk::random
