// Small helpers for the CUDA kernels: storage <-> fp32 conversion, 16-byte vectors, launch sizing.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/view.h"

namespace gk {

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_f32(float v);
template <> __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// N elements of T moved as one 16-byte load/store when N * sizeof(T) == 16.
template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

// Sum of v over a block of kThreads threads (a multiple of 32), returned to every thread. Fixed
// order (warp shuffles, then the warps' sums in warp order), so deterministic. Every thread of the
// block must call it; `sh` is kThreads / 32 floats of shared memory, reusable across calls.
template <int kThreads>
__device__ __forceinline__ float block_sum(float v, float* sh) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();  // sh may still be read by the previous call
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  float t = 0.f;
  for (int w = 0; w < kThreads / 32; ++w) t += sh[w];
  return t;
}

// The 16-byte vector paths need every pointer they touch aligned (nullptr: not touched).
inline bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// Streaming multiprocessors of the current device (the emulator reports the H200's 132, or
// GANKERN_EMULATOR_SMS). Read once per process.
inline int sm_count() {
  static const int sms = [] {
    int dev = 0, n = 0;
    cudaGetDevice(&dev);
    cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
    return n > 0 ? n : 80;
  }();
  return sms;
}

// Enough blocks to fill every SM several times over; grid-stride loops cover the rest.
inline int grid_size(std::int64_t work_items, int threads) {
  const int sms = sm_count();
  std::int64_t want = (work_items + threads - 1) / threads;
  std::int64_t cap = static_cast<std::int64_t>(sms) * 16;
  return static_cast<int>(want < cap ? (want > 0 ? want : 1) : cap);
}

template <> struct dtype_code<__half> : std::integral_constant<int, kFloat16> {};
template <> struct dtype_code<__nv_bfloat16> : std::integral_constant<int, kBfloat16> {};

// Calls f(T{}) with the GPU storage type named by a gk::DType code (common/view.h).
template <typename F>
inline void dispatch_dtype(int dtype, const char* what, F&& f) {
  dispatch_types<float, __half, __nv_bfloat16>(dtype, what, std::forward<F>(f));
}
template <typename F>
inline void dispatch_dtype(int dtype, F&& f) { dispatch_dtype(dtype, "gankern", std::forward<F>(f)); }

}  // namespace gk
