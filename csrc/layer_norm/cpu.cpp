// layer_norm on the CPU: OpenMP over rows; each row (a token, D <= a few thousand floats) stays in
// L1/L2 between its passes, so DRAM traffic is one read of the inputs and one write of the outputs.
// Row statistics: two passes (the mean, then the centered sum of squares, which stays accurate when
// |mean| >> std), each with kLanes independent fp32 partial sums (a vectorizable reduction without
// -ffast-math) added up in double.
#include <algorithm>
#include <cmath>

#include "common/cpu_memory.h"
#include "layer_norm/layer_norm.h"

namespace gk::layer_norm {
namespace {

constexpr int kLanes = 16;

GK_CPU_CLONES double row_sum(const float* __restrict v, std::int64_t D) {
  float acc[kLanes] = {};
  std::int64_t j = 0;
  for (; j + kLanes <= D; j += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += v[j + l];
  double s = 0.0;
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  for (; j < D; ++j) s += v[j];
  return s;
}

GK_CPU_CLONES double row_centered_sq(const float* __restrict v, std::int64_t D, float m) {
  float acc[kLanes] = {};
  std::int64_t j = 0;
  for (; j + kLanes <= D; j += kLanes)
    for (int l = 0; l < kLanes; ++l) acc[l] += (v[j + l] - m) * (v[j + l] - m);
  double s = 0.0;
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  for (; j < D; ++j) s += static_cast<double>(v[j] - m) * (v[j] - m);
  return s;
}

GK_CPU_CLONES void add_rows(float* __restrict h, const float* __restrict x, const float* __restrict r, std::int64_t D) {
  for (std::int64_t j = 0; j < D; ++j) h[j] = x[j] + r[j];
}

GK_CPU_CLONES void normalize_row(float* __restrict y, const float* __restrict h, std::int64_t D, float m, float rs,
                                 const float* __restrict w, const float* __restrict b) {
  if (w && b) for (std::int64_t j = 0; j < D; ++j) y[j] = (h[j] - m) * rs * w[j] + b[j];
  else if (w) for (std::int64_t j = 0; j < D; ++j) y[j] = (h[j] - m) * rs * w[j];
  else if (b) for (std::int64_t j = 0; j < D; ++j) y[j] = (h[j] - m) * rs + b[j];
  else for (std::int64_t j = 0; j < D; ++j) y[j] = (h[j] - m) * rs;
}

// g = dy * w; returns (sum g, sum g * xhat) and adds dy * xhat, dy into the part's accumulators.
GK_CPU_CLONES void backward_sums(const float* __restrict dy, const float* __restrict h, const float* __restrict w,
                                 std::int64_t D, float m, float rs, float* __restrict dw, float* __restrict db,
                                 float* __restrict out2) {
  float sg[kLanes] = {}, sgx[kLanes] = {};
  std::int64_t j = 0;
  for (; j + kLanes <= D; j += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const float xhat = (h[j + l] - m) * rs, g = w ? dy[j + l] * w[j + l] : dy[j + l];
      sg[l] += g;
      sgx[l] += g * xhat;
      dw[j + l] += dy[j + l] * xhat;
      db[j + l] += dy[j + l];
    }
  float tg = 0.f, tgx = 0.f;
  for (; j < D; ++j) {
    const float xhat = (h[j] - m) * rs, g = w ? dy[j] * w[j] : dy[j];
    tg += g;
    tgx += g * xhat;
    dw[j] += dy[j] * xhat;
    db[j] += dy[j];
  }
  for (int l = 0; l < kLanes; ++l) {
    tg += sg[l];
    tgx += sgx[l];
  }
  out2[0] = tg;
  out2[1] = tgx;
}

GK_CPU_CLONES void backward_apply(float* __restrict dx, const float* __restrict dy, const float* __restrict dh,
                                  const float* __restrict h, const float* __restrict w, std::int64_t D, float m,
                                  float rs, float mean_g, float mean_gx) {
  for (std::int64_t j = 0; j < D; ++j) {
    const float xhat = (h[j] - m) * rs, g = w ? dy[j] * w[j] : dy[j];
    float v = rs * (g - mean_g - xhat * mean_gx);
    if (dh) v += dh[j];
    dx[j] = v;
  }
}

}  // namespace

void forward(const ForwardParams& p, Stream) {
  const char* op = "layer_norm";
  check_forward(op, p);
  dispatch_types<float>(p.x.dtype, op, [&](auto) {});
  const float* x = p.x.as<const float>("x");
  const float* r = p.residual.as<const float>("residual");
  const float *w = p.weight.as<const float>("weight"), *b = p.bias.as<const float>("bias");
  float *y = p.y.as<float>("y"), *h = p.h.as<float>("h");
  float *mean = p.mean.as<float>("mean"), *rstd = p.rstd.as<float>("rstd");
  const std::int64_t D = p.D;
  advise_huge_pages(y, p.y.numel * static_cast<std::int64_t>(sizeof(float)));
  if (h) advise_huge_pages(h, p.h.numel * static_cast<std::int64_t>(sizeof(float)));
#pragma omp parallel for schedule(static)
  for (std::int64_t row = 0; row < p.rows; ++row) {
    const float* src = x + row * D;
    if (r) {
      add_rows(h + row * D, src, r + row * D, D);
      src = h + row * D;
    }
    const double m = D ? row_sum(src, D) / static_cast<double>(D) : 0.0;
    const double var = D ? row_centered_sq(src, D, static_cast<float>(m)) / static_cast<double>(D) : 0.0;
    const float rs = static_cast<float>(1.0 / std::sqrt(var + static_cast<double>(p.eps)));
    mean[row] = static_cast<float>(m);
    rstd[row] = rs;
    normalize_row(y + row * D, src, D, static_cast<float>(m), rs, w, b);
  }
}

void backward(const BackwardParams& p, Stream) {
  const char* op = "layer_norm_backward";
  check_backward(op, p);
  dispatch_types<float>(p.h.dtype, op, [&](auto) {});
  const float *dy = p.dy.as<const float>("dy"), *dh = p.dh.as<const float>("dh"), *h = p.h.as<const float>("h");
  const float *mean = p.mean.as<const float>("mean"), *rstd = p.rstd.as<const float>("rstd");
  const float* w = p.weight.as<const float>("weight");
  float *dx = p.dx.as<float>("dx"), *dw = p.dweight.as<float>("dweight"), *db = p.dbias.as<float>("dbias");
  const std::int64_t D = p.D;
  advise_huge_pages(dx, p.dx.numel * static_cast<std::int64_t>(sizeof(float)));
#pragma omp parallel for schedule(static)
  for (std::int64_t k = 0; k < p.parts; ++k) {
    float* dwk = dw + k * D;
    float* dbk = db + k * D;
    std::fill(dwk, dwk + D, 0.f);
    std::fill(dbk, dbk + D, 0.f);
    for (std::int64_t row = part_begin(k, p.rows, p.parts); row < part_begin(k + 1, p.rows, p.parts); ++row) {
      const std::int64_t o = row * D;
      float s[2];
      backward_sums(dy + o, h + o, w, D, mean[row], rstd[row], dwk, dbk, s);
      const float inv = D ? 1.f / static_cast<float>(D) : 0.f;
      backward_apply(dx + o, dy + o, dh ? dh + o : nullptr, h + o, w, D, mean[row], rstd[row], s[0] * inv, s[1] * inv);
    }
  }
}

}  // namespace gk::layer_norm
