// bias_act on CUDA: one pass, each thread moves 16-byte vectors, math in fp32.
// Bytes: forward reads x and writes y (2 * n * sizeof(T)); backward reads dy, x and writes dx.
#include "bias_act/bias_act.h"
#include "common/cuda_utils.cuh"

namespace gk::bias_act {
namespace {

constexpr int kThreads = 256;

// Bias index walker: one 64-bit division per vector, then increments within it.
struct BiasCursor {
  std::int64_t c, r;  // channel, position inside the current run of cstride elements
  __device__ BiasCursor(std::int64_t i, std::int64_t C, std::int64_t cstride) {
    std::int64_t q = i / cstride;
    r = i - q * cstride;
    c = q % C;
  }
  __device__ void next(std::int64_t C, std::int64_t cstride) {
    if (++r == cstride) { r = 0; if (++c == C) c = 0; }
  }
};

// kBwd = false: out = f(x).  kBwd = true: out = dy * f'(x).  VEC elements per thread.
template <typename T, int A, bool kClamp, bool kBwd, int VEC>
__global__ void __launch_bounds__(kThreads)
bias_act_kernel(const T* __restrict__ dy, const T* __restrict__ x, const float* __restrict__ b, T* __restrict__ out,
                Params p) {
  const std::int64_t nvec = p.x.numel / VEC;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t v = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < nvec; v += stride) {
    const std::int64_t i0 = v * VEC;
    Vec<T, VEC> xv = *reinterpret_cast<const Vec<T, VEC>*>(x + i0);
    Vec<T, VEC> gv;
    if constexpr (kBwd) gv = *reinterpret_cast<const Vec<T, VEC>*>(dy + i0);
    Vec<T, VEC> ov;
    BiasCursor cur(i0, p.C, p.cstride);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const float bv = b ? __ldg(b + cur.c) : 0.f;
      float r;
      if constexpr (kBwd) r = backward_value<A, kClamp>(to_f32(gv.v[k]), to_f32(xv.v[k]), bv, p.alpha, p.gain, p.clamp);
      else r = forward_value<A, kClamp>(to_f32(xv.v[k]), bv, p.alpha, p.gain, p.clamp);
      ov.v[k] = from_f32<T>(r);
      cur.next(p.C, p.cstride);
    }
    *reinterpret_cast<Vec<T, VEC>*>(out + i0) = ov;
  }
}

template <bool kBwd>
void launch(const Params& p, Stream stream) {
  const char* op = kBwd ? "bias_act_backward" : "bias_act";
  check_args(op, p, kBwd);
  const std::int64_t n = p.x.numel;
  if (n == 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_dtype(p.x.dtype, op, [&](auto tag) {
    using T = decltype(tag);
    constexpr int VEC = 16 / sizeof(T);
    const T* x = p.x.as<const T>("x");
    const T* dy = p.dy.as<const T>("dy");
    T* out = p.out.as<T>("out");
    // The vector path needs 16-byte aligned pointers and a whole number of vectors.
    const bool vec_ok = n % VEC == 0 && aligned16(x) && aligned16(out) && aligned16(dy);
    dispatch_act(p.act, [&](auto a) {
      constexpr int A = decltype(a)::value;
      auto go = [&](auto clamp_tag, auto vec_tag) {
        constexpr bool K = decltype(clamp_tag)::value;
        constexpr int V = decltype(vec_tag)::value;
        bias_act_kernel<T, A, K, kBwd, V><<<grid_size(n / V, kThreads), kThreads, 0, s>>>(
            dy, x, p.b.as<const float>("b"), out, p);
      };
      const bool clamp = p.clamp >= 0.f;
      if (vec_ok) {
        if (clamp) go(std::true_type{}, std::integral_constant<int, VEC>{});
        else go(std::false_type{}, std::integral_constant<int, VEC>{});
      } else {
        if (clamp) go(std::true_type{}, std::integral_constant<int, 1>{});
        else go(std::false_type{}, std::integral_constant<int, 1>{});
      }
    });
  });
  GK_CUDA_CHECK_LAUNCH(op);
}

}  // namespace

void forward(const Params& p, Stream stream) { launch<false>(p, stream); }
void backward(const Params& p, Stream stream) { launch<true>(p, stream); }

}  // namespace gk::bias_act
