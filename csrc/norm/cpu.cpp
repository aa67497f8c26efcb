// Normalization passes on the CPU. The thread pool (common/thread_pool.h) over tasks of ~64 KiB of x: (row, chunk) for NCHW, where
// a row is one (n, c) plane, and (n, block of spatial rows) for channels_last. Reductions write one
// partial per task and merge them in a fixed order afterwards, so results do not depend on the
// thread count or schedule.
//
// Vectorization is explicit, with GCC vector extensions (8 floats; AVX2 in the x86-64-v3/v4 clones,
// two SSE registers in the baseline one). Auto-vectorization fails here: under the default
// -ftrapping-math GCC will not if-convert the NaN/overflow selects of an exp polynomial (nor
// vectorize floor), so silu ran scalar, ~10x slower. The activations are written once as templates
// over float and the vector type, with gk::act_forward / act_derivative's semantics.
// Reductions keep fp32 vector accumulators for at most kBlock elements, then fold into double.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common/thread_pool.h"
#include "norm/norm.h"

// Every helper taking or returning a vector is force-inlined: an out-of-line call from an AVX clone
// into a helper compiled for the baseline target passes 32-byte vectors by a different ABI and
// reads garbage (GCC's -Wpsabi warning). Inlined, each clone compiles the helper for its own ISA.
#define GK_VINLINE inline __attribute__((always_inline))
#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace gk::norm {
namespace {

constexpr std::int64_t kChunk = 1 << 14;  // elements per task
constexpr std::int64_t kBlock = 1 << 10;  // elements per fp32 partial sum

using W = Welford<double>;

// ---- activations over float or vf (semantics of gk::act_forward / act_derivative) --------------

typedef float vf __attribute__((vector_size(32)));
typedef std::int32_t vi __attribute__((vector_size(32)));
constexpr int kV = 8;

GK_VINLINE vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
GK_VINLINE void store(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }
GK_VINLINE vi to_int(vf x) { return __builtin_convertvector(x, vi); }
GK_VINLINE std::int32_t to_int(float x) { return static_cast<std::int32_t>(x); }
GK_VINLINE vf bits_to_float(vi x) { return (vf)x; }  // a vector cast reinterprets the bits
GK_VINLINE float bits_to_float(std::int32_t x) {
  float f;
  std::memcpy(&f, &x, sizeof(f));
  return f;
}
GK_VINLINE float hsum(vf v) {
  float s = 0.f;
  for (int l = 0; l < kV; ++l) s += v[l];
  return s;
}

// Cephes expf polynomial as gk::exp_f32, with round-to-nearest by the 1.5 * 2^23 trick instead of
// floor (same reduction range, and vectorizable).
template <typename T>
GK_VINLINE T vexp(T x) {
  const float hi = 88.3762626647949f, lo = -87.3365447504019f;
  T xc = x > hi ? T{} + hi : x;
  xc = xc < lo ? T{} + lo : xc;
  xc = x == x ? xc : T{};  // NaN: compute anything finite, fixed up below
  const T n = (xc * 1.44269504088896341f + 12582912.f) - 12582912.f;
  const T r = xc - n * 0.693359375f + n * 2.12194440e-4f;
  T p = r * 1.9875691500E-4f + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  T y = p * r * r + r + 1.0f;
  y *= bits_to_float((to_int(n) + 127) << 23);
  y = x > hi ? T{} + INFINITY : y;
  y = x < lo ? T{} : y;
  return x == x ? y : x;
}

// tanh as a [13/6] rational function on [-7.9053, 7.9053] (Eigen's generic_fast_tanh_float; tanh
// rounds to +-1 in fp32 outside), |error| < 4e-7 and ~14 vector ops against ~25 for an exp-based
// form: silu spends most of its time here. NaN maps to a bound in the clamps and is restored by
// the caller's multiply by z. Horner's rule on purpose: Estrin's scheme forms x^16, which is
// subnormal for |x| < 0.004 and costs a microcode assist per vector (30x slower on random data).
template <typename T>
GK_VINLINE T tanh_rational(T x) {
  const float lim = 7.90531110763549805f;
  x = x < lim ? x : T{} + lim;
  x = x > -lim ? x : T{} - lim;
  const T x2 = x * x;
  T p = x2 * -2.76076847742355e-16f + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  p = p * x;
  T q = x2 * 1.19825839466702e-06f + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  return p / q;
}

// sigmoid(z) = (1 + tanh(z / 2)) / 2; |error| < 2e-7 absolute. Exactly 0 below -2 * lim (where
// the rational form stops at ~3e-8), so silu(-inf) = -inf * 0 = NaN as in torch.
template <typename T>
GK_VINLINE T vsigmoid(T z) {
  const T s = tanh_rational(z * 0.5f) * 0.5f + 0.5f;
  return z > -15.8106222f ? s : T{};
}

template <typename T>
GK_VINLINE T vtanh(T u) { return 1.f - 2.f / (vexp(u * 2.f) + 1.f); }

// erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), odd extension.
template <typename T>
GK_VINLINE T verf(T x) {
  const T a = x < 0.f ? -x : x;
  const T t = 1.f / (a * 0.3275911f + 1.f);
  const T p = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
  const T r = 1.f - p * vexp(-a * a);
  return x < 0.f ? -r : r;
}

template <int A, typename T>
GK_VINLINE T fwd(T z, float alpha) {
  const T zero = T{};
  if constexpr (A == kRelu) return z > 0.f ? z : (z != z ? z : zero);
  if constexpr (A == kLrelu) return z > 0.f ? z : z * alpha;
  if constexpr (A == kSwish) return z * vsigmoid(z);
  if constexpr (A == kGelu) return 0.5f * z * (1.f + verf(z * kSqrt1_2));
  if constexpr (A == kGeluTanh) return 0.5f * z * (1.f + vtanh(kSqrt2OverPi * (z + 0.044715f * z * z * z)));
  return z;
}

template <int A, typename T>
GK_VINLINE T grad(T z, float alpha) {
  const T zero = T{}, one = T{} + 1.f;
  if constexpr (A == kRelu) return z > 0.f ? one : zero;
  if constexpr (A == kLrelu) return z > 0.f ? one : zero + alpha;
  if constexpr (A == kSwish) {
    const T s = vsigmoid(z);
    return s * (1.f + z * (1.f - s));
  }
  if constexpr (A == kGelu) return 0.5f * (1.f + verf(z * kSqrt1_2)) + z * kInvSqrt2Pi * vexp(-0.5f * z * z);
  if constexpr (A == kGeluTanh) {
    const T z2 = z * z;
    const T t = vtanh(kSqrt2OverPi * (z + 0.044715f * z2 * z));
    return 0.5f * (1.f + t) + 0.5f * z * (1.f - t * t) * kSqrt2OverPi * (1.f + 3.f * 0.044715f * z2);
  }
  return one;
}

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
    const float* __restrict xb = x + i0;
    vf s = {}, q = {}, s2 = {}, q2 = {};  // two accumulator pairs hide the add latency
    std::int64_t i = 0;
    for (; i + 2 * kV <= n; i += 2 * kV) {
      const vf d = load(xb + i) - k, d2 = load(xb + i + kV) - k;
      s += d;
      q += d * d;
      s2 += d2;
      q2 += d2 * d2;
    }
    float st = 0.f, qt = 0.f;
    for (; i < n; ++i) {
      const float d = xb[i] - k;
      st += d;
      qt += d * d;
    }
    S += static_cast<double>(hsum(s + s2)) + st;
    Q += static_cast<double>(hsum(q + q2)) + qt;
  }
  return W::from_shifted_sums(static_cast<double>(len), k, S, Q);
}

// Channels_last: per-channel shifted sums over `rows` rows of C channels, shift = first row.
GK_CPU_CLONES void rows_stats(const float* __restrict x, std::int64_t rows, std::int64_t C, double* __restrict S,
                              double* __restrict Q, float* __restrict s, float* __restrict q) {
  const float* __restrict k = x;
  for (std::int64_t c = 0; c < C; ++c) S[c] = Q[c] = 0.0;
  const std::int64_t rows_per_block = std::max<std::int64_t>(1, kBlock / std::max<std::int64_t>(C, 1)) * 4;
  for (std::int64_t r0 = 0; r0 < rows; r0 += rows_per_block) {
    const std::int64_t r1 = std::min(rows, r0 + rows_per_block);
    for (std::int64_t c = 0; c < C; ++c) s[c] = q[c] = 0.f;
    std::int64_t r = r0;
    // Four rows per sweep over the accumulators: a quarter of their loads and stores.
    for (; r + 4 <= r1; r += 4) {
      const float* __restrict xr = x + r * C;
      std::int64_t c = 0;
      for (; c + kV <= C; c += kV) {
        const vf kc = load(k + c);
        const vf d0 = load(xr + c) - kc, d1 = load(xr + C + c) - kc;
        const vf d2 = load(xr + 2 * C + c) - kc, d3 = load(xr + 3 * C + c) - kc;
        store(s + c, load(s + c) + ((d0 + d1) + (d2 + d3)));
        store(q + c, load(q + c) + ((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)));
      }
      for (; c < C; ++c)
        for (int j = 0; j < 4; ++j) {
          const float d = xr[j * C + c] - k[c];
          s[c] += d;
          q[c] += d * d;
        }
    }
    for (; r < r1; ++r) {
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
                             std::int64_t len, float m, float a, float b, float alpha) {
  std::int64_t i = 0;
  for (; i + kV <= len; i += kV) {
    vf v = fwd<A>((load(x + i) - m) * a + b, alpha);
    if constexpr (R) v += load(r + i);
    store(y + i, v);
  }
  for (; i < len; ++i) {
    float v = fwd<A>((x[i] - m) * a + b, alpha);
    if constexpr (R) v += r[i];
    y[i] = v;
  }
}

template <int A, bool R>
GK_CPU_CLONES void apply_row(float* __restrict y, const float* __restrict x, const float* __restrict r,
                             std::int64_t C, const float* __restrict m, const float* __restrict a,
                             const float* __restrict b, float alpha) {
  std::int64_t c = 0;
  for (; c + kV <= C; c += kV) {
    vf v = fwd<A>((load(x + c) - load(m + c)) * load(a + c) + load(b + c), alpha);
    if constexpr (R) v += load(r + c);
    store(y + c, v);
  }
  for (; c < C; ++c) {
    float v = fwd<A>((x[c] - m[c]) * a[c] + b[c], alpha);
    if constexpr (R) v += r[c];
    y[c] = v;
  }
}

// ---- backward --------------------------------------------------------------------------------

template <int A>
GK_CPU_CLONES void run_bwd_sums(const float* __restrict dy, const float* __restrict x, std::int64_t len, float m,
                                float a, float b, float p, float alpha, double* out) {
  double S0 = 0, S1 = 0, S2 = 0;
  for (std::int64_t i0 = 0; i0 < len; i0 += kBlock) {
    const std::int64_t n = std::min(kBlock, len - i0);
    vf s0 = {}, s1 = {}, s2 = {};
    std::int64_t i = i0;
    for (; i + kV <= i0 + n; i += kV) {
      const vf xv = load(x + i) - m;
      const vf g = load(dy + i) * grad<A>(xv * a + b, alpha);
      const vf xh = xv * p;
      s0 += g;
      s1 += g * xh;
      s2 += xh;
    }
    float t0 = 0.f, t1 = 0.f, t2 = 0.f;
    for (; i < i0 + n; ++i) {
      const float xv = x[i] - m;
      const float g = dy[i] * grad<A>(xv * a + b, alpha);
      const float xh = xv * p;
      t0 += g;
      t1 += g * xh;
      t2 += xh;
    }
    S0 += static_cast<double>(hsum(s0)) + t0;
    S1 += static_cast<double>(hsum(s1)) + t1;
    S2 += static_cast<double>(hsum(s2)) + t2;
  }
  out[0] = S0;
  out[1] = S1;
  out[2] = S2;
}

template <int A>
GK_CPU_CLONES void row_bwd_sums(const float* __restrict dy, const float* __restrict x, std::int64_t C,
                                const float* __restrict m, const float* __restrict a, const float* __restrict b,
                                const float* __restrict p, float alpha, float* __restrict s0, float* __restrict s1,
                                float* __restrict s2) {
  std::int64_t c = 0;
  for (; c + kV <= C; c += kV) {
    const vf xv = load(x + c) - load(m + c);
    const vf g = load(dy + c) * grad<A>(xv * load(a + c) + load(b + c), alpha);
    const vf xh = xv * load(p + c);
    store(s0 + c, load(s0 + c) + g);
    store(s1 + c, load(s1 + c) + g * xh);
    store(s2 + c, load(s2 + c) + xh);
  }
  for (; c < C; ++c) {
    const float xv = x[c] - m[c];
    const float g = dy[c] * grad<A>(xv * a[c] + b[c], alpha);
    const float xh = xv * p[c];
    s0[c] += g;
    s1[c] += g * xh;
    s2[c] += xh;
  }
}

template <int A>
GK_CPU_CLONES void bwd_apply_run(float* __restrict dx, const float* __restrict dy, const float* __restrict x,
                                 std::int64_t len, float m, float a, float b, float a2, float b2, float c2,
                                 float alpha) {
  std::int64_t i = 0;
  for (; i + kV <= len; i += kV) {
    const vf xv = load(x + i) - m;
    const vf g = load(dy + i) * grad<A>(xv * a + b, alpha);
    store(dx + i, g * a2 + xv * b2 + c2);
  }
  for (; i < len; ++i) {
    const float xv = x[i] - m;
    const float g = dy[i] * grad<A>(xv * a + b, alpha);
    dx[i] = g * a2 + xv * b2 + c2;
  }
}

template <int A>
GK_CPU_CLONES void bwd_apply_row(float* __restrict dx, const float* __restrict dy, const float* __restrict x,
                                 std::int64_t C, const float* __restrict m, const float* __restrict a,
                                 const float* __restrict b, const float* __restrict a2, const float* __restrict b2,
                                 const float* __restrict c2, float alpha) {
  std::int64_t c = 0;
  for (; c + kV <= C; c += kV) {
    const vf xv = load(x + c) - load(m + c);
    const vf g = load(dy + c) * grad<A>(xv * load(a + c) + load(b + c), alpha);
    store(dx + c, g * load(a2 + c) + xv * load(b2 + c) + load(c2 + c));
  }
  for (; c < C; ++c) {
    const float xv = x[c] - m[c];
    const float g = dy[c] * grad<A>(xv * a[c] + b[c], alpha);
    dx[c] = g * a2[c] + xv * b2[c] + c2[c];
  }
}

// Calls f(n_or_row, lo, hi) for each task: NCHW: element range [lo, hi) of plane `row`;
// channels_last: spatial rows [lo, hi) of sample n.
// Backward pass 1 of the fused GroupNorm path: the sums of run_bwd_sums, keeping g in `gout`.
template <int A>
GK_CPU_CLONES void run_bwd_sums_keep(const float* __restrict dy, const float* __restrict x, std::int64_t len,
                                     float m, float a, float b, float p, float alpha, float* __restrict gout,
                                     double* out) {
  double S0 = 0, S1 = 0, S2 = 0;
  for (std::int64_t i0 = 0; i0 < len; i0 += kBlock) {
    const std::int64_t n = std::min(kBlock, len - i0);
    vf s0 = {}, s1 = {}, s2 = {};
    std::int64_t i = i0;
    for (; i + kV <= i0 + n; i += kV) {
      const vf xv = load(x + i) - m;
      const vf g = load(dy + i) * grad<A>(xv * a + b, alpha);
      const vf xh = xv * p;
      store(gout + i, g);
      s0 += g;
      s1 += g * xh;
      s2 += xh;
    }
    float t0 = 0.f, t1 = 0.f, t2 = 0.f;
    for (; i < i0 + n; ++i) {
      const float xv = x[i] - m;
      const float g = dy[i] * grad<A>(xv * a + b, alpha);
      const float xh = xv * p;
      gout[i] = g;
      t0 += g;
      t1 += g * xh;
      t2 += xh;
    }
    S0 += static_cast<double>(hsum(s0)) + t0;
    S1 += static_cast<double>(hsum(s1)) + t1;
    S2 += static_cast<double>(hsum(s2)) + t2;
  }
  out[0] = S0;
  out[1] = S1;
  out[2] = S2;
}

// Backward pass 2 from the kept g: dx = g * a2 + (x - m) * b2 + c2, no activation derivative.
GK_CPU_CLONES void apply_kept(float* __restrict dx, const float* __restrict g, const float* __restrict x,
                              std::int64_t len, float m, float a2, float b2, float c2) {
  std::int64_t i = 0;
  for (; i + kV <= len; i += kV) store(dx + i, load(g + i) * a2 + (load(x + i) - m) * b2 + c2);
  for (; i < len; ++i) dx[i] = g[i] * a2 + (x[i] - m) * b2 + c2;
}

// Dynamic scheduling: on a machine shared with other work a thread that loses its core would
// otherwise hold up the whole pass with its static share. Results do not depend on the schedule:
// every task writes its own partial.
template <typename F>
void for_each_task(const Shape& s, const Tiling& t, F&& f) {
  parallel_for(t.tasks, 1, [&](std::int64_t task) {
    const std::int64_t row = task / t.per_row, part = task % t.per_row;
    const std::int64_t lo = part * t.len, hi = std::min(s.HW, lo + t.len);
    f(task, row, lo, hi);
  });
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
    parallel_for(NC, 1, [&](std::int64_t row) {
      W w = part[row * t.per_row];
      for (std::int64_t k = 1; k < t.per_row; ++k) w.merge(part[row * t.per_row + k]);
      mean[row] = w.mean;
      m2[row] = w.m2;
    });
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
  parallel_for(NC, 1, [&](std::int64_t nc) {
    const std::int64_t n = nc / C, c = nc % C;
    W w;
    for (std::int64_t k = 0; k < t.per_row; ++k) {
      const std::int64_t task = n * t.per_row + k;
      const std::int64_t cnt = std::min(s.HW, (k + 1) * t.len) - k * t.len;
      w.merge(static_cast<double>(cnt), pmean[task * C + c], pm2[task * C + c]);
    }
    mean[nc] = w.mean;
    m2[nc] = w.m2;
  });
}

void apply_cpu(const float* x, const float* M, const float* A, const float* B, const float* res, float* y,
               const Shape& s, int act, float alpha) {
  if (s.HW == 0 || s.N * s.C == 0) return;
  const Tiling t(s);
  dispatch_norm_act(act, [&](auto a) {
    constexpr int K = decltype(a)::value;
    auto go = [&](auto r) {
      constexpr bool R = decltype(r)::value;
      for_each_task(s, t, [&](std::int64_t, std::int64_t row, std::int64_t lo, std::int64_t hi) {
        if (!s.channels_last) {
          const std::int64_t off = row * s.HW + lo;
          apply_run<K, R>(y + off, x + off, R ? res + off : nullptr, hi - lo, M[row], A[row], B[row], alpha);
        } else {
          for (std::int64_t i = lo; i < hi; ++i) {
            const std::int64_t off = (row * s.HW + i) * s.C;
            const std::int64_t nC = row * s.C;
            apply_row<K, R>(y + off, x + off, R ? res + off : nullptr, s.C, M + nC, A + nC, B + nC, alpha);
          }
        }
      });
    };
    if (res) go(std::true_type{});
    else go(std::false_type{});
  });
}

void backward_reduce_cpu(const float* dy, const float* x, const float* M, const float* A, const float* B,
                         const float* P, const Shape& s, int act, float alpha, double* sums) {
  const std::int64_t NC = s.N * s.C, C = s.C;
  std::fill(sums, sums + 3 * NC, 0.0);
  if (s.HW == 0 || NC == 0) return;
  const Tiling t(s);
  dispatch_norm_act(act, [&](auto a) {
    constexpr int K = decltype(a)::value;
    if (!s.channels_last) {
      std::vector<double> part(3 * t.tasks);
      for_each_task(s, t, [&](std::int64_t task, std::int64_t row, std::int64_t lo, std::int64_t hi) {
        const std::int64_t off = row * s.HW + lo;
        run_bwd_sums<K>(dy + off, x + off, hi - lo, M[row], A[row], B[row], P[row], alpha, &part[3 * task]);
      });
      parallel_for(NC, 1, [&](std::int64_t row) {
        for (std::int64_t k = 0; k < t.per_row; ++k)
          for (int j = 0; j < 3; ++j) sums[j * NC + row] += part[3 * (row * t.per_row + k) + j];
      });
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
          row_bwd_sums<K>(dy + off, x + off, C, M + n * C, A + n * C, B + n * C, P + n * C, alpha, acc.data(),
                          acc.data() + C, acc.data() + 2 * C);
        }
        for (std::int64_t j = 0; j < 3 * C; ++j) out[j] += acc[j];
      }
    });
    parallel_for(NC, 1, [&](std::int64_t nc) {
      const std::int64_t n = nc / C, c = nc % C;
      for (std::int64_t k = 0; k < t.per_row; ++k)
        for (int j = 0; j < 3; ++j) sums[j * NC + nc] += part[3 * (n * t.per_row + k) * C + j * C + c];
    });
  });
}

void backward_apply_cpu(const float* dy, const float* x, const float* M, const float* A, const float* B,
                        const float* A2, const float* B2, const float* C2, float* dx, const Shape& s, int act,
                        float alpha) {
  if (s.HW == 0 || s.N * s.C == 0) return;
  const Tiling t(s);
  dispatch_norm_act(act, [&](auto a) {
    constexpr int K = decltype(a)::value;
    for_each_task(s, t, [&](std::int64_t, std::int64_t row, std::int64_t lo, std::int64_t hi) {
      if (!s.channels_last) {
        const std::int64_t off = row * s.HW + lo;
        bwd_apply_run<K>(dx + off, dy + off, x + off, hi - lo, M[row], A[row], B[row], A2[row], B2[row], C2[row],
                         alpha);
      } else {
        const std::int64_t nC = row * s.C;
        for (std::int64_t i = lo; i < hi; ++i) {
          const std::int64_t off = (row * s.HW + i) * s.C;
          bwd_apply_row<K>(dx + off, dy + off, x + off, s.C, M + nC, A + nC, B + nC, A2 + nC, B2 + nC, C2 + nC,
                           alpha);
        }
      }
    });
  });
}

void group_coefficients_cpu(const double* mean, const double* m2, std::int64_t N, std::int64_t C, std::int64_t G,
                            std::int64_t HW, double eps, const float* weight, const float* bias, const float* temb,
                            const float* scale, const float* shift, float* M, float* A, float* B, float* gmean,
                            float* grstd) {
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
        // h = ((x + temb - mean) * rstd * w + b) * (1 + scale) + shift = (x - M) * A + B
        const double wt = weight ? weight[c] : 1.0, bs = bias ? bias[c] : 0.0;
        const double sc = 1.0 + (scale ? scale[nc] : 0.0), sh = shift ? shift[nc] : 0.0;
        M[nc] = static_cast<float>(w.mean - (temb ? temb[nc] : 0.0));
        A[nc] = static_cast<float>(rstd * wt * sc);
        B[nc] = static_cast<float>(bs * sc + sh);
      }
    }
  }
}

void group_norm_forward_cpu(const float* x, const Shape& s, std::int64_t G, double eps, const float* weight,
                            const float* bias, const float* temb, const float* scale, const float* shift,
                            const float* res, float* y, float* tables, float* gmean, float* grstd, double* scratch,
                            int act, float alpha) {
  const std::int64_t N = s.N, C = s.C, HW = s.HW, NC = N * C, Cg = C / G;
  float *M = tables, *A = tables + NC, *B = tables + 2 * NC;
  // NCHW with enough (n, group) tasks for every thread and a group that fits in L2: one task per
  // group computes its statistics and immediately normalizes it, so the second read of x comes
  // from cache and the pass costs one DRAM read + one write. Otherwise (channels_last, or few
  // large groups) two parallel sweeps, each split over all threads.
  const bool fused = !s.channels_last && HW > 0 && N * G >= cpu_threads() &&
                     Cg * HW * static_cast<std::int64_t>(sizeof(float)) <= (std::int64_t{1} << 20);
  if (!fused) {
    // One sample at a time when a sample is at most a few MiB: its second read then comes from
    // the last-level cache instead of competing with the whole tensor and y for it.
    const std::int64_t per = HW * C * static_cast<std::int64_t>(sizeof(float));
    const std::int64_t step = (N > 1 && per <= (std::int64_t{8} << 20)) ? 1 : N;
    for (std::int64_t n0 = 0; n0 < N; n0 += step) {
      const Shape sn{step, C, HW, s.channels_last};
      const std::int64_t e = n0 * HW * C, t = n0 * C;
      auto off = [t](const float* p) { return p ? p + t : nullptr; };
      channel_stats_cpu(x + e, sn, scratch, scratch + step * C);
      group_coefficients_cpu(scratch, scratch + step * C, step, C, G, HW, eps, weight, bias, off(temb), off(scale),
                             off(shift), M + t, A + t, B + t, gmean + n0 * G, grstd + n0 * G);
      apply_cpu(x + e, M + t, A + t, B + t, res ? res + e : nullptr, y + e, sn, act, alpha);
    }
    return;
  }
  dispatch_norm_act(act, [&](auto a) {
    constexpr int K = decltype(a)::value;
    auto go = [&](auto r) {
      constexpr bool R = decltype(r)::value;
      parallel_for(N * G, 1, [&](std::int64_t task) {
        const std::int64_t n = task / G, g = task % G;
        W w;
        for (std::int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
          const std::int64_t row = n * C + c;
          const W wc = run_stats(x + row * HW, HW);
          w.merge(static_cast<double>(HW), wc.mean + (temb ? temb[row] : 0.0), wc.m2);
        }
        const double rstd = 1.0 / std::sqrt(w.var() + eps);
        gmean[task] = static_cast<float>(w.mean);
        grstd[task] = static_cast<float>(rstd);
        for (std::int64_t c = g * Cg; c < (g + 1) * Cg; ++c) {
          const std::int64_t row = n * C + c;
          const double wt = weight ? weight[c] : 1.0, bs = bias ? bias[c] : 0.0;
          const double sc = 1.0 + (scale ? scale[row] : 0.0), sh = shift ? shift[row] : 0.0;
          M[row] = static_cast<float>(w.mean - (temb ? temb[row] : 0.0));
          A[row] = static_cast<float>(rstd * wt * sc);
          B[row] = static_cast<float>(bs * sc + sh);
          apply_run<K, R>(y + row * HW, x + row * HW, R ? res + row * HW : nullptr, HW, M[row], A[row], B[row],
                          alpha);
        }
      });
    };
    if (res) go(std::true_type{});
    else go(std::false_type{});
  });
}

bool group_norm_backward_cpu(const float* dy, const float* x, const Shape& s, std::int64_t G, const float* gmean,
                             const float* grstd, const float* weight, const float* bias, const float* temb,
                             const float* scale, const float* shift, float* dx, double* grads, int act,
                             float alpha) {
  const std::int64_t N = s.N, C = s.C, HW = s.HW, NC = N * C, Cg = C / G;
  // The fused path of the forward, for the backward: one task per (n, group) keeps the group's g
  // in a per-thread buffer, so pass 2 reads x and g from L2 and evaluates no activation
  // derivative: DRAM traffic dy + x + dx, half the transcendental work of the generic two passes.
  const std::int64_t group_bytes = Cg * HW * static_cast<std::int64_t>(sizeof(float));
  if (s.channels_last || HW == 0 || N * G < cpu_threads() || group_bytes > (std::int64_t{1} << 18))
    return false;
  double* dw = grads;  // per-(n, c) partials of the weight gradient; the caller sums over n
  double* db = grads + NC;
  double* dtemb = grads + 2 * NC;
  double* dscale = grads + 3 * NC;
  double* dshift = grads + 4 * NC;
  dispatch_norm_act(act, [&](auto a) {
    constexpr int K = decltype(a)::value;
    // per-thread scratch, indexed by the pool's slot of the running thread
    std::vector<std::vector<float>> gbufs(static_cast<std::size_t>(cpu_threads()));
    std::vector<std::vector<double>> sumss(static_cast<std::size_t>(cpu_threads()));
    {
      parallel_for_slots(N * G, 1, [&](std::int64_t task, int slot) {
        std::vector<float>& gbuf = gbufs[slot];
        std::vector<double>& sums = sumss[slot];
        if (gbuf.empty()) {
          gbuf.resize(static_cast<std::size_t>(Cg * HW));
          sums.resize(static_cast<std::size_t>(3 * Cg));
        }
        const std::int64_t n = task / G, g = task % G;
        const double rstd = grstd[task];
        double Sv = 0, Svxh = 0;
        for (std::int64_t j = 0; j < Cg; ++j) {
          const std::int64_t c = g * Cg + j, row = n * C + c;
          const double wt = weight ? weight[c] : 1.0, bs = bias ? bias[c] : 0.0;
          const double sc = 1.0 + (scale ? scale[row] : 0.0), sh = shift ? shift[row] : 0.0;
          const float m = static_cast<float>(gmean[task] - (temb ? temb[row] : 0.0));
          run_bwd_sums_keep<K>(dy + row * HW, x + row * HW, HW, m, static_cast<float>(rstd * wt * sc),
                               static_cast<float>(bs * sc + sh), static_cast<float>(rstd), alpha,
                               gbuf.data() + j * HW, &sums[3 * j]);
          Sv += wt * sc * sums[3 * j];
          Svxh += wt * sc * sums[3 * j + 1];
        }
        const double cnt = static_cast<double>(Cg * HW), c1 = Sv / cnt, c2 = Svxh / cnt;
        for (std::int64_t j = 0; j < Cg; ++j) {
          const std::int64_t c = g * Cg + j, row = n * C + c;
          const double wt = weight ? weight[c] : 1.0, bs = bias ? bias[c] : 0.0;
          const double sc = 1.0 + (scale ? scale[row] : 0.0);
          const double Sg = sums[3 * j], Sgxh = sums[3 * j + 1], Sxh = sums[3 * j + 2];
          const double a2 = rstd * wt * sc, b2 = -rstd * rstd * c2, c2r = -rstd * c1;
          const float m = static_cast<float>(gmean[task] - (temb ? temb[row] : 0.0));
          apply_kept(dx + row * HW, gbuf.data() + j * HW, x + row * HW, HW, m, static_cast<float>(a2),
                     static_cast<float>(b2), static_cast<float>(c2r));
          dw[row] = sc * Sgxh;
          db[row] = sc * Sg;
          dshift[row] = Sg;
          dscale[row] = wt * Sgxh + bs * Sg;
          dtemb[row] = a2 * Sg - rstd * c2 * Sxh - rstd * c1 * static_cast<double>(HW);
        }
      });
    }
  });
  return true;
}

// ---- entry points -----------------------------------------------------------------------------

std::int64_t split_chunk(const SplitParams& p, Stream) { return std::max<std::int64_t>(p.HW, 1); }

void channel_stats(const StatsParams& p, Stream) {
  const Shape s = shape_of(p);
  const std::int64_t NC = s.N * s.C;
  check_operands("norm statistics", p.x, {}, {}, NC);
  check(p.partials.numel == 3 * NC, "norm statistics", "the CPU writes partials [1][3][N*C] (chunk = HW)");
  double* part = p.partials.as<double>("partials");
  std::fill(part, part + NC, 0.0);  // shift
  channel_stats_cpu(p.x.as<const float>("x"), s, part + NC, part + 2 * NC);
}

void apply(const PointwiseParams& p, Stream) {
  const Shape s = shape_of(p);
  check_operands("norm apply", p.x, {&p.residual, &p.out}, {&p.M, &p.A, &p.B}, s.N * s.C);
  apply_cpu(p.x.as<const float>("x"), p.M.as<const float>("M"), p.A.as<const float>("A"), p.B.as<const float>("B"),
            p.residual.as<const float>("residual"), p.out.as<float>("out"), s, p.act, p.alpha);
}

void backward_apply(const PointwiseParams& p, Stream) {
  const Shape s = shape_of(p);
  check_operands("norm backward", p.x, {&p.dy, &p.out}, {&p.M, &p.A, &p.B, &p.A2, &p.B2, &p.C2}, s.N * s.C);
  backward_apply_cpu(p.dy.as<const float>("dy"), p.x.as<const float>("x"), p.M.as<const float>("M"),
                     p.A.as<const float>("A"), p.B.as<const float>("B"), p.A2.as<const float>("A2"),
                     p.B2.as<const float>("B2"), p.C2.as<const float>("C2"), p.out.as<float>("out"), s, p.act,
                     p.alpha);
}

void backward_reduce(const ReduceParams& p, Stream) {
  const Shape s = shape_of(p);
  check_operands("norm backward reduction", p.x, {&p.dy}, {&p.M, &p.A, &p.B, &p.P}, s.N * s.C);
  check(p.partials.numel == 3 * s.N * s.C, "norm backward reduction", "the CPU writes partials [1][3][N*C]");
  backward_reduce_cpu(p.dy.as<const float>("dy"), p.x.as<const float>("x"), p.M.as<const float>("M"),
                      p.A.as<const float>("A"), p.B.as<const float>("B"), p.P.as<const float>("P"), s, p.act,
                      p.alpha, p.partials.as<double>("partials"));
}

void group_norm_forward(const GroupForwardParams& p, Stream) {
  const Shape s = shape_of(p);
  check_operands("group_norm_act", p.x, {&p.residual, &p.y}, {&p.temb, &p.scale, &p.shift}, s.N * s.C);
  group_norm_forward_cpu(p.x.as<const float>("x"), s, p.G, p.eps, p.weight.as<const float>("weight"),
                         p.bias.as<const float>("bias"), p.temb.as<const float>("temb"),
                         p.scale.as<const float>("scale"), p.shift.as<const float>("shift"),
                         p.residual.as<const float>("residual"), p.y.as<float>("y"), p.tables.as<float>("tables"),
                         p.gmean.as<float>("gmean"), p.grstd.as<float>("grstd"), p.scratch.as<double>("scratch"),
                         p.act, p.alpha);
}

bool group_norm_backward(const GroupBackwardParams& p, Stream) {
  const Shape s = shape_of(p);
  check_operands("group_norm_act_backward", p.x, {&p.dy, &p.dx}, {&p.temb, &p.scale, &p.shift}, s.N * s.C);
  return group_norm_backward_cpu(p.dy.as<const float>("dy"), p.x.as<const float>("x"), s, p.G,
                                 p.gmean.as<const float>("gmean"), p.grstd.as<const float>("grstd"),
                                 p.weight.as<const float>("weight"), p.bias.as<const float>("bias"),
                                 p.temb.as<const float>("temb"), p.scale.as<const float>("scale"),
                                 p.shift.as<const float>("shift"), p.dx.as<float>("dx"), p.grads.as<double>("grads"),
                                 p.act, p.alpha);
}

}  // namespace gk::norm
