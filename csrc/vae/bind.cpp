// The vae family's entry points, bound once for gankern._C and gankern._cuda (csrc/common/bind.h).
#include "common/bind.h"
#include "vae/vae.h"

GK_BIND_FAMILY(vae) {
  gk::bind::def(m, "forward", &gk::vae::forward, "z = mu + exp(clamp(logvar) / 2) * eps and/or the KL term");
  gk::bind::def(m, "backward", &gk::vae::backward, "dmu, dlogvar of what the forward made");
}
