// Running mean / sum of squared deviations (Welford) and the merge of two partial results (Chan et
// al.), written once for the CPU and CUDA kernels. T is float (GPU statistics of fp16/bf16/fp32
// data) or double (CPU partials). Merging (count, mean, m2) instead of (sum, sum of squares) keeps
// the variance accurate when |mean| >> std, where sum-of-squares cancels catastrophically.
#pragma once
#include "common/macros.h"

namespace gk {

template <typename T>
struct Welford {
  T count = T(0), mean = T(0), m2 = T(0);

  GK_HOST_DEVICE inline void add(T x) {
    count += T(1);
    const T d = x - mean;
    mean += d / count;
    m2 += d * (x - mean);
  }

  GK_HOST_DEVICE inline void merge(T n_b, T mean_b, T m2_b) {
    if (n_b == T(0)) return;
    const T n = count + n_b;
    const T d = mean_b - mean;
    const T wb = n_b / n;
    mean += d * wb;
    m2 += m2_b + d * d * count * wb;
    count = n;
  }

  GK_HOST_DEVICE inline void merge(const Welford& o) { merge(o.count, o.mean, o.m2); }

  // From sums of (x - shift) and (x - shift)^2 over n values. Accurate while |mean - shift| is a
  // few standard deviations, which a shift taken from the data itself ensures.
  GK_HOST_DEVICE static inline Welford from_shifted_sums(T n, T shift, T s, T q) {
    Welford w;
    if (n > T(0)) {
      w.count = n;
      w.mean = shift + s / n;
      const T m2 = q - s * s / n;
      w.m2 = m2 > T(0) ? m2 : T(0);
    }
    return w;
  }

  GK_HOST_DEVICE inline T var() const { return count > T(0) ? m2 / count : T(0); }  // biased
};

}  // namespace gk
