// geglu: y = hidden * gelu(gate), hidden and gate the two halves of each row of x.
//
// Layout contract (both backends): x (and dx) are contiguous (rows, 2 D); y (and dy) contiguous
// (rows, D). Row r's hidden is x[r, 0:D], its gate x[r, D:2D] (diffusers' GEGLU: proj(x).chunk(2)).
#pragma once
#include <cstdint>

#include "common/activations.h"
#include "common/view.h"

namespace gk::geglu {

#define GK_GEGLU_PARAMS(X)                                                                  \
  X(gk::View, x, "input (rows, 2 D), contiguous; float32, float16 or bfloat16")     \
  X(gk::View, dy, "backward: gradient of y (rows, D), x's dtype; forward: None")             \
  X(gk::View, out, "y (rows, D) (forward) or dx (rows, 2 D) (backward), x's dtype")          \
  X(std::int64_t, rows, "number of rows")                                                  \
  X(std::int64_t, D, "half the row length")                                                \
  X(bool, tanh, "tanh-approximated GELU (else exact erf)")
GK_STRUCT(Params, GK_GEGLU_PARAMS);

// The checks both backends make before a pass.
inline void check_args(const char* op, const Params& p, bool backward) {
  check(!p.x.is_none() && !p.out.is_none() && (!backward || !p.dy.is_none()), op,
        "x, out (and dy for the backward) are required");
  check(p.rows >= 0 && p.D >= 0 && p.x.numel == 2 * p.rows * p.D, op, "x must have rows * 2 D elements");
  check(p.out.numel == (backward ? 2 : 1) * p.rows * p.D, op, "out has the wrong number of elements");
  check(!backward || p.dy.numel == p.rows * p.D, op, "dy must have rows * D elements");
  check(p.out.dtype == p.x.dtype && (p.dy.is_none() || p.dy.dtype == p.x.dtype), op,
        "x, dy and out must share one dtype");
}

// Calls f(integral_constant<int, kGelu or kGeluTanh>).
template <typename F>
inline void dispatch_gelu(bool tanh, F&& f) {
  if (tanh) f(std::integral_constant<int, kGeluTanh>{});
  else f(std::integral_constant<int, kGelu>{});
}

// Entry points, defined by cpu.cpp for gankern._C and by cuda.cu for gankern._cuda.
void forward(const Params& p, Stream stream);   // out = y
void backward(const Params& p, Stream stream);  // out = dx, from dy

}  // namespace gk::geglu
