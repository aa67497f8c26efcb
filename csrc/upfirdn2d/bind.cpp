// upfirdn2d's entry point, bound once for gankern._C and gankern._cuda (csrc/common/bind.h).
#include "upfirdn2d/upfirdn2d.h"
#include "common/bind.h"

GK_BIND_FAMILY(upfirdn2d) {
  gk::bind::def(m, "forward", &gk::upfirdn2d::forward,
                "y = upfirdn2d(x): upsample, pad, FIR filter (correlation kernel g), downsample");
}
