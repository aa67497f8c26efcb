// geglu on the CPU: one pass, the thread pool over blocks of rows, a vectorizable loop per row half.
// Storage fp32, bf16 or fp16: a half span runs the fp32 loop over L1-resident chunks, converted in
// bulk on the way in and out (common/cpu_convert.h: AVX512-BF16 / F16C where the CPU has them); a
// per-element static_cast in the loop cost more than the math (bf16 fwd 1.5x, fp16 bwd 1.0x fp32).
#include <algorithm>
#include <type_traits>

#include "common/cpu_convert.h"
#include "common/cpu_memory.h"
#include "common/thread_pool.h"
#include "geglu/geglu.h"

namespace gk::geglu {
namespace {

constexpr std::int64_t kBlock = 1 << 14;  // output elements per task: 64 KiB of fp32

template <int A>
GK_CPU_CLONES void forward_run(float* __restrict y, const float* __restrict h, const float* __restrict g,
                               std::int64_t len) {
  for (std::int64_t j = 0; j < len; ++j) y[j] = h[j] * act_forward<A>(g[j], 0.f);
}

template <int A>
GK_CPU_CLONES void backward_run(float* __restrict dh, float* __restrict dg, const float* __restrict dy,
                                const float* __restrict h, const float* __restrict g, std::int64_t len) {
  for (std::int64_t j = 0; j < len; ++j) {
    const float d = dy[j], gv = g[j];
    dh[j] = d * act_forward<A>(gv, 0.f);
    dg[j] = d * h[j] * act_derivative<A>(gv, 0.f);
  }
}

// A half span's rows of x (h and g halves) and dy, and the span after it (prefetched while the last
// chunk of this one computes).
template <typename T>
struct HalfSpan {
  const T *h, *g, *dy;
  std::int64_t len;
};

// Before the fp32 loop of chunk [i, i + m) of `s`: prefetch the next chunk, of `s` or of `next`.
template <typename T>
void prefetch_next(const HalfSpan<T>& s, const HalfSpan<T>& next, std::int64_t i, std::int64_t m) {
  const HalfSpan<T>& t = i + m < s.len ? s : next;
  const std::int64_t at = i + m < s.len ? i + m : 0;
  const std::int64_t n = std::min(kConvertChunk, t.len - at);
  if (n <= 0) return;
  prefetch_elements(t.h + at, n);
  prefetch_elements(t.g + at, n);
  if (t.dy) prefetch_elements(t.dy + at, n);
}

// The fp32 loops over a half span: chunks of kConvertChunk converted into float buffers and back
// (common/cpu_convert.h).
template <typename T, int A>
void forward_half(T* y, const HalfSpan<T>& s, const HalfSpan<T>& next) {
  alignas(64) float hb[kConvertChunk], gb[kConvertChunk], yb[kConvertChunk];
  for_each_chunk(s.len, [&](std::int64_t i, std::int64_t m) {
    to_float(s.h + i, hb, m);
    to_float(s.g + i, gb, m);
    prefetch_next(s, next, i, m);
    forward_run<A>(yb, hb, gb, m);
    from_float(yb, y + i, m);
  });
}

template <typename T, int A>
void backward_half(T* dh, T* dg, const HalfSpan<T>& s, const HalfSpan<T>& next) {
  alignas(64) float dyb[kConvertChunk], hb[kConvertChunk], gb[kConvertChunk], dhb[kConvertChunk], dgb[kConvertChunk];
  for_each_chunk(s.len, [&](std::int64_t i, std::int64_t m) {
    to_float(s.dy + i, dyb, m);
    to_float(s.h + i, hb, m);
    to_float(s.g + i, gb, m);
    prefetch_next(s, next, i, m);
    backward_run<A>(dhb, dgb, dyb, hb, gb, m);
    from_float(dhb, dh + i, m);
    from_float(dgb, dg + i, m);
  });
}

// Tasks of ~kBlock output elements: whole rows when D is small, column chunks of one row otherwise.
// f(r, j0, len, next): row r, columns [j0, j0 + len), and the task after it, (r, j0, len) with
// len = 0 after the last one.
struct Span {
  std::int64_t r, j0, len;
};
template <typename F>
void for_each_span(const Params& p, F&& f) {
  const std::int64_t chunk = std::max<std::int64_t>(1, std::min(p.D, kBlock));
  const std::int64_t per_row = (p.D + chunk - 1) / chunk;
  const std::int64_t tasks = p.rows * per_row;
  auto span = [&](std::int64_t t) {
    if (t >= tasks) return Span{0, 0, 0};
    const std::int64_t r = t / per_row, j0 = (t % per_row) * chunk;
    return Span{r, j0, std::min(p.D, j0 + chunk) - j0};
  };
  parallel_for(tasks, std::max<std::int64_t>(1, tasks / (4 * cpu_threads())),
               [&](std::int64_t t) { f(span(t), span(t + 1)); });
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
    for_each_span(p, [&](Span s, Span next) {
      const std::int64_t r = s.r, j0 = s.j0, len = s.len;
      const T* h = x + r * 2 * D + j0;
      if constexpr (std::is_same_v<T, float>) {
        if constexpr (kBwd) backward_run<A>(out + r * 2 * D + j0, out + r * 2 * D + D + j0, dy + r * D + j0, h, h + D, len);
        else forward_run<A>(out + r * D + j0, h, h + D, len);
      } else {
        auto half_span = [&](Span t) {
          const T* ht = x + t.r * 2 * D + t.j0;
          return HalfSpan<T>{ht, ht + D, kBwd ? dy + t.r * D + t.j0 : nullptr, t.len};
        };
        if constexpr (kBwd) backward_half<T, A>(out + r * 2 * D + j0, out + r * 2 * D + D + j0, half_span(s), half_span(next));
        else forward_half<T, A>(out + r * D + j0, half_span(s), half_span(next));
      }
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
