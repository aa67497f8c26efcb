// filtered_lrelu on the CPU: one (n, c) plane per task (OpenMP). The plane's intermediate image
// (TH x TW floats: 27 KiB at StyleGAN3-T's 36x36, up 2, 12 taps) is computed row by row with the
// upfirdn2d row machinery (csrc/upfirdn2d/polyphase_cpu.h), activated in place (writing or reading
// the mask), and filtered down, all while it sits in L1/L2: memory traffic is x, the mask and y.
#include <vector>

#include "common/cpu_memory.h"
#include "filtered_lrelu/filtered_lrelu.h"
#include "upfirdn2d/polyphase_cpu.h"

namespace gk::filtered_lrelu {
namespace {

using upfirdn2d::Axis;
using upfirdn2d::RowScratch;
using upfirdn2d::XPass;

template <int kMode>
GK_CPU_CLONES void point_row(float* __restrict v, std::uint8_t* __restrict m, std::int64_t n, Params p) {
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

}  // namespace

void run_cpu(const float* x, const float* b, std::uint8_t* mask, const float* gA, const float* gA1, const float* gB,
             const float* gB1, float* y, const Params& p) {
  const std::int64_t planes = p.N * p.C;
  if (planes * p.OH * p.OW == 0) return;
  const Axis ax{p.W, p.upx, 1, p.pax, p.kax}, ay{p.H, p.upy, 1, p.pay, p.kay};
  const Axis bx{p.TW, 1, p.downx, p.pbx, p.kbx}, by{p.TH, 1, p.downy, p.pby, p.kby};
  const XPass xa(ax, p.TW), xb(bx, p.OW);
  const std::int64_t tsize = p.TH * p.TW;
  advise_huge_pages(y, planes * p.OH * p.OW * static_cast<std::int64_t>(sizeof(float)));
#pragma omp parallel
  {
    RowScratch sa(xa, p.W, (p.kay + p.upy - 1) / p.upy), sb(xb, p.TW, p.kby);
    std::vector<float> t(tsize);
#pragma omp for schedule(static)
    for (std::int64_t plane = 0; plane < planes; ++plane) {
      const float* xp = x + plane * p.H * p.W;
      const float bias = b != nullptr ? b[plane % p.C] : 0.f;
      std::uint8_t* mp = mask + plane * tsize;
      for (std::int64_t r = 0; r < p.TH; ++r)
        upfirdn2d::pass_row(ay, xa, sa, xp, p.W, p.W, gA, gA1, p.kax, bias, r, t.data() + r * p.TW);
      if (p.mode == 0) point_row<0>(t.data(), mp, tsize, p);
      else point_row<1>(t.data(), mp, tsize, p);
      float* yp = y + plane * p.OH * p.OW;
      for (std::int64_t r = 0; r < p.OH; ++r)
        upfirdn2d::pass_row(by, xb, sb, t.data(), p.TW, p.TW, gB, gB1, p.kbx, 0.f, r, yp + r * p.OW);
    }
  }
}

}  // namespace gk::filtered_lrelu
