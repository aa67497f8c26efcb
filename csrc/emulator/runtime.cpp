// The CUDA emulator's scheduler (csrc/emulator/runtime.h): blocks run one after another; inside a
// block every CUDA thread is a fiber with its own stack, and the fibers take turns, each running
// until it waits at a barrier (__syncthreads, or the exchange of a warp shuffle) or returns.
// Fibers switch with a few instructions of x86-64 assembly (callee-saved registers, stack pointer,
// SSE and x87 control words), not ucontext, whose signal-mask system calls would cost a
// microsecond per switch.
#include "emulator/runtime.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#if !defined(__x86_64__) || !defined(__linux__)
#error "the gankern CUDA emulator supports x86-64 Linux only"
#endif

// gk_emu_switch(save, load): saves the running context's stack pointer in *save and resumes the
// context whose stack pointer is `load`.
extern "C" void gk_emu_switch(void** save, void* load);
asm(R"(
  .text
  .globl gk_emu_switch
  .hidden gk_emu_switch
  .type gk_emu_switch, @function
gk_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size gk_emu_switch, .-gk_emu_switch
)");

namespace gk_emu {
namespace {

constexpr int kWarp = 32;
constexpr int kMaxThreads = 1024;
constexpr std::size_t kStackBytes = 256 * 1024;  // kernels need little; the sanitizer build more
constexpr std::size_t kGuardBytes = 4096;         // an overflow faults instead of corrupting a neighbour

struct Barrier {
  int arrived = 0;
  unsigned generation = 0;
};

struct Thread {
  ThreadIndex index;
  void* sp = nullptr;  // saved stack pointer while switched out
  bool done = false;
  const Barrier* waiting = nullptr;
  unsigned waiting_generation = 0;
  int warp = 0, lane = 0;
};

struct Stack {
  char* base = nullptr;
  Stack() {
    void* p = mmap(nullptr, kStackBytes + kGuardBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("gankern CUDA emulator: cannot map a fiber stack");
    base = static_cast<char*>(p);
    mprotect(base, kGuardBytes, PROT_NONE);
  }
  Stack(const Stack&) = delete;
  Stack(Stack&& o) noexcept : base(o.base) { o.base = nullptr; }
  ~Stack() {
    if (base) munmap(base, kStackBytes + kGuardBytes);
  }
  char* top() const { return base + kGuardBytes + kStackBytes; }
};

struct Block {
  std::vector<Thread> threads;
  std::vector<Barrier> warp_barriers;
  std::vector<int> warp_size, warp_live;
  std::vector<std::uint64_t> slots;  // one per thread, for warp exchanges
  Barrier barrier;
  int live = 0;
  const std::function<void()>* kernel = nullptr;
  void* scheduler_sp = nullptr;
  std::string error;
};

thread_local Block* t_block = nullptr;
thread_local Thread* t_thread = nullptr;
thread_local std::vector<Stack> t_stacks;

std::string name(const dim3& d) {
  return "(" + std::to_string(d.x) + ", " + std::to_string(d.y) + ", " + std::to_string(d.z) + ")";
}

void yield_to_scheduler() {
  Block* b = t_block;
  gk_emu_switch(&t_thread->sp, b->scheduler_sp);
}

[[noreturn]] void fiber_entry() {
  Block* b = t_block;
  try {
    (*b->kernel)();
  } catch (const std::exception& e) {
    if (b->error.empty()) b->error = e.what();
  }
  t_thread->done = true;
  gk_emu_switch(&t_thread->sp, b->scheduler_sp);
  std::abort();  // a finished fiber is never resumed
}

// A fresh fiber's stack, laid out as gk_emu_switch leaves a switched-out one: control words, six
// callee-saved registers, and fiber_entry as the return address (entered with rsp = 8 mod 16, as
// after a call).
void* prepare_stack(const Stack& s) {
  auto* top = reinterpret_cast<std::uint64_t*>(s.top());  // 16-byte aligned
  std::uint64_t* sp = top - 2;
  sp[0] = reinterpret_cast<std::uint64_t>(&fiber_entry);
  sp[1] = 0;
  sp -= 7;
  for (int i = 1; i < 7; ++i) sp[i] = 0;  // r15, r14, r13, r12, rbx, rbp
  std::uint32_t mxcsr = 0;
  std::uint16_t fcw = 0;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fcw));
  std::memcpy(reinterpret_cast<char*>(sp), &mxcsr, 4);
  std::memcpy(reinterpret_cast<char*>(sp) + 4, &fcw, 2);
  return sp;
}

// Arrive at `bar`, which completes when `total` threads have arrived; wait for it to complete.
void arrive(Barrier& bar, int total) {
  const unsigned gen = bar.generation;
  if (++bar.arrived == total) {
    bar.arrived = 0;
    ++bar.generation;
    return;
  }
  t_thread->waiting = &bar;
  t_thread->waiting_generation = gen;
  yield_to_scheduler();
  t_thread->waiting = nullptr;
}

// Threads run in index order in even blocks and in reverse order in odd ones: a missing barrier
// between a shared-memory write and another thread's read shows up in one of the two orders,
// whichever of the two threads has the lower index.
void run_block(Block& b, bool reverse) {
  std::size_t remaining = b.threads.size();
  const std::size_t n = b.threads.size();
  while (remaining > 0) {
    bool progress = false;
    for (std::size_t k = 0; k < n; ++k) {
      Thread& t = b.threads[reverse ? n - 1 - k : k];
      if (t.done || (t.waiting && t.waiting->generation == t.waiting_generation)) continue;
      progress = true;
      t_thread = &t;
      gk_emu_switch(&b.scheduler_sp, t.sp);
      t_thread = nullptr;
      if (!b.error.empty()) return;
      if (t.done) {
        --remaining;
        --b.live;
        --b.warp_live[t.warp];
        // A thread that returns while others wait for it at a barrier: they would wait forever
        // (or, on some GPUs, go on with stale data). Either way a bug.
        if (b.barrier.arrived > 0)
          b.error = "thread " + name(t.index.thread) + " returned while " + std::to_string(b.barrier.arrived) +
                    " threads wait at __syncthreads()";
        else if (b.warp_barriers[t.warp].arrived > 0)
          b.error = "thread " + name(t.index.thread) + " returned while lanes of its warp wait in a shuffle";
        if (!b.error.empty()) return;
      }
    }
    if (!progress) {
      b.error = "deadlock: every unfinished thread waits at a barrier that cannot complete "
                "(__syncthreads() or a shuffle reached by only part of the block or warp)";
      return;
    }
  }
}

// The sanitizer build traps (an illegal instruction) where a check fails. While a grid runs, this
// handler names the emulated thread, then lets the previous handler (Python's faulthandler, which
// prints the Python stack) take the re-executed trap.
struct sigaction t_previous_sigill;

void on_sanitizer_trap(int, siginfo_t*, void*) {
  char msg[320];
  const Thread* t = t_thread;
  const int len = t ? std::snprintf(msg, sizeof msg,
                                    "\ngankern CUDA emulator: a sanitizer check failed in block (%u, %u, %u), thread "
                                    "(%u, %u, %u): a misaligned vector access, or an array index out of range\n",
                                    t->index.block.x, t->index.block.y, t->index.block.z, t->index.thread.x,
                                    t->index.thread.y, t->index.thread.z)
                    : std::snprintf(msg, sizeof msg, "\ngankern CUDA emulator: a sanitizer check failed\n");
  if (len > 0) (void)!write(STDERR_FILENO, msg, static_cast<std::size_t>(len));
  sigaction(SIGILL, &t_previous_sigill, nullptr);
}

}  // namespace

const ThreadIndex& current() { return t_thread->index; }

int lane() { return t_thread->lane; }

void syncthreads() {
  Block& b = *t_block;
  if (b.live < static_cast<int>(b.threads.size()))
    throw std::runtime_error("__syncthreads() reached after " + std::to_string(b.threads.size() - b.live) +
                             " threads of the block returned");
  arrive(b.barrier, static_cast<int>(b.threads.size()));
}

std::uint64_t warp_exchange(unsigned mask, std::uint64_t bits, int src) {
  Block& b = *t_block;
  Thread& t = *t_thread;
  const int w = t.warp, size = b.warp_size[w];
  const unsigned full = size == kWarp ? 0xffffffffu : (1u << size) - 1u;
  if ((mask & full) != full)
    throw std::runtime_error("warp shuffle with a partial mask: not emulated (mask " + std::to_string(mask) + ")");
  if (b.warp_live[w] < size) throw std::runtime_error("warp shuffle after lanes of the warp returned");
  const std::size_t base = static_cast<std::size_t>(w) * kWarp;
  b.slots[base + t.lane] = bits;
  arrive(b.warp_barriers[w], size);  // every lane has written
  const std::uint64_t out = src >= 0 && src < size ? b.slots[base + src] : bits;
  arrive(b.warp_barriers[w], size);  // every lane has read: the slots may be written again
  return out;
}

int sm_count() {
  static const int sms = [] {
    const char* env = std::getenv("GANKERN_EMULATOR_SMS");
    const int n = env ? std::atoi(env) : 0;
    return n > 0 ? n : 132;
  }();
  return sms;
}

void run_grid(dim3 grid, dim3 block, std::size_t shmem, const std::function<void()>& kernel) {
  const std::uint64_t nthreads = std::uint64_t{block.x} * block.y * block.z;
  if (nthreads == 0 || nthreads > kMaxThreads || block.z > 64)
    throw std::runtime_error("CUDA launch: invalid block " + name(block));
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535)
    throw std::runtime_error("CUDA launch: invalid grid " + name(grid));
  if (shmem != 0) throw std::runtime_error("CUDA launch: dynamic shared memory is not emulated");
  if (t_block != nullptr) throw std::runtime_error("CUDA launch from inside a kernel is not emulated");

  while (t_stacks.size() < nthreads) t_stacks.emplace_back();
  Block b;
  b.kernel = &kernel;
  b.threads.resize(nthreads);
  const int nwarps = static_cast<int>((nthreads + kWarp - 1) / kWarp);
  b.warp_barriers.resize(nwarps);
  b.warp_size.resize(nwarps);
  for (int w = 0; w < nwarps; ++w) b.warp_size[w] = std::min<int>(kWarp, static_cast<int>(nthreads) - w * kWarp);
  b.slots.resize(static_cast<std::size_t>(nwarps) * kWarp);

  struct sigaction trap {};
  trap.sa_sigaction = on_sanitizer_trap;
  trap.sa_flags = SA_SIGINFO;
  sigemptyset(&trap.sa_mask);
  sigaction(SIGILL, &trap, &t_previous_sigill);
  t_block = &b;
  struct Reset {
    ~Reset() {
      t_block = nullptr;
      t_thread = nullptr;
      sigaction(SIGILL, &t_previous_sigill, nullptr);
    }
  } reset;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        b.live = static_cast<int>(nthreads);
        b.warp_live = b.warp_size;
        b.barrier = Barrier{};
        for (auto& wb : b.warp_barriers) wb = Barrier{};
        std::size_t i = 0;
        for (unsigned tz = 0; tz < block.z; ++tz)
          for (unsigned ty = 0; ty < block.y; ++ty)
            for (unsigned tx = 0; tx < block.x; ++tx, ++i) {
              Thread& t = b.threads[i];
              t = Thread{};
              t.index = {dim3(tx, ty, tz), dim3(bx, by, bz), block, grid};
              t.warp = static_cast<int>(i / kWarp);
              t.lane = static_cast<int>(i % kWarp);
              t.sp = prepare_stack(t_stacks[i]);
            }
        run_block(b, (bx + by + bz) % 2 == 1);
        if (!b.error.empty())
          throw std::runtime_error("CUDA emulator, block " + name(dim3(bx, by, bz)) + ": " + b.error);
      }
}

}  // namespace gk_emu
