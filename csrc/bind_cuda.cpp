// gankern._cuda (and gankern._cuda_emu, the CUDA emulator's build): host-only C++ compiled by the
// host compiler. The families bind themselves (csrc/<family>/bind.cpp, the same file for the CPU
// module: csrc/common/bind.h); this adds what is particular to the CUDA module.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include "common/bind.h"

// gankern._cuda, or gankern._cuda_emu when built for the CUDA emulator (CMakeLists.txt).
#ifndef GANKERN_CUDA_MODULE
#define GANKERN_CUDA_MODULE _cuda
#endif

PYBIND11_MODULE(GANKERN_CUDA_MODULE, m) {
  m.doc() = "gankern CUDA kernels";
  m.def("runtime_version", []() {
    int v = 0;
    cudaRuntimeGetVersion(&v);
    return v;
  });
  m.def("compiled_archs", []() { return std::string(GANKERN_CUDA_ARCHS_STR); });
#ifdef GANKERN_CUDA_EMULATOR
  m.def("emulator_self_test", &gk_emu::self_test);
#endif
  gk::bind::bind_families(m);  // every csrc/<family>/bind.cpp
}
