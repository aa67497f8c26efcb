// gankern._C: the CPU kernels. Functions take raw addresses (tensor.data_ptr()), sizes, strides and
// scalars; Python validates and allocates (gankern/ops/). One section per op family.
#include <omp.h>
#include <pybind11/pybind11.h>

#include "bias_act/bias_act.h"

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
}
