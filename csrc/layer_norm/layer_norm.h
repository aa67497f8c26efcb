// layer_norm: h = x + residual (optional, also written out), y = (h - mean) * rstd * weight + bias,
// statistics over each row of D elements (the last dimension).
//
// Layout contract (both backends): x, residual, y, h (and dy, dh, dx) are contiguous (rows, D) of
// one dtype; weight and bias fp32 [D] or None; mean and rstd fp32 [rows]. The backward's weight and
// bias gradients are written as `parts` partial rows (parts, D) in fp32, part k covering rows
// [k * rows / parts, (k + 1) * rows / parts): the caller sums them, so the result does not depend
// on the thread count or schedule.
#pragma once
#include <cstdint>

#include "common/view.h"

namespace gk::layer_norm {

#define GK_LAYER_NORM_FORWARD_PARAMS(X)                                                     \
  X(gk::View, x, "input (rows, D), contiguous; float32, float16 or bfloat16")       \
  X(gk::View, residual, "added to x before the statistics (x's dtype), or None")             \
  X(gk::View, weight, "fp32 [D], or None")                                                   \
  X(gk::View, bias, "fp32 [D], or None")                                                     \
  X(gk::View, y, "output (rows, D), x's dtype")                                              \
  X(gk::View, h, "x + residual (rows, D), x's dtype; None without residual")                 \
  X(gk::View, mean, "fp32 [rows]")                                                           \
  X(gk::View, rstd, "fp32 [rows]: 1 / sqrt(var + eps)")                                      \
  X(std::int64_t, rows, "number of rows")                                                  \
  X(std::int64_t, D, "row length")                                                         \
  X(float, eps, "added to the (biased) variance")
GK_STRUCT(ForwardParams, GK_LAYER_NORM_FORWARD_PARAMS);

#define GK_LAYER_NORM_BACKWARD_PARAMS(X)                                                    \
  X(gk::View, dy, "gradient of y (rows, D)")                                                 \
  X(gk::View, dh, "gradient of h (rows, D), added to dx; or None")                           \
  X(gk::View, h, "the normalized rows' input (x + residual, or x), (rows, D)")               \
  X(gk::View, mean, "fp32 [rows] from the forward")                                          \
  X(gk::View, rstd, "fp32 [rows] from the forward")                                          \
  X(gk::View, weight, "fp32 [D], or None")                                                   \
  X(gk::View, dx, "output (rows, D): the gradient of x and of residual")                     \
  X(gk::View, dweight, "fp32 (parts, D): partial sums of dy * xhat")                         \
  X(gk::View, dbias, "fp32 (parts, D): partial sums of dy")                                  \
  X(std::int64_t, rows, "number of rows")                                                  \
  X(std::int64_t, D, "row length")                                                         \
  X(std::int64_t, parts, "row partitions of the parameter gradients, 1 <= parts")
GK_STRUCT(BackwardParams, GK_LAYER_NORM_BACKWARD_PARAMS);

// Rows [begin, end) of part k of `parts`.
GK_HOST_DEVICE inline std::int64_t part_begin(std::int64_t k, std::int64_t rows, std::int64_t parts) {
  return k * rows / parts;
}

inline void check_forward(const char* op, const ForwardParams& p) {
  const std::int64_t n = p.rows * p.D;
  check(!p.x.is_none() && !p.y.is_none() && !p.mean.is_none() && !p.rstd.is_none(), op,
        "x, y, mean and rstd are required");
  check(p.rows >= 0 && p.D >= 0 && p.x.numel == n, op, "x must have rows * D elements");
  check_same(op, p.x, {&p.residual, &p.y, &p.h});
  check(p.residual.is_none() == p.h.is_none(), op, "h is written exactly when a residual is given");
  check(p.mean.numel == p.rows && p.rstd.numel == p.rows, op, "mean and rstd must have rows elements");
  check((p.weight.is_none() || p.weight.numel == p.D) && (p.bias.is_none() || p.bias.numel == p.D), op,
        "weight and bias must have D elements");
  p.weight.as<const float>("weight");
  p.bias.as<const float>("bias");
  p.mean.as<float>("mean");
  p.rstd.as<float>("rstd");
}

inline void check_backward(const char* op, const BackwardParams& p) {
  check(!p.dy.is_none() && !p.h.is_none() && !p.dx.is_none() && !p.dweight.is_none() && !p.dbias.is_none(), op,
        "dy, h, dx, dweight and dbias are required");
  check(p.rows >= 0 && p.D >= 0 && p.h.numel == p.rows * p.D, op, "h must have rows * D elements");
  check_same(op, p.h, {&p.dy, &p.dh, &p.dx});
  check(p.parts >= 1 && p.dweight.numel == p.parts * p.D && p.dbias.numel == p.parts * p.D, op,
        "dweight and dbias must be (parts, D) with parts >= 1");
  check(p.mean.numel == p.rows && p.rstd.numel == p.rows, op, "mean and rstd must have rows elements");
  check(p.weight.is_none() || p.weight.numel == p.D, op, "weight must have D elements");
  p.weight.as<const float>("weight");
  p.mean.as<const float>("mean");
  p.rstd.as<const float>("rstd");
  p.dweight.as<float>("dweight");
  p.dbias.as<float>("dbias");
}

// Entry points, defined by cpu.cpp for gankern._C and by cuda.cu for gankern._cuda.
void forward(const ForwardParams& p, Stream stream);
void backward(const BackwardParams& p, Stream stream);

}  // namespace gk::layer_norm
