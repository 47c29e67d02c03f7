#include "launch/join.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "monomoe/error.hpp"

namespace monomoe::launch {

namespace {

constexpr const char* kMagic = "monomoe-rendezvous 1";

struct VariableSet {
  const char* launcher;
  const char* rank;
  const char* world;
  const char* local_rank;
};

constexpr VariableSet kLaunchers[] = {
    {"MONOMOE_*", "MONOMOE_RANK", "MONOMOE_WORLD_SIZE", "MONOMOE_LOCAL_RANK"},
    {"torchrun", "RANK", "WORLD_SIZE", "LOCAL_RANK"},
    {"Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"},
    {"SLURM", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"},
};

int parse_int(const std::string& name, const std::string& text, int lo, int hi) {
  char* end = nullptr;
  errno = 0;
  const long v = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno != 0 || v < lo || v > hi) {
    throw ConfigError("environment: " + name + " = '" + text + "' must be an integer in [" +
                      std::to_string(lo) + ", " + std::to_string(hi) + "]");
  }
  return static_cast<int>(v);
}

// The token and id of a rendezvous file, or nullopt if it is absent, partial or foreign.
std::optional<std::pair<std::string, UniqueId>> read_rendezvous(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  std::string magic, token, hex;
  if (!std::getline(in, magic) || magic != kMagic) return std::nullopt;
  if (!std::getline(in, token) || !std::getline(in, hex)) return std::nullopt;
  try {
    return std::make_pair(token, UniqueId::from_hex(hex));
  } catch (const ConfigError&) {
    return std::nullopt;
  }
}

}  // namespace

EnvLookup process_environment() {
  return [](const std::string& name) -> std::optional<std::string> {
    const char* v = std::getenv(name.c_str());
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  };
}

std::optional<LauncherRank> launcher_rank(const EnvLookup& env) {
  for (const VariableSet& set : kLaunchers) {
    const auto rank = env(set.rank);
    const auto world = env(set.world);
    if (!rank && !world) continue;
    if (!rank || !world) {
      throw ConfigError(std::string("environment: ") + (rank ? set.rank : set.world) +
                        " is set but " + (rank ? set.world : set.rank) + " is not (" +
                        set.launcher + " needs both)");
    }
    LauncherRank out;
    out.world = parse_int(set.world, *world, 1, 1 << 20);
    out.rank = parse_int(set.rank, *rank, 0, out.world - 1);
    if (const auto local = env(set.local_rank)) {
      out.local_rank = parse_int(set.local_rank, *local, 0, out.world - 1);
    }
    out.source = std::string(set.launcher) + " (" + set.rank + ", " + set.world + ")";
    return out;
  }
  return std::nullopt;
}

std::string run_token(const EnvLookup& env) {
  if (auto v = env("MONOMOE_RUN_ID"); v && !v->empty()) return "monomoe:" + *v;
  if (auto v = env("TORCHELASTIC_RUN_ID"); v && !v->empty() && *v != "none") return "torch:" + *v;
  if (auto v = env("SLURM_JOB_ID"); v && !v->empty()) {
    return "slurm:" + *v + "." + env("SLURM_STEP_ID").value_or("");
  }
  if (auto v = env("OMPI_MCA_ess_base_jobid"); v && !v->empty()) return "ompi:" + *v;
  return "";
}

UniqueId rendezvous(const std::string& path, int rank, const std::string& token,
                    double timeout_seconds, const std::function<UniqueId()>& make_id) {
  if (path.empty()) throw ConfigError("rendezvous: the file path is empty");
  if (rank == 0) {
    const UniqueId id = make_id();
    const std::string tmp = path + ".tmp." + std::to_string(getpid());
    {
      std::ofstream out(tmp, std::ios::trunc);
      out << kMagic << "\n" << token << "\n" << id.to_hex() << "\n";
      out.flush();
      if (!out) throw Error("rendezvous: cannot write " + tmp + " (is its folder writable?)");
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
      std::remove(tmp.c_str());
      throw Error("rendezvous: cannot rename " + tmp + " to " + path);
    }
    return id;
  }
  const auto start = std::chrono::steady_clock::now();
  const auto wall_start = std::chrono::system_clock::now();
  const auto stale_before =
      std::chrono::system_clock::to_time_t(wall_start) - static_cast<std::time_t>(kStaleSeconds);
  for (;;) {
    if (auto got = read_rendezvous(path)) {
      bool fresh = got->first == token;
      if (fresh && token.empty()) {
        struct stat st {};
        fresh = stat(path.c_str(), &st) == 0 && st.st_mtime >= stale_before;
      }
      if (fresh) return got->second;
    }
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (waited > timeout_seconds) {
      throw Error("rendezvous: rank " + std::to_string(rank) + " found no id from rank 0 in " +
                  path + " after " + std::to_string(timeout_seconds) + " s" +
                  (token.empty() ? std::string(" (no run token set: a file older than ") +
                                       std::to_string(static_cast<int>(kStaleSeconds)) +
                                       " s is ignored)"
                                 : " (run token '" + token + "')") +
                  "; is rank 0 running, and do all ranks see this file?");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

WorkerContext join_from_environment(const EnvLookup& env, const std::string& path,
                                    double timeout_seconds,
                                    const std::function<UniqueId()>& make_id) {
  const std::optional<LauncherRank> lr = launcher_rank(env);
  if (!lr) {
    throw ConfigError(
        "--join: no launcher environment found: set MONOMOE_RANK and MONOMOE_WORLD_SIZE, or run "
        "under torchrun (RANK, WORLD_SIZE), mpirun (OMPI_COMM_WORLD_RANK, ..._SIZE) or srun "
        "(SLURM_PROCID, SLURM_NTASKS)");
  }
  WorkerContext ctx;
  ctx.rank = lr->rank;
  ctx.world = lr->world;
  ctx.device = lr->local_rank >= 0 ? lr->local_rank : lr->rank;
  if (lr->world == 1) {
    ctx.id = make_id();
    return ctx;
  }
  ctx.rendezvous_file = !path.empty() ? path : env("MONOMOE_RENDEZVOUS").value_or("");
  if (ctx.rendezvous_file.empty()) {
    throw ConfigError("--join: world size " + std::to_string(lr->world) + " from " + lr->source +
                      " needs a rendezvous file: pass --rendezvous PATH or set MONOMOE_RENDEZVOUS "
                      "to a path every rank can read (the same on all ranks)");
  }
  ctx.id = rendezvous(ctx.rendezvous_file, ctx.rank, run_token(env), timeout_seconds, make_id);
  return ctx;
}

void finish_rendezvous(const WorkerContext& context) {
  if (context.rank == 0 && !context.rendezvous_file.empty()) {
    std::remove(context.rendezvous_file.c_str());
  }
}

}  // namespace monomoe::launch
