// gankern._cuda: the CUDA kernels. Host-only C++ (compiled by the host compiler); the kernels and
// their launchers live in csrc/<family>/cuda.cu. Functions take raw device addresses, sizes,
// strides, scalars, a dtype code and the stream (torch.cuda.current_stream().cuda_stream); Python
// validates, allocates and selects the device. One section per op family.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bias_act/bias_act.h"
#include "diffusion/diffusion.h"
#include "vae/vae.h"
#include "norm/norm.h"
#include "upfirdn2d/upfirdn2d.h"
#include "filtered_lrelu/filtered_lrelu.h"

// gankern._cuda, or gankern._cuda_emu when built for the CUDA emulator (CMakeLists.txt).
#ifndef GANKERN_CUDA_MODULE
#define GANKERN_CUDA_MODULE _cuda
#endif

namespace py = pybind11;
using gk::ptr;
using std::uintptr_t;

PYBIND11_MODULE(GANKERN_CUDA_MODULE, m) {
  m.doc() = "gankern CUDA kernels";
  m.def("runtime_version", []() {
    int v = 0;
    cudaRuntimeGetVersion(&v);
    return v;
  });
  m.def("compiled_archs", []() { return std::string(GANKERN_CUDA_ARCHS_STR); });
#ifdef GANKERN_CUDA_EMULATOR
  m.def("emulator_self_test", &gk_emu::self_test);
#endif

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

  // ---- upfirdn2d (csrc/upfirdn2d/upfirdn2d.h) ----
  m.def("upfirdn2d",
        [](uintptr_t x, uintptr_t g, uintptr_t y, int64_t N, int64_t C, int64_t H, int64_t W, int64_t OH,
           int64_t OW, int64_t sxn, int64_t sxc, int64_t sxh, int64_t sxw, int64_t syn, int64_t syc, int64_t syh,
           int64_t syw, int upx, int upy, int downx, int downy, int px0, int py0, int kw, int kh, bool channels_last,
           int dtype, uintptr_t stream) {
          gk::upfirdn2d::forward_cuda(ptr<const void>(x), ptr<const float>(g), ptr<void>(y),
                                      {N, C, H, W, OH, OW, sxn, sxc, sxh, sxw, syn, syc, syh, syw, upx, upy, downx,
                                       downy, px0, py0, kw, kh, channels_last},
                                      dtype, stream);
        });

  // ---- filtered_lrelu (csrc/filtered_lrelu/filtered_lrelu.h) ----
  m.def("filtered_lrelu",
        [](uintptr_t x, uintptr_t b, uintptr_t mask, uintptr_t gA, uintptr_t gB, uintptr_t y, int64_t N, int64_t C,
           int64_t H, int64_t W, int64_t TH, int64_t TW, int64_t OH, int64_t OW, int upx, int upy, int pax, int pay,
           int kax, int kay, int downx, int downy, int pbx, int pby, int kbx, int kby, int mode, float gain,
           float slope, float clamp, int dtype, uintptr_t stream) {
          gk::filtered_lrelu::run_cuda(ptr<const void>(x), ptr<const float>(b), ptr<uint8_t>(mask),
                                       ptr<const float>(gA), ptr<const float>(gB), ptr<void>(y),
                                       {N, C, H, W, TH, TW, OH, OW, upx, upy, pax, pay, kax, kay, downx, downy, pbx,
                                        pby, kbx, kby, mode, gain, slope, clamp},
                                       dtype, stream);
        });

  // ---- vae: counter-based randn, fused reparameterization and KL (csrc/vae/vae.h) ----
  // seed and offset arrive as int64 bit patterns of the uint64 Philox key and counter.
  m.def("randn", [](uintptr_t out, int64_t n, int64_t seed, int64_t offset, int dtype, uintptr_t stream) {
    gk::vae::randn_cuda(ptr<void>(out), n, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), dtype, stream);
  });
  m.def("vae_kl_block", []() { return gk::vae::kl_block_cuda(); });
  m.def("vae_forward", [](uintptr_t mu, uintptr_t lv, uintptr_t z, uintptr_t kl, uintptr_t partials, int64_t rows,
                          int64_t inner, int64_t mu_rs, int64_t lv_rs, int64_t seed, int64_t offset, float lo,
                          float hi, int dtype, uintptr_t stream) {
    gk::vae::forward_cuda(ptr<const void>(mu), ptr<const void>(lv), ptr<void>(z), ptr<void>(kl), ptr<double>(partials),
                          {rows, inner, mu_rs, lv_rs},
                          {static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), lo, hi}, dtype, stream);
  });
  m.def("vae_backward", [](uintptr_t dz, uintptr_t gkl, bool gkl_elementwise, float gkl_scale, uintptr_t mu,
                           uintptr_t lv, uintptr_t dmu, uintptr_t dlv, int64_t rows, int64_t inner, int64_t mu_rs,
                           int64_t lv_rs, int64_t seed, int64_t offset, float lo, float hi, int dtype,
                           uintptr_t stream) {
    gk::vae::backward_cuda(ptr<const void>(dz), {ptr<const float>(gkl), gkl_elementwise, gkl_scale},
                           ptr<const void>(mu), ptr<const void>(lv), ptr<void>(dmu), ptr<void>(dlv),
                           {rows, inner, mu_rs, lv_rs},
                           {static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), lo, hi}, dtype, stream);
  });

  // ---- diffusion (csrc/diffusion/diffusion.h) ----
  m.def("diffusion_step", [](uintptr_t mo, uintptr_t x, uintptr_t hist, uintptr_t noise, uintptr_t rescale,
                             uintptr_t thresh, uintptr_t prev, uintptr_t x0, int64_t B, int64_t S, int64_t mo_stride,
                             int flags, int64_t seed, int64_t offset, std::vector<float> coefs, uintptr_t coef_dev,
                             uintptr_t rng_dev, int dtype, uintptr_t stream) {
    gk::check(coefs.size() == gk::diffusion::kNumCoefs, "diffusion_step: expected 16 coefficients");
    gk::diffusion::StepParams p{B, S, mo_stride, flags, static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), {}};
    std::copy(coefs.begin(), coefs.end(), p.c);
    gk::diffusion::step_cuda(ptr<const void>(mo), ptr<const void>(x), ptr<const void>(hist), ptr<const void>(noise),
                             ptr<const float>(rescale), ptr<const float>(thresh), ptr<void>(prev), ptr<void>(x0), p,
                             ptr<const float>(coef_dev), ptr<const int64_t>(rng_dev), dtype, stream);
  });
  m.def("diffusion_rescale_partials", [](uintptr_t mo, int64_t B, int64_t S, int64_t mo_stride, float g,
                                         uintptr_t partials, int64_t nchunks, int dtype, uintptr_t stream) {
    gk::diffusion::rescale_partials_cuda(ptr<const void>(mo), B, S, mo_stride, g, ptr<float>(partials), nchunks, dtype,
                                         stream);
  });
  m.def("diffusion_lincomb", [](uintptr_t x, uintptr_t y, uintptr_t ca, uintptr_t cb, uintptr_t out, int64_t B,
                                int64_t S, int dtype, uintptr_t stream) {
    gk::diffusion::lincomb_cuda(ptr<const void>(x), ptr<const void>(y), ptr<const float>(ca), ptr<const float>(cb),
                                ptr<void>(out), B, S, dtype, stream);
  });
  m.def("diffusion_loss_partials", [](uintptr_t mo, uintptr_t x0, uintptr_t noise, uintptr_t tx, uintptr_t tn,
                                      uintptr_t partials, int64_t nchunks, int64_t B, int64_t S, int dtype,
                                      uintptr_t stream) {
    gk::diffusion::loss_partials_cuda(ptr<const void>(mo), ptr<const void>(x0), ptr<const void>(noise),
                                      ptr<const float>(tx), ptr<const float>(tn), ptr<float>(partials), nchunks, B, S,
                                      dtype, stream);
  });
  m.def("diffusion_loss_backward", [](uintptr_t mo, uintptr_t x0, uintptr_t noise, uintptr_t tx, uintptr_t tn,
                                      uintptr_t k, uintptr_t dmo, int64_t B, int64_t S, int dtype, uintptr_t stream) {
    gk::diffusion::loss_backward_cuda(ptr<const void>(mo), ptr<const void>(x0), ptr<const void>(noise),
                                      ptr<const float>(tx), ptr<const float>(tn), ptr<const float>(k), ptr<void>(dmo),
                                      B, S, dtype, stream);
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
