// gankern._C: the CPU kernels. Functions take raw addresses (tensor.data_ptr()), sizes, strides and
// scalars; Python validates and allocates (gankern/ops/). One section per op family.
#include <omp.h>
#include <pybind11/pybind11.h>

#include "bias_act/bias_act.h"
#include "vae/vae.h"

namespace py = pybind11;
using gk::ptr;
using std::uintptr_t;

PYBIND11_MODULE(_C, m) {
  m.doc() = "gankern CPU kernels (C++/OpenMP)";
  m.def("set_num_threads", [](int n) { omp_set_num_threads(n); });
  m.def("get_max_threads", []() { return omp_get_max_threads(); });

  // ---- bias_act ----
  m.def(
      "bias_act_forward",
      [](uintptr_t x, uintptr_t b, uintptr_t y, int64_t n, int64_t C, int64_t cstride, int act, float alpha,
         float gain, float clamp) {
        py::gil_scoped_release nogil;
        gk::bias_act::forward_cpu(ptr<const float>(x), ptr<const float>(b), ptr<float>(y),
                                  {n, C, cstride, act, alpha, gain, clamp});
      },
      py::arg("x"), py::arg("b"), py::arg("y"), py::arg("n"), py::arg("C"), py::arg("cstride"), py::arg("act"),
      py::arg("alpha"), py::arg("gain"), py::arg("clamp"));
  m.def(
      "bias_act_backward",
      [](uintptr_t dy, uintptr_t x, uintptr_t b, uintptr_t dx, int64_t n, int64_t C, int64_t cstride, int act,
         float alpha, float gain, float clamp) {
        py::gil_scoped_release nogil;
        gk::bias_act::backward_cpu(ptr<const float>(dy), ptr<const float>(x), ptr<const float>(b), ptr<float>(dx),
                                   {n, C, cstride, act, alpha, gain, clamp});
      },
      py::arg("dy"), py::arg("x"), py::arg("b"), py::arg("dx"), py::arg("n"), py::arg("C"), py::arg("cstride"),
      py::arg("act"), py::arg("alpha"), py::arg("gain"), py::arg("clamp"));

  // ---- vae: counter-based randn, fused reparameterization and KL (csrc/vae/vae.h) ----
  // seed and offset arrive as int64 bit patterns of the uint64 Philox key and counter.
  m.def("randn", [](uintptr_t out, int64_t n, int64_t seed, int64_t offset) {
    py::gil_scoped_release nogil;
    gk::vae::randn_cpu(ptr<float>(out), n, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset));
  });
  m.def("vae_forward", [](uintptr_t mu, uintptr_t lv, uintptr_t z, uintptr_t kl, uintptr_t partials, int64_t rows,
                          int64_t inner, int64_t mu_rs, int64_t lv_rs, int64_t seed, int64_t offset, float lo,
                          float hi) {
    py::gil_scoped_release nogil;
    gk::vae::forward_cpu(ptr<const float>(mu), ptr<const float>(lv), ptr<float>(z), ptr<float>(kl),
                         ptr<double>(partials), {rows, inner, mu_rs, lv_rs},
                         {static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), lo, hi});
  });
  m.def("vae_backward", [](uintptr_t dz, uintptr_t gkl, bool gkl_elementwise, float gkl_scale, uintptr_t mu,
                           uintptr_t lv, uintptr_t dmu, uintptr_t dlv, int64_t rows, int64_t inner, int64_t mu_rs,
                           int64_t lv_rs, int64_t seed, int64_t offset, float lo, float hi) {
    py::gil_scoped_release nogil;
    gk::vae::backward_cpu(ptr<const float>(dz), {ptr<const float>(gkl), gkl_elementwise, gkl_scale},
                          ptr<const float>(mu), ptr<const float>(lv), ptr<float>(dmu), ptr<float>(dlv),
                          {rows, inner, mu_rs, lv_rs},
                          {static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), lo, hi});
  });
  m.def("vae_set_simd", [](bool enabled) { gk::vae::set_cpu_simd(enabled); });
  m.def("vae_kl_block", []() { return gk::vae::kKlBlock; });
}
