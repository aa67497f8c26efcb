// Kernels that check the CUDA emulator itself (tests/test_emulator.py): one correct block
// reduction through shared memory and warp shuffles, and the three bugs the emulator must report
// instead of hanging or computing garbage. Built into gankern._cuda_emu only.
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace gk_emu {
namespace {

constexpr int kThreads = 256;

__device__ float warp_sum(float v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

// out[blockIdx.x] = sum over the block of (blockIdx.x * kThreads + threadIdx.x), by warp shuffles
// and then shared memory: wrong if barriers or shuffles exchange the wrong values.
__global__ void block_sum(float* out) {
  __shared__ float warps[kThreads / 32];
  const float v = warp_sum(static_cast<float>(blockIdx.x * kThreads + threadIdx.x));
  if (threadIdx.x % 32 == 0) warps[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = 0.f;
    for (int w = 0; w < kThreads / 32; ++w) t += warps[w];
    out[blockIdx.x] = t;
  }
}

// Half the block returns before the barrier the other half waits at.
__global__ void divergent_barrier(float* out) {
  if (threadIdx.x >= kThreads / 2) return;
  __syncthreads();
  out[0] = 1.f;
}

// A full-mask shuffle after one lane of the warp returned.
__global__ void shuffle_after_return(float* out) {
  if (threadIdx.x == 5) return;
  out[threadIdx.x] = warp_sum(1.f);
}

// Lane 0 of warp 1 waits at the block barrier while the other lanes of its warp wait in a shuffle
// it never joins, and the rest of the block waits at the barrier: nobody can go on.
__global__ void deadlock(float* out) {
  if (threadIdx.x == 32) {
    __syncthreads();
  } else if (threadIdx.x > 32 && threadIdx.x < 64) {
    out[threadIdx.x] = warp_sum(1.f);
  } else {
    __syncthreads();
  }
}

}  // namespace

// Runs self-test `kind` (0 block_sum over 3 blocks, so both thread orders run, 1 divergent_barrier, 2 shuffle_after_return,
// 3 deadlock); returns the sum of the outputs, or throws the emulator's error.
double self_test(int kind) {
  float out[3 * kThreads] = {};
  switch (kind) {
    case 0: block_sum<<<3, kThreads>>>(out); break;
    case 1: divergent_barrier<<<1, kThreads>>>(out); break;
    case 2: shuffle_after_return<<<1, kThreads>>>(out); break;
    case 3: deadlock<<<1, kThreads>>>(out); break;
    default: throw std::invalid_argument("self_test: unknown kind " + std::to_string(kind));
  }
  double s = 0;
  for (float v : out) s += v;
  return s;
}

}  // namespace gk_emu
