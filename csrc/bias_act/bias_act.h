// bias_act: y = clamp(act(x + b) * gain, -clamp, clamp), b broadcast along one dimension.
//
// Layout contract (both backends): x, y (and dy, dx) are dense tensors with the same strides, in any
// dense permutation (NCHW, channels_last, ...). Seen as flat memory of n elements, the bias index of
// element i is (i / cstride) % C, where cstride is the stride of the bias dimension. No bias: C = 1,
// b = nullptr. clamp < 0 means no clamp.
#pragma once
#include <cstdint>

#include "common/activations.h"

namespace gk::bias_act {

// Everything a kernel needs besides pointers.
struct Params {
  std::int64_t n;        // elements
  std::int64_t C;        // length of the bias dimension (1 without bias)
  std::int64_t cstride;  // stride of the bias dimension, in elements
  int act;               // gk::Act code
  float alpha, gain, clamp;
};

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

void forward_cpu(const float* x, const float* b, float* y, const Params& p);
void backward_cpu(const float* dy, const float* x, const float* b, float* dx, const Params& p);

// dtype: gk::DType code of x/y/dy/dx; the bias is always fp32. stream: a cudaStream_t.
void forward_cuda(const void* x, const float* b, void* y, const Params& p, int dtype, std::uintptr_t stream);
void backward_cuda(const void* dy, const void* x, const float* b, void* dx, const Params& p, int dtype,
                   std::uintptr_t stream);

}  // namespace gk::bias_act
