// Joining a run started by another launcher (torchrun, mpirun, srun, or by hand): each process
// finds its rank and world size in the environment and receives the NCCL unique id from rank 0
// through a rendezvous file on a file system all ranks see.
//
// Environment, first match wins (rank / world size / local rank):
//   MONOMOE_RANK, MONOMOE_WORLD_SIZE, MONOMOE_LOCAL_RANK     (by hand)
//   RANK, WORLD_SIZE, LOCAL_RANK                             (torchrun)
//   OMPI_COMM_WORLD_RANK, _SIZE, _LOCAL_RANK                 (Open MPI mpirun)
//   SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID                (srun)
// The local rank picks the GPU (device = local rank); without one, device = rank.
//
// The rendezvous file (MONOMOE_RENDEZVOUS or --rendezvous): rank 0 creates the id and writes it
// there atomically (write + rename) with a run token; the other ranks poll until a file with the
// same token appears, up to a timeout. The token comes from MONOMOE_RUN_ID, TORCHELASTIC_RUN_ID,
// SLURM_JOB_ID.SLURM_STEP_ID or OMPI_MCA_ess_base_jobid, in that order; without any, a file older
// than this process by more than kStaleSeconds is taken for a leftover and ignored.
#pragma once

#include <functional>
#include <optional>
#include <string>

#include "launch/workers.hpp"

namespace monomoe::launch {

// Reads one environment variable; returns nullopt when unset. Replaceable in tests.
using EnvLookup = std::function<std::optional<std::string>(const std::string& name)>;
EnvLookup process_environment();

struct LauncherRank {
  int rank = 0;
  int world = 1;
  int local_rank = -1;  // -1: the launcher did not say
  std::string source;   // which variables, e.g. "torchrun (RANK, WORLD_SIZE)"
};

// The rank and world size set by a launcher, or nullopt when none of the variable sets is present.
// Throws ConfigError naming the variable when one is present but malformed or out of range.
std::optional<LauncherRank> launcher_rank(const EnvLookup& env);

// The run token (see above); empty when the environment has none.
std::string run_token(const EnvLookup& env);

inline constexpr double kStaleSeconds = 30.0;

// Rank 0: id = make_id(), written to `path` with `token`. Other ranks: waits up to timeout_seconds
// for a file with the same token (or, with an empty token, one not older than kStaleSeconds before
// the call) and returns its id. Throws Error naming the path on a timeout or a write failure.
UniqueId rendezvous(const std::string& path, int rank, const std::string& token,
                    double timeout_seconds, const std::function<UniqueId()>& make_id);

// All of the above: rank, world and device from the launcher's environment, the id through the
// rendezvous file (`path`, or MONOMOE_RENDEZVOUS when empty; not needed when the world size is 1).
// Throws ConfigError when no launcher variables are set or the path is missing for world > 1.
WorkerContext join_from_environment(const EnvLookup& env, const std::string& path,
                                    double timeout_seconds,
                                    const std::function<UniqueId()>& make_id);

// For rank 0 once its communicator exists: removes the rendezvous file (ignores a missing one).
void finish_rendezvous(const WorkerContext& context);

}  // namespace monomoe::launch
