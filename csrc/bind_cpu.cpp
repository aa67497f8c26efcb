// gankern._C: the CPU kernels. The families bind themselves (csrc/<family>/bind.cpp, the same file
// for the CUDA module: csrc/common/bind.h); this adds what is particular to the CPU module.
#include <omp.h>
#include <pybind11/pybind11.h>

#include "common/bind.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "gankern CPU kernels (C++/OpenMP)";
  m.def("set_num_threads", [](int n) { omp_set_num_threads(n); });
  m.def("get_max_threads", []() { return omp_get_max_threads(); });
  gk::bind::bind_families(m);  // every csrc/<family>/bind.cpp
}
