// bias_act's entry points, bound once for gankern._C and gankern._cuda (csrc/common/bind.h).
#include "bias_act/bias_act.h"
#include "common/bind.h"

GK_BIND_FAMILY(bias_act) {
  gk::bind::def(m, "forward", &gk::bias_act::forward, "out = clamp(act(x + b) * gain, -clamp, clamp)");
  gk::bind::def(m, "backward", &gk::bias_act::backward, "out = dL/dx given dy = dL/dy");
}
