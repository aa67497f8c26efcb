// geglu on the CPU: one pass, the thread pool over blocks of rows, a vectorizable loop per row half.
// Storage fp32, bf16 or fp16 (common/cpu_dtypes.h): loads converted to float, math in fp32, stores rounded.
#include <algorithm>

#include "common/cpu_dtypes.h"
#include "common/cpu_memory.h"
#include "common/thread_pool.h"
#include "geglu/geglu.h"

namespace gk::geglu {
namespace {

constexpr std::int64_t kBlock = 1 << 14;  // output elements per task: 64 KiB of fp32

template <typename T, int A>
GK_CPU_CLONES void forward_run(T* __restrict y, const T* __restrict h, const T* __restrict g, std::int64_t len) {
  for (std::int64_t j = 0; j < len; ++j)
    y[j] = static_cast<T>(static_cast<float>(h[j]) * act_forward<A>(static_cast<float>(g[j]), 0.f));
}

template <typename T, int A>
GK_CPU_CLONES void backward_run(T* __restrict dh, T* __restrict dg, const T* __restrict dy, const T* __restrict h,
                                const T* __restrict g, std::int64_t len) {
  for (std::int64_t j = 0; j < len; ++j) {
    const float d = static_cast<float>(dy[j]), gv = static_cast<float>(g[j]);
    dh[j] = static_cast<T>(d * act_forward<A>(gv, 0.f));
    dg[j] = static_cast<T>(d * static_cast<float>(h[j]) * act_derivative<A>(gv, 0.f));
  }
}

// Tasks of ~kBlock output elements: whole rows when D is small, column chunks of one row otherwise.
template <typename F>
void for_each_span(const Params& p, F&& f) {
  const std::int64_t chunk = std::max<std::int64_t>(1, std::min(p.D, kBlock));
  const std::int64_t per_row = (p.D + chunk - 1) / chunk;
  const std::int64_t tasks = p.rows * per_row;
  parallel_for(tasks, std::max<std::int64_t>(1, tasks / (4 * cpu_threads())), [&](std::int64_t t) {
    const std::int64_t r = t / per_row, j0 = (t % per_row) * chunk;
    f(r, j0, std::min(p.D, j0 + chunk) - j0);
  });
}

template <typename T, bool kBwd>
void run(const Params& p) {
  const T* x = p.x.as<const T>("x");
  const T* dy = p.dy.as<const T>("dy");
  T* out = p.out.as<T>("out");
  const std::int64_t D = p.D;
  advise_huge_pages(out, p.out.numel * static_cast<std::int64_t>(sizeof(T)));
  dispatch_gelu(p.tanh, [&](auto a) {
    constexpr int A = decltype(a)::value;
    for_each_span(p, [&](std::int64_t r, std::int64_t j0, std::int64_t len) {
      const T* h = x + r * 2 * D + j0;
      if constexpr (kBwd) backward_run<T, A>(out + r * 2 * D + j0, out + r * 2 * D + D + j0, dy + r * D + j0, h, h + D, len);
      else forward_run<T, A>(out + r * D + j0, h, h + D, len);
    });
  });
}

template <bool kBwd>
void dispatch(const Params& p) {
  const char* op = kBwd ? "geglu_backward" : "geglu";
  check_args(op, p, kBwd);
  if (p.rows == 0 || p.D == 0) return;
  dispatch_types<float, bf16, fp16>(p.x.dtype, op, [&](auto tag) { run<decltype(tag), kBwd>(p); });
}

}  // namespace

void forward(const Params& p, Stream) { dispatch<false>(p); }
void backward(const Params& p, Stream) { dispatch<true>(p); }

}  // namespace gk::geglu
