// gankern._C: the CPU kernels. Functions take raw addresses (tensor.data_ptr()), sizes, strides and
// scalars; Python validates and allocates (gankern/ops/). One section per op family.
#include <omp.h>
#include <pybind11/pybind11.h>

#include "bias_act/bias_act.h"
#include "norm/norm.h"

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

  // ---- norm (group_norm_act, batch_norm_act) ----
  // Shape: (N, C, HW, channels_last). Tables are fp32 [N*C]; stats and sums are float64.
  using gk::norm::Shape;
  m.def("norm_channel_stats", [](uintptr_t x, int64_t N, int64_t C, int64_t HW, bool cl, uintptr_t mean,
                                 uintptr_t m2) {
    py::gil_scoped_release nogil;
    gk::norm::channel_stats_cpu(ptr<const float>(x), Shape{N, C, HW, cl}, ptr<double>(mean), ptr<double>(m2));
  });
  m.def("norm_apply", [](uintptr_t x, uintptr_t M, uintptr_t A, uintptr_t B, uintptr_t res, uintptr_t y, int64_t N,
                         int64_t C, int64_t HW, bool cl, int act, float alpha) {
    py::gil_scoped_release nogil;
    gk::norm::apply_cpu(ptr<const float>(x), ptr<const float>(M), ptr<const float>(A), ptr<const float>(B),
                        ptr<const float>(res), ptr<float>(y), Shape{N, C, HW, cl}, act, alpha);
  });
  m.def("norm_backward_reduce", [](uintptr_t dy, uintptr_t x, uintptr_t M, uintptr_t A, uintptr_t B, uintptr_t P,
                                   int64_t N, int64_t C, int64_t HW, bool cl, int act, float alpha, uintptr_t sums) {
    py::gil_scoped_release nogil;
    gk::norm::backward_reduce_cpu(ptr<const float>(dy), ptr<const float>(x), ptr<const float>(M),
                                  ptr<const float>(A), ptr<const float>(B), ptr<const float>(P), Shape{N, C, HW, cl},
                                  act, alpha, ptr<double>(sums));
  });
  m.def("norm_backward_apply", [](uintptr_t dy, uintptr_t x, uintptr_t M, uintptr_t A, uintptr_t B, uintptr_t A2,
                                  uintptr_t B2, uintptr_t C2, uintptr_t dx, int64_t N, int64_t C, int64_t HW, bool cl,
                                  int act, float alpha) {
    py::gil_scoped_release nogil;
    gk::norm::backward_apply_cpu(ptr<const float>(dy), ptr<const float>(x), ptr<const float>(M), ptr<const float>(A),
                                 ptr<const float>(B), ptr<const float>(A2), ptr<const float>(B2), ptr<const float>(C2),
                                 ptr<float>(dx), Shape{N, C, HW, cl}, act, alpha);
  });
  m.def("group_norm_forward", [](uintptr_t x, int64_t N, int64_t C, int64_t HW, bool cl, int64_t G, double eps,
                                 uintptr_t weight, uintptr_t bias, uintptr_t temb, uintptr_t scale, uintptr_t shift,
                                 uintptr_t res, uintptr_t y, uintptr_t tables, uintptr_t gmean, uintptr_t grstd,
                                 uintptr_t scratch, int act, float alpha) {
    // One call for the whole forward: Python-side table arithmetic would cost more than the
    // passes themselves at small shapes. tables: 3 * N * C floats; scratch: 2 * N * C doubles.
    py::gil_scoped_release nogil;
    gk::norm::group_norm_forward_cpu(ptr<const float>(x), Shape{N, C, HW, cl}, G, eps, ptr<const float>(weight),
                                     ptr<const float>(bias), ptr<const float>(temb), ptr<const float>(scale),
                                     ptr<const float>(shift), ptr<const float>(res), ptr<float>(y), ptr<float>(tables),
                                     ptr<float>(gmean), ptr<float>(grstd), ptr<double>(scratch), act, alpha);
  });
  m.def("group_norm_backward", [](uintptr_t dy, uintptr_t x, int64_t N, int64_t C, int64_t HW, bool cl, int64_t G,
                                  uintptr_t gmean, uintptr_t grstd, uintptr_t weight, uintptr_t bias, uintptr_t temb,
                                  uintptr_t scale, uintptr_t shift, uintptr_t dx, uintptr_t grads, int act,
                                  float alpha) {
    // False: this shape takes the generic passes (norm_backward_reduce / norm_backward_apply).
    py::gil_scoped_release nogil;
    return gk::norm::group_norm_backward_cpu(
        ptr<const float>(dy), ptr<const float>(x), Shape{N, C, HW, cl}, G, ptr<const float>(gmean),
        ptr<const float>(grstd), ptr<const float>(weight), ptr<const float>(bias), ptr<const float>(temb),
        ptr<const float>(scale), ptr<const float>(shift), ptr<float>(dx), ptr<double>(grads), act, alpha);
  });
}
