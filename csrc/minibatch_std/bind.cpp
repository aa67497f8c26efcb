// minibatch_std's entry points, bound once for gankern._C and gankern._cuda (csrc/common/bind.h).
#include "minibatch_std/minibatch_std.h"
#include "common/bind.h"

GK_BIND_FAMILY(minibatch_std) {
  gk::bind::def(m, "forward", &gk::minibatch_std::forward,
                "s = per-group std averaged over each channel slice; out = cat(x, s per sample)");
  gk::bind::def(m, "backward", &gk::minibatch_std::backward, "out = dL/dx given dout = dL/dy (s: scratch)");
}
