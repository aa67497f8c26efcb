// Normalization passes on the CPU. OpenMP over tasks of ~64 KiB of x: (row, chunk) for NCHW, where
// a row is one (n, c) plane, and (n, block of spatial rows) for channels_last. Reductions write one
// partial per task and merge them in a fixed order afterwards, so results do not depend on the
// thread count or schedule.
//
// Vectorization: the elementwise loops are plain loops (GCC vectorizes them in each GK_CPU_CLONES
// variant); the reductions use `omp simd reduction` so fp32 lane accumulators may be reassociated
// without -ffast-math, folded into double every kBlock elements to bound rounding growth.
#include <algorithm>
#include <cmath>
#include <vector>

#include "norm/norm.h"

namespace gk::norm {
namespace {

constexpr std::int64_t kChunk = 1 << 14;  // elements per task
constexpr std::int64_t kBlock = 1 << 10;  // elements per fp32 partial sum

using W = Welford<double>;

// How tasks cover x. NCHW: task t is chunk (t % per_row) of row (t / per_row). Channels_last: task t
// is rows [r0, r1) of sample t / per_row, each row C consecutive channels.
struct Tiling {
  std::int64_t per_row, len, tasks;
  explicit Tiling(const Shape& s) {
    if (!s.channels_last) {
      len = kChunk;
      per_row = (s.HW + len - 1) / len;
      tasks = s.N * s.C * per_row;
    } else {
      len = std::max<std::int64_t>(1, kChunk / std::max<std::int64_t>(s.C, 1));
      per_row = (s.HW + len - 1) / len;
      tasks = s.N * per_row;
    }
  }
};

// ---- statistics ------------------------------------------------------------------------------

// Shifted sums over one contiguous run; the shift (the run's first value) keeps sum-of-squares
// well conditioned.
GK_CPU_CLONES W run_stats(const float* __restrict x, std::int64_t len) {
  const float k = x[0];
  double S = 0, Q = 0;
  for (std::int64_t i0 = 0; i0 < len; i0 += kBlock) {
    const std::int64_t n = std::min(kBlock, len - i0);
    float s = 0.f, q = 0.f;
#pragma omp simd reduction(+ : s, q)
    for (std::int64_t i = 0; i < n; ++i) {
      const float d = x[i0 + i] - k;
      s += d;
      q += d * d;
    }
    S += s;
    Q += q;
  }
  return W::from_shifted_sums(static_cast<double>(len), k, S, Q);
}

// Channels_last: per-channel shifted sums over `rows` rows of C channels, shift = first row.
GK_CPU_CLONES void rows_stats(const float* __restrict x, std::int64_t rows, std::int64_t C, double* __restrict S,
                              double* __restrict Q, float* __restrict s, float* __restrict q) {
  const float* __restrict k = x;
  std::fill(S, S + C, 0.0);
  std::fill(Q, Q + C, 0.0);
  const std::int64_t rows_per_block = std::max<std::int64_t>(1, kBlock / std::max<std::int64_t>(C, 1)) * 4;
  for (std::int64_t r0 = 0; r0 < rows; r0 += rows_per_block) {
    const std::int64_t r1 = std::min(rows, r0 + rows_per_block);
    std::fill(s, s + C, 0.f);
    std::fill(q, q + C, 0.f);
    for (std::int64_t r = r0; r < r1; ++r) {
      const float* __restrict xr = x + r * C;
      for (std::int64_t c = 0; c < C; ++c) {
        const float d = xr[c] - k[c];
        s[c] += d;
        q[c] += d * d;
      }
    }
    for (std::int64_t c = 0; c < C; ++c) {
      S[c] += s[c];
      Q[c] += q[c];
    }
  }
}

// ---- apply -----------------------------------------------------------------------------------

template <int A, bool R>
GK_CPU_CLONES void apply_run(float* __restrict y, const float* __restrict x, const float* __restrict r,
                             std::int64_t len, float a, float b, float alpha) {
  for (std::int64_t i = 0; i < len; ++i) {
    float v = act_forward<A>(x[i] * a + b, alpha);
    if constexpr (R) v += r[i];
    y[i] = v;
  }
}

template <int A, bool R>
GK_CPU_CLONES void apply_row(float* __restrict y, const float* __restrict x, const float* __restrict r,
                             std::int64_t C, const float* __restrict a, const float* __restrict b, float alpha) {
  for (std::int64_t c = 0; c < C; ++c) {
    float v = act_forward<A>(x[c] * a[c] + b[c], alpha);
    if constexpr (R) v += r[c];
    y[c] = v;
  }
}

// ---- backward --------------------------------------------------------------------------------

template <int A>
GK_CPU_CLONES void run_bwd_sums(const float* __restrict dy, const float* __restrict x, std::int64_t len, float a,
                                float b, float p, float q, float alpha, double* out) {
  double S0 = 0, S1 = 0, S2 = 0;
  for (std::int64_t i0 = 0; i0 < len; i0 += kBlock) {
    const std::int64_t n = std::min(kBlock, len - i0);
    float s0 = 0.f, s1 = 0.f, s2 = 0.f;
#pragma omp simd reduction(+ : s0, s1, s2)
    for (std::int64_t i = 0; i < n; ++i) {
      const float xv = x[i0 + i];
      const float g = dy[i0 + i] * act_derivative<A>(xv * a + b, alpha);
      const float xh = xv * p + q;
      s0 += g;
      s1 += g * xh;
      s2 += xh;
    }
    S0 += s0;
    S1 += s1;
    S2 += s2;
  }
  out[0] = S0;
  out[1] = S1;
  out[2] = S2;
}

template <int A>
GK_CPU_CLONES void row_bwd_sums(const float* __restrict dy, const float* __restrict x, std::int64_t C,
                                const float* __restrict a, const float* __restrict b, const float* __restrict p,
                                const float* __restrict q, float alpha, float* __restrict s0, float* __restrict s1,
                                float* __restrict s2) {
  for (std::int64_t c = 0; c < C; ++c) {
    const float g = dy[c] * act_derivative<A>(x[c] * a[c] + b[c], alpha);
    const float xh = x[c] * p[c] + q[c];
    s0[c] += g;
    s1[c] += g * xh;
    s2[c] += xh;
  }
}

template <int A>
GK_CPU_CLONES void bwd_apply_run(float* __restrict dx, const float* __restrict dy, const float* __restrict x,
                                 std::int64_t len, float a, float b, float a2, float b2, float c2, float alpha) {
  for (std::int64_t i = 0; i < len; ++i) {
    const float g = dy[i] * act_derivative<A>(x[i] * a + b, alpha);
    dx[i] = g * a2 + x[i] * b2 + c2;
  }
}

template <int A>
GK_CPU_CLONES void bwd_apply_row(float* __restrict dx, const float* __restrict dy, const float* __restrict x,
                                 std::int64_t C, const float* __restrict a, const float* __restrict b,
                                 const float* __restrict a2, const float* __restrict b2, const float* __restrict c2,
                                 float alpha) {
  for (std::int64_t c = 0; c < C; ++c) {
    const float g = dy[c] * act_derivative<A>(x[c] * a[c] + b[c], alpha);
    dx[c] = g * a2[c] + x[c] * b2[c] + c2[c];
  }
}

// Calls f(n_or_row, lo, hi) for each task: NCHW: element range [lo, hi) of plane `row`;
// channels_last: spatial rows [lo, hi) of sample n.
template <typename F>
void for_each_task(const Shape& s, const Tiling& t, F&& f) {
#pragma omp parallel for schedule(static)
  for (std::int64_t task = 0; task < t.tasks; ++task) {
    const std::int64_t row = task / t.per_row, part = task % t.per_row;
    const std::int64_t lo = part * t.len, hi = std::min(s.HW, lo + t.len);
    f(task, row, lo, hi);
  }
}

}  // namespace

void channel_stats_cpu(const float* x, const Shape& s, double* mean, double* m2) {
  const std::int64_t NC = s.N * s.C;
  if (s.HW == 0) {
    std::fill(mean, mean + NC, 0.0);
    std::fill(m2, m2 + NC, 0.0);
    return;
  }
  const Tiling t(s);
  if (!s.channels_last) {
    std::vector<W> part(t.tasks);
    for_each_task(s, t, [&](std::int64_t task, std::int64_t row, std::int64_t lo, std::int64_t hi) {
      part[task] = run_stats(x + row * s.HW + lo, hi - lo);
    });
#pragma omp parallel for schedule(static)
    for (std::int64_t row = 0; row < NC; ++row) {
      W w = part[row * t.per_row];
      for (std::int64_t k = 1; k < t.per_row; ++k) w.merge(part[row * t.per_row + k]);
      mean[row] = w.mean;
      m2[row] = w.m2;
    }
    return;
  }
  // Channels_last: each task's per-channel (count, mean, m2), merged per (n, c) in task order.
  const std::int64_t C = s.C;
  std::vector<double> pmean(t.tasks * C), pm2(t.tasks * C);
  for_each_task(s, t, [&](std::int64_t task, std::int64_t n, std::int64_t lo, std::int64_t hi) {
    std::vector<double> SQ(2 * C);
    std::vector<float> sq(2 * C);
    const float* xs = x + (n * s.HW + lo) * C;
    rows_stats(xs, hi - lo, C, SQ.data(), SQ.data() + C, sq.data(), sq.data() + C);
    for (std::int64_t c = 0; c < C; ++c) {
      W w = W::from_shifted_sums(static_cast<double>(hi - lo), xs[c], SQ[c], SQ[C + c]);
      pmean[task * C + c] = w.mean;
      pm2[task * C + c] = w.m2;
    }
  });
#pragma omp parallel for schedule(static)
  for (std::int64_t nc = 0; nc < NC; ++nc) {
    const std::int64_t n = nc / C, c = nc % C;
    W w;
    for (std::int64_t k = 0; k < t.per_row; ++k) {
      const std::int64_t task = n * t.per_row + k;
      const std::int64_t cnt = std::min(s.HW, (k + 1) * t.len) - k * t.len;
      w.merge(static_cast<double>(cnt), pmean[task * C + c], pm2[task * C + c]);
    }
    mean[nc] = w.mean;
    m2[nc] = w.m2;
  }
}

void apply_cpu(const float* x, const float* A, const float* B, const float* res, float* y, const Shape& s, int act,
               float alpha) {
  if (s.HW == 0 || s.N * s.C == 0) return;
  const Tiling t(s);
  dispatch_act(act, [&](auto a) {
    constexpr int K = decltype(a)::value;
    auto go = [&](auto r) {
      constexpr bool R = decltype(r)::value;
      for_each_task(s, t, [&](std::int64_t, std::int64_t row, std::int64_t lo, std::int64_t hi) {
        if (!s.channels_last) {
          const std::int64_t off = row * s.HW + lo;
          apply_run<K, R>(y + off, x + off, R ? res + off : nullptr, hi - lo, A[row], B[row], alpha);
        } else {
          for (std::int64_t i = lo; i < hi; ++i) {
            const std::int64_t off = (row * s.HW + i) * s.C;
            apply_row<K, R>(y + off, x + off, R ? res + off : nullptr, s.C, A + row * s.C, B + row * s.C, alpha);
          }
        }
      });
    };
    if (res) go(std::true_type{});
    else go(std::false_type{});
  });
}

void backward_reduce_cpu(const float* dy, const float* x, const float* A, const float* B, const float* P,
                         const float* Q, const Shape& s, int act, float alpha, double* sums) {
  const std::int64_t NC = s.N * s.C, C = s.C;
  std::fill(sums, sums + 3 * NC, 0.0);
  if (s.HW == 0 || NC == 0) return;
  const Tiling t(s);
  dispatch_act(act, [&](auto a) {
    constexpr int K = decltype(a)::value;
    if (!s.channels_last) {
      std::vector<double> part(3 * t.tasks);
      for_each_task(s, t, [&](std::int64_t task, std::int64_t row, std::int64_t lo, std::int64_t hi) {
        const std::int64_t off = row * s.HW + lo;
        run_bwd_sums<K>(dy + off, x + off, hi - lo, A[row], B[row], P[row], Q[row], alpha, &part[3 * task]);
      });
#pragma omp parallel for schedule(static)
      for (std::int64_t row = 0; row < NC; ++row)
        for (std::int64_t k = 0; k < t.per_row; ++k)
          for (int j = 0; j < 3; ++j) sums[j * NC + row] += part[3 * (row * t.per_row + k) + j];
      return;
    }
    std::vector<double> part(3 * t.tasks * C);
    for_each_task(s, t, [&](std::int64_t task, std::int64_t n, std::int64_t lo, std::int64_t hi) {
      std::vector<float> acc(3 * C);
      double* out = &part[3 * task * C];
      const std::int64_t rows_per_block = std::max<std::int64_t>(1, kBlock / std::max<std::int64_t>(C, 1)) * 4;
      for (std::int64_t r0 = lo; r0 < hi; r0 += rows_per_block) {
        std::fill(acc.begin(), acc.end(), 0.f);
        for (std::int64_t r = r0; r < std::min(hi, r0 + rows_per_block); ++r) {
          const std::int64_t off = (n * s.HW + r) * C;
          row_bwd_sums<K>(dy + off, x + off, C, A + n * C, B + n * C, P + n * C, Q + n * C, alpha, acc.data(),
                          acc.data() + C, acc.data() + 2 * C);
        }
        for (std::int64_t j = 0; j < 3 * C; ++j) out[j] += acc[j];
      }
    });
#pragma omp parallel for schedule(static)
    for (std::int64_t nc = 0; nc < NC; ++nc) {
      const std::int64_t n = nc / C, c = nc % C;
      for (std::int64_t k = 0; k < t.per_row; ++k)
        for (int j = 0; j < 3; ++j) sums[j * NC + nc] += part[3 * (n * t.per_row + k) * C + j * C + c];
    }
  });
}

void backward_apply_cpu(const float* dy, const float* x, const float* A, const float* B, const float* A2,
                        const float* B2, const float* C2, float* dx, const Shape& s, int act, float alpha) {
  if (s.HW == 0 || s.N * s.C == 0) return;
  const Tiling t(s);
  dispatch_act(act, [&](auto a) {
    constexpr int K = decltype(a)::value;
    for_each_task(s, t, [&](std::int64_t, std::int64_t row, std::int64_t lo, std::int64_t hi) {
      if (!s.channels_last) {
        const std::int64_t off = row * s.HW + lo;
        bwd_apply_run<K>(dx + off, dy + off, x + off, hi - lo, A[row], B[row], A2[row], B2[row], C2[row], alpha);
      } else {
        const std::int64_t nC = row * s.C;
        for (std::int64_t i = lo; i < hi; ++i) {
          const std::int64_t off = (row * s.HW + i) * s.C;
          bwd_apply_row<K>(dx + off, dy + off, x + off, s.C, A + nC, B + nC, A2 + nC, B2 + nC, C2 + nC, alpha);
        }
      }
    });
  });
}

void group_coefficients_cpu(const double* mean, const double* m2, std::int64_t N, std::int64_t C, std::int64_t G,
                            std::int64_t HW, double eps, const float* weight, const float* bias, const float* temb,
                            const float* scale, const float* shift, float* A, float* B, float* gmean, float* grstd) {
  const std::int64_t Cg = C / G;
  for (std::int64_t n = 0; n < N; ++n) {
    for (std::int64_t g = 0; g < G; ++g) {
      W w;
      for (std::int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
        const std::int64_t nc = n * C + c;
        w.merge(static_cast<double>(HW), mean[nc] + (temb ? temb[nc] : 0.0), m2[nc]);
      }
      const double rstd = 1.0 / std::sqrt(w.var() + eps);
      gmean[n * G + g] = static_cast<float>(w.mean);
      grstd[n * G + g] = static_cast<float>(rstd);
      for (std::int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
        const std::int64_t nc = n * C + c;
        // h = ((x + temb - mean) * rstd * w + b) * (1 + scale) + shift = x * A + B
        const double wt = weight ? weight[c] : 1.0, bs = bias ? bias[c] : 0.0;
        const double sc = 1.0 + (scale ? scale[nc] : 0.0), sh = shift ? shift[nc] : 0.0;
        const double a = rstd * wt;
        const double b = ((temb ? temb[nc] : 0.0) - w.mean) * a + bs;
        A[nc] = static_cast<float>(a * sc);
        B[nc] = static_cast<float>(b * sc + sh);
      }
    }
  }
}

}  // namespace gk::norm
