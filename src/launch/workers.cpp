#include "launch/workers.hpp"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "monomoe/error.hpp"

namespace monomoe::launch {

namespace {

// The signal the supervisor received (SIGINT / SIGTERM), 0 if none; forwarded to the workers.
volatile sig_atomic_t g_received = 0;

void remember_signal(int sig) { g_received = sig; }

// Installs remember_signal for SIGINT and SIGTERM for the lifetime of the object, then restores.
class SignalForwarding {
 public:
  SignalForwarding() {
    g_received = 0;
    struct sigaction sa {};
    sa.sa_handler = remember_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int_);
    sigaction(SIGTERM, &sa, &old_term_);
  }
  ~SignalForwarding() {
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
  }
  SignalForwarding(const SignalForwarding&) = delete;
  SignalForwarding& operator=(const SignalForwarding&) = delete;

 private:
  struct sigaction old_int_ {};
  struct sigaction old_term_ {};
};

[[noreturn]] void run_worker(const std::function<int(const WorkerContext&)>& fn,
                             const WorkerContext& ctx, pid_t supervisor) {
  // Default signal handling in the worker, and die with the supervisor.
  signal(SIGINT, SIG_DFL);
  signal(SIGTERM, SIG_DFL);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != supervisor) _exit(125);  // the supervisor died before prctl took effect
  int code = 1;
  try {
    code = fn(ctx);
  } catch (const std::exception& e) {
    std::cerr << "[rank " << ctx.rank << "] error: " << e.what() << std::endl;
    code = 1;
  } catch (...) {
    std::cerr << "[rank " << ctx.rank << "] error: unknown exception" << std::endl;
    code = 1;
  }
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
  _exit(code & 0xff);
}

double seconds_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

std::string describe_status(int st) {
  if (WIFEXITED(st)) return "exited with status " + std::to_string(WEXITSTATUS(st));
  if (WIFSIGNALED(st)) {
    const int sig = WTERMSIG(st);
    return "was killed by signal " + std::to_string(sig) + " (" + strsignal(sig) + ")";
  }
  return "ended abnormally";
}

int exit_code(int st) {
  if (WIFEXITED(st)) return WEXITSTATUS(st);
  if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
  return 1;
}

}  // namespace

int run_local_workers(int world, const std::function<int(const WorkerContext&)>& fn,
                      const SupervisorOptions& options) {
  if (world < 1) {
    throw ConfigError("run_local_workers: world = " + std::to_string(world) + " must be >= 1");
  }
  if (!options.make_id) throw ConfigError("run_local_workers: SupervisorOptions::make_id is empty");
  WorkerContext ctx;
  ctx.world = world;
  ctx.id = options.make_id();
  // Buffered output would be written twice (once per child) if not flushed before forking.
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);

  SignalForwarding forwarding;
  const pid_t self = getpid();
  std::vector<pid_t> pids(static_cast<std::size_t>(world), 0);
  for (int r = 0; r < world; ++r) {
    ctx.rank = r;
    ctx.device = r;
    const pid_t pid = fork();
    if (pid == 0) run_worker(fn, ctx, self);
    if (pid < 0) {
      const int err = errno;
      for (pid_t p : pids) {
        if (p > 0) kill(p, SIGKILL);
      }
      for (pid_t p : pids) {
        if (p > 0) waitpid(p, nullptr, 0);
      }
      throw Error(std::string("run_local_workers: fork failed: ") + std::strerror(err));
    }
    pids[static_cast<std::size_t>(r)] = pid;
  }

  const auto start = std::chrono::steady_clock::now();
  auto failed_at = start;
  int first_failure = 0;  // exit code of the first worker that failed
  int forwarded = 0;      // the signal passed on to the workers
  bool killed = false;
  int left = world;
  while (left > 0) {
    for (int r = 0; r < world; ++r) {
      pid_t& pid = pids[static_cast<std::size_t>(r)];
      if (pid == 0) continue;
      int st = 0;
      if (waitpid(pid, &st, WNOHANG) != pid) continue;
      pid = 0;
      --left;
      const int code = exit_code(st);
      if (code != 0 && !killed) {
        std::cerr << "monomoe: worker " << r << " " << describe_status(st) << std::endl;
        if (first_failure == 0) {
          first_failure = code;
          failed_at = std::chrono::steady_clock::now();
        }
      }
    }
    if (left == 0) break;
    if (g_received != 0 && forwarded == 0) {
      forwarded = g_received;
      std::cerr << "monomoe: received signal " << forwarded << ", stopping the workers"
                << std::endl;
      for (pid_t p : pids) {
        if (p > 0) kill(p, forwarded);
      }
      if (first_failure == 0) {
        first_failure = 128 + forwarded;
        failed_at = std::chrono::steady_clock::now();
      }
    }
    const bool overdue = options.timeout_seconds > 0 && seconds_since(start) > options.timeout_seconds;
    const bool grace_over = first_failure != 0 && seconds_since(failed_at) > options.grace_seconds;
    if (!killed && (overdue || grace_over)) {
      std::cerr << "monomoe: "
                << (overdue ? "run exceeded its " + std::to_string(options.timeout_seconds) + " s bound"
                            : "a worker failed " + std::to_string(options.grace_seconds) +
                                  " s ago")
                << "; killing the " << left << " worker(s) still running" << std::endl;
      for (pid_t p : pids) {
        if (p > 0) kill(p, SIGKILL);
      }
      killed = true;
      if (first_failure == 0) first_failure = 124;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return first_failure;
}

}  // namespace monomoe::launch
