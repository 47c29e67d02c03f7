// Helpers for multi-GPU tests: one forked process per GPU, as the fused layer needs. The parent never
// touches CUDA (a process that initialised the driver cannot fork children that use it); it creates
// the NCCL unique id, forks, and waits with a bound.
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <cuda_runtime_api.h>

#include "monomoe/communicator.hpp"

namespace monomoe::test {

// GPUs visible to a child process (0 when the driver is missing), without initialising CUDA here.
inline int visible_gpus_without_cuda_init() {
  const pid_t pid = fork();
  if (pid == 0) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) n = 0;
    _exit(n > 100 ? 100 : n);
  }
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return 0;
  return WEXITSTATUS(status);
}

// Runs fn(rank, id) in `world` forked processes (rank r on GPU r). Returns each worker's exit
// status (its return value; 128 + signal if killed; -1 if it had to be killed after `timeout`).
inline std::vector<int> run_forked(int world, double timeout_seconds,
                                   const std::function<int(int rank, const UniqueId& id)>& fn) {
  const UniqueId id = UniqueId::create();
  std::vector<pid_t> pids;
  for (int r = 0; r < world; ++r) {
    const pid_t pid = fork();
    if (pid == 0) {
      int code = 1;
      try {
        code = fn(r, id);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "[rank %d] exception: %s\n", r, e.what());
      }
      std::fflush(stdout);
      std::fflush(stderr);
      _exit(code);
    }
    pids.push_back(pid);
  }
  std::vector<int> status(static_cast<std::size_t>(world), -1);
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_seconds);
  int left = world;
  while (left > 0 && std::chrono::steady_clock::now() < deadline) {
    for (int r = 0; r < world; ++r) {
      if (pids[r] == 0) continue;
      int st = 0;
      if (waitpid(pids[r], &st, WNOHANG) == pids[r]) {
        status[r] = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        pids[r] = 0;
        --left;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (int r = 0; r < world; ++r) {
    if (pids[r] == 0) continue;
    kill(pids[r], SIGKILL);
    waitpid(pids[r], nullptr, 0);
  }
  return status;
}

}  // namespace monomoe::test
