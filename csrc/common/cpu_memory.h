// Memory hints for CPU kernels that write large, freshly allocated outputs.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace gk {

// A large torch.empty() is fresh mmap'd memory, and the kernel's first write faults in every
// 4 KiB page (zeroed by the OS): for a 128 MiB output that is 32k faults, a large share of a
// memory-bound kernel's time. Where transparent huge pages are in "madvise" mode (common), asking
// for them before the first touch makes that 64 faults of 2 MiB. Harmless on touched memory.
// GANKERN_HUGE_PAGES=0 turns the hint off (read once).
inline void advise_huge_pages(void* p, std::int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  static const bool enabled = [] {
    const char* v = std::getenv("GANKERN_HUGE_PAGES");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  if (!enabled) return;
  constexpr std::uintptr_t kHuge = 2u << 20;
  if (p == nullptr || bytes < static_cast<std::int64_t>(4 * kHuge)) return;
  const std::uintptr_t a = (reinterpret_cast<std::uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const std::uintptr_t e = (reinterpret_cast<std::uintptr_t>(p) + static_cast<std::uintptr_t>(bytes)) & ~(kHuge - 1);
  if (e > a) madvise(reinterpret_cast<void*>(a), e - a, MADV_HUGEPAGE);
#else
  (void)p, (void)bytes;
#endif
}

}  // namespace gk
