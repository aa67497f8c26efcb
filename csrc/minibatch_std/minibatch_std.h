// minibatch_std: StyleGAN2's minibatch standard deviation (discriminator epilogue).
//
// x [N, C, H, W] (contiguous NCHW) is split into n = N / G groups of G samples, sample i in group
// i % n (StyleGAN's reshape(G, n, ...)), and its channels into F slices of c = C / F. Per group j
// and slice f:
//   s[j, f] = mean over (channel in slice, pixel) of sqrt(var_g x[g*n + j, ch, p] + eps)
// with the population variance over the group's G samples. The output [N, C + F, H, W] is x with
// F extra channels, out[i, C + f, :, :] = s[i % n, f].
//
// Backward (dout -> dx), with mu and sd the group's mean and std at (j, ch, p):
//   ds[j, f]            = sum over (g, p) of dout[g*n + j, C + f, p] / (c * H * W)
//   dx[g*n + j, ch, p]  = dout[g*n + j, ch, p] + ds[j, f(ch)] * (x_g - mu) / (G * sd)
// (the subtracted mean contributes nothing: the deviations sum to zero over the group).
#pragma once
#include <cstdint>

#include "common/view.h"

namespace gk::minibatch_std {

#define GK_MINIBATCH_STD_PARAMS(X)                                                                 \
  X(gk::View, x, "input [N, C, H, W], contiguous; float32, float16 or bfloat16")                   \
  X(gk::View, dout, "backward: gradient of the output [N, C + F, H, W], x's dtype; forward: None") \
  X(gk::View, s, "float32 [N / G, F] scratch: the statistic (forward) or ds (backward)")          \
  X(gk::View, out, "forward: y [N, C + F, H, W]; backward: dx [N, C, H, W]; x's dtype, contiguous") \
  X(std::int64_t, N, "batch")                                                                        \
  X(std::int64_t, C, "channels of x")                                                                \
  X(std::int64_t, HW, "pixels per plane (H * W)")                                                   \
  X(std::int64_t, G, "group size (divides N)")                                                       \
  X(std::int64_t, F, "number of statistics channels (divides C)")                                   \
  X(float, eps, "added to the variance under the square root")
GK_STRUCT(Params, GK_MINIBATCH_STD_PARAMS);

inline void check_args(const char* op, const Params& p, bool backward) {
  check(!p.x.is_none() && !p.out.is_none() && !p.s.is_none() && (!backward || !p.dout.is_none()), op,
        "x, s, out (and dout for the backward) are required");
  check(p.N >= 1 && p.C >= 1 && p.HW >= 1 && p.G >= 1 && p.F >= 1 && p.N % p.G == 0 && p.C % p.F == 0, op,
        "need N, C, HW, G, F >= 1, G dividing N and F dividing C");
  check(p.x.numel == p.N * p.C * p.HW, op, "x must have N * C * HW elements");
  check(p.out.numel == p.N * (backward ? p.C : p.C + p.F) * p.HW, op, "out has the wrong number of elements");
  check(!backward || p.dout.numel == p.N * (p.C + p.F) * p.HW, op, "dout must have N * (C + F) * HW elements");
  check(p.s.numel == (p.N / p.G) * p.F, op, "s must have (N / G) * F elements");
  check(p.out.dtype == p.x.dtype && (p.dout.is_none() || p.dout.dtype == p.x.dtype), op,
        "x, out (and dout) must share one dtype");
  p.s.as<const float>("s");
}

// Entry points, defined by cpu.cpp for gankern._C and by cuda.cu for gankern._cuda.
void forward(const Params& p, Stream stream);   // s = the statistic, out = cat(x, s broadcast)
void backward(const Params& p, Stream stream);  // s = ds (scratch), out = dx

}  // namespace gk::minibatch_std
