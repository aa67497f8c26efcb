// VAE sampling on CUDA. One thread per Philox counter: it makes the four normals of elements
// 4k .. 4k+3 and handles those four elements, so eps never touches memory.
// Bytes: randn writes n * sizeof(T); forward reads mu, logvar and writes z (and the elementwise KL
// when asked); backward reads dz, mu, logvar and writes dmu, dlogvar.
// KL sums are deterministic: each block of kKlBlock elements is reduced by one CUDA block in a
// fixed tree order into partials[b] (fp64), which the caller adds in order. No atomics.
#include "common/cuda_utils.cuh"
#include "vae/vae.h"

namespace gk::vae {
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
      for (int j = 0; i0 + j < n; ++j) out[i0 + j] = from_f32<T>(r[j]);
    }
  }
}

}  // namespace

void randn_cuda(void* out, std::int64_t n, std::uint64_t seed, std::uint64_t offset, int dtype,
                std::uintptr_t stream) {
  if (n == 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    randn_kernel<T><<<grid_size((n + 3) / 4, kThreads), kThreads, 0, s>>>(static_cast<T*>(out), n, seed, offset);
  });
  GK_CUDA_CHECK_LAUNCH("randn");
}

}  // namespace gk::vae
