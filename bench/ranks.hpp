// How the drivers of bench/ (bench, check, soak) start their ranks: forked workers under a bounded
// supervisor, or joined to a run another launcher started.
#pragma once

#include "bench/bench.hpp"
#include "launch/workers.hpp"

namespace monomoe::bench {

// Supervision of forked workers: after one fails, the others get twice the kernel's wait bound to
// report their own (peer timeout) error before they are killed.
launch::SupervisorOptions supervision(double timeout_seconds);
// This process's place in a run started by another launcher (--join).
launch::WorkerContext joined(const JoinOptions& j);

}  // namespace monomoe::bench
