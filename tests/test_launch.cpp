// Process launching without a GPU: forked workers and their supervision (exit codes, a killed
// worker, the overall bound), the launcher environment, and the rendezvous file between processes.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <string>
#include <thread>

#include "launch/join.hpp"
#include "launch/workers.hpp"
#include "monomoe/error.hpp"

namespace monomoe::launch {
namespace {

// A distinct id per call, as ncclGetUniqueId gives (no NCCL needed here).
UniqueId fake_id() {
  static int calls = 0;
  UniqueId id;
  for (std::size_t i = 0; i < id.bytes.size(); ++i) {
    id.bytes[i] = static_cast<char>((i * 7 + static_cast<std::size_t>(getpid()) + ++calls) & 0xff);
  }
  return id;
}

SupervisorOptions options(double grace = 5.0, double timeout = 0.0) {
  SupervisorOptions so;
  so.grace_seconds = grace;
  so.timeout_seconds = timeout;
  so.make_id = fake_id;
  return so;
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

EnvLookup env_of(std::map<std::string, std::string> vars) {
  return [vars](const std::string& name) -> std::optional<std::string> {
    const auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

std::string temp_path(const std::string& tag) {
  return "/tmp/monomoe-test-" + tag + "-" + std::to_string(getpid());
}

TEST(Workers, EveryRankRunsWithItsPlaceAndTheSameId) {
  const std::string dir = temp_path("ranks");
  const UniqueId want = fake_id();
  SupervisorOptions so = options();
  so.make_id = [&] { return want; };
  const int rc = run_local_workers(3, [&](const WorkerContext& w) {
    std::ofstream(dir + "." + std::to_string(w.rank))
        << w.rank << " " << w.world << " " << w.device << " " << w.id.to_hex();
    return 0;
  }, so);
  EXPECT_EQ(rc, 0);
  for (int r = 0; r < 3; ++r) {
    const std::string path = dir + "." + std::to_string(r);
    std::ifstream in(path);
    int rank = -1, world = -1, device = -1;
    std::string hex;
    in >> rank >> world >> device >> hex;
    EXPECT_EQ(rank, r);
    EXPECT_EQ(world, 3);
    EXPECT_EQ(device, r);
    EXPECT_EQ(hex, want.to_hex());
    std::remove(path.c_str());
  }
}

TEST(Workers, FailingWorkerStatusIsReturned) {
  const int rc = run_local_workers(2, [](const WorkerContext& w) { return w.rank == 1 ? 3 : 0; },
                                   options());
  EXPECT_EQ(rc, 3);
}

TEST(Workers, ExceptionInWorkerExitsOne) {
  const int rc = run_local_workers(1, [](const WorkerContext&) -> int {
    throw ConfigError("bad field");
  }, options());
  EXPECT_EQ(rc, 1);
}

// One worker is killed while the other would run for a minute: the supervisor reports the killed
// worker's signal and ends the survivor after the grace period.
TEST(Workers, KilledWorkerEndsTheRunWithinGrace) {
  const auto t0 = std::chrono::steady_clock::now();
  const int rc = run_local_workers(2, [](const WorkerContext& w) {
    if (w.rank == 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      raise(SIGKILL);
    }
    std::this_thread::sleep_for(std::chrono::seconds(60));
    return 0;
  }, options(1.0));
  EXPECT_EQ(rc, 128 + SIGKILL);
  EXPECT_LT(seconds_since(t0), 10.0);
}

TEST(Workers, RunPastTheBoundIsKilled) {
  const auto t0 = std::chrono::steady_clock::now();
  const int rc = run_local_workers(2, [](const WorkerContext&) {
    std::this_thread::sleep_for(std::chrono::seconds(60));
    return 0;
  }, options(5.0, 1.0));
  EXPECT_EQ(rc, 124);
  EXPECT_LT(seconds_since(t0), 10.0);
}

TEST(Workers, RejectsBadArguments) {
  EXPECT_THROW(run_local_workers(0, [](const WorkerContext&) { return 0; }, options()),
               ConfigError);
  SupervisorOptions no_id = options();
  no_id.make_id = nullptr;
  EXPECT_THROW(run_local_workers(1, [](const WorkerContext&) { return 0; }, no_id), ConfigError);
}

TEST(LauncherEnv, NoneSet) {
  EXPECT_FALSE(launcher_rank(env_of({})).has_value());
}

TEST(LauncherEnv, Torchrun) {
  const auto lr = launcher_rank(env_of({{"RANK", "3"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"}}));
  ASSERT_TRUE(lr.has_value());
  EXPECT_EQ(lr->rank, 3);
  EXPECT_EQ(lr->world, 4);
  EXPECT_EQ(lr->local_rank, 1);
  EXPECT_NE(lr->source.find("torchrun"), std::string::npos);
}

TEST(LauncherEnv, MonomoeVariablesWinOverOthers) {
  const auto lr = launcher_rank(env_of({{"MONOMOE_RANK", "1"},
                                        {"MONOMOE_WORLD_SIZE", "2"},
                                        {"RANK", "5"},
                                        {"WORLD_SIZE", "8"}}));
  ASSERT_TRUE(lr.has_value());
  EXPECT_EQ(lr->rank, 1);
  EXPECT_EQ(lr->world, 2);
  EXPECT_EQ(lr->local_rank, -1);
}

TEST(LauncherEnv, OpenMpiAndSlurm) {
  const auto ompi = launcher_rank(env_of({{"OMPI_COMM_WORLD_RANK", "2"},
                                          {"OMPI_COMM_WORLD_SIZE", "8"},
                                          {"OMPI_COMM_WORLD_LOCAL_RANK", "2"}}));
  ASSERT_TRUE(ompi.has_value());
  EXPECT_EQ(ompi->rank, 2);
  EXPECT_EQ(ompi->world, 8);
  const auto slurm = launcher_rank(env_of({{"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "2"}}));
  ASSERT_TRUE(slurm.has_value());
  EXPECT_EQ(slurm->world, 2);
}

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(LauncherEnv, MalformedValuesNameTheVariable) {
  EXPECT_NE(message_of([] { launcher_rank(env_of({{"RANK", "2"}, {"WORLD_SIZE", "2"}})); })
                .find("RANK = '2' must be an integer in [0, 1]"),
            std::string::npos);
  EXPECT_NE(message_of([] { launcher_rank(env_of({{"RANK", "x"}, {"WORLD_SIZE", "2"}})); })
                .find("RANK = 'x'"),
            std::string::npos);
  EXPECT_NE(message_of([] { launcher_rank(env_of({{"WORLD_SIZE", "2"}})); })
                .find("WORLD_SIZE is set but RANK is not"),
            std::string::npos);
}

TEST(LauncherEnv, RunToken) {
  EXPECT_EQ(run_token(env_of({})), "");
  EXPECT_EQ(run_token(env_of({{"TORCHELASTIC_RUN_ID", "none"}})), "");
  EXPECT_EQ(run_token(env_of({{"TORCHELASTIC_RUN_ID", "job7"}})), "torch:job7");
  EXPECT_EQ(run_token(env_of({{"MONOMOE_RUN_ID", "a"}, {"SLURM_JOB_ID", "9"}})), "monomoe:a");
  EXPECT_EQ(run_token(env_of({{"SLURM_JOB_ID", "9"}, {"SLURM_STEP_ID", "0"}})), "slurm:9.0");
}

TEST(Join, ErrorsNameWhatIsMissing) {
  EXPECT_NE(message_of([] { join_from_environment(env_of({}), "", 1.0, fake_id); })
                .find("MONOMOE_RANK"),
            std::string::npos);
  EXPECT_NE(message_of([] {
              join_from_environment(env_of({{"RANK", "0"}, {"WORLD_SIZE", "2"}}), "", 1.0,
                                    fake_id);
            }).find("MONOMOE_RENDEZVOUS"),
            std::string::npos);
}

TEST(Join, WorldOfOneNeedsNoFile) {
  const WorkerContext w =
      join_from_environment(env_of({{"MONOMOE_RANK", "0"}, {"MONOMOE_WORLD_SIZE", "1"}}), "", 1.0,
                            fake_id);
  EXPECT_EQ(w.world, 1);
  EXPECT_TRUE(w.rendezvous_file.empty());
}

// Two processes started independently (rank 1 first, so that it waits) exchange the id through
// the file; rank 0 removes it afterwards.
TEST(Join, TwoProcessesMeetThroughTheFile) {
  const std::string path = temp_path("rdv");
  std::remove(path.c_str());
  const std::string token_file = path + ".rank1";
  const pid_t child = fork();
  if (child == 0) {
    int code = 1;
    try {
      const WorkerContext w = join_from_environment(
          env_of({{"MONOMOE_RANK", "1"}, {"MONOMOE_WORLD_SIZE", "2"}, {"MONOMOE_RUN_ID", "t1"}}),
          path, 10.0, fake_id);
      std::ofstream(token_file) << w.id.to_hex() << " " << w.device;
      code = 0;
    } catch (...) {
    }
    _exit(code);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const WorkerContext w0 = join_from_environment(
      env_of({{"MONOMOE_RANK", "0"}, {"MONOMOE_WORLD_SIZE", "2"}, {"MONOMOE_RUN_ID", "t1"}}), path,
      10.0, fake_id);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  std::ifstream in(token_file);
  std::string hex;
  int device = -1;
  in >> hex >> device;
  EXPECT_EQ(hex, w0.id.to_hex());
  EXPECT_EQ(device, 1);
  std::remove(token_file.c_str());
  finish_rendezvous(w0);
  EXPECT_FALSE(std::ifstream(path).good()) << "rank 0 removes the file";
}

TEST(Join, FileOfAnotherRunIsIgnored) {
  const std::string path = temp_path("stale");
  rendezvous(path, 0, "monomoe:old", 1.0, fake_id);
  const auto t0 = std::chrono::steady_clock::now();
  const std::string msg = message_of([&] { rendezvous(path, 1, "monomoe:new", 0.3, fake_id); });
  EXPECT_NE(msg.find("found no id from rank 0 in " + path), std::string::npos) << msg;
  EXPECT_LT(seconds_since(t0), 5.0);
  std::remove(path.c_str());
}

}  // namespace
}  // namespace monomoe::launch
