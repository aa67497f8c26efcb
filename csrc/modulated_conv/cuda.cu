// modulated_conv on CUDA. modulate: one block per (sample, output channel) pair (grid-stride),
// the sum of squares reduced over the block, then the row written once. epilogue: one thread per
// element (grid-stride), index math for either layout, fp32 math.
#include "common/cuda_utils.cuh"
#include "modulated_conv/modulated_conv.h"

namespace gk::modulated_conv {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
modulate_kernel(const float* __restrict__ w, const float* __restrict__ st, float* __restrict__ wmod,
                float* __restrict__ dc, std::int64_t N, std::int64_t O, std::int64_t I, std::int64_t K,
                bool demodulate) {
  __shared__ float sh[kThreads / 32];
  const std::int64_t IK = I * K;
  for (std::int64_t no = blockIdx.x; no < N * O; no += gridDim.x) {
    const std::int64_t n = no / O, o = no - n * O;
    const float* wo = w + o * IK;
    const float* sn = st + n * I;
    float d = 1.f;
    if (demodulate) {
      float acc = 0.f;
      for (std::int64_t j = threadIdx.x; j < IK; j += kThreads) {
        const float v = wo[j] * sn[j / K];
        acc += v * v;
      }
      d = 1.f / sqrtf(block_sum<kThreads>(acc, sh) + kDemodEps);
      if (dc != nullptr && threadIdx.x == 0) dc[no] = d;
    }
    if (wmod != nullptr)
      for (std::int64_t j = threadIdx.x; j < IK; j += kThreads) wmod[no * IK + j] = wo[j] * (sn[j / K] * d);
  }
}

template <typename T, int A, bool kClamp>
__global__ void __launch_bounds__(kThreads)
epilogue_kernel(const T* __restrict__ y, T* __restrict__ out, const float* __restrict__ sc,
                const T* __restrict__ noise, const float* __restrict__ b, EpilogueParams p) {
  const std::int64_t n_el = p.y.numel;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n_el; i += stride) {
    std::int64_t n, c, px;
    if (p.channels_last) {
      const std::int64_t r = i / p.C;
      c = i - r * p.C;
      n = r / p.HW;
      px = r - n * p.HW;
    } else {
      const std::int64_t nc = i / p.HW;
      px = i - nc * p.HW;
      n = nc / p.C;
      c = nc - n * p.C;
    }
    const float s = sc ? sc[n * p.C + c] : 1.f;
    const float bv = b ? b[c] : 0.f;
    const float nv = noise ? to_f32(noise[n * p.snn + c * p.snc + px]) : 0.f;
    out[i] = from_f32<T>(epilogue_value<A, kClamp>(to_f32(y[i]), s, nv, bv, p.alpha, p.gain, p.clamp));
  }
}

}  // namespace

void modulate(const ModulateParams& p, Stream stream) {
  check_modulate(p);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  const std::int64_t pairs = p.N * p.O;
  const int grid = static_cast<int>(pairs < 65535 ? pairs : 65535);
  modulate_kernel<<<grid, kThreads, 0, s>>>(p.weight.as<const float>("weight"), p.styles.as<const float>("styles"),
                                            p.wmod.as<float>("wmod"), p.dcoefs.as<float>("dcoefs"), p.N, p.O, p.I,
                                            p.K, p.demodulate);
  GK_CUDA_CHECK_LAUNCH("modconv_modulate");
}

void epilogue(const EpilogueParams& p, Stream stream) {
  check_epilogue(p);
  if (p.y.numel == 0) return;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_dtype(p.y.dtype, "modconv_epilogue", [&](auto tag) {
    using T = decltype(tag);
    dispatch_act(p.act, [&](auto a) {
      constexpr int A = decltype(a)::value;
      auto go = [&](auto clamp_tag) {
        constexpr bool K = decltype(clamp_tag)::value;
        epilogue_kernel<T, A, K><<<grid_size(p.y.numel, kThreads), kThreads, 0, s>>>(
            p.y.as<const T>("y"), p.out.as<T>("out"), p.scale.as<const float>("scale"), p.noise.as<const T>("noise"),
            p.bias.as<const float>("bias"), p);
      };
      if (p.clamp >= 0.f) go(std::true_type{});
      else go(std::false_type{});
    });
  });
  GK_CUDA_CHECK_LAUNCH("modconv_epilogue");
}

}  // namespace gk::modulated_conv
