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

namespace gk::upfirdn2d {

struct Params {
  std::int64_t N, C, H, W, OH, OW;
  std::int64_t sxn, sxc, sxh, sxw;  // x strides, elements
  std::int64_t syn, syc, syh, syw;  // y strides
  int upx, upy, downx, downy;
  int px0, py0;                     // leading pads (the trailing ones only set OH, OW)
  int kw, kh;                       // filter taps along x and y
  bool channels_last;
};

// The first filter tap of output sample o that meets a real input sample, and that sample.
GK_HOST_DEVICE inline void first_tap(std::int64_t o, int down, int up, int p0, int& k0, std::int64_t& i0) {
  const std::int64_t t = o * down - p0;
  std::int64_t r = (-t) % up;
  if (r < 0) r += up;
  k0 = static_cast<int>(r);
  i0 = (t + r) / up;  // exact
}

// g: [kh, kw] fp32 correlation kernel. g1: for a separable (1-D) filter, the x pass [kw] then the
// y pass [kh] (kw == kh) with the product equal to g, else nullptr.
void forward_cpu(const float* x, const float* g, const float* g1, float* y, const Params& p);
void forward_cuda(const void* x, const float* g, void* y, const Params& p, int dtype, std::uintptr_t stream);

}  // namespace gk::upfirdn2d
