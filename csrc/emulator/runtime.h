// The CUDA emulator: runs gankern's CUDA kernels, compiled from the same csrc/<family>/cuda.cu
// sources by the host compiler, on the CPU, so their logic is tested where there is no GPU.
//
// What it models: the launch geometry (grid, block, gridDim/blockDim/blockIdx/threadIdx), one
// fiber per CUDA thread with __syncthreads() as a real block barrier, warp shuffles as exchanges
// among the 32 lanes of a warp, __shared__ memory per block, fp16/bf16 storage with
// round-to-nearest-even conversions, and the device-side math (the `__CUDA_ARCH__` branches of
// csrc/common). What it checks on top of a GPU: a barrier or full-mask shuffle that not every live
// thread reaches (divergence, or threads that returned early) is an error, not a hang; with the
// sanitizer build, misaligned vector accesses and out-of-range indexing of fixed-size arrays abort.
// Threads of a block interleave only at barriers, in index order in even blocks and reverse order
// in odd ones, so a missing barrier between a shared-memory write and another thread's read gives
// wrong results. What it cannot show: speed, the memory model beyond that (blocks run one after
// another), nvcc's code generation, and the hardware's ulps.
//
// Kernels launch through gk_emu::launch(kernel, grid, block, shmem, stream)(args...), which
// csrc/emulator/translate.py writes in place of kernel<<<grid, block, shmem, stream>>>(args...).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>

// ---- the CUDA language, as plain C++ ------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// One copy per block: blocks of a launch run one after another on one host thread.
#define __shared__ static thread_local

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace gk_emu {

struct ThreadIndex {
  dim3 thread, block, block_dim, grid_dim;
};

// The emulated thread running now on this host thread (set by the scheduler before each switch).
const ThreadIndex& current();

// Blocks until every live thread of the block (warp) arrives; throws if one cannot.
void syncthreads();
// Every lane of the calling warp puts `bits` in its slot; returns the slot of lane `src` (its own
// value when src is outside the warp), as __shfl_*_sync do. `mask` must name every live lane.
std::uint64_t warp_exchange(unsigned mask, std::uint64_t bits, int src);
int lane();

// Runs `kernel` once per thread of every block of the grid.
void run_grid(dim3 grid, dim3 block, std::size_t shmem, const std::function<void()>& kernel);

// Multiprocessors the emulated GPU reports (launch sizing depends on it): the H200's 132, or
// GANKERN_EMULATOR_SMS.
int sm_count();

// Checks of the emulator itself (csrc/emulator/self_test.cu, tests/test_emulator.py).
double self_test(int kind);

template <typename... P>
auto launch(void (*kernel)(P...), dim3 grid, dim3 block, std::size_t shmem = 0, const void* /*stream*/ = nullptr) {
  return [=](auto&&... args) {
    // Each thread gets its own copy of the parameters, converted as a real launch converts them.
    run_grid(grid, block, shmem, [&] {
      std::tuple<P...> params(static_cast<P>(args)...);
      std::apply(kernel, params);
    });
  };
}

}  // namespace gk_emu

#define threadIdx (::gk_emu::current().thread)
#define blockIdx (::gk_emu::current().block)
#define blockDim (::gk_emu::current().block_dim)
#define gridDim (::gk_emu::current().grid_dim)

inline void __syncthreads() { gk_emu::syncthreads(); }

template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "__shfl_down_sync: 1 to 8-byte values");
  std::uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  const int lane = gk_emu::lane(), seg = lane / width * width;
  const int src = lane + static_cast<int>(delta) < seg + width ? lane + static_cast<int>(delta) : lane;
  bits = gk_emu::warp_exchange(mask, bits, src);
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

// ---- device functions the kernels call ------------------------------------------------------
template <typename T>
inline T __ldg(const T* p) { return *p; }

using std::max;
using std::min;

// a product rounded on its own: volatile keeps the compiler from fusing it into an FMA
inline float __fmul_rn(float a, float b) { volatile float p = a * b; return p; }

inline unsigned __umulhi(unsigned a, unsigned b) {
  return static_cast<unsigned>((static_cast<std::uint64_t>(a) * b) >> 32);
}

// sin(pi x), cos(pi x) with exact argument reduction, like CUDA's sincospif.
inline void sincospif(float x, float* s, float* c) {
  const double r = std::remainder(static_cast<double>(x), 2.0);  // exact, in [-1, 1]
  *s = static_cast<float>(std::sin(M_PI * r));
  *c = static_cast<float>(std::cos(M_PI * r));
}

// ---- runtime API --------------------------------------------------------------------------------
using cudaError_t = int;
constexpr cudaError_t cudaSuccess = 0;
using cudaStream_t = const void*;
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };

inline cudaError_t cudaGetLastError() { return cudaSuccess; }  // launch errors throw instead
inline const char* cudaGetErrorString(cudaError_t) { return "no error"; }
inline cudaError_t cudaGetDevice(int* dev) { *dev = 0; return cudaSuccess; }
inline cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int) {
  *value = attr == cudaDevAttrMultiProcessorCount ? gk_emu::sm_count() : 0;
  return cudaSuccess;
}
inline cudaError_t cudaRuntimeGetVersion(int* v) { *v = 0; return cudaSuccess; }
