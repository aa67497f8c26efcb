// gankern._C: the CPU kernels. Functions take raw addresses (tensor.data_ptr()), sizes, strides and
// scalars; Python validates and allocates (gankern/ops/). One section per op family.
#include <omp.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bias_act/bias_act.h"
#include "diffusion/diffusion.h"
#include "vae/vae.h"
#include "norm/norm.h"
#include "upfirdn2d/upfirdn2d.h"
#include "filtered_lrelu/filtered_lrelu.h"

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

  // ---- upfirdn2d (csrc/upfirdn2d/upfirdn2d.h) ----
  m.def("upfirdn2d",
        [](uintptr_t x, uintptr_t g, uintptr_t g1, uintptr_t y, int64_t N, int64_t C, int64_t H, int64_t W,
           int64_t OH, int64_t OW, int64_t sxn, int64_t sxc, int64_t sxh, int64_t sxw, int64_t syn, int64_t syc,
           int64_t syh, int64_t syw, int upx, int upy, int downx, int downy, int px0, int py0, int kw, int kh,
           bool channels_last) {
          py::gil_scoped_release nogil;
          gk::upfirdn2d::forward_cpu(ptr<const float>(x), ptr<const float>(g), ptr<const float>(g1), ptr<float>(y),
                                     {N, C, H, W, OH, OW, sxn, sxc, sxh, sxw, syn, syc, syh, syw, upx, upy, downx,
                                      downy, px0, py0, kw, kh, channels_last});
        });

  // ---- filtered_lrelu (csrc/filtered_lrelu/filtered_lrelu.h) ----
  m.def("filtered_lrelu",
        [](uintptr_t x, uintptr_t b, uintptr_t mask, uintptr_t gA, uintptr_t gA1, uintptr_t gB, uintptr_t gB1,
           uintptr_t y, int64_t N, int64_t C, int64_t H, int64_t W, int64_t TH, int64_t TW, int64_t OH, int64_t OW,
           int upx, int upy, int pax, int pay, int kax, int kay, int downx, int downy, int pbx, int pby, int kbx,
           int kby, int mode, float gain, float slope, float clamp) {
          py::gil_scoped_release nogil;
          gk::filtered_lrelu::run_cpu(ptr<const float>(x), ptr<const float>(b), ptr<uint8_t>(mask),
                                      ptr<const float>(gA), ptr<const float>(gA1), ptr<const float>(gB),
                                      ptr<const float>(gB1), ptr<float>(y),
                                      {N, C, H, W, TH, TW, OH, OW, upx, upy, pax, pay, kax, kay, downx, downy, pbx,
                                       pby, kbx, kby, mode, gain, slope, clamp});
        });

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

  // ---- diffusion ----
  m.def(
      "diffusion_step",
      [](uintptr_t mo, uintptr_t x, uintptr_t hist, uintptr_t noise, uintptr_t rescale, uintptr_t thresh,
         uintptr_t prev, uintptr_t x0, int64_t B, int64_t S, int64_t mo_stride, int flags, int64_t seed,
         int64_t offset, std::vector<float> coefs) {
        // seed and offset: int64 bit patterns of the uint64 Philox key and counter
        gk::check(coefs.size() == gk::diffusion::kNumCoefs, "diffusion_step: expected 16 coefficients");
        gk::diffusion::StepParams p{B, S, mo_stride, flags, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
                                    {}};
        std::copy(coefs.begin(), coefs.end(), p.c);
        py::gil_scoped_release nogil;
        gk::diffusion::step_cpu(ptr<const float>(mo), ptr<const float>(x), ptr<const float>(hist),
                                ptr<const float>(noise), ptr<const float>(rescale), ptr<const float>(thresh),
                                ptr<float>(prev), ptr<float>(x0), p);
      });
  m.def("diffusion_rescale_sums", [](uintptr_t mo, int64_t B, int64_t S, int64_t mo_stride, float g, uintptr_t out) {
    py::gil_scoped_release nogil;
    gk::diffusion::rescale_sums_cpu(ptr<const float>(mo), B, S, mo_stride, g, ptr<double>(out));
  });
  m.def("diffusion_threshold", [](uintptr_t x0, int64_t B, int64_t S, int64_t lo, float w, float max_value,
                                  uintptr_t s) {
    py::gil_scoped_release nogil;
    gk::diffusion::threshold_cpu(ptr<const float>(x0), B, S, lo, w, max_value, ptr<float>(s));
  });
  m.def("diffusion_lincomb", [](uintptr_t x, uintptr_t y, uintptr_t ca, uintptr_t cb, uintptr_t out, int64_t B,
                                int64_t S) {
    py::gil_scoped_release nogil;
    gk::diffusion::lincomb_cpu(ptr<const float>(x), ptr<const float>(y), ptr<const float>(ca), ptr<const float>(cb),
                               ptr<float>(out), B, S);
  });
  m.def("diffusion_loss_sums", [](uintptr_t mo, uintptr_t x0, uintptr_t noise, uintptr_t tx, uintptr_t tn,
                                  uintptr_t sums, int64_t B, int64_t S) {
    py::gil_scoped_release nogil;
    gk::diffusion::loss_sums_cpu(ptr<const float>(mo), ptr<const float>(x0), ptr<const float>(noise),
                                 ptr<const float>(tx), ptr<const float>(tn), ptr<double>(sums), B, S);
  });
  m.def("diffusion_loss_backward", [](uintptr_t mo, uintptr_t x0, uintptr_t noise, uintptr_t tx, uintptr_t tn,
                                      uintptr_t k, uintptr_t dmo, int64_t B, int64_t S) {
    py::gil_scoped_release nogil;
    gk::diffusion::loss_backward_cpu(ptr<const float>(mo), ptr<const float>(x0), ptr<const float>(noise),
                                     ptr<const float>(tx), ptr<const float>(tn), ptr<const float>(k), ptr<float>(dmo),
                                     B, S);
  });

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
