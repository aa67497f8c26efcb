// Normalization + activation kernels shared by group_norm_act and batch_norm_act.
//
// Both norms reduce to the same passes over x once their small per-(sample, channel) coefficient
// tables are known (gankern/ops/norm.py does that arithmetic, or group_coefficients_cpu below):
//   stats      per-(n, c) mean and m2 of x over the spatial positions (one read of x)
//   apply      y = act((x - M[n,c]) * A[n,c] + B[n,c]) (+ residual)     (one read, one write)
//   bwd reduce with u = x - M, g = dy * act'(u*A + B), xh = u*P: per-(n, c) sums of g, g*xh, xh
//   bwd apply  dx = g * A2[n,c] + u * B2[n,c] + C2[n,c]
// Subtracting the mean first (rather than folding it into B) keeps h accurate when the variance
// is small against the mean, where x*A + B cancels to a few correct digits.
// so the saved state is x and the small statistics, never the normalized tensor.
//
// Layout contract: x (and y, residual, dy, dx) are dense, either NCHW-contiguous ([N][C][HW]) or
// channels_last ([N][HW][C]); HW is the product of the spatial sizes. Coefficient tables are fp32
// [N*C]; statistics and sums are written as double on the CPU and float on the GPU.
#pragma once
#include <cstdint>

#include "common/activations.h"
#include "common/welford.h"

namespace gk::norm {

struct Shape {
  std::int64_t N, C, HW;
  bool channels_last;
};

// The activations the norm kernels support (gankern/ops/norm.py: ACTS), as compile-time constants.
template <typename F>
inline void dispatch_norm_act(int act, F&& f) {
  switch (act) {
    case kLinear: f(std::integral_constant<int, kLinear>{}); break;
    case kRelu: f(std::integral_constant<int, kRelu>{}); break;
    case kLrelu: f(std::integral_constant<int, kLrelu>{}); break;
    case kSwish: f(std::integral_constant<int, kSwish>{}); break;
    case kGelu: f(std::integral_constant<int, kGelu>{}); break;
    case kGeluTanh: f(std::integral_constant<int, kGeluTanh>{}); break;
    default: throw std::invalid_argument("gankern norm: unsupported activation code " + std::to_string(act));
  }
}

void channel_stats_cpu(const float* x, const Shape& s, double* mean, double* m2);
void apply_cpu(const float* x, const float* M, const float* A, const float* B, const float* res, float* y,
               const Shape& s, int act, float alpha);
void backward_reduce_cpu(const float* dy, const float* x, const float* M, const float* A, const float* B,
                         const float* P, const Shape& s, int act, float alpha, double* sums);
void backward_apply_cpu(const float* dy, const float* x, const float* M, const float* A, const float* B,
                        const float* A2, const float* B2, const float* C2, float* dx, const Shape& s, int act,
                        float alpha);

// GroupNorm forward coefficients from per-channel statistics (any pointer but mean/m2 may be null):
// group moments of z = x + temb by Chan's merge, then A/B folding rstd, weight, bias, scale, shift.
void group_coefficients_cpu(const double* mean, const double* m2, std::int64_t N, std::int64_t C, std::int64_t G,
                            std::int64_t HW, double eps, const float* weight, const float* bias, const float* temb,
                            const float* scale, const float* shift, float* M, float* A, float* B, float* gmean,
                            float* grstd);

// The whole GroupNorm forward: statistics, coefficient tables (M, A, B: tables[0..3*N*C)) and the
// normalize pass. scratch: 2 * N * C doubles.
void group_norm_forward_cpu(const float* x, const Shape& s, std::int64_t G, double eps, const float* weight,
                            const float* bias, const float* temb, const float* scale, const float* shift,
                            const float* res, float* y, float* tables, float* gmean, float* grstd, double* scratch,
                            int act, float alpha);

// The whole GroupNorm backward in one call, when the layout allows the fused per-group path
// (NCHW, enough (n, group) tasks, groups small enough to keep in L2); returns false otherwise and
// writes nothing. gmean/grstd: the forward's (N, G) statistics. grads: 5 * N * C doubles, per
// (n, c): weight-gradient and bias-gradient partials (summed over n by the caller), dtemb, dscale,
// dshift.
bool group_norm_backward_cpu(const float* dy, const float* x, const Shape& s, std::int64_t G, const float* gmean,
                             const float* grstd, const float* weight, const float* bias, const float* temb,
                             const float* scale, const float* shift, float* dx, double* grads, int act, float alpha);

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
