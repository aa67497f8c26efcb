// Normalization passes on the CPU (csrc/norm/norm.h), for float32, bfloat16 and float16 storage:
// loads and stores in the tensor's dtype, math in float32, reductions folded into float64.
//
// Work: the thread pool (common/thread_pool.h) over tasks, dynamic scheduling (a thread that loses
// its core on a shared machine does not hold up the pass with a static share). Reductions write
// one partial per task and merge them in a fixed order afterwards, so results do not depend on the
// thread count or schedule.
//   generic passes: tasks of ~64 KiB of x: (row, chunk) for NCHW, where a row is one (n, c) plane,
//     and (n, block of spatial rows) for channels_last;
//   fused GroupNorm forward (both layouts) and backward (NCHW): one task per (n, block of whole
//     groups) takes the statistics of its groups and applies them right away, so the second read
//     of x comes from L2: one parallel loop per call, one DRAM read and one write.
//
// Vectorization is explicit, with GCC vector extensions over a lane type V (common/cpu_vec.h): GCC
// would not vectorize these loops with their reductions and activations on its own. Each task body
// is compiled twice: with V = vf (8 floats) as GK_CPU_CLONES (AVX2 / baseline clones), and with
// V = vf16 (16 floats, one zmm) for AVX-512 CPUs, picked at run time (cpu_wide()): on the AMD Zen 5
// VM a silu loop runs ~1.7x faster on 16-float vectors than on AVX-512 instructions of 8 floats.
// bf16/fp16 data are converted tile by tile into a float buffer on the stack (the conversions of
// common/cpu_dtypes.h, which GCC vectorizes), so the float loops serve every dtype.
// Reductions keep fp32 vector accumulators for at most kBlock elements, then fold into double.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "common/cpu_dtypes.h"
#include "common/cpu_vec.h"
#include "common/thread_pool.h"
#include "norm/norm.h"

namespace gk::norm {
namespace {

constexpr std::int64_t kChunk = 1 << 14;  // elements per task of the generic passes
constexpr std::int64_t kBlock = 1 << 10;  // elements per fp32 partial sum
constexpr std::int64_t kTile = 1 << 10;   // bf16/fp16 elements converted to float at a time
constexpr std::int64_t kMaxBlock = 128;   // channels per fused GroupNorm task
constexpr std::int64_t kPrefetchRows = 8; // channels_last rows prefetched ahead in strided sweeps

// Prefetch the cache lines of `bytes` bytes at p (a strided channels_last row segment), for a
// read (RW = 0) or a write (RW = 1).
template <int RW = 0>
GK_VINLINE void prefetch_bytes(const void* p, std::int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (std::int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o, RW);
}

using W = Welford<double>;

template <typename T>
constexpr bool kIsFloat = std::is_same_v<T, float>;

template <typename T>
GK_VINLINE void to_float(float* __restrict d, const T* __restrict s, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) d[i] = static_cast<float>(s[i]);
}
template <typename T>
GK_VINLINE void from_float(T* __restrict d, const float* __restrict s, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) d[i] = static_cast<T>(s[i]);
}

// How the generic passes' tasks cover x. NCHW: task t is chunk (t % per_row) of row (t / per_row).
// Channels_last: task t is rows [r0, r1) of sample t / per_row, each row C consecutive channels.
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
  // Elements of x in one task (at most; for_tasks' grain).
  std::int64_t task_elems(const Shape& s) const { return s.channels_last ? len * s.C : std::min(len, s.HW); }
  // Visits task t's part of x: NCHW: plane(row, off, count), one span of plane `row` (= n * C + c)
  // starting at element off; channels_last: pixel(n, off) for each of its pixel rows (C channels
  // from element off). The pointwise passes share it.
  template <typename Plane, typename Pixel>
  GK_VINLINE void visit(std::int64_t task, const Shape& s, Plane&& plane, Pixel&& pixel) const {
    const std::int64_t row = task / per_row, lo = (task % per_row) * len, hi = std::min(s.HW, lo + len);
    if (!s.channels_last) {
      plane(row, row * s.HW + lo, hi - lo);
    } else {
      for (std::int64_t i = lo; i < hi; ++i) pixel(row, (row * s.HW + i) * s.C);
    }
  }
};

// Lambdas called from the per-ISA task bodies must be inlined into them (see GK_VINLINE).
#define GK_LAMBDA_INLINE __attribute__((always_inline))

// ---- float kernels over lanes V -----------------------------------------------------------------

// Horizontal sums as a tree: log2(L) dependent adds instead of hsum's L - 1 (common/cpu_vec.h), whose
// serial chain (~60 cycles on 16 lanes) dominated the per-plane sums of small planes (three per
// plane in the backward).
typedef float vf4 __attribute__((vector_size(16)));
GK_VINLINE float hsum_tree(vf4 v) { return (v[0] + v[2]) + (v[1] + v[3]); }
GK_VINLINE float hsum_tree(vf v) {
  vf4 lo, hi;
  std::memcpy(&lo, &v, sizeof(lo));
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(lo), sizeof(hi));
  return hsum_tree(lo + hi);
}
GK_VINLINE float hsum_tree(vf16 v) {
  vf lo, hi;
  std::memcpy(&lo, &v, sizeof(lo));
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(lo), sizeof(hi));
  return hsum_tree(lo + hi);
}

// S += sum(x - k), Q += sum((x - k)^2) over n floats; the shift k (the data's first value) keeps the
// sum of squares well conditioned.
template <typename V>
GK_VINLINE void shifted_sums(const float* __restrict x, std::int64_t n, float k, double& S, double& Q) {
  constexpr int L = lanes_of<V>;
  for (std::int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const std::int64_t m = std::min(kBlock, n - i0);
    const float* __restrict xb = x + i0;
    V s = {}, q = {}, s2 = {}, q2 = {};  // two accumulator pairs hide the add latency
    std::int64_t i = 0;
    for (; i + 2 * L <= m; i += 2 * L) {
      const V d = load_as<V>(xb + i) - k, d2 = load_as<V>(xb + i + L) - k;
      s += d;
      q += d * d;
      s2 += d2;
      q2 += d2 * d2;
    }
    if (i + L <= m) {
      const V d = load_as<V>(xb + i) - k;
      s += d;
      q += d * d;
      i += L;
    }
    float st = 0.f, qt = 0.f;
    for (; i < m; ++i) {
      const float d = xb[i] - k;
      st += d;
      qt += d * d;
    }
    S += static_cast<double>(hsum_tree(s + s2)) + st;
    Q += static_cast<double>(hsum_tree(q + q2)) + qt;
  }
}

// y = act((x - m) * a + b) (+ r): scalar coefficients (one NCHW plane) ...
template <typename V, int A, bool R>
GK_VINLINE void apply_span(float* __restrict y, const float* __restrict x, const float* __restrict r,
                           std::int64_t n, float m, float a, float b, float alpha) {
  constexpr int L = lanes_of<V>;
  std::int64_t i = 0;
  for (; i + L <= n; i += L) {
    V v = act_forward<A>((load_as<V>(x + i) - m) * a + b, alpha);
    if constexpr (R) v += load_as<V>(r + i);
    store(y + i, v);
  }
  for (; i < n; ++i) {
    float v = act_forward<A>((x[i] - m) * a + b, alpha);
    if constexpr (R) v += r[i];
    y[i] = v;
  }
}

// ... or per-lane coefficient tables (a channels_last row).
template <typename V, int A, bool R>
GK_VINLINE void apply_cols(float* __restrict y, const float* __restrict x, const float* __restrict r,
                           std::int64_t n, const float* __restrict m, const float* __restrict a,
                           const float* __restrict b, float alpha) {
  constexpr int L = lanes_of<V>;
  std::int64_t c = 0;
  for (; c + L <= n; c += L) {
    V v = act_forward<A>((load_as<V>(x + c) - load_as<V>(m + c)) * load_as<V>(a + c) + load_as<V>(b + c), alpha);
    if constexpr (R) v += load_as<V>(r + c);
    store(y + c, v);
  }
  for (; c < n; ++c) {
    float v = act_forward<A>((x[c] - m[c]) * a[c] + b[c], alpha);
    if constexpr (R) v += r[c];
    y[c] = v;
  }
}

// Backward sums over one plane span: S[0] += sum g, S[1] += sum g * xh, S[2] += sum xh with
// u = x - m, g = dy * act'(u * a + b), xh = u * p; KEEP also stores g (the fused backward).
template <typename V, int A, bool KEEP>
GK_VINLINE void bwd_sums_span(const float* __restrict dy, const float* __restrict x, std::int64_t n, float m,
                              float a, float b, float p, float alpha, float* __restrict gout, double* S) {
  constexpr int L = lanes_of<V>;
  for (std::int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const std::int64_t e = i0 + std::min(kBlock, n - i0);
    V s0 = {}, s1 = {}, s2 = {};
    std::int64_t i = i0;
    for (; i + L <= e; i += L) {
      const V u = load_as<V>(x + i) - m;
      const V g = load_as<V>(dy + i) * act_derivative<A>(u * a + b, alpha);
      const V xh = u * p;
      if constexpr (KEEP) store(gout + i, g);
      s0 += g;
      s1 += g * xh;
      s2 += xh;
    }
    float t0 = 0.f, t1 = 0.f, t2 = 0.f;
    for (; i < e; ++i) {
      const float u = x[i] - m;
      const float g = dy[i] * act_derivative<A>(u * a + b, alpha);
      const float xh = u * p;
      if constexpr (KEEP) gout[i] = g;
      t0 += g;
      t1 += g * xh;
      t2 += xh;
    }
    S[0] += static_cast<double>(hsum_tree(s0)) + t0;
    S[1] += static_cast<double>(hsum_tree(s1)) + t1;
    S[2] += static_cast<double>(hsum_tree(s2)) + t2;
  }
}

// Per-lane form for a channels_last row: float accumulators s0, s1, s2 per channel.
template <typename V, int A>
GK_VINLINE void bwd_sums_cols(const float* __restrict dy, const float* __restrict x, std::int64_t n,
                              const float* __restrict m, const float* __restrict a, const float* __restrict b,
                              const float* __restrict p, float alpha, float* __restrict s0, float* __restrict s1,
                              float* __restrict s2) {
  constexpr int L = lanes_of<V>;
  std::int64_t c = 0;
  for (; c + L <= n; c += L) {
    const V u = load_as<V>(x + c) - load_as<V>(m + c);
    const V g = load_as<V>(dy + c) * act_derivative<A>(u * load_as<V>(a + c) + load_as<V>(b + c), alpha);
    const V xh = u * load_as<V>(p + c);
    store(s0 + c, load_as<V>(s0 + c) + g);
    store(s1 + c, load_as<V>(s1 + c) + g * xh);
    store(s2 + c, load_as<V>(s2 + c) + xh);
  }
  for (; c < n; ++c) {
    const float u = x[c] - m[c];
    const float g = dy[c] * act_derivative<A>(u * a[c] + b[c], alpha);
    const float xh = u * p[c];
    s0[c] += g;
    s1[c] += g * xh;
    s2[c] += xh;
  }
}

// dx = g * a2 + u * b2 + c2 with g = dy * act'(u * a + b), u = x - m (scalar coefficients).
template <typename V, int A>
GK_VINLINE void bwd_apply_span(float* __restrict dx, const float* __restrict dy, const float* __restrict x,
                               std::int64_t n, float m, float a, float b, float a2, float b2, float c2,
                               float alpha) {
  constexpr int L = lanes_of<V>;
  std::int64_t i = 0;
  for (; i + L <= n; i += L) {
    const V u = load_as<V>(x + i) - m;
    const V g = load_as<V>(dy + i) * act_derivative<A>(u * a + b, alpha);
    store(dx + i, g * a2 + u * b2 + c2);
  }
  for (; i < n; ++i) {
    const float u = x[i] - m;
    const float g = dy[i] * act_derivative<A>(u * a + b, alpha);
    dx[i] = g * a2 + u * b2 + c2;
  }
}

template <typename V, int A>
GK_VINLINE void bwd_apply_cols(float* __restrict dx, const float* __restrict dy, const float* __restrict x,
                               std::int64_t n, const float* __restrict m, const float* __restrict a,
                               const float* __restrict b, const float* __restrict a2, const float* __restrict b2,
                               const float* __restrict c2, float alpha) {
  constexpr int L = lanes_of<V>;
  std::int64_t c = 0;
  for (; c + L <= n; c += L) {
    const V u = load_as<V>(x + c) - load_as<V>(m + c);
    const V g = load_as<V>(dy + c) * act_derivative<A>(u * load_as<V>(a + c) + load_as<V>(b + c), alpha);
    store(dx + c, g * load_as<V>(a2 + c) + u * load_as<V>(b2 + c) + load_as<V>(c2 + c));
  }
  for (; c < n; ++c) {
    const float u = x[c] - m[c];
    const float g = dy[c] * act_derivative<A>(u * a[c] + b[c], alpha);
    dx[c] = g * a2[c] + u * b2[c] + c2[c];
  }
}

// The fused backward's second sweep from the kept g: dx = g * a2 + (x - m) * b2 + c2.
template <typename V>
GK_VINLINE void kept_span(float* __restrict dx, const float* __restrict g, const float* __restrict x,
                          std::int64_t n, float m, float a2, float b2, float c2) {
  constexpr int L = lanes_of<V>;
  std::int64_t i = 0;
  for (; i + L <= n; i += L) store(dx + i, load_as<V>(g + i) * a2 + (load_as<V>(x + i) - m) * b2 + c2);
  for (; i < n; ++i) dx[i] = g[i] * a2 + (x[i] - m) * b2 + c2;
}

// A flat run with per-element coefficients (GroupNorm planes shorter than a vector): g = dy *
// act'(u * a + b) and xh = u * p with u = x - m, both kept for the per-channel sums.
template <typename V, int A>
GK_VINLINE void bwd_flat(const float* __restrict dy, const float* __restrict x, std::int64_t n,
                         const float* __restrict m, const float* __restrict a, const float* __restrict b, float p,
                         float alpha, float* __restrict g, float* __restrict xh) {
  constexpr int L = lanes_of<V>;
  std::int64_t i = 0;
  for (; i + L <= n; i += L) {
    const V u = load_as<V>(x + i) - load_as<V>(m + i);
    store(g + i, load_as<V>(dy + i) * act_derivative<A>(u * load_as<V>(a + i) + load_as<V>(b + i), alpha));
    store(xh + i, u * p);
  }
  for (; i < n; ++i) {
    const float u = x[i] - m[i];
    g[i] = dy[i] * act_derivative<A>(u * a[i] + b[i], alpha);
    xh[i] = u * p;
  }
}

// dx = g * a2 + (x - m) * b2 + c2 over a flat run (per-element m and a2).
template <typename V>
GK_VINLINE void kept_flat(float* __restrict dx, const float* __restrict g, const float* __restrict x, std::int64_t n,
                          const float* __restrict m, const float* __restrict a2, float b2, float c2) {
  constexpr int L = lanes_of<V>;
  std::int64_t i = 0;
  for (; i + L <= n; i += L)
    store(dx + i, load_as<V>(g + i) * load_as<V>(a2 + i) + (load_as<V>(x + i) - load_as<V>(m + i)) * b2 + c2);
  for (; i < n; ++i) dx[i] = g[i] * a2[i] + (x[i] - m[i]) * b2 + c2;
}

// ---- the same over storage type T: runs of one plane, and rows of w channels at stride ld -------
// For bf16/fp16 each kernel sees float tiles of at most kTile elements converted on the stack.

template <typename V, typename T>
GK_VINLINE W run_stats(const T* __restrict x, std::int64_t len) {
  const float k = static_cast<float>(x[0]);
  double S = 0, Q = 0;
  if constexpr (kIsFloat<T>) {
    shifted_sums<V>(x, len, k, S, Q);
  } else {
    alignas(64) float xb[kTile];
    for (std::int64_t i0 = 0; i0 < len; i0 += kTile) {
      const std::int64_t n = std::min(kTile, len - i0);
      to_float(xb, x + i0, n);
      shifted_sums<V>(xb, n, k, S, Q);
    }
  }
  return W::from_shifted_sums(static_cast<double>(len), k, S, Q);
}

template <typename V, int A, bool R, typename T>
GK_VINLINE void apply_run(T* __restrict y, const T* __restrict x, const T* __restrict r, std::int64_t len, float m,
                          float a, float b, float alpha) {
  if constexpr (kIsFloat<T>) {
    apply_span<V, A, R>(y, x, r, len, m, a, b, alpha);
  } else {
    alignas(64) float xb[kTile], rb[R ? kTile : 1], yb[kTile];
    for (std::int64_t i0 = 0; i0 < len; i0 += kTile) {
      const std::int64_t n = std::min(kTile, len - i0);
      to_float(xb, x + i0, n);
      if constexpr (R) to_float(rb, r + i0, n);
      apply_span<V, A, R>(yb, xb, rb, n, m, a, b, alpha);
      from_float(y + i0, yb, n);
    }
  }
}

template <typename V, int A, bool R, typename T>
GK_VINLINE void apply_row(T* __restrict y, const T* __restrict x, const T* __restrict r, std::int64_t w,
                          const float* m, const float* a, const float* b, float alpha) {
  if constexpr (kIsFloat<T>) {
    apply_cols<V, A, R>(y, x, r, w, m, a, b, alpha);
  } else {
    alignas(64) float xb[kTile], rb[R ? kTile : 1], yb[kTile];
    for (std::int64_t c0 = 0; c0 < w; c0 += kTile) {
      const std::int64_t n = std::min(kTile, w - c0);
      to_float(xb, x + c0, n);
      if constexpr (R) to_float(rb, r + c0, n);
      apply_cols<V, A, R>(yb, xb, rb, n, m + c0, a + c0, b + c0, alpha);
      from_float(y + c0, yb, n);
    }
  }
}

template <typename V, int A, bool KEEP, typename T>
GK_VINLINE void bwd_sums_run(const T* __restrict dy, const T* __restrict x, std::int64_t len, float m, float a,
                             float b, float p, float alpha, float* gout, double* S) {
  if constexpr (kIsFloat<T>) {
    bwd_sums_span<V, A, KEEP>(dy, x, len, m, a, b, p, alpha, gout, S);
  } else {
    alignas(64) float db[kTile], xb[kTile];
    for (std::int64_t i0 = 0; i0 < len; i0 += kTile) {
      const std::int64_t n = std::min(kTile, len - i0);
      to_float(db, dy + i0, n);
      to_float(xb, x + i0, n);
      bwd_sums_span<V, A, KEEP>(db, xb, n, m, a, b, p, alpha, KEEP ? gout + i0 : nullptr, S);
    }
  }
}

template <typename V, int A, typename T>
GK_VINLINE void bwd_sums_row(const T* __restrict dy, const T* __restrict x, std::int64_t w, const float* m,
                             const float* a, const float* b, const float* p, float alpha, float* s0, float* s1,
                             float* s2) {
  if constexpr (kIsFloat<T>) {
    bwd_sums_cols<V, A>(dy, x, w, m, a, b, p, alpha, s0, s1, s2);
  } else {
    alignas(64) float db[kTile], xb[kTile];
    for (std::int64_t c0 = 0; c0 < w; c0 += kTile) {
      const std::int64_t n = std::min(kTile, w - c0);
      to_float(db, dy + c0, n);
      to_float(xb, x + c0, n);
      bwd_sums_cols<V, A>(db, xb, n, m + c0, a + c0, b + c0, p + c0, alpha, s0 + c0, s1 + c0, s2 + c0);
    }
  }
}

template <typename V, int A, typename T>
GK_VINLINE void bwd_apply_run(T* __restrict dx, const T* __restrict dy, const T* __restrict x, std::int64_t len,
                              float m, float a, float b, float a2, float b2, float c2, float alpha) {
  if constexpr (kIsFloat<T>) {
    bwd_apply_span<V, A>(dx, dy, x, len, m, a, b, a2, b2, c2, alpha);
  } else {
    alignas(64) float db[kTile], xb[kTile], ob[kTile];
    for (std::int64_t i0 = 0; i0 < len; i0 += kTile) {
      const std::int64_t n = std::min(kTile, len - i0);
      to_float(db, dy + i0, n);
      to_float(xb, x + i0, n);
      bwd_apply_span<V, A>(ob, db, xb, n, m, a, b, a2, b2, c2, alpha);
      from_float(dx + i0, ob, n);
    }
  }
}

template <typename V, int A, typename T>
GK_VINLINE void bwd_apply_row(T* __restrict dx, const T* __restrict dy, const T* __restrict x, std::int64_t w,
                              const float* m, const float* a, const float* b, const float* a2, const float* b2,
                              const float* c2, float alpha) {
  if constexpr (kIsFloat<T>) {
    bwd_apply_cols<V, A>(dx, dy, x, w, m, a, b, a2, b2, c2, alpha);
  } else {
    alignas(64) float db[kTile], xb[kTile], ob[kTile];
    for (std::int64_t c0 = 0; c0 < w; c0 += kTile) {
      const std::int64_t n = std::min(kTile, w - c0);
      to_float(db, dy + c0, n);
      to_float(xb, x + c0, n);
      bwd_apply_cols<V, A>(ob, db, xb, n, m + c0, a + c0, b + c0, a2 + c0, b2 + c0, c2 + c0, alpha);
      from_float(dx + c0, ob, n);
    }
  }
}

template <typename V, typename T>
GK_VINLINE void kept_run(T* __restrict dx, const float* __restrict g, const T* __restrict x, std::int64_t len,
                         float m, float a2, float b2, float c2) {
  if constexpr (kIsFloat<T>) {
    kept_span<V>(dx, g, x, len, m, a2, b2, c2);
  } else {
    alignas(64) float xb[kTile], ob[kTile];
    for (std::int64_t i0 = 0; i0 < len; i0 += kTile) {
      const std::int64_t n = std::min(kTile, len - i0);
      to_float(xb, x + i0, n);
      kept_span<V>(ob, g + i0, xb, n, m, a2, b2, c2);
      from_float(dx + i0, ob, n);
    }
  }
}

// Per-column Welford moments of `rows` rows of w channels at stride ld (channels_last): shift =
// the first row, four rows per sweep over fp32 column accumulators, folded into double every
// ~kBlock * 4 elements. bf16/fp16 rows are converted in blocks into a per-thread buffer.
template <typename V>
GK_VINLINE void rows_sums(const float* __restrict x, std::int64_t rows, std::int64_t w, std::int64_t ld,
                          const float* __restrict k, double* __restrict S, double* __restrict Q, float* __restrict s,
                          float* __restrict q) {
  constexpr int L = lanes_of<V>;
  const std::int64_t rows_per_block = std::max<std::int64_t>(1, kBlock / std::max<std::int64_t>(w, 1)) * 4;
  for (std::int64_t r0 = 0; r0 < rows; r0 += rows_per_block) {
    const std::int64_t r1 = std::min(rows, r0 + rows_per_block);
    for (std::int64_t c = 0; c < w; ++c) s[c] = q[c] = 0.f;
    std::int64_t r = r0;
    for (; r + 4 <= r1; r += 4) {  // four rows per sweep: a quarter of the accumulator traffic
      const float* __restrict xr = x + r * ld;
      if (ld != w && r + 4 + kPrefetchRows <= rows)
        for (int j = 0; j < 4; ++j) prefetch_bytes(xr + (kPrefetchRows + j) * ld, w * 4);
      std::int64_t c = 0;
      for (; c + L <= w; c += L) {
        const V kc = load_as<V>(k + c);
        const V d0 = load_as<V>(xr + c) - kc, d1 = load_as<V>(xr + ld + c) - kc;
        const V d2 = load_as<V>(xr + 2 * ld + c) - kc, d3 = load_as<V>(xr + 3 * ld + c) - kc;
        store(s + c, load_as<V>(s + c) + ((d0 + d1) + (d2 + d3)));
        store(q + c, load_as<V>(q + c) + ((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)));
      }
      for (; c < w; ++c)
        for (int j = 0; j < 4; ++j) {
          const float d = xr[j * ld + c] - k[c];
          s[c] += d;
          q[c] += d * d;
        }
    }
    for (; r < r1; ++r) {
      const float* __restrict xr = x + r * ld;
      for (std::int64_t c = 0; c < w; ++c) {
        const float d = xr[c] - k[c];
        s[c] += d;
        q[c] += d * d;
      }
    }
    for (std::int64_t c = 0; c < w; ++c) {
      S[c] += s[c];
      Q[c] += q[c];
    }
  }
}

// Per-thread float scratch (grown as needed, kept between calls).
inline float* scratch_floats(std::int64_t n) {
  thread_local std::vector<float> buf;
  if (static_cast<std::int64_t>(buf.size()) < n) buf.resize(static_cast<std::size_t>(n));
  return buf.data();
}

// mean[c], m2[c] of columns [0, w) over `rows` rows at stride ld.
template <typename V, typename T>
GK_VINLINE void rows_stats(const T* __restrict x, std::int64_t rows, std::int64_t w, std::int64_t ld,
                           double* __restrict mean, double* __restrict m2) {
  std::vector<double> SQ(static_cast<std::size_t>(2 * w), 0.0);
  const std::int64_t stage_rows = kIsFloat<T> ? 0 : std::max<std::int64_t>(4, (4 * kTile / std::max<std::int64_t>(w, 1)) / 4 * 4);
  float* buf = scratch_floats(3 * w + stage_rows * w);  // s, q, shift; staged rows
  float *s = buf, *q = buf + w, *k = buf + 2 * w, *xs = buf + 3 * w;
  to_float(k, x, w);
  if constexpr (kIsFloat<T>) {
    rows_sums<V>(x, rows, w, ld, k, SQ.data(), SQ.data() + w, s, q);
  } else {
    for (std::int64_t r0 = 0; r0 < rows; r0 += stage_rows) {
      const std::int64_t nr = std::min(stage_rows, rows - r0);
      for (std::int64_t r = 0; r < nr; ++r) {
        if (ld != w && r0 + r + kPrefetchRows < rows)
          prefetch_bytes(x + (r0 + r + kPrefetchRows) * ld, w * static_cast<std::int64_t>(sizeof(T)));
        to_float(xs + r * w, x + (r0 + r) * ld, w);
      }
      rows_sums<V>(xs, nr, w, w, k, SQ.data(), SQ.data() + w, s, q);
    }
  }
  for (std::int64_t c = 0; c < w; ++c) {
    const W wc = W::from_shifted_sums(static_cast<double>(rows), k[c], SQ[c], SQ[w + c]);
    mean[c] = wc.mean;
    m2[c] = wc.m2;
  }
}

// ---- ISA dispatch: each task body compiled for 8-float (clones) and 16-float (AVX-512) lanes -----

template <typename Body>
GK_CPU_CLONES_NARROW void task_narrow(const Body& body, std::int64_t task, int slot) {
  body.template run<vf>(task, slot);
}
#if GK_CPU_WIDE_BUILT
template <typename Body>
GK_CPU_WIDE void task_wide(const Body& body, std::int64_t task, int slot) {
  body.template run<vf16>(task, slot);
}
#endif

// Work per claimed chunk of tasks, and the least work worth a second thread: see for_tasks.
constexpr std::int64_t kGrainElems = 1 << 13;
constexpr std::int64_t kParallelElems = 1 << 15;

// Runs body.run<V>(task, slot) for every task on the pool, V picked for this CPU. task_elems: the
// elements of x one task reads (an estimate): tasks are claimed kGrainElems elements at a time (a
// claim is an atomic add on a line both threads write, ~100 ns when it moves between cores), and a
// call with under kParallelElems elements in all runs inline (waking a worker costs more than it
// saves).
template <typename Body>
void for_tasks(std::int64_t tasks, std::int64_t task_elems, const Body& body) {
  task_elems = std::max<std::int64_t>(task_elems, 1);
  const std::int64_t grain = std::max<std::int64_t>(1, kGrainElems / task_elems);
  const bool parallel = tasks * task_elems >= kParallelElems;
#if GK_CPU_WIDE_BUILT
  if (cpu_wide()) {
    parallel_for_slots(tasks, grain, [&](std::int64_t task, int slot) { task_wide(body, task, slot); }, parallel);
    return;
  }
#endif
  parallel_for_slots(tasks, grain, [&](std::int64_t task, int slot) { task_narrow(body, task, slot); }, parallel);
}

// ---- generic passes ------------------------------------------------------------------------------

template <typename T>
struct StatsBody {
  const T* x;
  Shape s;
  Tiling t;
  double* pmean;  // NCHW: Welford partial per task (count implied); channels_last: [task][C]
  double* pm2;
  template <typename V>
  GK_VINLINE void run(std::int64_t task, int) const {
    const std::int64_t row = task / t.per_row, part = task % t.per_row;
    const std::int64_t lo = part * t.len, hi = std::min(s.HW, lo + t.len);
    if (!s.channels_last) {
      const W w = run_stats<V>(x + row * s.HW + lo, hi - lo);
      pmean[task] = w.mean;
      pm2[task] = w.m2;
    } else {
      rows_stats<V>(x + (row * s.HW + lo) * s.C, hi - lo, s.C, s.C, pmean + task * s.C, pm2 + task * s.C);
    }
  }
};

template <typename T>
void channel_stats_t(const T* x, const Shape& s, double* mean, double* m2) {
  const std::int64_t NC = s.N * s.C;
  if (s.HW == 0) {
    std::fill(mean, mean + NC, 0.0);
    std::fill(m2, m2 + NC, 0.0);
    return;
  }
  const Tiling t(s);
  const std::int64_t per = s.channels_last ? s.C : 1;
  std::vector<double> pmean(t.tasks * per), pm2(t.tasks * per);
  for_tasks(t.tasks, t.task_elems(s), StatsBody<T>{x, s, t, pmean.data(), pm2.data()});
  // merge each (n, c)'s partials in task order
  for (std::int64_t nc = 0; nc < NC; ++nc) {
    const std::int64_t n = s.channels_last ? nc / s.C : nc, c = s.channels_last ? nc % s.C : 0;
    W w;
    for (std::int64_t k = 0; k < t.per_row; ++k) {
      const std::int64_t task = n * t.per_row + k;
      const std::int64_t cnt = std::min(s.HW, (k + 1) * t.len) - k * t.len;
      w.merge(static_cast<double>(cnt), pmean[task * per + c], pm2[task * per + c]);
    }
    mean[nc] = w.mean;
    m2[nc] = w.m2;
  }
}

template <typename T, int A, bool R>
struct ApplyBody {
  const T* x;
  const T* res;
  T* y;
  const float *M, *A_, *B;
  Shape s;
  Tiling t;
  float alpha;
  template <typename V>
  GK_VINLINE void run(std::int64_t task, int) const {
    t.visit(
        task, s,
        [&](std::int64_t row, std::int64_t off, std::int64_t len) GK_LAMBDA_INLINE {
          apply_run<V, A, R>(y + off, x + off, R ? res + off : nullptr, len, M[row], A_[row], B[row], alpha);
        },
        [&](std::int64_t n, std::int64_t off) GK_LAMBDA_INLINE {
          const std::int64_t nC = n * s.C;
          apply_row<V, A, R>(y + off, x + off, R ? res + off : nullptr, s.C, M + nC, A_ + nC, B + nC, alpha);
        });
  }
};

template <typename T>
void apply_t(const T* x, const float* M, const float* A, const float* B, const T* res, T* y, const Shape& s,
             int act, float alpha) {
  if (s.HW == 0 || s.N * s.C == 0) return;
  const Tiling t(s);
  dispatch_act(NormActs{}, act, [&](auto a) {
    constexpr int K = decltype(a)::value;
    if (res) for_tasks(t.tasks, t.task_elems(s), ApplyBody<T, K, true>{x, res, y, M, A, B, s, t, alpha});
    else for_tasks(t.tasks, t.task_elems(s), ApplyBody<T, K, false>{x, res, y, M, A, B, s, t, alpha});
  });
}

template <typename T, int A>
struct BwdReduceBody {
  const T *dy, *x;
  const float *M, *A_, *B, *P;
  Shape s;
  Tiling t;
  float alpha;
  double* part;  // NCHW: [task][3]; channels_last: [task][3][C]
  template <typename V>
  GK_VINLINE void run(std::int64_t task, int) const {
    const std::int64_t row = task / t.per_row, k = task % t.per_row;
    const std::int64_t lo = k * t.len, hi = std::min(s.HW, lo + t.len);
    if (!s.channels_last) {
      const std::int64_t off = row * s.HW + lo;
      double* S = part + 3 * task;
      S[0] = S[1] = S[2] = 0.0;
      bwd_sums_run<V, A, false>(dy + off, x + off, hi - lo, M[row], A_[row], B[row], P[row], alpha, nullptr, S);
      return;
    }
    const std::int64_t C = s.C, n = row;
    double* out = part + 3 * task * C;
    std::fill(out, out + 3 * C, 0.0);
    float* acc = scratch_floats(3 * C);
    const std::int64_t rows_per_block = std::max<std::int64_t>(1, kBlock / std::max<std::int64_t>(C, 1)) * 4;
    for (std::int64_t r0 = lo; r0 < hi; r0 += rows_per_block) {
      std::fill(acc, acc + 3 * C, 0.f);
      for (std::int64_t r = r0; r < std::min(hi, r0 + rows_per_block); ++r) {
        const std::int64_t off = (n * s.HW + r) * C;
        bwd_sums_row<V, A>(dy + off, x + off, C, M + n * C, A_ + n * C, B + n * C, P + n * C, alpha, acc, acc + C,
                           acc + 2 * C);
      }
      for (std::int64_t j = 0; j < 3 * C; ++j) out[j] += acc[j];
    }
  }
};

template <typename T>
void backward_reduce_t(const T* dy, const T* x, const float* M, const float* A, const float* B, const float* P,
                       const Shape& s, int act, float alpha, double* sums) {
  const std::int64_t NC = s.N * s.C, C = s.C;
  std::fill(sums, sums + 3 * NC, 0.0);
  if (s.HW == 0 || NC == 0) return;
  const Tiling t(s);
  const std::int64_t per = s.channels_last ? C : 1;
  std::vector<double> part(3 * t.tasks * per);
  dispatch_act(NormActs{}, act, [&](auto a) {
    constexpr int K = decltype(a)::value;
    for_tasks(t.tasks, t.task_elems(s), BwdReduceBody<T, K>{dy, x, M, A, B, P, s, t, alpha, part.data()});
  });
  for (std::int64_t nc = 0; nc < NC; ++nc) {  // fixed order
    const std::int64_t n = s.channels_last ? nc / C : nc, c = s.channels_last ? nc % C : 0;
    for (std::int64_t k = 0; k < t.per_row; ++k)
      for (int j = 0; j < 3; ++j) sums[j * NC + nc] += part[(3 * (n * t.per_row + k) + j) * per + c];
  }
}

template <typename T, int A>
struct BwdApplyBody {
  const T *dy, *x;
  T* dx;
  const float *M, *A_, *B, *A2, *B2, *C2;
  Shape s;
  Tiling t;
  float alpha;
  template <typename V>
  GK_VINLINE void run(std::int64_t task, int) const {
    t.visit(
        task, s,
        [&](std::int64_t row, std::int64_t off, std::int64_t len) GK_LAMBDA_INLINE {
          bwd_apply_run<V, A>(dx + off, dy + off, x + off, len, M[row], A_[row], B[row], A2[row], B2[row], C2[row],
                              alpha);
        },
        [&](std::int64_t n, std::int64_t off) GK_LAMBDA_INLINE {
          const std::int64_t nC = n * s.C;
          bwd_apply_row<V, A>(dx + off, dy + off, x + off, s.C, M + nC, A_ + nC, B + nC, A2 + nC, B2 + nC, C2 + nC,
                              alpha);
        });
  }
};

template <typename T>
void backward_apply_t(const T* dy, const T* x, const float* M, const float* A, const float* B, const float* A2,
                      const float* B2, const float* C2, T* dx, const Shape& s, int act, float alpha) {
  if (s.HW == 0 || s.N * s.C == 0) return;
  const Tiling t(s);
  dispatch_act(NormActs{}, act, [&](auto a) {
    constexpr int K = decltype(a)::value;
    for_tasks(t.tasks, t.task_elems(s), BwdApplyBody<T, K>{dy, x, dx, M, A, B, A2, B2, C2, s, t, alpha});
  });
}

// ---- GroupNorm forward ---------------------------------------------------------------------------

// The per-(n, c) extras of the GroupNorm, null = absent.
struct GroupExtras {
  const float *weight, *bias, *temb, *scale, *shift;
  double temb_at(std::int64_t nc) const { return temb ? temb[nc] : 0.0; }
  // Tables M, A, B of channel c of sample n (nc = n * C + c) from its group's mean and rstd.
  void write(std::int64_t nc, std::int64_t c, double mean, double rstd, float* M, float* A, float* B) const {
    const GroupCoefficients<double> k = group_coefficients<double>(
        mean, rstd, temb_at(nc), weight ? weight[c] : 1.0, bias ? bias[c] : 0.0, scale ? scale[nc] : 0.0,
        shift ? shift[nc] : 0.0);
    M[nc] = static_cast<float>(k.M);
    A[nc] = static_cast<float>(k.A);
    B[nc] = static_cast<float>(k.B);
  }
};

// From the group's mean and m2 of z = x + temb (Cg * HW values): its mean / rstd and the tables of
// its channels.
inline void finish_group_moments(double mean, double m2, std::int64_t n, std::int64_t g, std::int64_t C,
                                 std::int64_t G, std::int64_t HW, double eps, const GroupExtras& ex, float* M,
                                 float* A, float* B, float* gmean, float* grstd) {
  const std::int64_t Cg = C / G;
  const double rstd = 1.0 / std::sqrt(m2 / static_cast<double>(Cg * HW) + eps);
  gmean[n * G + g] = static_cast<float>(mean);
  grstd[n * G + g] = static_cast<float>(rstd);
  for (std::int64_t j = 0; j < Cg; ++j) ex.write(n * C + g * Cg + j, g * Cg + j, mean, rstd, M, A, B);
}

// The same from per-channel (mean, m2) of x, indexed [0, Cg) for channels g * Cg + j: Chan's merge
// of equal counts (mean of the means; m2 = sum of m2 + HW * sum of squared mean deviations).
inline void finish_group(const double* mean, const double* m2, std::int64_t n, std::int64_t g, std::int64_t C,
                         std::int64_t G, std::int64_t HW, double eps, const GroupExtras& ex, float* M, float* A,
                         float* B, float* gmean, float* grstd) {
  const std::int64_t Cg = C / G, nc0 = n * C + g * Cg;
  double mz = 0;
  for (std::int64_t j = 0; j < Cg; ++j) mz += mean[j] + ex.temb_at(nc0 + j);
  mz /= static_cast<double>(Cg);
  double dev = 0, m2z = 0;
  for (std::int64_t j = 0; j < Cg; ++j) {
    const double d = mean[j] + ex.temb_at(nc0 + j) - mz;
    dev += d * d;
    m2z += m2[j];
  }
  finish_group_moments(mz, m2z + static_cast<double>(HW) * dev, n, g, C, G, HW, eps, ex, M, A, B, gmean, grstd);
}

// One task = sample n, groups [g0, g0 + gpt): statistics, tables, normalize; the block's data stay
// in L2 between the two reads. NCHW: each channel a contiguous plane; channels_last: a column block
// of Cg * gpt channels at stride C (gpt groups so that a row's block fills whole cache lines).
template <typename T, int A, bool R>
struct GroupFusedBody {
  const T* x;
  const T* res;
  T* y;
  Shape s;
  std::int64_t G, gpt;
  double eps;
  GroupExtras ex;
  float *M, *A_, *B, *gmean, *grstd;
  float alpha;
  template <typename V>
  GK_VINLINE void run(std::int64_t task, int) const {
    const std::int64_t blocks = (G + gpt - 1) / gpt;
    const std::int64_t n = task / blocks, g0 = (task % blocks) * gpt, g1 = std::min(G, g0 + gpt);
    const std::int64_t C = s.C, HW = s.HW, Cg = C / G, c0 = g0 * Cg, w = (g1 - g0) * Cg;
    const std::int64_t nc0 = n * C + c0;
    if (!s.channels_last && !ex.temb) {
      // NCHW without temb: a group's Cg planes are one contiguous run of x: one statistics run
      for (std::int64_t g = g0; g < g1; ++g) {
        const W wg = run_stats<V>(x + (n * C + g * Cg) * HW, Cg * HW);
        finish_group_moments(wg.mean, wg.m2, n, g, C, G, HW, eps, ex, M, A_, B, gmean, grstd);
      }
    } else {
      double mean[kMaxBlock], m2[kMaxBlock];  // gpt * Cg <= kMaxBlock (group_fused_plan)
      if (!s.channels_last) {
        for (std::int64_t j = 0; j < w; ++j) {
          const W wc = run_stats<V>(x + (nc0 + j) * HW, HW);
          mean[j] = wc.mean;
          m2[j] = wc.m2;
        }
      } else {
        rows_stats<V>(x + n * HW * C + c0, HW, w, C, mean, m2);
      }
      for (std::int64_t g = g0; g < g1; ++g)
        finish_group(mean + (g - g0) * Cg, m2 + (g - g0) * Cg, n, g, C, G, HW, eps, ex, M, A_, B, gmean, grstd);
    }
    if (!s.channels_last && HW < lanes_of<V> && w * HW >= lanes_of<V>) {
      // planes shorter than a vector: the block as one run with per-element coefficients
      float* tab = scratch_floats(3 * w * HW);
      for (std::int64_t j = 0; j < w; ++j)
        for (std::int64_t i = 0; i < HW; ++i) {
          tab[j * HW + i] = M[nc0 + j];
          tab[(w + j) * HW + i] = A_[nc0 + j];
          tab[(2 * w + j) * HW + i] = B[nc0 + j];
        }
      const std::int64_t off = nc0 * HW;
      apply_row<V, A, R>(y + off, x + off, R ? res + off : nullptr, w * HW, tab, tab + w * HW, tab + 2 * w * HW,
                         alpha);
    } else if (!s.channels_last) {
      for (std::int64_t j = 0; j < w; ++j) {
        const std::int64_t off = (nc0 + j) * HW;
        apply_run<V, A, R>(y + off, x + off, R ? res + off : nullptr, HW, M[nc0 + j], A_[nc0 + j], B[nc0 + j],
                           alpha);
      }
    } else {
      for (std::int64_t i = 0; i < HW; ++i) {
        const std::int64_t off = (n * HW + i) * C + c0;
        if (i + kPrefetchRows < HW) {  // the block is in L2 after the statistics; y and res are not
          prefetch_bytes<1>(y + off + kPrefetchRows * C, w * static_cast<std::int64_t>(sizeof(T)));
          if (R) prefetch_bytes(res + off + kPrefetchRows * C, w * static_cast<std::int64_t>(sizeof(T)));
        }
        apply_row<V, A, R>(y + off, x + off, R ? res + off : nullptr, w, M + nc0, A_ + nc0, B + nc0, alpha);
      }
    }
  }
};

// Groups per fused task, or 0 where the fused path does not pay: fewer tasks than threads, or a
// block larger than L2 can keep between the two reads. Channels_last blocks span at least 256
// bytes (four 64-byte lines) per row: no two tasks write the same line, and a strided row access
// brings whole lines, four per prefetched row (the hardware prefetchers do not follow a 1 KiB
// stride across pages; rows are prefetched explicitly, kPrefetchRows ahead).
std::int64_t group_fused_plan(const Shape& s, std::int64_t G, std::int64_t elem) {
  if (s.HW == 0 || s.N * s.C == 0) return 0;
  const std::int64_t Cg = s.C / G;
  std::int64_t gpt = 1;
  if (s.channels_last)
    while (gpt < G && gpt * Cg * elem < 256) ++gpt;
  const std::int64_t tasks = s.N * ((G + gpt - 1) / gpt);
  const std::int64_t bytes = gpt * Cg * s.HW * elem;
  if (gpt * Cg > kMaxBlock || tasks < cpu_threads() || bytes > (std::int64_t{1} << 20)) return 0;
  return gpt;
}

template <typename T>
void group_norm_forward_t(const T* x, const Shape& s, std::int64_t G, double eps, const GroupExtras& ex, const T* res,
                          T* y, float* tables, float* gmean, float* grstd, double* scratch, int act, float alpha) {
  const std::int64_t N = s.N, C = s.C, HW = s.HW, NC = N * C;
  float *M = tables, *A = tables + NC, *B = tables + 2 * NC;
  const std::int64_t gpt = group_fused_plan(s, G, sizeof(T));
  if (gpt == 0) {
    // Three sweeps, one sample at a time when a sample is at most a few MiB: its second read then
    // comes from the last-level cache instead of competing with the whole tensor and y for it.
    const std::int64_t per = HW * C * static_cast<std::int64_t>(sizeof(T));
    const std::int64_t step = (N > 1 && per <= (std::int64_t{8} << 20)) ? 1 : std::max<std::int64_t>(N, 1);
    for (std::int64_t n0 = 0; n0 < N; n0 += step) {
      const Shape sn{step, C, HW, s.channels_last};
      const std::int64_t e = n0 * HW * C;
      double *mean = scratch, *m2 = scratch + step * C;
      channel_stats_t(x + e, sn, mean, m2);
      for (std::int64_t n = n0; n < n0 + step; ++n)
        for (std::int64_t g = 0; g < G; ++g) {
          const std::int64_t j = (n - n0) * C + g * (C / G);
          finish_group(mean + j, m2 + j, n, g, C, G, HW, eps, ex, M, A, B, gmean, grstd);
        }
      apply_t(x + e, M + n0 * C, A + n0 * C, B + n0 * C, res ? res + e : nullptr, y + e, sn, act, alpha);
    }
    return;
  }
  const std::int64_t tasks = N * ((G + gpt - 1) / gpt);
  dispatch_act(NormActs{}, act, [&](auto a) {
    constexpr int K = decltype(a)::value;
    if (res)
      for_tasks(tasks, gpt * (s.C / G) * s.HW, GroupFusedBody<T, K, true>{x, res, y, s, G, gpt, eps, ex, M, A, B, gmean, grstd, alpha});
    else
      for_tasks(tasks, gpt * (s.C / G) * s.HW, GroupFusedBody<T, K, false>{x, res, y, s, G, gpt, eps, ex, M, A, B, gmean, grstd, alpha});
  });
}

// ---- GroupNorm backward (fused, NCHW) ------------------------------------------------------------

// One task per (n, group): pass 1 keeps the group's g = dy * act'(h) in a per-thread buffer, so
// pass 2 reads x and g from L2 and evaluates no activation derivative: DRAM traffic dy + x + dx.
template <typename T, int A>
struct GroupBackwardBody {
  const T *dy, *x;
  T* dx;
  Shape s;
  std::int64_t G;
  const float *gmean, *grstd;
  GroupExtras ex;
  double* wpart;  // [2][N*C]: dweight, dbias partials per (n, c)
  float *dtemb, *dscale, *dshift;  // [N*C]
  float alpha;
  template <typename V>
  GK_VINLINE void run(std::int64_t task, int) const {
    if (s.HW < lanes_of<V> && (s.C / G) * s.HW >= lanes_of<V>) {
      run_short<V>(task);
      return;
    }
    const std::int64_t C = s.C, HW = s.HW, NC = s.N * C, Cg = C / G;
    const std::int64_t n = task / G, g = task % G;
    float* gbuf = scratch_floats(Cg * HW);
    double sums[3 * 64];  // Cg <= 64 (group_backward_fused)
    const double rstd = grstd[task];
    double c1 = 0, c2 = 0;
    for (std::int64_t j = 0; j < Cg; ++j) {
      const std::int64_t c = g * Cg + j, row = n * C + c;
      const double wt = ex.weight ? ex.weight[c] : 1.0, sc = ex.scale ? ex.scale[row] : 0.0;
      const GroupCoefficients<double> k = group_coefficients<double>(
          gmean[task], rstd, ex.temb_at(row), wt, ex.bias ? ex.bias[c] : 0.0, sc, ex.shift ? ex.shift[row] : 0.0);
      double* S = sums + 3 * j;
      S[0] = S[1] = S[2] = 0.0;
      bwd_sums_run<V, A, true>(dy + row * HW, x + row * HW, HW, static_cast<float>(k.M), static_cast<float>(k.A),
                               static_cast<float>(k.B), static_cast<float>(rstd), alpha, gbuf + j * HW, S);
      const double gw = group_gradient_weight(wt, sc);
      c1 += gw * S[0];
      c2 += gw * S[1];
    }
    const double cnt = static_cast<double>(Cg * HW);
    c1 /= cnt;
    c2 /= cnt;
    for (std::int64_t j = 0; j < Cg; ++j) {
      const std::int64_t c = g * Cg + j, row = n * C + c;
      const double* S = sums + 3 * j;
      const GroupGradients<double> d = group_gradients<double>(
          S[0], S[1], S[2], static_cast<double>(HW), rstd, ex.weight ? ex.weight[c] : 1.0,
          ex.bias ? ex.bias[c] : 0.0, ex.scale ? ex.scale[row] : 0.0, c1, c2);
      const float m = static_cast<float>(gmean[task] - ex.temb_at(row));
      kept_run<V>(dx + row * HW, gbuf + j * HW, x + row * HW, HW, m, static_cast<float>(d.A2),
                  static_cast<float>(d.B2), static_cast<float>(d.C2));
      wpart[row] = d.dweight;
      wpart[NC + row] = d.dbias;
      dtemb[row] = static_cast<float>(d.dtemb);
      dscale[row] = static_cast<float>(d.dscale);
      dshift[row] = static_cast<float>(d.dshift);
    }
  }
  // Planes shorter than a vector (HW < L): the group's Cg * HW elements (one contiguous run, at
  // most kTile: Cg <= 64) as one flat run with per-element coefficients, so the activation
  // derivative runs on whole vectors; per-channel sums from the kept g and xh.
  template <typename V>
  GK_VINLINE void run_short(std::int64_t task) const {
    const std::int64_t C = s.C, HW = s.HW, NC = s.N * C, Cg = C / G, cnt = Cg * HW;
    const std::int64_t n = task / G, g = task % G, row0 = n * C + g * Cg;
    float* buf = scratch_floats(8 * cnt);
    float *gb = buf, *xh = buf + cnt, *m = buf + 2 * cnt, *a = buf + 3 * cnt, *b = buf + 4 * cnt;
    float *xf = buf + 5 * cnt, *df = buf + 6 * cnt, *of = buf + 7 * cnt;
    const double rstd = grstd[task];
    for (std::int64_t j = 0; j < Cg; ++j) {
      const std::int64_t c = g * Cg + j, row = row0 + j;
      const GroupCoefficients<double> k = group_coefficients<double>(
          gmean[task], rstd, ex.temb_at(row), ex.weight ? ex.weight[c] : 1.0, ex.bias ? ex.bias[c] : 0.0,
          ex.scale ? ex.scale[row] : 0.0, ex.shift ? ex.shift[row] : 0.0);
      for (std::int64_t i = 0; i < HW; ++i) {
        m[j * HW + i] = static_cast<float>(k.M);
        a[j * HW + i] = static_cast<float>(k.A);
        b[j * HW + i] = static_cast<float>(k.B);
      }
    }
    const T *xs = x + row0 * HW, *ds = dy + row0 * HW;
    const float *xv, *dv;
    if constexpr (kIsFloat<T>) {
      xv = xs;
      dv = ds;
    } else {
      to_float(xf, xs, cnt);
      to_float(df, ds, cnt);
      xv = xf;
      dv = df;
    }
    bwd_flat<V, A>(dv, xv, cnt, m, a, b, static_cast<float>(rstd), alpha, gb, xh);
    double sums[3 * 64];
    double c1 = 0, c2 = 0;
    for (std::int64_t j = 0; j < Cg; ++j) {
      float t0 = 0.f, t1 = 0.f, t2 = 0.f;
      for (std::int64_t i = j * HW; i < (j + 1) * HW; ++i) {
        t0 += gb[i];
        t1 += gb[i] * xh[i];
        t2 += xh[i];
      }
      double* S = sums + 3 * j;
      S[0] = t0;
      S[1] = t1;
      S[2] = t2;
      const std::int64_t c = g * Cg + j;
      const double gw = group_gradient_weight(ex.weight ? ex.weight[c] : 1.0, ex.scale ? ex.scale[row0 + j] : 0.0);
      c1 += gw * S[0];
      c2 += gw * S[1];
    }
    c1 /= static_cast<double>(cnt);
    c2 /= static_cast<double>(cnt);
    float b2 = 0.f, cc2 = 0.f;  // B2, C2: one value for the whole group
    for (std::int64_t j = 0; j < Cg; ++j) {
      const std::int64_t c = g * Cg + j, row = row0 + j;
      const double* S = sums + 3 * j;
      const GroupGradients<double> d = group_gradients<double>(
          S[0], S[1], S[2], static_cast<double>(HW), rstd, ex.weight ? ex.weight[c] : 1.0,
          ex.bias ? ex.bias[c] : 0.0, ex.scale ? ex.scale[row] : 0.0, c1, c2);
      b2 = static_cast<float>(d.B2);
      cc2 = static_cast<float>(d.C2);
      wpart[row] = d.dweight;
      wpart[NC + row] = d.dbias;
      dtemb[row] = static_cast<float>(d.dtemb);
      dscale[row] = static_cast<float>(d.dscale);
      dshift[row] = static_cast<float>(d.dshift);
    }
    // dx = g * A2 + (x - M) * B2 + C2, where A2 = A (both rstd * weight * (1 + scale))
    if constexpr (kIsFloat<T>) {
      kept_flat<V>(dx + row0 * HW, gb, xv, cnt, m, a, b2, cc2);
    } else {
      kept_flat<V>(of, gb, xv, cnt, m, a, b2, cc2);
      from_float(dx + row0 * HW, of, cnt);
    }
  }
};

template <typename T>
bool group_norm_backward_t(const T* dy, const T* x, const Shape& s, std::int64_t G, const float* gmean,
                           const float* grstd, const GroupExtras& ex, T* dx, float* dweight, float* dbias,
                           float* dtemb, float* dscale, float* dshift, int act, float alpha) {
  const std::int64_t Cg = s.C / G;
  const std::int64_t group_bytes = Cg * s.HW * static_cast<std::int64_t>(sizeof(float));  // the kept g
  if (s.channels_last || s.HW == 0 || Cg > 64 || s.N * G < cpu_threads() || group_bytes > (std::int64_t{1} << 18))
    return false;
  const std::int64_t NC = s.N * s.C;
  std::vector<double> wpart(static_cast<std::size_t>(2 * NC));
  dispatch_act(NormActs{}, act, [&](auto a) {
    constexpr int K = decltype(a)::value;
    for_tasks(s.N * G, (s.C / G) * s.HW,
              GroupBackwardBody<T, K>{dy, x, dx, s, G, gmean, grstd, ex, wpart.data(), dtemb, dscale, dshift, alpha});
  });
  for (std::int64_t c = 0; c < s.C; ++c) {  // the parameter gradients: sums over n in fixed order
    double w = 0, b = 0;
    for (std::int64_t n = 0; n < s.N; ++n) {
      w += wpart[n * s.C + c];
      b += wpart[NC + n * s.C + c];
    }
    dweight[c] = static_cast<float>(w);
    dbias[c] = static_cast<float>(b);
  }
  return true;
}

// The storage types of the CPU kernels.
template <typename F>
void dispatch_storage(int dtype, const char* op, F&& f) {
  dispatch_types<float, bf16, fp16>(dtype, op, std::forward<F>(f));
}

}  // namespace

// ---- entry points -----------------------------------------------------------------------------

std::int64_t split_chunk(const SplitParams& p, Stream) { return std::max<std::int64_t>(p.HW, 1); }

void channel_stats(const StatsParams& p, Stream) {
  const Shape s = shape_of(p);
  const std::int64_t NC = s.N * s.C;
  check_operands("norm statistics", p.x, {}, {}, NC);
  check(p.partials.numel == 3 * NC, "norm statistics", "the CPU writes partials [1][3][N*C] (chunk = HW)");
  double* part = p.partials.as<double>("partials");
  std::fill(part, part + NC, 0.0);  // shift
  dispatch_storage(p.x.dtype, "norm statistics", [&](auto tag) {
    using T = decltype(tag);
    channel_stats_t(static_cast<const T*>(p.x.ptr()), s, part + NC, part + 2 * NC);
  });
}

void apply(const PointwiseParams& p, Stream) {
  const Shape s = shape_of(p);
  check_operands("norm apply", p.x, {&p.residual, &p.out}, {&p.M, &p.A, &p.B}, s.N * s.C);
  dispatch_storage(p.x.dtype, "norm apply", [&](auto tag) {
    using T = decltype(tag);
    apply_t(static_cast<const T*>(p.x.ptr()), p.M.as<const float>("M"), p.A.as<const float>("A"),
            p.B.as<const float>("B"), static_cast<const T*>(p.residual.ptr()), static_cast<T*>(p.out.mut_ptr()), s,
            p.act, p.alpha);
  });
}

void backward_apply(const PointwiseParams& p, Stream) {
  const Shape s = shape_of(p);
  check_operands("norm backward", p.x, {&p.dy, &p.out}, {&p.M, &p.A, &p.B, &p.A2, &p.B2, &p.C2}, s.N * s.C);
  dispatch_storage(p.x.dtype, "norm backward", [&](auto tag) {
    using T = decltype(tag);
    backward_apply_t(static_cast<const T*>(p.dy.ptr()), static_cast<const T*>(p.x.ptr()), p.M.as<const float>("M"),
                     p.A.as<const float>("A"), p.B.as<const float>("B"), p.A2.as<const float>("A2"),
                     p.B2.as<const float>("B2"), p.C2.as<const float>("C2"), static_cast<T*>(p.out.mut_ptr()), s,
                     p.act, p.alpha);
  });
}

void backward_reduce(const ReduceParams& p, Stream) {
  const Shape s = shape_of(p);
  check_operands("norm backward reduction", p.x, {&p.dy}, {&p.M, &p.A, &p.B, &p.P}, s.N * s.C);
  check(p.partials.numel == 3 * s.N * s.C, "norm backward reduction", "the CPU writes partials [1][3][N*C]");
  double* part = p.partials.as<double>("partials");
  dispatch_storage(p.x.dtype, "norm backward reduction", [&](auto tag) {
    using T = decltype(tag);
    backward_reduce_t(static_cast<const T*>(p.dy.ptr()), static_cast<const T*>(p.x.ptr()), p.M.as<const float>("M"),
                      p.A.as<const float>("A"), p.B.as<const float>("B"), p.P.as<const float>("P"), s, p.act,
                      p.alpha, part);
  });
}

void group_norm_forward(const GroupForwardParams& p, Stream) {
  const Shape s = shape_of(p);
  check_operands("group_norm_act", p.x, {&p.residual, &p.y}, {&p.temb, &p.scale, &p.shift}, s.N * s.C);
  const GroupExtras ex{p.weight.as<const float>("weight"), p.bias.as<const float>("bias"),
                       p.temb.as<const float>("temb"), p.scale.as<const float>("scale"),
                       p.shift.as<const float>("shift")};
  dispatch_storage(p.x.dtype, "group_norm_act", [&](auto tag) {
    using T = decltype(tag);
    group_norm_forward_t(static_cast<const T*>(p.x.ptr()), s, p.G, p.eps, ex,
                         static_cast<const T*>(p.residual.ptr()), static_cast<T*>(p.y.mut_ptr()),
                         p.tables.as<float>("tables"), p.gmean.as<float>("gmean"), p.grstd.as<float>("grstd"),
                         p.scratch.as<double>("scratch"), p.act, p.alpha);
  });
}

bool group_norm_backward(const GroupBackwardParams& p, Stream) {
  const Shape s = shape_of(p);
  check_operands("group_norm_act_backward", p.x, {&p.dy, &p.dx}, {&p.temb, &p.scale, &p.shift}, s.N * s.C);
  const GroupExtras ex{p.weight.as<const float>("weight"), p.bias.as<const float>("bias"),
                       p.temb.as<const float>("temb"), p.scale.as<const float>("scale"),
                       p.shift.as<const float>("shift")};
  bool done = false;
  dispatch_storage(p.x.dtype, "group_norm_act_backward", [&](auto tag) {
    using T = decltype(tag);
    done = group_norm_backward_t(static_cast<const T*>(p.dy.ptr()), static_cast<const T*>(p.x.ptr()), s, p.G,
                                 p.gmean.as<const float>("gmean"), p.grstd.as<const float>("grstd"), ex,
                                 static_cast<T*>(p.dx.mut_ptr()), p.dweight.as<float>("dweight"),
                                 p.dbias.as<float>("dbias"), p.dtemb.as<float>("dtemb"), p.dscale.as<float>("dscale"),
                                 p.dshift.as<float>("dshift"), p.act, p.alpha);
  });
  return done;
}

}  // namespace gk::norm
