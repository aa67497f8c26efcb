// bias_act on the CPU: one pass over memory, the thread pool (common/thread_pool.h) over fixed-size blocks, vectorized loops.
#include <algorithm>
#include <limits>
#include <type_traits>

#include "bias_act/bias_act.h"
#include "common/cpu_convert.h"
#include "common/cpu_memory.h"
#include "common/thread_pool.h"

namespace gk::bias_act {
namespace {

constexpr std::int64_t kBlock = 1 << 14;  // elements per block (64 KiB of fp32): fits L2, amortizes scheduling

// The two vectorizable run shapes: one bias for the whole run (channel not innermost), or one bias
// per element (channels innermost, e.g. channels_last). kBwd: out = dL/dx from dy, else out = y.
// T: float (bf16/fp16 passes run these on float chunks: run_half).
template <typename T, int A, bool kClamp, bool kBwd>
GK_CPU_CLONES void run_scalar_bias(T* __restrict out, const T* __restrict dy, const T* __restrict x, std::int64_t len,
                                   float b, float alpha, float gain, float clamp) {
  for (std::int64_t i = 0; i < len; ++i) {
    float r;
    if constexpr (kBwd) r = backward_value<A, kClamp>(static_cast<float>(dy[i]), static_cast<float>(x[i]), b, alpha,
                                                      gain, clamp);
    else r = forward_value<A, kClamp>(static_cast<float>(x[i]), b, alpha, gain, clamp);
    out[i] = static_cast<T>(r);
  }
}

template <typename T, int A, bool kClamp, bool kBwd>
GK_CPU_CLONES void run_vector_bias(T* __restrict out, const T* __restrict dy, const T* __restrict x, std::int64_t len,
                                   const float* __restrict b, float alpha, float gain, float clamp) {
  for (std::int64_t i = 0; i < len; ++i) {
    float r;
    if constexpr (kBwd) r = backward_value<A, kClamp>(static_cast<float>(dy[i]), static_cast<float>(x[i]), b[i],
                                                      alpha, gain, clamp);
    else r = forward_value<A, kClamp>(static_cast<float>(x[i]), b[i], alpha, gain, clamp);
    out[i] = static_cast<T>(r);
  }
}

// Splits [0, n) into blocks run in parallel, and each block into runs over which the bias is either
// constant (scalar_run) or the contiguous slice b[c0 : c0+len] (vector_run).
template <typename ScalarRun, typename VectorRun>
void for_each_run(std::int64_t n, const Params& p, const float* b, ScalarRun scalar_run, VectorRun vector_run) {
  const std::int64_t nblocks = (n + kBlock - 1) / kBlock;
  // After each thread's first, equal share, blocks are claimed up to 2 MiB of fp32 (one huge page)
  // at a time: a thread that starts late or loses its core to another process leaves the blocks it
  // has not claimed to the others (csrc/common/thread_pool.h).
  const std::int64_t grain = std::clamp<std::int64_t>(nblocks / (4 * cpu_threads()), 1, 32);
  parallel_for(nblocks, grain, [&](std::int64_t blk) {
    const std::int64_t hi = std::min(n, (blk + 1) * kBlock);
    std::int64_t pos = blk * kBlock;
    while (pos < hi) {
      if (b == nullptr) {
        scalar_run(pos, hi - pos, 0.f);
        pos = hi;
      } else if (p.cstride == 1) {
        const std::int64_t c0 = pos % p.C;
        const std::int64_t len = std::min(p.C - c0, hi - pos);
        vector_run(pos, len, b + c0);
        pos += len;
      } else {
        const std::int64_t span = pos / p.cstride;
        const std::int64_t len = std::min((span + 1) * p.cstride, hi) - pos;
        scalar_run(pos, len, b[span % p.C]);
        pos += len;
      }
    }
  });
}

// A half-type (bf16/fp16) run: the fp32 loop over L1-resident chunks, the conversions by the CPU's
// conversion instructions where it has them (common/cpu_convert.h explains why this beats one
// fused loop over T). bias: the run's scalar bias, or the run's slice of b (kVec).
template <typename T, int A, bool kClamp, bool kBwd, bool kVec>
void run_half(T* out, const T* dy, const T* x, std::int64_t len, float bias, const float* b, float alpha, float gain,
              float clamp) {
  alignas(64) float xf[kConvertChunk], dyf[kBwd ? kConvertChunk : 1], outf[kConvertChunk];
  for_each_chunk(len, [&](std::int64_t i, std::int64_t m) {
    to_float(x + i, xf, m);
    if constexpr (kBwd) to_float(dy + i, dyf, m);
    if constexpr (kVec) run_vector_bias<float, A, kClamp, kBwd>(outf, dyf, xf, m, b + i, alpha, gain, clamp);
    else run_scalar_bias<float, A, kClamp, kBwd>(outf, dyf, xf, m, bias, alpha, gain, clamp);
    from_float(outf, out + i, m);
  });
}

template <typename T, bool kBwd>
void run(const Params& p) {
  const std::int64_t n = p.x.numel;
  const T* x = p.x.as<const T>("x");
  const T* dy = p.dy.as<const T>("dy");
  T* out = p.out.as<T>("out");
  const float* b = p.b.as<const float>("b");
  advise_huge_pages(out, n * static_cast<std::int64_t>(sizeof(T)));
  dispatch_act(p.act, [&](auto a) {
    constexpr int A = decltype(a)::value;
    auto go = [&](auto clamp_tag) {
      constexpr bool K = decltype(clamp_tag)::value;
      for_each_run(
          n, p, b,
          [&](std::int64_t pos, std::int64_t len, float bv) {
            const T* d = kBwd ? dy + pos : nullptr;
            if constexpr (std::is_same_v<T, float>)
              run_scalar_bias<T, A, K, kBwd>(out + pos, d, x + pos, len, bv, p.alpha, p.gain, p.clamp);
            else run_half<T, A, K, kBwd, false>(out + pos, d, x + pos, len, bv, nullptr, p.alpha, p.gain, p.clamp);
          },
          [&](std::int64_t pos, std::int64_t len, const float* bp) {
            const T* d = kBwd ? dy + pos : nullptr;
            if constexpr (std::is_same_v<T, float>)
              run_vector_bias<T, A, K, kBwd>(out + pos, d, x + pos, len, bp, p.alpha, p.gain, p.clamp);
            else run_half<T, A, K, kBwd, true>(out + pos, d, x + pos, len, 0.f, bp, p.alpha, p.gain, p.clamp);
          });
    };
    if (p.clamp >= 0.f) go(std::true_type{});
    else go(std::false_type{});
  });
}

// The storage types the CPU kernels take: fp32, bf16, fp16 (common/cpu_dtypes.h), math in fp32.
template <bool kBwd>
void dispatch(const Params& p) {
  const char* op = kBwd ? "bias_act_backward" : "bias_act";
  check_args(op, p, kBwd);
  dispatch_types<float, bf16, fp16>(p.x.dtype, op, [&](auto tag) { run<decltype(tag), kBwd>(p); });
}

}  // namespace

void forward(const Params& p, Stream) { dispatch<false>(p); }
void backward(const Params& p, Stream) { dispatch<true>(p); }

}  // namespace gk::bias_act
