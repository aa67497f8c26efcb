// filtered_lrelu on CUDA: one block per TILE x TILE output tile of one plane. The block first
// computes the intermediate samples its tile needs (stage A's polyphase sum from x, then the
// activation or the mask factor) into shared memory, then every thread filters its outputs from
// there (stage B): x is read, y and the mask written, the upsampled image never leaves the chip.
// Neighbouring tiles recompute their overlap ((k_B - down) rows/columns) rather than exchange it.
#include "common/cuda_utils.cuh"
#include "filtered_lrelu/filtered_lrelu.h"
#include "upfirdn2d/upfirdn2d.h"

namespace gk::filtered_lrelu {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxShared = 48 * 1024;

template <typename T>
__global__ void __launch_bounds__(kThreads)
filtered_lrelu_kernel(const T* __restrict__ x, const float* __restrict__ b, std::uint8_t* __restrict__ mask,
                      const float* __restrict__ gA, const float* __restrict__ gB, T* __restrict__ y, Params p,
                      int tile, int sh, int sw) {
  __shared__ float smem[kMaxShared / sizeof(float)];  // sh x sw intermediate samples used
  const std::int64_t tiles_x = (p.OW + tile - 1) / tile;
  const std::int64_t oy0 = (blockIdx.x / tiles_x) * tile, ox0 = (blockIdx.x % tiles_x) * tile;
  // first intermediate sample the tile reads (stage B: m = o*down + j - pB)
  const std::int64_t my0 = oy0 * p.downy - p.pby, mx0 = ox0 * p.downx - p.pbx;
  const std::int64_t planes = p.N * p.C;
  for (std::int64_t plane = blockIdx.y; plane < planes; plane += gridDim.y) {
    const T* xp = x + plane * p.H * p.W;
    const float bias = b != nullptr ? __ldg(b + plane % p.C) : 0.f;
    std::uint8_t* mp = mask + plane * p.TH * p.TW;
    for (int s = threadIdx.x; s < sh * sw; s += blockDim.x) {
      const std::int64_t my = my0 + s / sw, mx = mx0 + s % sw;
      float v = 0.f;  // outside [0, TH) x [0, TW): stage B's zero padding
      if (my >= 0 && my < p.TH && mx >= 0 && mx < p.TW) {
        int k0y, k0x;
        std::int64_t iy0, ix0;
        upfirdn2d::first_tap(my, 1, p.upy, p.pay, k0y, iy0);
        upfirdn2d::first_tap(mx, 1, p.upx, p.pax, k0x, ix0);
        float t = 0.f;
        for (int ky = k0y, a = 0; ky < p.kay; ky += p.upy, ++a) {
          const std::int64_t iy = iy0 + a;
          if (iy < 0 || iy >= p.H) continue;
          for (int kx = k0x, c = 0; kx < p.kax; kx += p.upx, ++c) {
            const std::int64_t ix = ix0 + c;
            if (ix < 0 || ix >= p.W) continue;
            t += __ldg(gA + ky * p.kax + kx) * (to_f32(xp[iy * p.W + ix]) + bias);
          }
        }
        const std::int64_t mi = my * p.TW + mx;
        if (p.mode == 0) {
          std::uint8_t code;
          v = activate(t, p, code);
          mp[mi] = code;  // tiles overlapping here write the same code
        } else {
          v = t * mask_factor(mp[mi], p);
        }
      }
      smem[s] = v;
    }
    __syncthreads();
    for (int s = threadIdx.x; s < tile * tile; s += blockDim.x) {
      const std::int64_t oy = oy0 + s / tile, ox = ox0 + s % tile;
      if (oy < p.OH && ox < p.OW) {
        const int ry = static_cast<int>(oy - oy0) * p.downy, rx = static_cast<int>(ox - ox0) * p.downx;
        float acc = 0.f;
        for (int jy = 0; jy < p.kby; ++jy)
          for (int jx = 0; jx < p.kbx; ++jx) acc += __ldg(gB + jy * p.kbx + jx) * smem[(ry + jy) * sw + rx + jx];
        y[(plane * p.OH + oy) * p.OW + ox] = from_f32<T>(acc);
      }
    }
    __syncthreads();  // smem is rewritten for the next plane
  }
}

}  // namespace

void run(const Params& p, Stream stream) {
  const char* op = "filtered_lrelu";
  check_args(op, p);
  const std::int64_t planes = p.N * p.C;
  if (planes * p.OH * p.OW == 0) return;
  // The largest tile whose intermediate samples fit in shared memory.
  int tile = 16, sh = 0, sw = 0;
  for (; tile >= 1; tile /= 2) {
    sh = (tile - 1) * p.downy + p.kby;
    sw = (tile - 1) * p.downx + p.kbx;
    if (static_cast<std::int64_t>(sh) * sw * 4 <= kMaxShared) break;
  }
  check(tile >= 1, op, "the down filter is too large for shared memory");
  const std::int64_t tiles = ((p.OH + tile - 1) / tile) * ((p.OW + tile - 1) / tile);
  check(tiles < (1LL << 31), op, "output too large");
  dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(planes < 65535 ? planes : 65535));
  auto s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_dtype(p.x.dtype, op, [&](auto tag) {
    using T = decltype(tag);
    filtered_lrelu_kernel<T><<<grid, kThreads, 0, s>>>(p.x.as<const T>("x"), p.b.as<const float>("b"),
                                                       p.mask.as<std::uint8_t>("mask"), p.gA.as<const float>("gA"),
                                                       p.gB.as<const float>("gB"), p.y.as<T>("y"), p, tile, sh, sw);
  });
  GK_CUDA_CHECK_LAUNCH(op);
}

}  // namespace gk::filtered_lrelu
