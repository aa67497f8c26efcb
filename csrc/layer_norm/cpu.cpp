// layer_norm on the CPU: the thread pool over rows; each row (a token, D <= a few thousand floats) stays in
// L1/L2 between its passes, so DRAM traffic is one read of the inputs and one write of the outputs.
// Row statistics: two passes (the mean, then the centered sum of squares, which stays accurate when
// |mean| >> std), each with kLanes independent fp32 partial sums (a vectorizable reduction without
// -ffast-math) added up in double.
// Storage fp32, bf16 or fp16 (common/cpu_dtypes.h): loops are templated on the storage type T,
// loads are converted to float, math and reductions stay fp32/double, stores round to T. A half
// forward converts each row once into an fp32 scratch row (in L1) and runs the statistics and the
// output pass from there. With a residual, h is rounded to T when stored and
// the statistics are taken of the stored h (as the CUDA kernel does), so the backward, which reads
// h back, sees the forward's exact row.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "common/cpu_dtypes.h"
#include "common/cpu_memory.h"
#include "common/thread_pool.h"
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
    for (int l = 0; l < kLanes; ++l) {
      const float d = v[j + l] - m;
      acc[l] += d * d;
    }
  double s = 0.0;
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  for (; j < D; ++j) {
    const float d = v[j] - m;
    s += static_cast<double>(d) * d;
  }
  return s;
}

GK_CPU_CLONES void add_rows(float* __restrict h, const float* __restrict x, const float* __restrict r, std::int64_t D) {
  for (std::int64_t j = 0; j < D; ++j) h[j] = x[j] + r[j];
}

// A half row into fp32 scratch: hf = h as stored, where h = x + r rounded to T is also written out.
// (Plain elementwise loops: GCC vectorizes the conversions here, not inside a lane-split reduction.)
template <typename T>
GK_CPU_CLONES void add_round_row(float* __restrict hf, T* __restrict h, const T* __restrict x, const T* __restrict r,
                                 std::int64_t D) {
  for (std::int64_t j = 0; j < D; ++j) {
    // (rounded twice rather than a T copied: GCC does not vectorize a loop storing a struct value)
    const float v = static_cast<float>(x[j]) + static_cast<float>(r[j]);
    h[j] = static_cast<T>(v);
    hf[j] = static_cast<float>(static_cast<T>(v));
  }
}

template <typename T>
GK_CPU_CLONES void widen_row(float* __restrict hf, const T* __restrict x, std::int64_t D) {
  for (std::int64_t j = 0; j < D; ++j) hf[j] = static_cast<float>(x[j]);
}

template <typename T>
GK_CPU_CLONES void normalize_row(T* __restrict y, const float* __restrict h, std::int64_t D, float m, float rs,
                                 const float* __restrict w, const float* __restrict b) {
  auto xhat = [&](std::int64_t j) { return (h[j] - m) * rs; };
  if (w && b) for (std::int64_t j = 0; j < D; ++j) y[j] = static_cast<T>(xhat(j) * w[j] + b[j]);
  else if (w) for (std::int64_t j = 0; j < D; ++j) y[j] = static_cast<T>(xhat(j) * w[j]);
  else if (b) for (std::int64_t j = 0; j < D; ++j) y[j] = static_cast<T>(xhat(j) + b[j]);
  else for (std::int64_t j = 0; j < D; ++j) y[j] = static_cast<T>(xhat(j));
}

// g = dy * w; returns (sum g, sum g * xhat) and adds dy * xhat, dy into the part's accumulators.
template <typename T>
GK_CPU_CLONES void backward_sums(const T* __restrict dy, const T* __restrict h, const float* __restrict w,
                                 std::int64_t D, float m, float rs, float* __restrict dw, float* __restrict db,
                                 float* __restrict out2) {
  float sg[kLanes] = {}, sgx[kLanes] = {};
  std::int64_t j = 0;
  for (; j + kLanes <= D; j += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const float d = static_cast<float>(dy[j + l]), xhat = (static_cast<float>(h[j + l]) - m) * rs;
      const float g = w ? d * w[j + l] : d;
      sg[l] += g;
      sgx[l] += g * xhat;
      dw[j + l] += d * xhat;
      db[j + l] += d;
    }
  float tg = 0.f, tgx = 0.f;
  for (; j < D; ++j) {
    const float d = static_cast<float>(dy[j]), xhat = (static_cast<float>(h[j]) - m) * rs;
    const float g = w ? d * w[j] : d;
    tg += g;
    tgx += g * xhat;
    dw[j] += d * xhat;
    db[j] += d;
  }
  for (int l = 0; l < kLanes; ++l) {
    tg += sg[l];
    tgx += sgx[l];
  }
  out2[0] = tg;
  out2[1] = tgx;
}

template <typename T>
GK_CPU_CLONES void backward_apply(T* __restrict dx, const T* __restrict dy, const T* __restrict dh,
                                  const T* __restrict h, const float* __restrict w, std::int64_t D, float m,
                                  float rs, float mean_g, float mean_gx) {
  for (std::int64_t j = 0; j < D; ++j) {
    const float d = static_cast<float>(dy[j]), xhat = (static_cast<float>(h[j]) - m) * rs;
    const float g = w ? d * w[j] : d;
    float v = rs * (g - mean_g - xhat * mean_gx);
    if (dh) v += static_cast<float>(dh[j]);
    dx[j] = static_cast<T>(v);
  }
}

// The rest of a row once its mean is known: variance, statistics, output row.
template <typename T>
void finish_row(const ForwardParams& p, std::int64_t row, const float* src, double m, T* y, float* mean, float* rstd,
                const float* w, const float* b) {
  const double var = p.D ? row_centered_sq(src, p.D, static_cast<float>(m)) / static_cast<double>(p.D) : 0.0;
  const float rs = static_cast<float>(1.0 / std::sqrt(var + static_cast<double>(p.eps)));
  mean[row] = static_cast<float>(m);
  rstd[row] = rs;
  normalize_row(y, src, p.D, static_cast<float>(m), rs, w, b);
}

template <typename T>
void run_forward(const ForwardParams& p) {
  const T* x = p.x.as<const T>("x");
  const T* r = p.residual.as<const T>("residual");
  const float *w = p.weight.as<const float>("weight"), *b = p.bias.as<const float>("bias");
  T *y = p.y.as<T>("y"), *h = p.h.as<T>("h");
  float *mean = p.mean.as<float>("mean"), *rstd = p.rstd.as<float>("rstd");
  const std::int64_t D = p.D;
  advise_huge_pages(y, p.y.numel * static_cast<std::int64_t>(sizeof(T)));
  if (h) advise_huge_pages(h, p.h.numel * static_cast<std::int64_t>(sizeof(T)));
  // rows claimed in chunks, at least 4 per thread (csrc/common/thread_pool.h)
  const std::int64_t grain = std::max<std::int64_t>(1, p.rows / (4 * cpu_threads()));
  if constexpr (std::is_same_v<T, float>) {
    parallel_for(p.rows, grain, [&](std::int64_t row) {
      const T* src = x + row * D;
      if (r) {
        add_rows(h + row * D, src, r + row * D, D);
        src = h + row * D;
      }
      const double m = D ? row_sum(src, D) / static_cast<double>(D) : 0.0;
      finish_row(p, row, src, m, y + row * D, mean, rstd, w, b);
    });
  } else {
    std::vector<std::vector<float>> scratch(cpu_threads());  // one fp32 row per pool slot
    parallel_for_slots(p.rows, grain, [&](std::int64_t row, int slot) {
      std::vector<float>& hf = scratch[slot];
      if (hf.empty()) hf.resize(std::max<std::int64_t>(D, 1));
      const std::int64_t o = row * D;
      if (r) add_round_row(hf.data(), h + o, x + o, r + o, D);
      else widen_row(hf.data(), x + o, D);
      const double m = D ? row_sum(hf.data(), D) / static_cast<double>(D) : 0.0;
      finish_row(p, row, hf.data(), m, y + o, mean, rstd, w, b);
    });
  }
}

template <typename T>
void run_backward(const BackwardParams& p) {
  const T *dy = p.dy.as<const T>("dy"), *dh = p.dh.as<const T>("dh"), *h = p.h.as<const T>("h");
  const float *mean = p.mean.as<const float>("mean"), *rstd = p.rstd.as<const float>("rstd");
  const float* w = p.weight.as<const float>("weight");
  T* dx = p.dx.as<T>("dx");
  float *dw = p.dweight.as<float>("dweight"), *db = p.dbias.as<float>("dbias");
  const std::int64_t D = p.D;
  advise_huge_pages(dx, p.dx.numel * static_cast<std::int64_t>(sizeof(T)));
  // one task per part: the parts (and so the summation order) do not depend on the thread count
  parallel_for(p.parts, 1, [&](std::int64_t k) {
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
  });
}

}  // namespace

// The storage types the CPU kernels take: fp32, bf16, fp16 (common/cpu_dtypes.h), math in fp32.
void forward(const ForwardParams& p, Stream) {
  check_forward("layer_norm", p);
  dispatch_types<float, bf16, fp16>(p.x.dtype, "layer_norm", [&](auto tag) { run_forward<decltype(tag)>(p); });
}

void backward(const BackwardParams& p, Stream) {
  check_backward("layer_norm_backward", p);
  dispatch_types<float, bf16, fp16>(p.h.dtype, "layer_norm_backward",
                                    [&](auto tag) { run_backward<decltype(tag)>(p); });
}

}  // namespace gk::layer_norm
