// VAE sampling on CUDA. One thread per Philox counter: it makes the four normals of elements
// 4k .. 4k+3 and handles those four elements, so eps never touches memory.
// Bytes: randn writes n * sizeof(T); forward reads mu, logvar and writes z (and the elementwise KL
// when asked); backward reads dz, mu, logvar and writes dmu, dlogvar.
// KL sums are deterministic: each block of kKlBlock elements is reduced by one CUDA block in a
// fixed tree order into partials[b] (fp64), which the caller adds in order. No atomics.
#include "common/cuda_utils.cuh"
#include "vae/vae.h"

namespace gk::vae {
namespace {

constexpr int kThreads = 256;

// KL partial sums: one CUDA block per kKlBlockCuda elements, so partials[b] does not depend on the
// grid or the GPU. 4 counters per thread keeps enough blocks in flight (n / 4096) to fill the GPU.
constexpr int kCudaKlBlock = static_cast<int>(kKlBlockCuda);
static_assert(kCudaKlBlock == 4 * 4 * kThreads, "gankern/_tables.py: VAE_KL_BLOCK_CUDA is 4 counters per thread");

// Row-strided addressing (see vae.h): element i of mu sits at (i / inner) * rs + i % inner.
struct Addr {
  std::int64_t mu, lv;
  __device__ Addr(std::int64_t i, const Layout& L) {
    if (L.rows == 1) {
      mu = lv = i;
    } else {
      const std::int64_t r = i / L.inner, c = i - r * L.inner;
      mu = r * L.mu_rs + c;
      lv = r * L.lv_rs + c;
    }
  }
};

__device__ __forceinline__ float clamp_f(float v, float lo, float hi) { return clamp_lv(v, lo, hi); }

// The 4 elements of one counter: loads as one vector when contiguous and aligned, else one by one
// (odd row lengths, the last partial counter). Returns how many of the 4 are valid.
template <typename T>
__device__ __forceinline__ int load4(const T* __restrict__ base_mu, const T* __restrict__ base_lv, std::int64_t i0,
                                     std::int64_t n, const Layout& L, bool vec_ok, float m[4], float v[4]) {
  const int cnt = n - i0 >= 4 ? 4 : static_cast<int>(n - i0);
  if (vec_ok && cnt == 4) {  // the 4 elements lie in one row (vec_ok implies inner % 4 == 0 or one row)
    const Addr at(i0, L);
    const Vec<T, 4> a = *reinterpret_cast<const Vec<T, 4>*>(base_mu + at.mu);
    const Vec<T, 4> b = *reinterpret_cast<const Vec<T, 4>*>(base_lv + at.lv);
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      m[j] = to_f32(a.v[j]);
      v[j] = to_f32(b.v[j]);
    }
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j) {  // fixed trip count: m and v stay in registers
      if (j < cnt) {
        const Addr a(i0 + j, L);
        m[j] = to_f32(base_mu[a.mu]);
        v[j] = to_f32(base_lv[a.lv]);
      } else {
        m[j] = v[j] = 0.f;
      }
    }
  }
  return cnt;
}

template <typename T>
__device__ __forceinline__ void store4(T* __restrict__ out, std::int64_t i0, int cnt, bool vec_ok, const float r[4]) {
  if (vec_ok && cnt == 4) {
    Vec<T, 4> o;
#pragma unroll
    for (int j = 0; j < 4; ++j) o.v[j] = from_f32<T>(r[j]);
    *reinterpret_cast<Vec<T, 4>*>(out + i0) = o;
  } else {
#pragma unroll
    for (int j = 0; j < 4; ++j)
      if (j < cnt) out[i0 + j] = from_f32<T>(r[j]);
  }
}

template <typename T, bool kZ, bool kKl, bool kSum>
__global__ void __launch_bounds__(kThreads)
forward_kernel(const T* __restrict__ mu, const T* __restrict__ lv, T* __restrict__ z, T* __restrict__ kl,
               double* __restrict__ partials, Layout L, Sampling p, bool vec_ok) {
  const std::int64_t n = L.rows * L.inner;
  const std::int64_t b0 = static_cast<std::int64_t>(blockIdx.x) * kCudaKlBlock;
  float acc = 0.f;
#pragma unroll
  for (int j = 0; j < kCudaKlBlock / 4 / kThreads; ++j) {
    const std::int64_t i0 = b0 + 4 * (static_cast<std::int64_t>(j) * kThreads + threadIdx.x);  // coalesced
    if (i0 >= n) break;
    float m[4], v[4], eps[4], zr[4], t[4];
    const int cnt = load4(mu, lv, i0, n, L, vec_ok, m, v);
    if constexpr (kZ) randn4(p.seed, p.offset + static_cast<std::uint64_t>(i0 / 4), eps);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const float vc = clamp_f(v[q], p.lv_lo, p.lv_hi);
      const float s = expf(0.5f * vc);
      if constexpr (kZ) zr[q] = fmaf(s, eps[q], m[q]);
      // s * s rounded on its own: otherwise nvcc may fuse it into kl_term's sum as an FMA in one
      // instantiation and not the other, and the fused op's KL differs in the last bit from
      // kl_normal's (seen on an H200)
      t[q] = kl_term(m[q], vc, __fmul_rn(s, s));
      if (kSum && q < cnt) acc += t[q];
    }
    if constexpr (kZ) store4(z, i0, cnt, vec_ok, zr);
    if constexpr (kKl) store4(kl, i0, cnt, vec_ok, t);
  }
  if constexpr (kSum) {
    // Fixed-order tree: shuffles inside each warp, then warp 0 adds the warps' sums in order.
    __shared__ float warp_sums[kThreads / 32];
#pragma unroll
    for (int d = 16; d > 0; d /= 2) acc += __shfl_down_sync(0xffffffffu, acc, d);
    if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x / 32] = acc;
    __syncthreads();
    if (threadIdx.x == 0) {
      double s = 0.0;
      for (int w = 0; w < kThreads / 32; ++w) s += warp_sums[w];
      partials[blockIdx.x] = s;
    }
  }
}

template <typename T, bool kZ, bool kKl, bool kElem, bool kDmu>
__global__ void __launch_bounds__(kThreads)
backward_kernel(const T* __restrict__ dz, const float* __restrict__ gkl, float gscale, const T* __restrict__ mu,
                const T* __restrict__ lv, T* __restrict__ dmu, T* __restrict__ dlv, Layout L, Sampling p, bool vec_ok) {
  const std::int64_t n = L.rows * L.inner;
  const std::int64_t m4 = (n + 3) / 4;
  const float gconst = kKl && !kElem ? gscale * __ldg(gkl) : 0.f;  // reduced KL: one device read, no host sync
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t k = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < m4; k += stride) {
    const std::int64_t i0 = 4 * k;
    float m[4], v[4], eps[4], d[4] = {0.f, 0.f, 0.f, 0.f}, gm[4], gv[4];
    const int cnt = load4(mu, lv, i0, n, L, vec_ok, m, v);
    if constexpr (kZ) {
      randn4(p.seed, p.offset + static_cast<std::uint64_t>(k), eps);
      if (vec_ok && cnt == 4) {
        const Vec<T, 4> a = *reinterpret_cast<const Vec<T, 4>*>(dz + i0);
#pragma unroll
        for (int q = 0; q < 4; ++q) d[q] = to_f32(a.v[q]);
      } else {
#pragma unroll
        for (int q = 0; q < 4; ++q)
          if (q < cnt) d[q] = to_f32(dz[i0 + q]);
      }
    }
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const float vc = clamp_f(v[q], p.lv_lo, p.lv_hi);
      const float s = expf(0.5f * vc);
      float a = 0.f, b = 0.f;
      if constexpr (kKl) {
        const float g = kElem ? (q < cnt ? gscale * gkl[i0 + q] : 0.f) : gconst;
        a = g * m[q];
        b = g * 0.5f * (s * s - 1.0f);
      }
      if constexpr (kZ) {
        a += d[q];
        b += d[q] * eps[q] * 0.5f * s;
      }
      gm[q] = a;
      gv[q] = (v[q] >= p.lv_lo && v[q] <= p.lv_hi) ? b : 0.f;  // torch.clamp's inclusive pass-through
    }
    if constexpr (kDmu) store4(dmu, i0, cnt, vec_ok, gm);
    store4(dlv, i0, cnt, vec_ok, gv);
  }
}

// A counter's 4 elements can move as one vector when they never straddle rows and every row starts
// 4-element aligned: one flat run, or rows (channel chunks) of a multiple of 4 elements. Then the
// row/column division runs once per counter, not per element.
bool rows_vectorizable(const Layout& L) {
  return L.rows == 1 || (L.inner % 4 == 0 && L.mu_rs % 4 == 0 && L.lv_rs % 4 == 0);
}

}  // namespace

void forward(const ForwardParams& fp, Stream stream) {
  const Layout L = layout_of(fp);
  const Sampling p = sampling_of(fp);
  const std::int64_t n = L.rows * L.inner;
  check_args("vae_forward", fp.mu, fp.logvar, n, {&fp.z, &fp.kl});
  if (n == 0) return;
  const void *mu = fp.mu.ptr(), *lv = fp.logvar.ptr();
  void *z = fp.z.mut_ptr(), *kl = fp.kl.mut_ptr();
  double* kl_partials = fp.kl_partials.as<double>("kl_partials");
  const int dtype = fp.mu.dtype;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  const std::int64_t nblocks = (n + kCudaKlBlock - 1) / kCudaKlBlock;
  dispatch_dtype(dtype, "vae_forward", [&](auto tag) {
    using T = decltype(tag);
    const bool vec_ok = rows_vectorizable(L) && aligned16(mu) && aligned16(lv) && aligned16(z) && aligned16(kl);
    auto go = [&](auto zt, auto kt, auto st) {
      constexpr bool kZ = decltype(zt)::value, kK = decltype(kt)::value, kS = decltype(st)::value;
      forward_kernel<T, kZ, kK, kS><<<static_cast<unsigned>(nblocks), kThreads, 0, s>>>(
          static_cast<const T*>(mu), static_cast<const T*>(lv), static_cast<T*>(z), static_cast<T*>(kl), kl_partials,
          L, p, vec_ok);
    };
    using Tr = std::true_type;
    using Fa = std::false_type;
    const bool hz = z != nullptr, hk = kl != nullptr, hs = kl_partials != nullptr;
    if (hz && hk && hs) go(Tr{}, Tr{}, Tr{});
    else if (hz && hk) go(Tr{}, Tr{}, Fa{});
    else if (hz && hs) go(Tr{}, Fa{}, Tr{});
    else if (hz) go(Tr{}, Fa{}, Fa{});
    else if (hk && hs) go(Fa{}, Tr{}, Tr{});
    else if (hk) go(Fa{}, Tr{}, Fa{});
    else if (hs) go(Fa{}, Fa{}, Tr{});
  });
  GK_CUDA_CHECK_LAUNCH("vae_forward");
}

void backward(const BackwardParams& bp, Stream stream) {
  const Layout L = layout_of(bp);
  const Sampling p = sampling_of(bp);
  const std::int64_t n = L.rows * L.inner;
  check_args("vae_backward", bp.mu, bp.logvar, n, {&bp.dz, &bp.dmu, &bp.dlv});
  if (n == 0) return;
  const void *dz = bp.dz.ptr(), *mu = bp.mu.ptr(), *lv = bp.logvar.ptr();
  void *dmu = bp.dmu.mut_ptr(), *dlv = bp.dlv.mut_ptr();
  const Grad g{bp.gkl.as<const float>("gkl"), bp.gkl_elementwise, bp.gkl_scale};
  const int dtype = bp.mu.dtype;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  dispatch_dtype(dtype, "vae_backward", [&](auto tag) {
    using T = decltype(tag);
    const bool vec_ok = rows_vectorizable(L) && aligned16(mu) && aligned16(lv) && aligned16(dz) &&
                        aligned16(dmu) && aligned16(dlv);
    auto go = [&](auto zt, auto kt, auto et, auto dt) {
      constexpr bool kZ = decltype(zt)::value, kK = decltype(kt)::value;
      constexpr bool kE = decltype(et)::value, kD = decltype(dt)::value;
      backward_kernel<T, kZ, kK, kE, kD><<<grid_size((n + 3) / 4, kThreads), kThreads, 0, s>>>(
          static_cast<const T*>(dz), g.gkl, g.gkl_scale, static_cast<const T*>(mu), static_cast<const T*>(lv),
          static_cast<T*>(dmu), static_cast<T*>(dlv), L, p, vec_ok);
    };
    using Tr = std::true_type;
    using Fa = std::false_type;
    const bool hz = dz != nullptr, hk = g.gkl != nullptr, he = g.gkl_elementwise, hd = dmu != nullptr;
    if (hz && !hk) {
      if (hd) go(Tr{}, Fa{}, Fa{}, Tr{});
      else go(Tr{}, Fa{}, Fa{}, Fa{});
    } else if (hz && hk) {
      if (he) go(Tr{}, Tr{}, Tr{}, Tr{});
      else go(Tr{}, Tr{}, Fa{}, Tr{});
    } else if (hk) {
      if (he) go(Fa{}, Tr{}, Tr{}, Tr{});
      else go(Fa{}, Tr{}, Fa{}, Tr{});
    }
  });
  GK_CUDA_CHECK_LAUNCH("vae_backward");
}

}  // namespace gk::vae
