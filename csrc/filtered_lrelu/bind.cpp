// filtered_lrelu's entry point, bound once for gankern._C and gankern._cuda (csrc/common/bind.h).
#include "filtered_lrelu/filtered_lrelu.h"
#include "common/bind.h"

GK_BIND_FAMILY(filtered_lrelu) {
  gk::bind::def(m, "run", &gk::filtered_lrelu::run,
                "y = upfirdn B (lrelu or mask factor (upfirdn A (x [+ b]))); mode 0 writes the mask, mode 1 reads it");
}
