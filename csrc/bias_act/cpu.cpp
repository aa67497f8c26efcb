// bias_act on the CPU: one pass over memory, the thread pool (common/thread_pool.h) over fixed-size blocks, vectorized loops.
#include <algorithm>
#include <limits>

#include "bias_act/bias_act.h"
#include "common/cpu_memory.h"
#include "common/thread_pool.h"

namespace gk::bias_act {
namespace {

constexpr std::int64_t kBlock = 1 << 14;  // 64 KiB of fp32 per task: fits L2, amortizes scheduling

// The two vectorizable run shapes: one bias for the whole run (channel not innermost), or one bias
// per element (channels innermost, e.g. channels_last). kBwd: out = dL/dx from dy, else out = y.
template <int A, bool kClamp, bool kBwd>
GK_CPU_CLONES void run_scalar_bias(float* __restrict out, const float* __restrict dy, const float* __restrict x,
                                   std::int64_t len, float b, float alpha, float gain, float clamp) {
  for (std::int64_t i = 0; i < len; ++i) {
    if constexpr (kBwd) out[i] = backward_value<A, kClamp>(dy[i], x[i], b, alpha, gain, clamp);
    else out[i] = forward_value<A, kClamp>(x[i], b, alpha, gain, clamp);
  }
}

template <int A, bool kClamp, bool kBwd>
GK_CPU_CLONES void run_vector_bias(float* __restrict out, const float* __restrict dy, const float* __restrict x,
                                   std::int64_t len, const float* __restrict b, float alpha, float gain, float clamp) {
  for (std::int64_t i = 0; i < len; ++i) {
    if constexpr (kBwd) out[i] = backward_value<A, kClamp>(dy[i], x[i], b[i], alpha, gain, clamp);
    else out[i] = forward_value<A, kClamp>(x[i], b[i], alpha, gain, clamp);
  }
}

// Splits [0, n) into blocks run in parallel, and each block into runs over which the bias is either
// constant (scalar_run) or the contiguous slice b[c0 : c0+len] (vector_run).
template <typename ScalarRun, typename VectorRun>
void for_each_run(const Params& p, const float* b, ScalarRun scalar_run, VectorRun vector_run) {
  const std::int64_t nblocks = (p.n + kBlock - 1) / kBlock;
  // Claimed up to 2 MiB (one huge page) at a time, at least 4 claims per thread: a thread that
  // loses its core to another process leaves its unstarted blocks to the others instead of
  // holding up the pass with a static share (csrc/common/thread_pool.h).
  const std::int64_t grain = std::clamp<std::int64_t>(nblocks / (4 * cpu_threads()), 1, 32);
  parallel_for(nblocks, grain, [&](std::int64_t blk) {
    const std::int64_t hi = std::min(p.n, (blk + 1) * kBlock);
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

template <bool kBwd>
void run(const float* dy, const float* x, const float* b, float* out, const Params& p) {
  advise_huge_pages(out, p.n * static_cast<std::int64_t>(sizeof(float)));
  dispatch_act(p.act, [&](auto a) {
    constexpr int A = decltype(a)::value;
    auto go = [&](auto clamp_tag) {
      constexpr bool K = decltype(clamp_tag)::value;
      for_each_run(
          p, b,
          [&](std::int64_t pos, std::int64_t len, float bv) {
            run_scalar_bias<A, K, kBwd>(out + pos, kBwd ? dy + pos : nullptr, x + pos, len, bv, p.alpha, p.gain,
                                        p.clamp);
          },
          [&](std::int64_t pos, std::int64_t len, const float* bp) {
            run_vector_bias<A, K, kBwd>(out + pos, kBwd ? dy + pos : nullptr, x + pos, len, bp, p.alpha, p.gain,
                                        p.clamp);
          });
    };
    if (p.clamp >= 0.f) go(std::true_type{});
    else go(std::false_type{});
  });
}

}  // namespace

void forward_cpu(const float* x, const float* b, float* y, const Params& p) { run<false>(nullptr, x, b, y, p); }

void backward_cpu(const float* dy, const float* x, const float* b, float* dx, const Params& p) {
  run<true>(dy, x, b, dx, p);
}

}  // namespace gk::bias_act
