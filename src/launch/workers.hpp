// Process management for multi-GPU runs: one worker process per GPU.
//
// run_local_workers() is what `monomoe bench|check --gpus N` use: the calling process creates the
// NCCL unique id, forks one worker per GPU and only supervises (it must not have initialised CUDA:
// a process that has cannot fork children that use it). Supervision is bounded: when one worker
// fails (non-zero exit, killed by a signal), the others get `grace_seconds` to report their own
// error (a peer timeout, normally) and are then killed; SIGINT/SIGTERM to the supervisor are passed
// on to the workers; a worker dies with its supervisor (PR_SET_PDEATHSIG).
#pragma once

#include <functional>
#include <string>

#include "monomoe/communicator.hpp"

namespace monomoe::launch {

// What a worker knows about its place in the run.
struct WorkerContext {
  int rank = 0;
  int world = 1;
  int device = 0;  // CUDA device ordinal to use
  UniqueId id;     // the same bytes on every rank
  // When joined through a rendezvous file (join.hpp), its path: rank 0 removes it once the
  // communicator exists (every rank has read it by then). Empty for forked workers.
  std::string rendezvous_file;
};

struct SupervisorOptions {
  // After the first worker fails, how long the others may run on before they are killed.
  double grace_seconds = 10.0;
  // Bound on the whole run (0 = none): then every worker still running is killed.
  double timeout_seconds = 0.0;
  // Creates the unique id in the supervisor before forking (UniqueId::create for real runs).
  std::function<UniqueId()> make_id;
};

// Runs fn in `world` forked processes (rank r on device r) and waits for all of them. Returns 0
// when every worker returned 0; otherwise the exit status of the first worker that failed (128 +
// signal number for one killed by a signal, 124 for a run past timeout_seconds), after printing
// which rank failed and how to stderr. An exception escaping fn is printed and exits that worker
// with status 1. Throws Error when world < 1 or fork fails.
int run_local_workers(int world, const std::function<int(const WorkerContext&)>& fn,
                      const SupervisorOptions& options);

}  // namespace monomoe::launch
