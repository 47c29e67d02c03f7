// A small thread pool for the host's bulk work: the float64 reference (reference.cpp), making a
// problem's inputs (problem.cpp), and bench's conversions of a problem for the GPU
// (bench/host_convert.cpp). Header-only: the jobs are lambdas.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace monomoe::reference {

// Runs job(item, worker) for item in [0, n) on up to `threads` workers (0: one per hardware
// thread), items handed out in order as workers free up. Jobs must write disjoint data, so the
// result does not depend on the thread count. The first exception thrown by a job is rethrown
// after the join (no item is started after it).
template <class Job>
void parallel_for(std::size_t n, int threads, const Job& job) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const std::size_t workers = std::min(static_cast<std::size_t>(threads), n);
  if (workers <= 1) {
    for (std::size_t i = 0; i < n; ++i) job(i, std::size_t{0});
    return;
  }
  std::atomic<std::size_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  std::vector<std::thread> pool;
  pool.reserve(workers);
  for (std::size_t w = 0; w < workers; ++w) {
    pool.emplace_back([&, w] {
      try {
        for (std::size_t i = next++; i < n; i = next++) job(i, w);
      } catch (...) {
        const std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        next = n;  // stop handing out work
      }
    });
  }
  for (std::thread& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace monomoe::reference
