// filtered_lrelu on the CPU: one (n, c) plane per task (common/thread_pool.h). The plane's intermediate image
// (TH x TW floats: 27 KiB at StyleGAN3-T's 36x36, up 2, 12 taps) is computed row by row with the
// upfirdn2d row machinery (csrc/upfirdn2d/polyphase_cpu.h), activated in place (writing or reading
// the mask), and filtered down, all while it sits in L1/L2: memory traffic is x, the mask and y.
// Storage fp32, bf16 or fp16 (common/cpu_dtypes.h): x is converted as stage A reads it, the
// intermediate image and every sum are fp32 (so the mask is decided in fp32), each output row is
// rounded once.
#include <algorithm>
#include <optional>
#include <type_traits>
#include <vector>

#include "common/cpu_dtypes.h"
#include "common/cpu_memory.h"
#include "common/thread_pool.h"
#include "filtered_lrelu/filtered_lrelu.h"
#include "upfirdn2d/polyphase_cpu.h"

namespace gk::filtered_lrelu {
namespace {

using upfirdn2d::Axis;
using upfirdn2d::RowScratch;
using upfirdn2d::XPass;

template <int kMode>
GK_CPU_CLONES void point_row(float* __restrict v, std::uint8_t* __restrict m, std::int64_t n, const Params& p) {
  if constexpr (kMode == 0) {
    for (std::int64_t i = 0; i < n; ++i) {
      std::uint8_t code;
      v[i] = activate(v[i], p, code);
      m[i] = code;
    }
  } else {
    const float fneg = p.gain * p.slope, fpos = p.gain;
    for (std::int64_t i = 0; i < n; ++i) v[i] *= m[i] == 1 ? fpos : (m[i] == 0 ? fneg : 0.f);
  }
}

// One plane's scratch: the two passes' row scratch and the intermediate image.
struct PlaneScratch {
  RowScratch sa, sb;
  std::vector<float> t;
};

// T: the storage type of x and y (float, bf16, fp16).
template <typename T>
void run_planes(const Params& p) {
  const T* x = p.x.as<const T>("x");
  T* y = p.y.as<T>("y");
  std::uint8_t* mask = p.mask.as<std::uint8_t>("mask");
  const float* b = p.b.as<const float>("b");
  const float *gA = p.gA.as<const float>("gA"), *gA1 = p.gA1.as<const float>("gA1");
  const float *gB = p.gB.as<const float>("gB"), *gB1 = p.gB1.as<const float>("gB1");
  const std::int64_t planes = p.N * p.C;
  if (planes * p.OH * p.OW == 0) return;
  const Axis ax{p.W, p.upx, 1, p.pax, p.kax}, ay{p.H, p.upy, 1, p.pay, p.kay};
  const Axis bx{p.TW, 1, p.downx, p.pbx, p.kbx}, by{p.TH, 1, p.downy, p.pby, p.kby};
  const XPass xa(ax, p.TW), xb(bx, p.OW);
  const std::int64_t tsize = p.TH * p.TW;
  advise_huge_pages(y, planes * p.OH * p.OW * static_cast<std::int64_t>(sizeof(T)));
  std::vector<std::optional<PlaneScratch>> scratches(cpu_threads());  // one per pool slot, made on first use
  // One plane per claim: planes are few (N*C) and each is a whole image's work.
  parallel_for_slots(planes, 1, [&](std::int64_t plane, int slot) {
    std::optional<PlaneScratch>& s = scratches[slot];
    if (!s)
      s.emplace(PlaneScratch{RowScratch(xa, p.W, (p.kay + p.upy - 1) / p.upy), RowScratch(xb, p.TW, p.kby),
                             std::vector<float>(tsize)});
    float* t = s->t.data();
    const T* xp = x + plane * p.H * p.W;
    const float bias = b != nullptr ? b[plane % p.C] : 0.f;
    std::uint8_t* mp = mask + plane * tsize;
    for (std::int64_t r = 0; r < p.TH; ++r)
      upfirdn2d::pass_row(ay, xa, s->sa, xp, p.W, p.W, gA, gA1, p.kax, bias, r, t + r * p.TW);
    if (p.mode == 0) point_row<0>(t, mp, tsize, p);
    else point_row<1>(t, mp, tsize, p);
    T* yp = y + plane * p.OH * p.OW;
    for (std::int64_t r = 0; r < p.OH; ++r) {
      if constexpr (std::is_same_v<T, float>) {
        upfirdn2d::pass_row(by, xb, s->sb, t, p.TW, p.TW, gB, gB1, p.kbx, 0.f, r, yp + r * p.OW);
      } else {
        upfirdn2d::pass_row(by, xb, s->sb, t, p.TW, p.TW, gB, gB1, p.kbx, 0.f, r, s->sb.row.data());
        upfirdn2d::store_row(yp + r * p.OW, s->sb.row.data(), p.OW);
      }
    }
  });
}

}  // namespace

void run(const Params& p, Stream) {
  check_args("filtered_lrelu", p);
  dispatch_types<float, bf16, fp16>(p.x.dtype, "filtered_lrelu", [&](auto tag) { run_planes<decltype(tag)>(p); });
}

}  // namespace gk::filtered_lrelu
