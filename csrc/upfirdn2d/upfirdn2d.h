// upfirdn2d: upsample (zero insertion), pad (negative crops), FIR filter, downsample, fused.
//
// Per axis, with the correlation kernel g (the filter flipped unless flip_filter, gain folded in;
// computed in Python), output sample o is
//     y[o] = sum_k g[k] * u[o*down + k],   u[i*up + p0] = x[i], every other u = 0,
// so only taps k = k0, k0 + up, k0 + 2*up, ... (< k) meet a real input sample, namely
// x[i0], x[i0 + 1], ... with k0 = (p0 - o*down) mod up and i0 = (o*down + k0 - p0) / up
// (first_tap). Every kernel computes this polyphase sum directly: no zero-inserted or padded
// intermediate in memory. Samples outside [0, size) are zero.
//
// Layout contract: x [N, C, H, W] and y [N, C, OH, OW] have the same layout, either NCHW
// (stride of W = 1) or channels_last (stride of C = 1), named by `channels_last`; every index still
// goes through the strides.
#pragma once
#include <cstdint>

#include "common/macros.h"
#include "common/view.h"

namespace gk::upfirdn2d {

// One upfirdn2d pass (the forward; the backward is the same pass with backward_args, in Python).
#define GK_UPFIRDN2D_PARAMS(X)                                                                   \
  X(gk::View, x, "input [N, C, H, W], NCHW or channels_last; float32, float16 or bfloat16") \
  X(gk::View, g, "correlation kernel float32 [kh, kw], gain folded in")                          \
  X(gk::View, g1, "separable factors float32 [2, kw] (x pass, y pass; kw == kh), or None (CPU only)") \
  X(gk::View, y, "output [N, C, OH, OW], x's dtype and layout")                                  \
  X(std::int64_t, N, "batch") X(std::int64_t, C, "channels")                                    \
  X(std::int64_t, H, "input height") X(std::int64_t, W, "input width")                          \
  X(std::int64_t, OH, "output height") X(std::int64_t, OW, "output width")                      \
  X(std::int64_t, sxn, "x stride of N, elements") X(std::int64_t, sxc, "x stride of C")          \
  X(std::int64_t, sxh, "x stride of H") X(std::int64_t, sxw, "x stride of W")                    \
  X(std::int64_t, syn, "y stride of N") X(std::int64_t, syc, "y stride of C")                    \
  X(std::int64_t, syh, "y stride of H") X(std::int64_t, syw, "y stride of W")                    \
  X(int, upx, "upsampling along x") X(int, upy, "upsampling along y")                           \
  X(int, downx, "downsampling along x") X(int, downy, "downsampling along y")                   \
  X(int, px0, "leading pad along x (the trailing pads only set OW)")                              \
  X(int, py0, "leading pad along y")                                                              \
  X(int, kw, "filter taps along x") X(int, kh, "filter taps along y")                           \
  X(bool, channels_last, "layout of x and y: channels_last (stride of C = 1), else NCHW")
GK_STRUCT(Params, GK_UPFIRDN2D_PARAMS);

// The first filter tap of output sample o that meets a real input sample, and that sample.
GK_HOST_DEVICE inline void first_tap(std::int64_t o, int down, int up, int p0, int& k0, std::int64_t& i0) {
  const std::int64_t t = o * down - p0;
  std::int64_t r = (-t) % up;
  if (r < 0) r += up;
  k0 = static_cast<int>(r);
  i0 = (t + r) / up;  // exact
}

// The checks both backends make: x and y present, of one dtype, with the sizes of the geometry.
inline void check_args(const char* op, const Params& p) {
  check(!p.x.is_none() && !p.g.is_none() && !p.y.is_none(), op, "x, g and y are required");
  check(p.x.dtype == p.y.dtype, op, "x and y must share one dtype");
  check(p.x.numel == p.N * p.C * p.H * p.W && p.y.numel == p.N * p.C * p.OH * p.OW, op,
        "x and y must have N*C*H*W and N*C*OH*OW elements");
  check(p.upx >= 1 && p.upy >= 1 && p.downx >= 1 && p.downy >= 1 && p.kw >= 1 && p.kh >= 1, op,
        "up, down and the filter size must be >= 1");
  check(p.g.numel == static_cast<std::int64_t>(p.kw) * p.kh, op, "g must have kh*kw elements");
  check(p.g1.is_none() || (p.kw == p.kh && p.g1.numel == 2 * static_cast<std::int64_t>(p.kw)), op,
        "g1 must be None or [2, kw] with kw == kh");
  p.g.as<const float>("g");
  p.g1.as<const float>("g1");
}

// Entry point, defined by cpu.cpp for gankern._C and by cuda.cu for gankern._cuda (which ignores g1).
void forward(const Params& p, Stream stream);

}  // namespace gk::upfirdn2d
