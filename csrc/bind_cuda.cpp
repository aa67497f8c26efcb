// gankern._cuda: the CUDA kernels. Host-only C++ (compiled by the host compiler); the kernels and
// their launchers live in csrc/<family>/cuda.cu. Functions take raw device addresses, sizes,
// strides, scalars, a dtype code and the stream (torch.cuda.current_stream().cuda_stream); Python
// validates, allocates and selects the device. One section per op family.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include "bias_act/bias_act.h"
#include "norm/norm.h"

namespace py = pybind11;
using gk::ptr;
using std::uintptr_t;

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "gankern CUDA kernels";
  m.def("runtime_version", []() {
    int v = 0;
    cudaRuntimeGetVersion(&v);
    return v;
  });
  m.def("compiled_archs", []() { return std::string(GANKERN_CUDA_ARCHS_STR); });

  // ---- bias_act ----
  m.def("bias_act_forward",
        [](uintptr_t x, uintptr_t b, uintptr_t y, int64_t n, int64_t C, int64_t cstride, int act, float alpha,
           float gain, float clamp, int dtype, uintptr_t stream) {
          gk::bias_act::forward_cuda(ptr<const void>(x), ptr<const float>(b), ptr<void>(y),
                                     {n, C, cstride, act, alpha, gain, clamp}, dtype, stream);
        });
  m.def("bias_act_backward",
        [](uintptr_t dy, uintptr_t x, uintptr_t b, uintptr_t dx, int64_t n, int64_t C, int64_t cstride, int act,
           float alpha, float gain, float clamp, int dtype, uintptr_t stream) {
          gk::bias_act::backward_cuda(ptr<const void>(dy), ptr<const void>(x), ptr<const float>(b), ptr<void>(dx),
                                      {n, C, cstride, act, alpha, gain, clamp}, dtype, stream);
        });

  // ---- norm (group_norm_act, batch_norm_act) ----
  // Shape: (N, C, HW, channels_last); tables fp32 [N*C]; part: fp32 partials [S][3][N*C] with
  // S = ceil(HW / chunk), chunk from norm_split_chunk (csrc/norm/norm.h).
  using gk::norm::Shape;
  m.def("norm_split_chunk", [](int64_t N, int64_t C, int64_t HW, bool cl) {
    return gk::norm::cuda_split_chunk(Shape{N, C, HW, cl});
  });
  m.def("norm_channel_stats", [](uintptr_t x, int64_t N, int64_t C, int64_t HW, bool cl, int64_t chunk, uintptr_t part,
                                 int dtype, uintptr_t stream) {
    gk::norm::channel_stats_cuda(ptr<const void>(x), Shape{N, C, HW, cl}, chunk, ptr<float>(part), dtype, stream);
  });
  m.def("norm_apply", [](uintptr_t x, uintptr_t M, uintptr_t A, uintptr_t B, uintptr_t res, uintptr_t y, int64_t N,
                         int64_t C, int64_t HW, bool cl, int act, float alpha, int dtype, uintptr_t stream) {
    gk::norm::apply_cuda(ptr<const void>(x), ptr<const float>(M), ptr<const float>(A), ptr<const float>(B),
                         ptr<const void>(res), ptr<void>(y), Shape{N, C, HW, cl}, act, alpha, dtype, stream);
  });
  m.def("norm_backward_reduce", [](uintptr_t dy, uintptr_t x, uintptr_t M, uintptr_t A, uintptr_t B, uintptr_t P,
                                   int64_t N, int64_t C, int64_t HW, bool cl, int act, float alpha, int64_t chunk,
                                   uintptr_t part, int dtype, uintptr_t stream) {
    gk::norm::backward_reduce_cuda(ptr<const void>(dy), ptr<const void>(x), ptr<const float>(M), ptr<const float>(A),
                                   ptr<const float>(B), ptr<const float>(P), Shape{N, C, HW, cl}, act, alpha, chunk,
                                   ptr<float>(part), dtype, stream);
  });
  m.def("norm_backward_apply", [](uintptr_t dy, uintptr_t x, uintptr_t M, uintptr_t A, uintptr_t B, uintptr_t A2,
                                  uintptr_t B2, uintptr_t C2, uintptr_t dx, int64_t N, int64_t C, int64_t HW, bool cl,
                                  int act, float alpha, int dtype, uintptr_t stream) {
    gk::norm::backward_apply_cuda(ptr<const void>(dy), ptr<const void>(x), ptr<const float>(M), ptr<const float>(A),
                                  ptr<const float>(B), ptr<const float>(A2), ptr<const float>(B2),
                                  ptr<const float>(C2), ptr<void>(dx), Shape{N, C, HW, cl}, act, alpha, dtype, stream);
  });
}
