// modulated_conv's entry points, bound once for gankern._C and gankern._cuda (csrc/common/bind.h).
#include "common/bind.h"
#include "modulated_conv/modulated_conv.h"

GK_BIND_FAMILY(modulated_conv) {
  gk::bind::def(m, "modulate", &gk::modulated_conv::modulate,
                "wmod = weight * styles (* rsqrt(sum of squares + 1e-8) when demodulate) and/or the coefficients");
  gk::bind::def(m, "epilogue", &gk::modulated_conv::epilogue,
                "out = clamp(act(y * scale[n, c] + noise + bias[c]) * gain, -clamp, clamp)");
}
