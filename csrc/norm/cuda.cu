// Normalization passes on CUDA (csrc/norm/norm.h), fp32 math and statistics for every storage type.
//
// Bytes: stats reads x once; apply reads x (+ residual) and writes y; backward reads dy and x twice
// and writes dx. Loads and stores move 16-byte vectors whenever the layout keeps a vector inside
// one (n, c) run (NCHW: HW % VEC == 0) or one sample's channel row (channels_last: C % VEC == 0)
// and the pointers are 16-byte aligned; otherwise one element per access.
//
// Reductions: grid (n, c) x split of the positions, each split writes an fp32 partial, the caller
// merges them in fixed order (no atomics, deterministic). A batch-1 VAE decoder block
// (1, 512, 64, 64) NCHW has only 512 rows, so rows are split until the grid covers ~4 waves.
#include "common/cuda_utils.cuh"
#include "norm/norm.h"

namespace gk::norm {
namespace {

constexpr int kThreads = 256;
constexpr int kClRows = 8;  // channels_last blocks: 32 lanes across channels x 8 rows of positions

template <typename T, int VEC>
__device__ __forceinline__ void load_vec(const T* p, float (&out)[VEC]) {
  if constexpr (VEC == 1) {
    out[0] = to_f32(p[0]);
  } else {
    const Vec<T, VEC> v = *reinterpret_cast<const Vec<T, VEC>*>(p);
#pragma unroll
    for (int k = 0; k < VEC; ++k) out[k] = to_f32(v.v[k]);
  }
}

template <typename T, int VEC>
__device__ __forceinline__ void store_vec(T* p, const float (&in)[VEC]) {
  if constexpr (VEC == 1) {
    p[0] = from_f32<T>(in[0]);
  } else {
    Vec<T, VEC> v;
#pragma unroll
    for (int k = 0; k < VEC; ++k) v.v[k] = from_f32<T>(in[k]);
    *reinterpret_cast<Vec<T, VEC>*>(p) = v;
  }
}

// ---- block reductions ------------------------------------------------------------------------

__device__ __forceinline__ Welford<float> warp_merge(Welford<float> w) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    Welford<float> o;
    o.count = __shfl_down_sync(0xffffffffu, w.count, off);
    o.mean = __shfl_down_sync(0xffffffffu, w.mean, off);
    o.m2 = __shfl_down_sync(0xffffffffu, w.m2, off);
    w.merge(o);
  }
  return w;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

// ---- NCHW reductions: one block per (row = n*C + c, split) ---------------------------------------

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
stats_nchw_kernel(const T* __restrict__ x, Shape s, std::int64_t chunk, float* __restrict__ part) {
  const std::int64_t row = blockIdx.x, split = blockIdx.y, NC = s.N * s.C;
  const std::int64_t lo = split * chunk, hi = min(s.HW, lo + chunk);
  const T* xr = x + row * s.HW;
  // Moments of x - k, k = the split's first value: the running means stay of the order of the
  // std, so their fp32 rounding does not grow with |mean| / std. The caller adds k back in fp64.
  const float kshift = to_f32(xr[lo]);
  Welford<float> w;
  for (std::int64_t i = lo + static_cast<std::int64_t>(threadIdx.x) * VEC; i < hi; i += kThreads * VEC) {
    float v[VEC];
    load_vec<T, VEC>(xr + i, v);
#pragma unroll
    for (int k = 0; k < VEC; ++k) v[k] -= kshift;
    // The vector's own moments, then one Chan merge: one division per vector, not per element.
    float sum = 0.f;
#pragma unroll
    for (int k = 0; k < VEC; ++k) sum += v[k];
    const float mb = sum * (1.f / VEC);
    float m2b = 0.f;
#pragma unroll
    for (int k = 0; k < VEC; ++k) m2b += (v[k] - mb) * (v[k] - mb);
    w.merge(static_cast<float>(VEC), mb, m2b);
  }
  __shared__ float sh[3][kThreads / 32];
  w = warp_merge(w);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) { sh[0][warp] = w.count; sh[1][warp] = w.mean; sh[2][warp] = w.m2; }
  __syncthreads();
  if (threadIdx.x == 0) {
    Welford<float> t;
    for (int k = 0; k < kThreads / 32; ++k) t.merge(sh[0][k], sh[1][k], sh[2][k]);
    part[(split * 3 + 0) * NC + row] = kshift;
    part[(split * 3 + 1) * NC + row] = t.mean;
    part[(split * 3 + 2) * NC + row] = t.m2;
  }
}

template <typename T, int A, int VEC>
__global__ void __launch_bounds__(kThreads)
bwd_reduce_nchw_kernel(const T* __restrict__ dy, const T* __restrict__ x, const float* __restrict__ M,
                       const float* __restrict__ Am, const float* __restrict__ Bm, const float* __restrict__ P, Shape s,
                       float alpha, std::int64_t chunk, float* __restrict__ part) {
  const std::int64_t row = blockIdx.x, split = blockIdx.y, NC = s.N * s.C;
  const std::int64_t lo = split * chunk, hi = min(s.HW, lo + chunk);
  const float m = M[row], a = Am[row], b = Bm[row], p = P[row];
  float s0 = 0.f, s1 = 0.f, s2 = 0.f;
  for (std::int64_t i = lo + static_cast<std::int64_t>(threadIdx.x) * VEC; i < hi; i += kThreads * VEC) {
    float xv[VEC], gv[VEC];
    load_vec<T, VEC>(x + row * s.HW + i, xv);
    load_vec<T, VEC>(dy + row * s.HW + i, gv);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const float u = xv[k] - m;
      const float g = gv[k] * act_derivative<A>(u * a + b, alpha);
      const float xh = u * p;
      s0 += g;
      s1 += g * xh;
      s2 += xh;
    }
  }
  __shared__ float sh[3][kThreads / 32];
  s0 = warp_sum(s0);
  s1 = warp_sum(s1);
  s2 = warp_sum(s2);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) { sh[0][warp] = s0; sh[1][warp] = s1; sh[2][warp] = s2; }
  __syncthreads();
  if (threadIdx.x < 3) {
    float t = 0.f;
    for (int k = 0; k < kThreads / 32; ++k) t += sh[threadIdx.x][k];
    part[(split * 3 + threadIdx.x) * NC + row] = t;
  }
}

// ---- channels_last reductions: block (32 lanes x VEC channels, kClRows rows) per
// (n, channel block, split); each lane keeps VEC per-channel states over its rows ----------------

template <typename T, int VEC>
__global__ void __launch_bounds__(32 * kClRows)
stats_cl_kernel(const T* __restrict__ x, Shape s, std::int64_t chunk, float* __restrict__ part) {
  const std::int64_t cblocks = (s.C + 32 * VEC - 1) / (32 * VEC);
  const std::int64_t n = blockIdx.x / cblocks, c0 = (blockIdx.x % cblocks) * 32 * VEC + threadIdx.x * VEC;
  const std::int64_t split = blockIdx.y, NC = s.N * s.C;
  const std::int64_t lo = split * chunk, hi = min(s.HW, lo + chunk);
  Welford<float> w[VEC];
  float k0[VEC] = {};  // per-channel shift: the split's first row (see stats_nchw_kernel)
  if (c0 < s.C) {
    load_vec<T, VEC>(x + (n * s.HW + lo) * s.C + c0, k0);
    // Blocks of up to kRowsPerMerge rows: shifted sums, then one Chan merge per block instead of a
    // division per element.
    constexpr int kRowsPerMerge = 16;
    for (std::int64_t r0 = lo + threadIdx.y; r0 < hi; r0 += kClRows * kRowsPerMerge) {
      float sum[VEC] = {}, sq[VEC] = {};
      int cnt = 0;
      for (std::int64_t r = r0; r < hi && r < r0 + kClRows * kRowsPerMerge; r += kClRows, ++cnt) {
        float v[VEC];
        load_vec<T, VEC>(x + (n * s.HW + r) * s.C + c0, v);
#pragma unroll
        for (int k = 0; k < VEC; ++k) {
          const float d = v[k] - k0[k];
          sum[k] += d;
          sq[k] += d * d;
        }
      }
#pragma unroll
      for (int k = 0; k < VEC; ++k)
        w[k].merge(Welford<float>::from_shifted_sums(static_cast<float>(cnt), 0.f, sum[k], sq[k]));
    }
  }
  __shared__ float sh[3][kClRows][32 * VEC];
#pragma unroll
  for (int k = 0; k < VEC; ++k) {
    sh[0][threadIdx.y][threadIdx.x * VEC + k] = w[k].count;
    sh[1][threadIdx.y][threadIdx.x * VEC + k] = w[k].mean;
    sh[2][threadIdx.y][threadIdx.x * VEC + k] = w[k].m2;
  }
  __syncthreads();
  if (threadIdx.y == 0 && c0 < s.C) {
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      Welford<float> t;
      for (int r = 0; r < kClRows; ++r)
        t.merge(sh[0][r][threadIdx.x * VEC + k], sh[1][r][threadIdx.x * VEC + k], sh[2][r][threadIdx.x * VEC + k]);
      part[(split * 3 + 0) * NC + n * s.C + c0 + k] = k0[k];
      part[(split * 3 + 1) * NC + n * s.C + c0 + k] = t.mean;
      part[(split * 3 + 2) * NC + n * s.C + c0 + k] = t.m2;
    }
  }
}

template <typename T, int A, int VEC>
__global__ void __launch_bounds__(32 * kClRows)
bwd_reduce_cl_kernel(const T* __restrict__ dy, const T* __restrict__ x, const float* __restrict__ M,
                     const float* __restrict__ Am, const float* __restrict__ Bm, const float* __restrict__ P, Shape s,
                     float alpha, std::int64_t chunk, float* __restrict__ part) {
  const std::int64_t cblocks = (s.C + 32 * VEC - 1) / (32 * VEC);
  const std::int64_t n = blockIdx.x / cblocks, c0 = (blockIdx.x % cblocks) * 32 * VEC + threadIdx.x * VEC;
  const std::int64_t split = blockIdx.y, NC = s.N * s.C;
  const std::int64_t lo = split * chunk, hi = min(s.HW, lo + chunk);
  float acc[3][VEC] = {};
  if (c0 < s.C) {
    float m[VEC], a[VEC], b[VEC], p[VEC];
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const std::int64_t nc = n * s.C + c0 + k;
      m[k] = M[nc]; a[k] = Am[nc]; b[k] = Bm[nc]; p[k] = P[nc];
    }
    for (std::int64_t r = lo + threadIdx.y; r < hi; r += kClRows) {
      float xv[VEC], gv[VEC];
      load_vec<T, VEC>(x + (n * s.HW + r) * s.C + c0, xv);
      load_vec<T, VEC>(dy + (n * s.HW + r) * s.C + c0, gv);
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const float u = xv[k] - m[k];
        const float g = gv[k] * act_derivative<A>(u * a[k] + b[k], alpha);
        acc[0][k] += g;
        acc[1][k] += g * u * p[k];
        acc[2][k] += u * p[k];
      }
    }
  }
  __shared__ float sh[3][kClRows][32 * VEC];
#pragma unroll
  for (int j = 0; j < 3; ++j)
#pragma unroll
    for (int k = 0; k < VEC; ++k) sh[j][threadIdx.y][threadIdx.x * VEC + k] = acc[j][k];
  __syncthreads();
  if (threadIdx.y < 3 && c0 < s.C) {
    const int j = threadIdx.y;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      float t = 0.f;
      for (int r = 0; r < kClRows; ++r) t += sh[j][r][threadIdx.x * VEC + k];
      part[(split * 3 + j) * NC + n * s.C + c0 + k] = t;
    }
  }
}

// ---- pointwise passes: flat grid-stride over VEC-element vectors -----------------------------

template <bool kBwd, typename T, int A, bool R, bool CL, int VEC, typename I>
__global__ void __launch_bounds__(kThreads)
pointwise_kernel(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ res, T* __restrict__ out,
                 const float* __restrict__ M, const float* __restrict__ Am, const float* __restrict__ Bm,
                 const float* __restrict__ A2, const float* __restrict__ B2, const float* __restrict__ C2, Shape s,
                 float alpha) {
  // I: 32-bit indices when the tensor allows (64-bit division costs ~5x more per vector).
  const I n = static_cast<I>(s.N * s.C * s.HW), nvec = n / VEC, HW = static_cast<I>(s.HW);
  const I C = static_cast<I>(s.C), HWC = HW * C;
  const I step = static_cast<I>(gridDim.x) * blockDim.x;
  for (I v = static_cast<I>(blockIdx.x) * blockDim.x + threadIdx.x; v < nvec; v += step) {
    const I i0 = v * VEC;
    // A vector never crosses a table entry in NCHW (HW % VEC == 0); in channels_last its VEC
    // channels are consecutive entries (C % VEC == 0).
    const I nc0 = CL ? (i0 / HWC) * C + i0 % C : i0 / HW;
    float xv[VEC], gv[VEC], rv[VEC], o[VEC];
    load_vec<T, VEC>(x + i0, xv);
    if constexpr (kBwd) load_vec<T, VEC>(dy + i0, gv);
    if constexpr (R) load_vec<T, VEC>(res + i0, rv);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const I nc = CL ? nc0 + k : nc0;  // NCHW: the same (L1-resident) table entry for the vector
      const float u = xv[k] - __ldg(M + nc);
      const float h = u * __ldg(Am + nc) + __ldg(Bm + nc);
      if constexpr (kBwd) {
        const float g = gv[k] * act_derivative<A>(h, alpha);
        o[k] = g * __ldg(A2 + nc) + u * __ldg(B2 + nc) + __ldg(C2 + nc);
      } else {
        o[k] = act_forward<A>(h, alpha);
        if constexpr (R) o[k] += rv[k];
      }
    }
    store_vec<T, VEC>(out + i0, o);
  }
}

template <typename F>
void with_vec(int dtype, bool vec_ok, F&& f) {
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    constexpr int V = 16 / sizeof(T);
    if (vec_ok) f(tag, std::integral_constant<int, V>{});
    else f(tag, std::integral_constant<int, 1>{});
  });
}

int vec_width(int dtype) { return dtype == kFloat32 ? 4 : 8; }

// The layout keeps each vector inside one table run, and every pointer is 16-byte aligned.
bool vectorizable(const Shape& s, int dtype, std::initializer_list<const void*> ptrs) {
  const int V = vec_width(dtype);
  if ((s.channels_last ? s.C : s.HW) % V != 0) return false;
  for (const void* p : ptrs)
    if (!aligned16(p)) return false;
  return true;
}

template <bool kBwd>
void pointwise(const void* dy, const void* x, const void* res, void* out, const float* M, const float* A,
               const float* B, const float* A2, const float* B2, const float* C2, const Shape& s, int act, float alpha,
               int dtype, std::uintptr_t stream, const char* opname) {
  const std::int64_t n = s.N * s.C * s.HW;
  if (n == 0) return;
  auto st = reinterpret_cast<cudaStream_t>(stream);
  with_vec(dtype, vectorizable(s, dtype, {dy, x, res, out}), [&](auto tag, auto vec) {
    using T = decltype(tag);
    constexpr int V = decltype(vec)::value;
    dispatch_norm_act(act, [&](auto a) {
      constexpr int K = decltype(a)::value;
      auto go = [&](auto r, auto cl, auto idx) {
        constexpr bool R = decltype(r)::value, CL = decltype(cl)::value;
        using I = decltype(idx);
        pointwise_kernel<kBwd, T, K, R, CL, V, I><<<grid_size(n / V, kThreads), kThreads, 0, st>>>(
            static_cast<const T*>(dy), static_cast<const T*>(x), static_cast<const T*>(res), static_cast<T*>(out), M, A,
            B, A2, B2, C2, s, alpha);
      };
      auto by_index = [&](auto r, auto cl) {
        // + one grid stride of headroom: the loop index may step past n before it stops.
        if (n + static_cast<std::int64_t>(grid_size(n / V, kThreads)) * kThreads * V < (std::int64_t{1} << 31))
          go(r, cl, std::uint32_t{});
        else
          go(r, cl, std::int64_t{});
      };
      auto by_layout = [&](auto r) {
        if (s.channels_last) by_index(r, std::true_type{});
        else by_index(r, std::false_type{});
      };
      if (res != nullptr) by_layout(std::true_type{});
      else by_layout(std::false_type{});
    });
  });
  GK_CUDA_CHECK_LAUNCH(opname);
}

dim3 reduce_grid(const Shape& s, std::int64_t chunk, int vec) {
  const std::int64_t splits = (s.HW + chunk - 1) / chunk;
  const std::int64_t rows = s.channels_last ? s.N * ((s.C + 32 * vec - 1) / (32 * vec)) : s.N * s.C;
  return dim3(static_cast<unsigned>(rows), static_cast<unsigned>(splits));
}

}  // namespace

std::int64_t cuda_split_chunk(const Shape& s) {
  // Aim for ~4 blocks per SM; never split below 8 * kThreads positions (NCHW) or 32 rows
  // (channels_last), where the partials would cost more than they save. A multiple of 8 keeps
  // split boundaries on vector boundaries.
  const std::int64_t rows = s.channels_last ? s.N * ((s.C + 127) / 128) : s.N * s.C;
  const std::int64_t want = 4LL * sm_count();
  std::int64_t splits = rows >= want ? 1 : (want + rows - 1) / std::max<std::int64_t>(rows, 1);
  const std::int64_t min_chunk = s.channels_last ? 32 : 8 * kThreads;
  splits = std::max<std::int64_t>(1, std::min(splits, (s.HW + min_chunk - 1) / min_chunk));
  std::int64_t chunk = (s.HW + splits - 1) / splits;
  chunk = std::max<std::int64_t>(8, (chunk + 7) / 8 * 8);
  return chunk;
}

void channel_stats_cuda(const void* x, const Shape& s, std::int64_t chunk, float* part, int dtype,
                        std::uintptr_t stream) {
  if (s.N * s.C == 0 || s.HW == 0) return;
  auto st = reinterpret_cast<cudaStream_t>(stream);
  with_vec(dtype, vectorizable(s, dtype, {x}), [&](auto tag, auto vec) {
    using T = decltype(tag);
    constexpr int V = decltype(vec)::value;
    const dim3 grid = reduce_grid(s, chunk, V);
    if (s.channels_last)
      stats_cl_kernel<T, V><<<grid, dim3(32, kClRows), 0, st>>>(static_cast<const T*>(x), s, chunk, part);
    else
      stats_nchw_kernel<T, V><<<grid, kThreads, 0, st>>>(static_cast<const T*>(x), s, chunk, part);
  });
  GK_CUDA_CHECK_LAUNCH("norm statistics");
}

void apply_cuda(const void* x, const float* M, const float* A, const float* B, const void* res, void* y,
                const Shape& s, int act, float alpha, int dtype, std::uintptr_t stream) {
  pointwise<false>(nullptr, x, res, y, M, A, B, nullptr, nullptr, nullptr, s, act, alpha, dtype, stream,
                   "norm apply");
}

void backward_reduce_cuda(const void* dy, const void* x, const float* M, const float* A, const float* B,
                          const float* P, const Shape& s, int act, float alpha, std::int64_t chunk, float* part,
                          int dtype, std::uintptr_t stream) {
  if (s.N * s.C == 0 || s.HW == 0) return;
  auto st = reinterpret_cast<cudaStream_t>(stream);
  with_vec(dtype, vectorizable(s, dtype, {dy, x}), [&](auto tag, auto vec) {
    using T = decltype(tag);
    constexpr int V = decltype(vec)::value;
    const dim3 grid = reduce_grid(s, chunk, V);
    dispatch_norm_act(act, [&](auto a) {
      constexpr int K = decltype(a)::value;
      if (s.channels_last)
        bwd_reduce_cl_kernel<T, K, V><<<grid, dim3(32, kClRows), 0, st>>>(
            static_cast<const T*>(dy), static_cast<const T*>(x), M, A, B, P, s, alpha, chunk, part);
      else
        bwd_reduce_nchw_kernel<T, K, V><<<grid, kThreads, 0, st>>>(
            static_cast<const T*>(dy), static_cast<const T*>(x), M, A, B, P, s, alpha, chunk, part);
    });
  });
  GK_CUDA_CHECK_LAUNCH("norm backward reduction");
}

void backward_apply_cuda(const void* dy, const void* x, const float* M, const float* A, const float* B,
                         const float* A2, const float* B2, const float* C2, void* dx, const Shape& s, int act,
                         float alpha, int dtype, std::uintptr_t stream) {
  pointwise<true>(dy, x, nullptr, dx, M, A, B, A2, B2, C2, s, act, alpha, dtype, stream, "norm backward");
}

// ---- entry points -----------------------------------------------------------------------------

std::int64_t split_chunk(const SplitParams& p, Stream) { return cuda_split_chunk(shape_of(p)); }

void channel_stats(const StatsParams& p, Stream stream) {
  const Shape s = shape_of(p);
  check_operands("norm statistics", p.x, {}, {}, s.N * s.C);
  check(p.chunk > 0 && p.partials.numel == 3 * s.N * s.C * ((s.HW + p.chunk - 1) / p.chunk), "norm statistics",
        "partials must be [ceil(HW / chunk)][3][N*C]");
  channel_stats_cuda(p.x.ptr(), s, p.chunk, p.partials.as<float>("partials"), p.x.dtype, stream);
}

void apply(const PointwiseParams& p, Stream stream) {
  const Shape s = shape_of(p);
  check_operands("norm apply", p.x, {&p.residual, &p.out}, {&p.M, &p.A, &p.B}, s.N * s.C);
  apply_cuda(p.x.ptr(), p.M.as<const float>("M"), p.A.as<const float>("A"), p.B.as<const float>("B"),
             p.residual.ptr(), p.out.mut_ptr(), s, p.act, p.alpha, p.x.dtype, stream);
}

void backward_apply(const PointwiseParams& p, Stream stream) {
  const Shape s = shape_of(p);
  check_operands("norm backward", p.x, {&p.dy, &p.out}, {&p.M, &p.A, &p.B, &p.A2, &p.B2, &p.C2}, s.N * s.C);
  backward_apply_cuda(p.dy.ptr(), p.x.ptr(), p.M.as<const float>("M"), p.A.as<const float>("A"),
                      p.B.as<const float>("B"), p.A2.as<const float>("A2"), p.B2.as<const float>("B2"),
                      p.C2.as<const float>("C2"), p.out.mut_ptr(), s, p.act, p.alpha, p.x.dtype, stream);
}

void backward_reduce(const ReduceParams& p, Stream stream) {
  const Shape s = shape_of(p);
  check_operands("norm backward reduction", p.x, {&p.dy}, {&p.M, &p.A, &p.B, &p.P}, s.N * s.C);
  check(p.chunk > 0 && p.partials.numel == 3 * s.N * s.C * ((s.HW + p.chunk - 1) / p.chunk),
        "norm backward reduction", "partials must be [ceil(HW / chunk)][3][N*C]");
  backward_reduce_cuda(p.dy.ptr(), p.x.ptr(), p.M.as<const float>("M"), p.A.as<const float>("A"),
                       p.B.as<const float>("B"), p.P.as<const float>("P"), s, p.act, p.alpha, p.chunk,
                       p.partials.as<float>("partials"), p.x.dtype, stream);
}

}  // namespace gk::norm
