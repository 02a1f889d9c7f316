// Shared by the native kernels: a parallel loop on XLA's intra-op thread pool (the FFI
// ThreadPool context), so the kernels use the cores XLA uses and never add threads of their own.

#ifndef JAXCNN_CSRC_PARALLEL_H_
#define JAXCNN_CSRC_PARALLEL_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace jaxcnn_native {

// Runs body(i) for i in [0, n): on the calling thread and up to (pool threads - 1) tasks on
// XLA's intra-op pool. Items are claimed from a shared counter, so the caller never waits for
// a task that has not started (no deadlock when the pool is busy, e.g. when XLA runs this
// handler on a pool thread), and a task that starts late finds nothing left and returns.
template <typename F>
void ParallelFor(xla::ffi::ThreadPool& pool, int64_t n, const F& body) {
  const int64_t workers = std::min<int64_t>(std::max<int64_t>(pool.num_threads(), 1), n);
  if (workers <= 1) {
    for (int64_t i = 0; i < n; ++i) body(i);
    return;
  }
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    std::mutex mu;
    std::condition_variable cv;
  };
  auto state = std::make_shared<State>();
  const F* fn = &body;  // only dereferenced for a claimed item, i.e. while the caller still waits
  auto work = [state, n, fn]() {
    for (;;) {
      const int64_t i = state->next.fetch_add(1);
      if (i >= n) return;
      (*fn)(i);
      if (state->done.fetch_add(1) + 1 == n) {
        std::lock_guard<std::mutex> lock(state->mu);
        state->cv.notify_all();
      }
    }
  };
  for (int64_t t = 1; t < workers; ++t) {
    auto task = work;
    pool.Schedule(std::move(task));
  }
  work();
  std::unique_lock<std::mutex> lock(state->mu);
  state->cv.wait(lock, [&] { return state->done.load() == n; });
}

}  // namespace jaxcnn_native

#endif  // JAXCNN_CSRC_PARALLEL_H_
