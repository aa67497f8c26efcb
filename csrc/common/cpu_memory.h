// Memory hints for CPU kernels that write large, freshly allocated outputs.
#pragma once
#include <algorithm>
#include <atomic>
#include <chrono>
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

#if defined(__linux__) && defined(MADV_HUGEPAGE)
// Seconds to fault in a fresh anonymous mapping of `bytes` (one write per 4 KiB page), with or
// without the huge-page hint; -1 if the mapping fails.
inline double fault_in_seconds(std::size_t bytes, bool hint) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return -1;
  constexpr std::uintptr_t kHuge = 2u << 20;
  const std::uintptr_t a = (reinterpret_cast<std::uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const std::uintptr_t e = (reinterpret_cast<std::uintptr_t>(p) + bytes) & ~(kHuge - 1);
  const auto t0 = std::chrono::steady_clock::now();
  if (hint && e > a) madvise(reinterpret_cast<void*>(a), e - a, MADV_HUGEPAGE);
  volatile char* c = static_cast<volatile char*>(p);
  for (std::size_t i = 0; i < bytes; i += 4096) c[i] = 1;
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  munmap(p, bytes);
  return s;
}

// Whether the hint pays on this machine, measured once per process at the first large output:
// 16 MiB faulted in with and without it, alternately, five times each; on when the hinted median
// is under 0.7x the plain one. Measured rather than assumed because the answer differs between
// machine kinds (3-4x faster on the AMD VMs this project was tuned on; on an Intel VM the hint
// was once measured 1.8x slower inside `gankern bench`), and a kernel cannot tell them apart
// otherwise. Measured only while free 2 MiB blocks are plentiful (otherwise the probe would time
// compaction, a passing state: that call goes without the hint and the next one measures).
// Costs ~1-30 ms once. GANKERN_HUGE_PAGES=0/1 skips the measurement (off/on).
inline bool huge_pages_pay() {
  static const int forced = [] {
    const char* v = std::getenv("GANKERN_HUGE_PAGES");
    return v == nullptr ? -1 : std::strcmp(v, "0") == 0 ? 0 : std::strcmp(v, "1") == 0 ? 1 : -1;
  }();
  if (forced >= 0) return forced == 1;
  static std::atomic<int> measured{-1};  // -1: not yet, else 0/1
  int m = measured.load(std::memory_order_relaxed);
  if (m >= 0) return m == 1;
  constexpr std::size_t kProbe = std::size_t{16} << 20;
  if (free_huge_page_bytes() < static_cast<std::int64_t>(8 * kProbe)) return false;
  double plain[5], hinted[5];
  for (int r = 0; r < 5; ++r) {
    plain[r] = fault_in_seconds(kProbe, false);
    hinted[r] = fault_in_seconds(kProbe, true);
    if (plain[r] < 0 || hinted[r] < 0) return false;
  }
  std::sort(plain, plain + 5);
  std::sort(hinted, hinted + 5);
  const bool on = hinted[2] < 0.7 * plain[2];
  int expected = -1;
  if (measured.compare_exchange_strong(expected, on ? 1 : 0)) {
    if (const char* d = std::getenv("GANKERN_HUGE_PAGES_VERBOSE"); d != nullptr && *d && std::strcmp(d, "0") != 0)
      std::fprintf(stderr, "gankern: 16 MiB faulted in %.2f ms plain, %.2f ms with the huge-page hint: hint %s\n",
                   plain[2] * 1e3, hinted[2] * 1e3, on ? "on" : "off");
    return on;
  }
  return expected == 1;
}
#endif

// A large torch.empty() is fresh mmap'd memory, and the kernel's first write faults in every
// 4 KiB page (zeroed by the OS): for a 128 MiB output that is 32k faults, three quarters of a
// memory-bound kernel's time on this project's AMD VMs. Where transparent huge pages are in
// "madvise" mode (common), asking for them before the first touch makes that 64 faults of 2 MiB.
// Given only where it measurably pays on this machine (huge_pages_pay), and, since with THP
// defrag=madvise a fault in an advised range that finds no free 2 MiB block compacts memory
// synchronously (slower than 4 KiB faults; seen after heavy builds), only while enough 2 MiB
// blocks are free. Harmless on touched memory.
inline void advise_huge_pages(void* p, std::int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr std::uintptr_t kHuge = 2u << 20;
  if (p == nullptr || bytes < static_cast<std::int64_t>(4 * kHuge)) return;
  if (!huge_pages_pay()) return;
  if (free_huge_page_bytes() < 2 * bytes) return;  // ~20 us, only for outputs of 8 MiB and more
  const std::uintptr_t a = (reinterpret_cast<std::uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const std::uintptr_t e = (reinterpret_cast<std::uintptr_t>(p) + static_cast<std::uintptr_t>(bytes)) & ~(kHuge - 1);
  if (e > a) madvise(reinterpret_cast<void*>(a), e - a, MADV_HUGEPAGE);
#else
  (void)p, (void)bytes;
#endif
}

}  // namespace gk
