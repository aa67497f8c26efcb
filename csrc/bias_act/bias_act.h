// bias_act: y = clamp(act(x + b) * gain, -clamp, clamp), b broadcast along one dimension.
//
// Layout contract (both backends): x, y (and dy, dx) are dense tensors with the same strides, in any
// dense permutation (NCHW, channels_last, ...). Seen as flat memory of n elements, the bias index of
// element i is (i / cstride) % C, where cstride is the stride of the bias dimension. No bias: C = 1,
// b = nullptr. clamp < 0 means no clamp.
#pragma once
#include <cstdint>

#include "common/activations.h"
#include "common/view.h"

namespace gk::bias_act {

// One pass (forward or backward) over n = x.numel elements.
#define GK_BIAS_ACT_PARAMS(X)                                                          \
  X(gk::View, x, "input; dense, any permutation; float32, float16 or bfloat16") \
  X(gk::View, b, "bias: float32 [C], or None")                                          \
  X(gk::View, dy, "backward: gradient of y, x's dtype and strides; forward: None")      \
  X(gk::View, out, "y (forward) or dx (backward): x's dtype and strides")               \
  X(std::int64_t, C, "length of the bias dimension (1 without bias)")                 \
  X(std::int64_t, cstride, "stride of the bias dimension, in elements")               \
  X(int, act, "gk::Act code (gankern/_tables.py: ACTIVATIONS)")                        \
  X(float, alpha, "lrelu slope")                                                       \
  X(float, gain, "output scale")                                                       \
  X(float, clamp, "clip the output to [-clamp, clamp]; < 0: no clip")
GK_STRUCT(Params, GK_BIAS_ACT_PARAMS);

template <int A, bool kClamp>
GK_HOST_DEVICE inline float forward_value(float x, float b, float alpha, float gain, float clamp) {
  float v = act_forward<A>(x + b, alpha) * gain;
  if constexpr (kClamp) v = v < -clamp ? -clamp : (v > clamp ? clamp : v);  // NaN passes, as torch.clamp
  return v;
}

// dL/dx given dL/dy. torch.clamp passes the gradient where -clamp <= v <= clamp, inclusive.
template <int A, bool kClamp>
GK_HOST_DEVICE inline float backward_value(float dy, float x, float b, float alpha, float gain, float clamp) {
  float z = x + b;
  if constexpr (kClamp) {
    float v = act_forward<A>(z, alpha) * gain;
    if (!(v >= -clamp && v <= clamp)) return 0.f;
  }
  return dy * act_derivative<A>(z, alpha) * gain;
}

// The checks both backends make before a pass: one dtype and size for x, out (and dy), an fp32 bias.
inline void check_args(const char* op, const Params& p, bool backward) {
  check(!p.x.is_none() && !p.out.is_none() && (!backward || !p.dy.is_none()), op,
        "x, out (and dy for the backward) are required");
  check_same(op, p.x, {&p.out, &p.dy});
  p.b.as<const float>("b");
  check(p.C >= 1 && p.cstride >= 1 && (p.b.is_none() || p.b.numel == p.C), op,
        "the bias must have C >= 1 elements and cstride >= 1");
}

// Entry points, defined by cpu.cpp for gankern._C and by cuda.cu for gankern._cuda.
void forward(const Params& p, Stream stream);   // out = y
void backward(const Params& p, Stream stream);  // out = dx, from dy

}  // namespace gk::bias_act
