// The random family's entry points, bound once for gankern._C and gankern._cuda (csrc/common/bind.h).
#include "common/bind.h"
#include "random/random.h"

GK_BIND_FAMILY(random) {
  gk::bind::def(m, "randn", &gk::random::randn, "out[i] = normal i of (seed, offset)");
#ifdef GK_BACKEND_CPU
  gk::bind::def(m, "set_simd", &gk::random::set_simd, "turn the CPU generator's AVX2 paths on or off (tests)");
#endif
}
