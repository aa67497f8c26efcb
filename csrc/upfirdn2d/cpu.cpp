// upfirdn2d on the CPU: one pass over the output, rows in parallel (common/thread_pool.h), vectorized inner
// loops. The polyphase sum of upfirdn2d.h is evaluated one output row at a time:
//
//   separable filter: the y taps of the row are combined first (a weighted sum of at most
//     ceil(kh/upy) input rows, contiguous and vectorizable), then the x taps run over that row;
//   2-D filter: the x taps run over each contributing input row with that row of g, accumulated.
//
// NCHW: the row machinery of polyphase_cpu.h (phase classes of branch-free FIRs).
// channels_last: the channel dimension is contiguous, so every tap is a vector over C.
//
// Storage fp32, bf16 or fp16 (common/cpu_dtypes.h): input samples are converted to float as they are
// read, every sum is fp32, and a half output row is accumulated in fp32 scratch and rounded once.
#include <algorithm>
#include <optional>
#include <type_traits>
#include <vector>

#include "common/cpu_dtypes.h"
#include "common/cpu_memory.h"
#include "common/thread_pool.h"
#include "upfirdn2d/polyphase_cpu.h"

namespace gk::upfirdn2d {
namespace {

// Output rows per claim after each thread's first, equal share: small claims, so a thread that
// starts late or loses its core leaves the rows it has not claimed to the others
// (csrc/common/thread_pool.h).
std::int64_t row_grain(std::int64_t rows) { return std::max<std::int64_t>(1, rows / (8 * cpu_threads())); }

// ---- NCHW ---------------------------------------------------------------------------------------

template <typename T>
void run_nchw(const T* x, const float* g, const float* g1, T* y, const Params& p) {
  const Axis ax{p.W, p.upx, p.downx, p.px0, p.kw}, ay{p.H, p.upy, p.downy, p.py0, p.kh};
  const XPass xp(ax, p.OW);
  const std::int64_t rows = p.N * p.C * p.OH;
  const int max_ty = (p.kh + p.upy - 1) / p.upy;
  std::vector<std::optional<RowScratch>> scratches(cpu_threads());  // one per pool slot, made on first use
  parallel_for_slots(rows, row_grain(rows), [&](std::int64_t r, int slot) {
    std::optional<RowScratch>& scratch = scratches[slot];
    if (!scratch) scratch.emplace(xp, p.W, max_ty);
    const std::int64_t oy = r % p.OH, plane = r / p.OH;
    const std::int64_t n = plane / p.C, c = plane % p.C;
    T* out = y + n * p.syn + c * p.syc + oy * p.syh;
    if constexpr (std::is_same_v<T, float>) {
      pass_row(ay, xp, *scratch, x + n * p.sxn + c * p.sxc, p.sxh, p.W, g, g1, p.kw, 0.f, oy, out);
    } else {
      pass_row(ay, xp, *scratch, x + n * p.sxn + c * p.sxc, p.sxh, p.W, g, g1, p.kw, 0.f, oy, scratch->row.data());
      store_row(out, scratch->row.data(), p.OW);
    }
  });
}

// ---- channels_last ------------------------------------------------------------------------------

// out[0..C) (+)= w * in[0..C)
template <typename Tin>
GK_CPU_CLONES void axpy_c(float* __restrict out, const Tin* __restrict in, std::int64_t C, float w, bool first) {
  if (first) {
    for (std::int64_t i = 0; i < C; ++i) out[i] = w * static_cast<float>(in[i]);
  } else {
    for (std::int64_t i = 0; i < C; ++i) out[i] += w * static_cast<float>(in[i]);
  }
}

// One output row of a channels_last image: for each ox, the x taps of `h` over `src` (W pixels of
// C channels, pixel stride sw), added into out (pixel stride sow) unless `first`.
template <typename Tin>
void x_pass_cl(const Params& p, const Tin* src, std::int64_t sw, const float* h, float* out, std::int64_t sow,
               bool first) {
  for (std::int64_t ox = 0; ox < p.OW; ++ox) {
    int k0;
    std::int64_t i0;
    first_tap(ox, p.downx, p.upx, p.px0, k0, i0);
    float* o = out + ox * sow;
    bool wrote = !first;
    for (int k = k0, t = 0; k < p.kw; k += p.upx, ++t) {
      const std::int64_t ix = i0 + t;
      if (ix < 0 || ix >= p.W) continue;
      axpy_c(o, src + ix * sw, p.C, h[k], !wrote);
      wrote = true;
    }
    if (!wrote) fill_row(o, p.C, 0.f);
  }
}

// T = float writes the output row in place; a half T accumulates it in fp32 scratch (pixel stride C)
// and rounds it once.
template <typename T>
void run_channels_last(const T* x, const float* g, const float* g1, T* y, const Params& p) {
  constexpr bool kDirect = std::is_same_v<T, float>;
  const Axis ay{p.H, p.upy, p.downy, p.py0, p.kh};
  const std::int64_t rows = p.N * p.OH;
  const int max_ty = (p.kh + p.upy - 1) / p.upy;
  struct Scratch {
    std::vector<float> comb, row;
    std::vector<std::int64_t> ty;
    std::vector<int> tk;
  };
  std::vector<Scratch> scratches(cpu_threads());  // one per pool slot, sized on first use
  parallel_for_slots(rows, row_grain(rows), [&](std::int64_t r, int slot) {
    Scratch& sc = scratches[slot];
    if (sc.ty.empty()) {
      sc.comb.resize(g1 != nullptr ? std::max<std::int64_t>(p.W * p.C, 1) : 1);
      sc.row.resize(kDirect ? 1 : std::max<std::int64_t>(p.OW * p.C, 1));
      sc.ty.resize(std::max(max_ty, 1));
      sc.tk.resize(std::max(max_ty, 1));
    }
    const std::int64_t oy = r % p.OH, n = r / p.OH;
    const T* xn = x + n * p.sxn;
    T* out_row = y + n * p.syn + oy * p.syh;
    float* out;
    std::int64_t sow;
    if constexpr (kDirect) {
      out = out_row;
      sow = p.syw;
    } else {
      out = sc.row.data();
      sow = p.C;
    }
    const int nt = axis_taps(ay, oy, sc.ty.data(), sc.tk.data());
    if (nt == 0) {
      for (std::int64_t ox = 0; ox < p.OW; ++ox) fill_row(out + ox * sow, p.C, 0.f);
    } else if (g1 != nullptr) {  // combine the rows (a dense W*C block each), then the x pass
      const float* gy = g1 + p.kw;
      for (int t = 0; t < nt; ++t)
        for (std::int64_t ix = 0; ix < p.W; ++ix)
          axpy_c(sc.comb.data() + ix * p.C, xn + sc.ty[t] * p.sxh + ix * p.sxw, p.C, gy[sc.tk[t]], t == 0);
      x_pass_cl(p, sc.comb.data(), p.C, g1, out, sow, true);
    } else {
      for (int t = 0; t < nt; ++t)
        x_pass_cl(p, xn + sc.ty[t] * p.sxh, p.sxw, g + sc.tk[t] * p.kw, out, sow, t == 0);
    }
    if constexpr (!kDirect)
      for (std::int64_t ox = 0; ox < p.OW; ++ox) store_row(out_row + ox * p.syw, out + ox * p.C, p.C);
  });
}

// T: the storage type (float, bf16, fp16); sums in fp32.
template <typename T>
void run(const Params& p) {
  const T* x = p.x.as<const T>("x");
  T* y = p.y.as<T>("y");
  const float* g = p.g.as<const float>("g");
  const float* g1 = p.g1.as<const float>("g1");
  if (p.N * p.C * p.OH * p.OW == 0) return;
  advise_huge_pages(y, p.N * p.C * p.OH * p.OW * static_cast<std::int64_t>(sizeof(T)));
  if (p.channels_last) run_channels_last(x, g, g1, y, p);
  else run_nchw(x, g, g1, y, p);
}

}  // namespace

void forward(const Params& p, Stream) {
  check_args("upfirdn2d", p);
  dispatch_types<float, bf16, fp16>(p.x.dtype, "upfirdn2d", [&](auto tag) { run<decltype(tag)>(p); });
}

}  // namespace gk::upfirdn2d
