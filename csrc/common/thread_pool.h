// The CPU kernels' thread pool: parallel loops that degrade gracefully when cores are shared.
//
// Why not OpenMP: libgomp (the runtime torch loads, which our module then shares) makes idle
// threads busy-wait for ~300k pause instructions before sleeping unless OMP_WAIT_POLICY=passive is
// set before the process starts, and every parallel region ends in a barrier that all team threads
// must reach. On a 2-core machine with other work running, a thread that lost its core holds up
// every barrier while its partner spins on the other core: measured under load on the 2-vCPU VM,
// GroupNorm+SiLU channels_last took 340-380 ms with libgomp's default policy and 12 ms with
// OMP_WAIT_POLICY=passive (benchmarks/NOTES.md, "Shared cores").
//
// Here: work is claimed from a shared counter. Each thread's first claim is an equal share
// (n / threads, in whole grains), every later claim one `grain`: when every thread gets a core the
// loop runs as a static schedule does, a thread that starts late takes only what is left, and one
// that never got a core takes nothing. The caller claims too and returns once every index is done
// and no worker still holds the job. Why equal first shares: with one-grain claims only (2 MiB of
// bias_act output each), two threads writing interleaved pieces of a fresh output ran 1.4-1.9x
// slower than two static halves on the 2-vCPU AMD VM (not from page faults alone; the cause was not
// found), and the shares recovered static speed; under a second busy process they kept most of
// the one-grain schedule's advantage over OpenMP's static one (benchmarks/NOTES.md, "The thread
// pool's claim order"). Idle workers
// spin for at most ~30 us (back-to-back loops of one op reuse them without a sleep/wake) and then
// sleep on a condition variable. Loop bodies must not throw.
#pragma once
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <new>
#include <thread>
#include <type_traits>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define GK_CPU_RELAX() _mm_pause()
#else
#define GK_CPU_RELAX() std::this_thread::yield()
#endif

#if defined(__unix__)
#include <pthread.h>
#endif

namespace gk {

class ThreadPool {
 public:
  static ThreadPool& get() {
    // Never destroyed: detached workers may still sleep in it while the process exits.
    static ThreadPool* pool = [] {
      auto* p = new ThreadPool();
#if defined(__unix__)
      pthread_atfork(nullptr, nullptr, [] { ThreadPool::get().reset_after_fork(); });
#endif
      return p;
    }();
    return *pool;
  }

  int threads() const { return threads_.load(std::memory_order_relaxed); }
  void set_threads(int n) { threads_.store(n < 1 ? 1 : n, std::memory_order_relaxed); }

  // f(i, slot) for every i in [0, n); slot in [0, threads()) is unique among the threads running
  // the loop at once (per-thread scratch). Runs inline when the loop is a single chunk, the pool
  // has one thread, `parallel` is false, or another loop is running (a second Python thread).
  template <typename F>
  void run(std::int64_t n, std::int64_t grain, F&& f, bool parallel = true) {
    if (n <= 0) return;
    grain = grain < 1 ? 1 : grain;
    const std::int64_t chunks = (n + grain - 1) / grain;
    const int want = threads();
    if (!parallel || chunks < 2 || want < 2 || !submit_.try_lock()) {
      for (std::int64_t i = 0; i < n; ++i) f(i, 0);
      return;
    }
    std::lock_guard<std::mutex> submitted(submit_, std::adopt_lock);
    using Fn = std::remove_reference_t<F>;
    Job job;
    job.ctx = const_cast<void*>(static_cast<const void*>(&f));
    job.call = [](void* ctx, std::int64_t lo, std::int64_t hi, int slot) {
      Fn& fn = *static_cast<Fn*>(ctx);
      for (std::int64_t i = lo; i < hi; ++i) fn(i, slot);
    };
    job.n = n;
    job.grain = grain;
    job.share = ((n + want - 1) / want + grain - 1) / grain * grain;
    const int helpers = static_cast<int>(std::min<std::int64_t>(want - 1, chunks - 1));
    {
      std::lock_guard<std::mutex> lk(mu_);
      while (workers_ < want - 1) {  // lazily, up to threads() - 1 workers
        std::thread([this] { worker(); }).detach();
        ++workers_;
      }
      job.max_slots = helpers + 1;
      job_ = &job;
      gen_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    work(job, 0);
    {
      std::unique_lock<std::mutex> lk(mu_);
      job_ = nullptr;  // workers that wake from now on find nothing and sleep again
    }
    // Done when every index is finished and no worker still holds the job (brief spin first: the
    // last claim usually ends within microseconds).
    const auto t0 = std::chrono::steady_clock::now();
    while (job.done.load(std::memory_order_acquire) < n) {
      GK_CPU_RELAX();
      if (std::chrono::steady_clock::now() - t0 > std::chrono::microseconds(30)) break;
    }
    std::unique_lock<std::mutex> lk(mu_);
    idle_.wait(lk, [&] { return job.done.load(std::memory_order_acquire) == n && job.refs == 0; });
  }

 private:
  struct Job {
    void* ctx = nullptr;
    void (*call)(void*, std::int64_t, std::int64_t, int) = nullptr;
    std::int64_t n = 0, grain = 1, share = 1;  // share: a thread's first claim (whole grains)
    std::atomic<std::int64_t> next{0};  // first index not yet claimed
    std::atomic<std::int64_t> done{0};  // indices finished
    int refs = 0;                       // workers inside the job (guarded by mu_)
    int slots = 1;                      // slot 0 is the caller's (guarded by mu_)
    int max_slots = 1;
  };

  ThreadPool() = default;

  void work(Job& j, int slot) {
    for (std::int64_t size = j.share;; size = j.grain) {
      const std::int64_t lo = j.next.fetch_add(size, std::memory_order_relaxed);
      if (lo >= j.n) return;
      const std::int64_t hi = std::min(j.n, lo + size);
      j.call(j.ctx, lo, hi, slot);
      if (j.done.fetch_add(hi - lo, std::memory_order_acq_rel) + (hi - lo) == j.n) {
        std::lock_guard<std::mutex> lk(mu_);
        idle_.notify_all();
      }
    }
  }

  void worker() {
    std::uint64_t seen = gen_.load(std::memory_order_acquire);
    for (;;) {
      const auto t0 = std::chrono::steady_clock::now();
      for (int k = 0; gen_.load(std::memory_order_acquire) == seen; ++k) {
        GK_CPU_RELAX();
        if ((k & 63) == 63 && std::chrono::steady_clock::now() - t0 > std::chrono::microseconds(30)) break;
      }
      Job* j = nullptr;
      int slot = 0;
      {
        std::unique_lock<std::mutex> lk(mu_);
        wake_.wait(lk, [&] { return gen_.load(std::memory_order_relaxed) != seen; });
        seen = gen_.load(std::memory_order_relaxed);
        if (job_ == nullptr || job_->slots >= job_->max_slots) continue;
        j = job_;
        ++j->refs;
        slot = j->slots++;
      }
      work(*j, slot);
      std::lock_guard<std::mutex> lk(mu_);
      if (--j->refs == 0) idle_.notify_all();
    }
  }

  // In a forked child only the forking thread exists: forget the parent's workers (new ones start
  // at the next loop) and any lock state they held.
  void reset_after_fork() {
    new (&mu_) std::mutex();
    new (&submit_) std::mutex();
    new (&wake_) std::condition_variable();
    new (&idle_) std::condition_variable();
    job_ = nullptr;
    workers_ = 0;
  }

  std::atomic<int> threads_{static_cast<int>(std::thread::hardware_concurrency() ? std::thread::hardware_concurrency() : 1)};
  std::mutex submit_;
  std::mutex mu_;
  std::condition_variable wake_, idle_;
  std::atomic<std::uint64_t> gen_{0};
  Job* job_ = nullptr;  // guarded by mu_
  int workers_ = 0;     // guarded by mu_
};

inline int cpu_threads() { return ThreadPool::get().threads(); }

// Runs f(i) for i in [0, n), `grain` consecutive indices per claim, over the pool's threads.
template <typename F>
void parallel_for(std::int64_t n, std::int64_t grain, F&& f, bool parallel = true) {
  ThreadPool::get().run(n, grain, [&](std::int64_t i, int) { f(i); }, parallel);
}

// As parallel_for, f(i, slot) with slot in [0, cpu_threads()) unique among concurrent callers.
template <typename F>
void parallel_for_slots(std::int64_t n, std::int64_t grain, F&& f, bool parallel = true) {
  ThreadPool::get().run(n, grain, f, parallel);
}

}  // namespace gk
