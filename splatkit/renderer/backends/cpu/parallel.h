// Threads of the compiled CPU kernels (splatkit_cpu.cpp and ssim.cpp): every parallel loop
// goes through parallel_for, which flushes denormals, schedules dynamically and, when
// asked to, keeps the kernel's threads on distinct CPUs while it runs.
//
// Parallel loops use OpenMP. Inside a PyTorch process the dynamic linker resolves our
// libgomp.so.1 to the one PyTorch already loaded, so both share one thread pool instead
// of two pools fighting over the cores (and spawning threads per call, which costs
// hundreds of microseconds in some VMs).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <omp.h>
#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#endif
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

namespace {

// Flush denormals to zero while a kernel runs (restored afterwards): values this small
// never change a result here, and on x86 arithmetic on them is very slow.
struct FlushDenormals {
#if defined(__SSE__)
    unsigned int saved;
    FlushDenormals() : saved(_mm_getcsr()) { _mm_setcsr(saved | 0x8040); }
    ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

// Thread placement (SPLATKIT_PIN_THREADS; Linux). A thread waiting between parallel
// regions sleeps (OMP_WAIT_POLICY=PASSIVE), and when another process keeps a core busy, the
// scheduler tends to wake it on the CPU of the thread that woke it: both of a kernel's
// threads then share one CPU while the other process has the second to itself, and the
// kernel runs no faster than on one thread. With SPLATKIT_PIN_THREADS=1, each loop's
// calling thread claims the CPU it is on, and every other thread of the team claims its
// own; a thread that finds its CPU already claimed binds itself to an unclaimed CPU of the
// caller's allowed set until the loop ends (its own affinity mask is restored then), so
// nothing is bound outside the kernels and a thread already alone on its CPU costs one
// sched_getcpu. =2 binds every thread of the team, even one alone on its CPU (the tests
// use it to exercise the binding on an idle machine). Nothing is bound when the allowed
// set has fewer CPUs than the team, nor when the user binds OpenMP threads (OMP_PROC_BIND).
inline int pin_threads_mode() {
    static const int mode = [] {
        const char* v = std::getenv("SPLATKIT_PIN_THREADS");
        if (v == nullptr || omp_get_proc_bind() != omp_proc_bind_false) return 0;
        return v[0] == '1' ? 1 : v[0] == '2' ? 2 : 0;
    }();
    return mode;
}

#if defined(__linux__)
// Which CPUs the threads of one loop hold.
class CpuPlan {
  public:
    explicit CpuPlan(int nthreads) {
        if (pin_threads_mode() == 0 || nthreads < 2) return;  // off: nothing else is touched
        mode_ = pin_threads_mode();
        for (auto& w : claimed_) w.store(0, std::memory_order_relaxed);
        const int home = sched_getcpu();
        if (pthread_getaffinity_np(pthread_self(), sizeof allowed_, &allowed_) != 0 || home < 0 ||
            !CPU_ISSET(home, &allowed_) || CPU_COUNT(&allowed_) < nthreads) {
            mode_ = 0;
            return;
        }
        claim(home);
    }
    // The CPU a worker thread should bind itself to for this loop, or -1 (stay).
    int place() {
        if (mode_ == 0) return -1;
        const int here = sched_getcpu();
        if (here >= 0 && here < CPU_SETSIZE && CPU_ISSET(here, &allowed_) && claim(here))
            return mode_ == 2 ? here : -1;
        for (int c = 0; c < CPU_SETSIZE; ++c)
            if (CPU_ISSET(c, &allowed_) && claim(c)) return c;
        return -1;
    }

  private:
    bool claim(int c) {
        const uint64_t bit = uint64_t{1} << (c % 64);
        return (claimed_[c / 64].fetch_or(bit, std::memory_order_relaxed) & bit) == 0;
    }
    int mode_ = 0;
    cpu_set_t allowed_;
    std::atomic<uint64_t> claimed_[(CPU_SETSIZE + 63) / 64];
};

// Binds the calling thread to one CPU (none: cpu < 0) until the scope ends.
struct PinScope {
    cpu_set_t saved;
    bool active = false;
    explicit PinScope(int cpu) {
        if (cpu < 0 || pthread_getaffinity_np(pthread_self(), sizeof saved, &saved) != 0) return;
        cpu_set_t one;
        CPU_ZERO(&one);
        CPU_SET(cpu, &one);
        active = pthread_setaffinity_np(pthread_self(), sizeof one, &one) == 0;
    }
    ~PinScope() {
        if (active) pthread_setaffinity_np(pthread_self(), sizeof saved, &saved);
    }
    PinScope(const PinScope&) = delete;
    PinScope& operator=(const PinScope&) = delete;
};
#else
struct CpuPlan {
    explicit CpuPlan(int) {}
    int place() { return -1; }
};
struct PinScope {
    explicit PinScope(int) {}
};
#endif

// body(i, thread) for i in [0, n) on up to nthreads threads, one index at a time in
// dynamic order (a thread that loses its core takes fewer items, instead of the others
// waiting for its fixed share). Which thread runs an item must never change a result.
template <class F>
void parallel_for(int64_t n, int nthreads, F&& body) {
    if (n <= 0) return;
    FlushDenormals ftz;
    nthreads = (int)std::min<int64_t>(std::max(nthreads, 1), n);
    if (nthreads == 1) {
        for (int64_t i = 0; i < n; ++i) body(i, 0);
        return;
    }
    CpuPlan plan(nthreads);
#pragma omp parallel num_threads(nthreads)
    {
        FlushDenormals ftz_worker;
        const int tid = omp_get_thread_num();
        PinScope pin(tid == 0 ? -1 : plan.place());
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < n; ++i) body(i, tid);
    }
}

// body(begin, end, thread) on contiguous chunks of [0, n).
template <class F>
void parallel_chunks(int64_t n, int nthreads, int64_t chunk, F&& body) {
    const int64_t nchunks = (n + chunk - 1) / chunk;
    parallel_for(nchunks, nthreads, [&](int64_t c, int tid) {
        const int64_t b = c * chunk;
        body(b, std::min(n, b + chunk), tid);
    });
}

}  // namespace
