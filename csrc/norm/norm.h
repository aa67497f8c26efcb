// Normalization + activation kernels shared by group_norm_act and batch_norm_act.
//
// Both norms reduce to the same passes over x once their small per-(sample, channel) coefficient
// tables are known (gankern/ops/norm.py does that arithmetic, or, for the CPU GroupNorm, the
// group_coefficients / group_gradients functions below):
//   stats      per-(n, c) mean and m2 of x over the spatial positions (one read of x)
//   apply      y = act((x - M[n,c]) * A[n,c] + B[n,c]) (+ residual)     (one read, one write)
//   bwd reduce with u = x - M, g = dy * act'(u*A + B), xh = u*P: per-(n, c) sums of g, g*xh, xh
//   bwd apply  dx = g * A2[n,c] + u * B2[n,c] + C2[n,c]
// Subtracting the mean first (rather than folding it into B) keeps h accurate when the variance
// is small against the mean, where x*A + B cancels to a few correct digits. The backward recomputes
// h, so the saved state is x and the small statistics, never the normalized tensor.
//
// Layout contract: x (and y, residual, dy, dx) are dense, either NCHW-contiguous ([N][C][HW]) or
// channels_last ([N][HW][C]); HW is the product of the spatial sizes. Coefficient tables are fp32
// [N*C]; statistics and sums are written as double on the CPU and float on the GPU.
#pragma once
#include <cstdint>

#include "common/activations.h"
#include "common/macros.h"
#include "common/view.h"
#include "common/welford.h"

namespace gk::norm {

struct Shape {
  std::int64_t N, C, HW;
  bool channels_last;
};

// The activations the norm kernels support (gankern/ops/norm.py: ACTS), for gk::dispatch_act.
using NormActs = ActList<kLinear, kRelu, kLrelu, kSwish, kGelu, kGeluTanh>;

// ---- GroupNorm coefficient and gradient math: the one C++ copy ----------------------------------
// (Python: gankern/reference/norm.py group_affine / group_gradients; Triton: triton/norm.py
// _group_coefficients.) Used by the CPU kernels (cpu.cpp: the fused forward and backward, and the
// forward's generic path); the CUDA backend takes its tables from the Python function.
//
// With the group's mean and rstd of z = x + temb, the forward folds everything per-(n, c) into
//   h = ((x + temb - mean) * rstd * weight + bias) * (1 + scale) + shift = (x - M) * A + B.
// Absent extras are weight 1, bias/temb/scale/shift 0. R: double on the CPU, float on a GPU.
template <typename R>
struct GroupCoefficients {
  R M, A, B;
};
template <typename R>
GK_HOST_DEVICE inline GroupCoefficients<R> group_coefficients(R mean, R rstd, R temb, R weight, R bias, R scale,
                                                              R shift) {
  const R sc1 = R(1) + scale;
  return {mean - temb, rstd * weight * sc1, bias * sc1 + shift};
}

// Backward: per (n, c), Sg = sum of g, Sgxh = sum of g * xh, Sxh = sum of xh over the channel's HW
// positions, g = dy * act'(h), xh = (x - M) * rstd. The group couples its channels through
//   c1 = sum over the group's channels of weight * (1 + scale) * Sg   / (Cg * HW),
//   c2 = sum over the group's channels of weight * (1 + scale) * Sgxh / (Cg * HW)
// (group_gradient_weight is the per-channel factor). Then dx = g * A2 + (x - M) * B2 + C2, and the
// per-(n, c) parameter gradients (dweight, dbias are summed over n by the caller).
template <typename R>
GK_HOST_DEVICE inline R group_gradient_weight(R weight, R scale) { return weight * (R(1) + scale); }

template <typename R>
struct GroupGradients {
  R A2, B2, C2, dweight, dbias, dtemb, dscale, dshift;
};
template <typename R>
GK_HOST_DEVICE inline GroupGradients<R> group_gradients(R Sg, R Sgxh, R Sxh, R HW, R rstd, R weight, R bias,
                                                        R scale, R c1, R c2) {
  const R sc1 = R(1) + scale;
  GroupGradients<R> o;
  o.A2 = rstd * weight * sc1;
  o.B2 = -rstd * c2 * rstd;
  o.C2 = -rstd * c1;
  o.dweight = sc1 * Sgxh;
  o.dbias = sc1 * Sg;
  o.dtemb = o.A2 * Sg - rstd * c2 * Sxh - rstd * c1 * HW;
  o.dscale = weight * Sgxh + bias * Sg;
  o.dshift = Sg;
  return o;
}

// ---- entry points (cpu.cpp for gankern._C, cuda.cu for gankern._cuda) ---------------------------
// x, y, residual, dy, dx: float32, float16 or bfloat16, one dtype (loads and stores in it, math and
// reductions in float32/float64); tables float32 [N*C].

#define GK_NORM_SHAPE_PARAMS(X)                              \
  X(std::int64_t, N, "samples")                              \
  X(std::int64_t, C, "channels")                             \
  X(std::int64_t, HW, "positions (product of spatial sizes)") \
  X(bool, channels_last, "[N][HW][C] instead of [N][C][HW]")

// Positions per reduction partial, so the reduction grid fills the device: CUDA splits each
// (n, c) run; the CPU reduces a whole run (chunk = HW, one partial).
#define GK_NORM_SPLIT_PARAMS(X) GK_NORM_SHAPE_PARAMS(X)
GK_STRUCT(SplitParams, GK_NORM_SPLIT_PARAMS);
std::int64_t split_chunk(const SplitParams& p, Stream stream);

// Per-(n, c) statistics as partials [S][3][N*C], S = ceil(HW / chunk): (shift, mean of x - shift,
// m2) of each split of chunk positions; float64 with S = 1 and shift 0 on the CPU, float32 on CUDA.
// The caller merges the S partials in fixed order (Chan's formula).
#define GK_NORM_STATS_PARAMS(X)                                 \
  X(gk::View, x, "input")                                       \
  X(std::int64_t, chunk, "positions per partial (split_chunk)") \
  X(gk::View, partials, "[S][3][N*C] out")                      \
  GK_NORM_SHAPE_PARAMS(X)
GK_STRUCT(StatsParams, GK_NORM_STATS_PARAMS);
void channel_stats(const StatsParams& p, Stream stream);

// apply: out = act((x - M) * A + B) (+ residual); backward_apply: dx = g * A2 + u * B2 + C2.
#define GK_NORM_POINTWISE_PARAMS(X)                                     \
  X(gk::View, dy, "backward_apply: dL/dy; apply: None")                 \
  X(gk::View, x, "input")                                               \
  X(gk::View, residual, "apply: added after the activation, or None")  \
  X(gk::View, out, "y (apply) or dx (backward_apply)")                 \
  X(gk::View, M, "float32 [N*C]")                                       \
  X(gk::View, A, "float32 [N*C]")                                       \
  X(gk::View, B, "float32 [N*C]")                                       \
  X(gk::View, A2, "backward_apply: float32 [N*C]; apply: None")         \
  X(gk::View, B2, "backward_apply: float32 [N*C]; apply: None")         \
  X(gk::View, C2, "backward_apply: float32 [N*C]; apply: None")         \
  X(int, act, "gk::Act code (linear, relu, lrelu, swish, gelu, gelu_tanh)") \
  X(float, alpha, "lrelu slope")                                        \
  GK_NORM_SHAPE_PARAMS(X)
GK_STRUCT(PointwiseParams, GK_NORM_POINTWISE_PARAMS);
void apply(const PointwiseParams& p, Stream stream);
void backward_apply(const PointwiseParams& p, Stream stream);

// Partials [S][3][N*C] of the sums of g, g*xh and xh (as channel_stats: float64, S = 1 on the CPU).
#define GK_NORM_REDUCE_PARAMS(X)                                \
  X(gk::View, dy, "dL/dy")                                      \
  X(gk::View, x, "input")                                       \
  X(gk::View, M, "float32 [N*C]")                               \
  X(gk::View, A, "float32 [N*C]")                               \
  X(gk::View, B, "float32 [N*C]")                               \
  X(gk::View, P, "float32 [N*C]")                               \
  X(std::int64_t, chunk, "positions per partial (split_chunk)") \
  X(gk::View, partials, "[S][3][N*C] out")                      \
  X(int, act, "gk::Act code")                                   \
  X(float, alpha, "lrelu slope")                                \
  GK_NORM_SHAPE_PARAMS(X)
GK_STRUCT(ReduceParams, GK_NORM_REDUCE_PARAMS);
void backward_reduce(const ReduceParams& p, Stream stream);

// CPU only: the whole GroupNorm forward in one call (Python-side table arithmetic would cost more
// than the passes at small shapes): statistics, tables (M, A, B: tables[0..3*N*C)), the normalize
// pass. Where there are enough (sample, group) work items whose data fit in L2, one parallel loop
// whose items each take the statistics of their groups and normalize them right away (the second
// read from L2), in either layout; otherwise statistics, tables, normalize as three sweeps.
// scratch: 2 * N * C doubles.
#define GK_NORM_GROUP_FORWARD_PARAMS(X)                          \
  X(gk::View, x, "input")                                        \
  X(gk::View, weight, "float32 [C] or None")                     \
  X(gk::View, bias, "float32 [C] or None")                       \
  X(gk::View, temb, "float32 [N*C] added before the statistics, or None") \
  X(gk::View, scale, "float32 [N*C] or None")                    \
  X(gk::View, shift, "float32 [N*C] or None")                    \
  X(gk::View, residual, "or None")                               \
  X(gk::View, y, "output")                                       \
  X(gk::View, tables, "float32 [3][N*C] out")                    \
  X(gk::View, gmean, "float32 [N*G] out")                        \
  X(gk::View, grstd, "float32 [N*G] out")                        \
  X(gk::View, scratch, "float64 [2][N*C]")                       \
  X(std::int64_t, G, "groups")                                   \
  X(double, eps, "variance epsilon")                             \
  X(int, act, "gk::Act code")                                    \
  X(float, alpha, "lrelu slope")                                 \
  GK_NORM_SHAPE_PARAMS(X)
GK_STRUCT(GroupForwardParams, GK_NORM_GROUP_FORWARD_PARAMS);
void group_norm_forward(const GroupForwardParams& p, Stream stream);

// CPU only: the whole GroupNorm backward in one call, when the layout allows the fused per-group
// path (NCHW, enough (n, group) tasks, groups small enough to keep in L2); returns false otherwise
// and writes nothing. Writes the op's outputs as they are returned (float32): dweight and dbias
// (per-(n, c) partials summed over n in fixed order), dtemb, dscale, dshift.
#define GK_NORM_GROUP_BACKWARD_PARAMS(X)                  \
  X(gk::View, dy, "dL/dy")                                \
  X(gk::View, x, "input")                                 \
  X(gk::View, gmean, "float32 [N*G] from the forward")    \
  X(gk::View, grstd, "float32 [N*G] from the forward")    \
  X(gk::View, weight, "float32 [C] or None")              \
  X(gk::View, bias, "float32 [C] or None")                \
  X(gk::View, temb, "float32 [N*C] or None")              \
  X(gk::View, scale, "float32 [N*C] or None")             \
  X(gk::View, shift, "float32 [N*C] or None")             \
  X(gk::View, dx, "dL/dx out")                            \
  X(gk::View, dweight, "float32 [C] out")                 \
  X(gk::View, dbias, "float32 [C] out")                   \
  X(gk::View, dtemb, "float32 [N*C] out")                 \
  X(gk::View, dscale, "float32 [N*C] out")                \
  X(gk::View, dshift, "float32 [N*C] out")                \
  X(std::int64_t, G, "groups")                            \
  X(int, act, "gk::Act code")                             \
  X(float, alpha, "lrelu slope")                          \
  GK_NORM_SHAPE_PARAMS(X)
GK_STRUCT(GroupBackwardParams, GK_NORM_GROUP_BACKWARD_PARAMS);
bool group_norm_backward(const GroupBackwardParams& p, Stream stream);

template <typename P>
Shape shape_of(const P& p) { return Shape{p.N, p.C, p.HW, p.channels_last}; }

// Both backends: the full-size operands share x's dtype and size, tables hold N*C floats.
inline void check_operands(const char* op, const View& x, std::initializer_list<const View*> same,
                           std::initializer_list<const View*> tables, std::int64_t NC) {
  check(!x.is_none() && x.numel >= 0, op, "x is required");
  check_same(op, x, same);
  for (const View* t : tables) {
    t->as<const float>("table");
    check(t->is_none() || t->numel >= NC, op, "coefficient tables must hold N*C floats");
  }
}

// ---- what the CUDA kernels are (internal to cuda.cu) --------------------------------------------

// CUDA: x/y/res/dy/dx in storage dtype `dtype` (gk::DType), tables fp32. The reductions split the
// positions of each (n, c) into chunks of `chunk` positions (cuda_split_chunk picks it so the grid
// fills the GPU) and write one fp32 partial per chunk: part[s][k][n*C + c], k = 0..2 (shift k, mean
// of x - k, m2 of the chunk) for stats, k = 0..2 (sums of g, g*xh, xh) for the backward reduction.
// The caller merges the S = ceil(HW / chunk) partials (Chan's formula / sums) in fixed order:
// deterministic, no atomics.
std::int64_t cuda_split_chunk(const Shape& s);
void channel_stats_cuda(const void* x, const Shape& s, std::int64_t chunk, float* part, int dtype,
                        std::uintptr_t stream);
void apply_cuda(const void* x, const float* M, const float* A, const float* B, const void* res, void* y,
                const Shape& s, int act, float alpha, int dtype, std::uintptr_t stream);
void backward_reduce_cuda(const void* dy, const void* x, const float* M, const float* A, const float* B,
                          const float* P, const Shape& s, int act, float alpha, std::int64_t chunk, float* part,
                          int dtype, std::uintptr_t stream);
void backward_apply_cuda(const void* dy, const void* x, const float* M, const float* A, const float* B,
                         const float* A2, const float* B2, const float* C2, void* dx, const Shape& s, int act,
                         float alpha, int dtype, std::uintptr_t stream);

}  // namespace gk::norm
