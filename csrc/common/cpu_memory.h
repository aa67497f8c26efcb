// Memory hints for CPU kernels that write large, freshly allocated outputs.
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace gk {

// Bytes the kernel can hand out as 2 MiB pages right now without compacting memory: free buddy
// blocks of order >= 9 (4 KiB << 9) in /proc/buddyinfo. -1 if unknown.
inline std::int64_t free_huge_page_bytes() {
  std::FILE* f = std::fopen("/proc/buddyinfo", "r");
  if (f == nullptr) return -1;
  const std::int64_t page = 4096;
  std::int64_t total = 0;
  char line[1024];
  while (std::fgets(line, sizeof line, f)) {  // "Node 0, zone   Normal   10127   3844 ..."
    char* p = std::strstr(line, "zone");
    if (p == nullptr) continue;
    p += 4;
    while (*p == ' ') ++p;
    while (*p && *p != ' ') ++p;  // the zone's name
    for (int order = 0;; ++order) {
      char* end;
      const long long n = std::strtoll(p, &end, 10);
      if (end == p) break;
      p = end;
      if (order >= 9) total += n * (page << order);
    }
  }
  std::fclose(f);
  return total;
}

// A large torch.empty() is fresh mmap'd memory, and the kernel's first write faults in every
// 4 KiB page (zeroed by the OS): for a 128 MiB output that is 32k faults, three quarters of a
// memory-bound kernel's time on this project's VMs. Where transparent huge pages are in "madvise"
// mode (common), asking for them before the first touch makes that 64 faults of 2 MiB: measured
// 3-4x faster (benchmarks/NOTES.md). But with THP defrag=madvise a fault in an advised range that
// finds no free 2 MiB block compacts memory synchronously, which can be slower than 4 KiB faults
// (seen after heavy builds), so the hint is given only while enough 2 MiB blocks are free.
// Harmless on touched memory. GANKERN_HUGE_PAGES=0 turns it off (read once).
inline void advise_huge_pages(void* p, std::int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  static const bool enabled = [] {
    const char* v = std::getenv("GANKERN_HUGE_PAGES");
    return v == nullptr || std::strcmp(v, "0") != 0;
  }();
  constexpr std::uintptr_t kHuge = 2u << 20;
  if (!enabled || p == nullptr || bytes < static_cast<std::int64_t>(4 * kHuge)) return;
  if (free_huge_page_bytes() < 2 * bytes) return;  // ~20 us, only for outputs of 8 MiB and more
  const std::uintptr_t a = (reinterpret_cast<std::uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const std::uintptr_t e = (reinterpret_cast<std::uintptr_t>(p) + static_cast<std::uintptr_t>(bytes)) & ~(kHuge - 1);
  if (e > a) madvise(reinterpret_cast<void*>(a), e - a, MADV_HUGEPAGE);
#else
  (void)p, (void)bytes;
#endif
}

}  // namespace gk
