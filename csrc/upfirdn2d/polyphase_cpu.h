// The row machinery of the CPU upfirdn2d (csrc/upfirdn2d/cpu.cpp), shared with the fused
// filtered_lrelu (csrc/filtered_lrelu/cpu.cpp): one output row of an upfirdn pass over rows that are
// contiguous in memory.
//
//   y taps: row_taps() lists the (input row, filter row) pairs that meet real samples;
//   x taps: XPass splits the outputs into phase classes (outputs ox = c + q*s, s = up/gcd(up, down),
//     share their first tap k0 and their input window advances by s*down/up samples per q), so each
//     class is a short FIR over a zero-extended copy of the row: branch-free loops GCC vectorizes.
//
// Input rows may be stored as fp32, bf16 or fp16 (Tin: converted to float as they are read, in the
// row combination or the zero-extended copy); everything after that, and the output row, is fp32
// (callers with a half output round a finished row: csrc/upfirdn2d/cpu.cpp).
//
// Internal linkage (anonymous namespace): each including file gets its own clones.
#pragma once
#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "upfirdn2d/upfirdn2d.h"

namespace gk::upfirdn2d {
namespace {

inline std::int64_t floor_div(std::int64_t a, std::int64_t b) {
  const std::int64_t q = a / b;
  return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
}

// One axis of an upfirdn pass: input length n, factors, leading pad, taps.
struct Axis {
  std::int64_t n;
  int up, down, p0, k;
};

// The taps of output sample o that meet real input samples: (input index, filter index) pairs.
inline int axis_taps(const Axis& a, std::int64_t o, std::int64_t* idx, int* ks) {
  int k0;
  std::int64_t i0;
  first_tap(o, a.down, a.up, a.p0, k0, i0);
  int n = 0;
  for (int k = k0, t = 0; k < a.k; k += a.up, ++t) {
    const std::int64_t i = i0 + t;
    if (i >= 0 && i < a.n) {
      idx[n] = i;
      ks[n] = k;
      ++n;
    }
  }
  return n;
}

template <typename Tin>
GK_CPU_CLONES void scale_row(float* __restrict out, const Tin* __restrict in, std::int64_t n, float w) {
  for (std::int64_t i = 0; i < n; ++i) out[i] = w * static_cast<float>(in[i]);
}

template <typename Tin>
GK_CPU_CLONES void axpy_row(float* __restrict out, const Tin* __restrict in, std::int64_t n, float w) {
  for (std::int64_t i = 0; i < n; ++i) out[i] += w * static_cast<float>(in[i]);
}

GK_CPU_CLONES void fill_row(float* __restrict out, std::int64_t n, float v) {
  for (std::int64_t i = 0; i < n; ++i) out[i] = v;
}

template <typename Tin>
GK_CPU_CLONES void add_row(float* __restrict out, const Tin* __restrict in, std::int64_t n, float b) {
  for (std::int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(in[i]) + b;
}

// out[i] = in[i] rounded to the storage type T (a finished fp32 row into a half output).
template <typename T>
GK_CPU_CLONES void store_row(T* __restrict out, const float* __restrict in, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(in[i]);
}

// x taps of one row: input `ext` holds samples lo..hi-1 of the row (zeros outside [0, n)).
struct XPass {
  int s = 1;                       // phase classes
  std::int64_t step = 1;           // input samples per step q inside a class
  std::int64_t lo = 0, hi = 0;     // extent of the zero-extended row
  std::int64_t out = 0;            // outputs per row
  int up = 1;
  std::vector<int> k0;             // per class: first tap
  std::vector<int> ntaps;          // per class: taps that can meet input samples
  std::vector<std::int64_t> base;  // per class: ext index of the first sample of q = 0
  std::vector<std::int64_t> count; // per class: outputs

  XPass(const Axis& a, std::int64_t nout) : out(nout), up(a.up) {
    const int g = std::gcd(a.up, a.down);
    s = a.up / g;
    step = static_cast<std::int64_t>(s) * a.down / a.up;
    lo = floor_div(-static_cast<std::int64_t>(a.p0), a.up);
    hi = floor_div((nout - 1) * a.down - a.p0 + a.k - 1, a.up) + 1;
    for (int c = 0; c < s && c < nout; ++c) {
      int k;
      std::int64_t i0;
      first_tap(c, a.down, a.up, a.p0, k, i0);
      k0.push_back(k);
      ntaps.push_back(k < a.k ? (a.k - 1 - k) / a.up + 1 : 0);
      base.push_back(i0 - lo);
      count.push_back((nout - 1 - c) / s + 1);
    }
  }
  std::int64_t width() const { return hi - lo; }
};

// One phase class: acc[q] = sum_m h[k0 + m*up] * ext[base + q*step + m], stored or added to
// out[c + q*s].
template <bool kAdd>
GK_CPU_CLONES void x_class(float* __restrict out, float* __restrict acc, const float* __restrict ext,
                           const float* __restrict h, int k0, int up, int ntaps, std::int64_t base, std::int64_t step,
                           std::int64_t count, int c, int s) {
  for (std::int64_t q = 0; q < count; ++q) acc[q] = 0.f;
  for (int m = 0; m < ntaps; ++m) {
    const float w = h[k0 + m * up];
    const float* src = ext + base + m;
    if (step == 1) {
      for (std::int64_t q = 0; q < count; ++q) acc[q] += w * src[q];
    } else if (step == 2) {
      for (std::int64_t q = 0; q < count; ++q) acc[q] += w * src[2 * q];
    } else {
      for (std::int64_t q = 0; q < count; ++q) acc[q] += w * src[q * step];
    }
  }
  float* dst = out + c;
  if (s == 1) {
    for (std::int64_t q = 0; q < count; ++q) dst[q] = kAdd ? dst[q] + acc[q] : acc[q];
  } else if (s == 2) {
    for (std::int64_t q = 0; q < count; ++q) dst[2 * q] = kAdd ? dst[2 * q] + acc[q] : acc[q];
  } else {
    for (std::int64_t q = 0; q < count; ++q) dst[q * s] = kAdd ? dst[q * s] + acc[q] : acc[q];
  }
}

template <bool kAdd>
inline void x_pass(const XPass& xp, float* out, float* acc, const float* ext, const float* h) {
  for (std::size_t c = 0; c < xp.k0.size(); ++c)
    x_class<kAdd>(out, acc, ext, h, xp.k0[c], xp.up, xp.ntaps[c], xp.base[c], xp.step, xp.count[c],
                  static_cast<int>(c), xp.s);
}

// Copies row `src` (n samples) plus `bias` into ext, zero-extended to lo..hi-1.
template <typename Tin>
inline void extend_row(float* ext, const Tin* src, const XPass& xp, std::int64_t n, float bias = 0.f) {
  const std::int64_t a = std::max<std::int64_t>(0, xp.lo), b = std::min<std::int64_t>(n, xp.hi);
  fill_row(ext, xp.width(), 0.f);
  if (a < b) add_row(ext + (a - xp.lo), src + a, b - a, bias);
}

// Scratch for one thread and one pass.
struct RowScratch {
  std::vector<float> ext, comb, acc;
  std::vector<float> row;  // a finished fp32 output row, for callers that round it to a half output
  std::vector<std::int64_t> ty;
  std::vector<int> tk;
  RowScratch(const XPass& xp, std::int64_t in_w, int max_ty)
      : ext(std::max<std::int64_t>(xp.width(), 1)), comb(std::max<std::int64_t>(in_w, 1)), acc(xp.out + 1),
        row(std::max<std::int64_t>(xp.out, 1)),
        ty(std::max(max_ty, 1)), tk(std::max(max_ty, 1)) {}
};

// Output row `o` of an upfirdn pass over an image whose row r starts at rows + r * row_stride
// (in_w contiguous samples). g: [ky][kx] 2-D correlation kernel; g1: separable x then y rows, or
// nullptr. `bias` is added to every real input sample (not to padding or inserted zeros).
template <typename Tin>
inline void pass_row(const Axis& ay, const XPass& xp, RowScratch& s, const Tin* rows, std::int64_t row_stride,
                     std::int64_t in_w, const float* g, const float* g1, int kw, float bias, std::int64_t o,
                     float* out) {
  const int nt = axis_taps(ay, o, s.ty.data(), s.tk.data());
  if (nt == 0) {
    fill_row(out, xp.out, 0.f);
    return;
  }
  if (g1 != nullptr) {  // combine the rows, then one x pass
    const float* gy = g1 + kw;
    float bsum = 0.f;
    scale_row(s.comb.data(), rows + s.ty[0] * row_stride, in_w, gy[s.tk[0]]);
    for (int t = 0; t < nt; ++t) bsum += gy[s.tk[t]];
    for (int t = 1; t < nt; ++t) axpy_row(s.comb.data(), rows + s.ty[t] * row_stride, in_w, gy[s.tk[t]]);
    extend_row(s.ext.data(), s.comb.data(), xp, in_w, bias * bsum);
    x_pass<false>(xp, out, s.acc.data(), s.ext.data(), g1);
  } else {
    for (int t = 0; t < nt; ++t) {
      extend_row(s.ext.data(), rows + s.ty[t] * row_stride, xp, in_w, bias);
      if (t == 0) x_pass<false>(xp, out, s.acc.data(), s.ext.data(), g + s.tk[t] * kw);
      else x_pass<true>(xp, out, s.acc.data(), s.ext.data(), g + s.tk[t] * kw);
    }
  }
}

}  // namespace
}  // namespace gk::upfirdn2d
