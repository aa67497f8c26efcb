// layer_norm's entry points, bound once for gankern._C and gankern._cuda (csrc/common/bind.h).
#include "common/bind.h"
#include "layer_norm/layer_norm.h"

GK_BIND_FAMILY(layer_norm) {
  gk::bind::def(m, "forward", &gk::layer_norm::forward, "y = LayerNorm(x + residual), h = x + residual");
  gk::bind::def(m, "backward", &gk::layer_norm::backward, "dx and partial weight/bias gradients from dy, dh");
}
