// geglu's entry points, bound once for gankern._C and gankern._cuda (csrc/common/bind.h).
#include "common/bind.h"
#include "geglu/geglu.h"

GK_BIND_FAMILY(geglu) {
  gk::bind::def(m, "forward", &gk::geglu::forward, "out = hidden * gelu(gate) per row of x");
  gk::bind::def(m, "backward", &gk::geglu::backward, "out = dL/dx (both halves) given dy = dL/dy");
}
