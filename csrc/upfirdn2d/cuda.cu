// upfirdn2d on CUDA: one thread per output sample, the polyphase sum of upfirdn2d.h over
// ceil(kh/upy) x ceil(kw/upx) taps, any factors, padding and filter size, fp32 math.
// Threads walk the output in memory order (x fastest for NCHW, channels for channels_last), so
// neighbouring threads write neighbouring addresses and read neighbouring (or shared) inputs; the
// filter (at most a few hundred floats) is read through the read-only cache.
#include "common/cuda_utils.cuh"
#include "upfirdn2d/upfirdn2d.h"

namespace gk::upfirdn2d {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads)
upfirdn2d_kernel(const T* __restrict__ x, const float* __restrict__ g, T* __restrict__ y, Params p) {
  const std::int64_t total = p.N * p.C * p.OH * p.OW;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += stride) {
    std::int64_t n, c, oy, ox, r = i;
    if (p.channels_last) {
      c = r % p.C; r /= p.C;
      ox = r % p.OW; r /= p.OW;
      oy = r % p.OH; n = r / p.OH;
    } else {
      ox = r % p.OW; r /= p.OW;
      oy = r % p.OH; r /= p.OH;
      c = r % p.C; n = r / p.C;
    }
    int k0y, k0x;
    std::int64_t iy0, ix0;
    first_tap(oy, p.downy, p.upy, p.py0, k0y, iy0);
    first_tap(ox, p.downx, p.upx, p.px0, k0x, ix0);
    const T* xp = x + n * p.sxn + c * p.sxc;
    float acc = 0.f;
    for (int ky = k0y, t = 0; ky < p.kh; ky += p.upy, ++t) {
      const std::int64_t iy = iy0 + t;
      if (iy < 0 || iy >= p.H) continue;
      const T* row = xp + iy * p.sxh;
      const float* grow = g + ky * p.kw;
      for (int kx = k0x, s = 0; kx < p.kw; kx += p.upx, ++s) {
        const std::int64_t ix = ix0 + s;
        if (ix < 0 || ix >= p.W) continue;
        acc += __ldg(grow + kx) * to_f32(row[ix * p.sxw]);
      }
    }
    y[n * p.syn + c * p.syc + oy * p.syh + ox * p.syw] = from_f32<T>(acc);
  }
}

}  // namespace

void forward(const Params& p, Stream stream) {
  const char* op = "upfirdn2d";
  check_args(op, p);
  const std::int64_t total = p.N * p.C * p.OH * p.OW;
  if (total == 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_dtype(p.x.dtype, op, [&](auto tag) {
    using T = decltype(tag);
    upfirdn2d_kernel<T><<<grid_size(total, kThreads), kThreads, 0, s>>>(p.x.as<const T>("x"), p.g.as<const float>("g"),
                                                                         p.y.as<T>("y"), p);
  });
  GK_CUDA_CHECK_LAUNCH(op);
}

}  // namespace gk::upfirdn2d
