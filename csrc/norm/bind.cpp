// The norm family's entry points (group_norm_act, batch_norm_act), bound once for gankern._C and
// gankern._cuda (csrc/common/bind.h).
#include "common/bind.h"
#include "norm/norm.h"

GK_BIND_FAMILY(norm) {
  gk::bind::def(m, "split_chunk", &gk::norm::split_chunk, "positions per reduction partial");
  gk::bind::def(m, "channel_stats", &gk::norm::channel_stats, "per-(n, c) statistics partials");
  gk::bind::def(m, "apply", &gk::norm::apply, "y = act((x - M) * A + B) (+ residual)");
  gk::bind::def(m, "backward_reduce", &gk::norm::backward_reduce, "partials of the sums of g, g*xh, xh");
  gk::bind::def(m, "backward_apply", &gk::norm::backward_apply, "dx = g * A2 + u * B2 + C2");
#ifdef GK_BACKEND_CPU
  gk::bind::def(m, "group_norm_forward", &gk::norm::group_norm_forward, "the whole GroupNorm forward");
  gk::bind::def(m, "group_norm_backward", &gk::norm::group_norm_backward,
                "the whole GroupNorm backward; False: this shape takes the generic passes");
#endif
}
