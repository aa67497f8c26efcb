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

// CUDA: x/y/res/dy/dx in storage dtype `dtype` (gk::DType), tables fp32, sums/stats fp32.
// stats: per-(n, c) mean and m2 (the split partials are merged on the device).
void channel_stats_cuda(const void* x, const Shape& s, float* mean, float* m2, int dtype, std::uintptr_t stream);
void apply_cuda(const void* x, const float* M, const float* A, const float* B, const void* res, void* y,
                const Shape& s, int act, float alpha, int dtype, std::uintptr_t stream);
void backward_reduce_cuda(const void* dy, const void* x, const float* M, const float* A, const float* B,
                          const float* P, const Shape& s, int act, float alpha, float* sums, int dtype,
                          std::uintptr_t stream);
void backward_apply_cuda(const void* dy, const void* x, const float* M, const float* A, const float* B,
                         const float* A2, const float* B2, const float* C2, void* dx, const Shape& s, int act,
                         float alpha, int dtype, std::uintptr_t stream);

}  // namespace gk::norm
