// The diffusion family's entry points, bound once for gankern._C and gankern._cuda
// (csrc/common/bind.h).
#include "common/bind.h"
#include "diffusion/diffusion.h"

GK_BIND_FAMILY(diffusion) {
  gk::bind::def(m, "step", &gk::diffusion::step, "the generic denoising step (gankern/reference/diffusion.py)");
  gk::bind::def(m, "rescale_partials", &gk::diffusion::rescale_partials, "partial sums for guidance rescale");
  gk::bind::def(m, "lincomb", &gk::diffusion::lincomb, "out = ca_b * x + cb_b * y (q_sample)");
  gk::bind::def(m, "loss_partials", &gk::diffusion::loss_partials, "partial sums of the squared loss residual");
  gk::bind::def(m, "loss_backward", &gk::diffusion::loss_backward, "dmo = k_b * residual");
#ifdef GK_BACKEND_CPU
  gk::bind::def(m, "threshold", &gk::diffusion::threshold, "dynamic-thresholding scales by selection");
#endif
}
