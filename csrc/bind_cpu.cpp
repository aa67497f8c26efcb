// gankern._C: the CPU kernels. The families bind themselves (csrc/<family>/bind.cpp, the same file
// for the CUDA module: csrc/common/bind.h); this adds what is particular to the CPU module.
#include <pybind11/pybind11.h>

#include "common/bind.h"
#include "common/cpu_memory.h"
#include "common/thread_pool.h"

PYBIND11_MODULE(_C, m) {
  m.doc() = "gankern CPU kernels (C++, csrc/common/thread_pool.h)";
  m.def("set_num_threads", [](int n) { gk::ThreadPool::get().set_threads(n); });
  m.def("get_max_threads", []() { return gk::cpu_threads(); });
  m.def("huge_pages", []() { return gk::huge_pages_pay(); },
        "whether large fresh outputs get the huge-page hint in this process (measured at first use)");
  m.def("cpu_clone", []() { return std::string(gk::cpu_clone()); },
        "the GK_CPU_CLONES version the kernels run on this CPU (GANKERN_CPU_CLONES build switch)");
  gk::bind::bind_families(m);  // every csrc/<family>/bind.cpp
}
