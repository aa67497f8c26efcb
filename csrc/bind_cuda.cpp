// gankern._cuda: the CUDA kernels. Host-only C++ (compiled by the host compiler); the kernels and
// their launchers live in csrc/<family>/cuda.cu. Functions take raw device addresses, sizes,
// strides, scalars, a dtype code and the stream (torch.cuda.current_stream().cuda_stream); Python
// validates, allocates and selects the device. One section per op family.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include "bias_act/bias_act.h"
#include "vae/vae.h"

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

  // ---- vae: counter-based randn, fused reparameterization and KL (csrc/vae/vae.h) ----
  // seed and offset arrive as int64 bit patterns of the uint64 Philox key and counter.
  m.def("randn", [](uintptr_t out, int64_t n, int64_t seed, int64_t offset, int dtype, uintptr_t stream) {
    gk::vae::randn_cuda(ptr<void>(out), n, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), dtype, stream);
  });
}
