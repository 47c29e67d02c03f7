// `monomoe bench` and `monomoe check`: the GPU drivers. Both check the fused layer against the
// float64 CPU reference; bench then times it next to the conventional pipeline (bench/bench.hpp).
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <cuda_runtime.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/bench.hpp"
#include "bench/soak.hpp"
#include "bench/sweep.hpp"
#include "commands.hpp"
#include "monomoe/error.hpp"

namespace monomoe::cli {
namespace {

// GPUs the CUDA runtime sees, asked in a short-lived child: a process that has initialised CUDA
// cannot fork workers that use it, and bench/check fork one worker per GPU.
int visible_gpus() {
  const pid_t pid = fork();
  if (pid == 0) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) n = 0;
    _exit(n > 64 ? 64 : n);
  }
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return 0;
  return WEXITSTATUS(status);
}

// --gpus all|N: "all" means every visible GPU. Bounded by the visible count.
int parse_gpus(const ParsedArgs& args) {
  const int visible = visible_gpus();
  if (visible == 0) {
    throw Error("no CUDA GPU is visible on this machine: bench and check need one "
                "(run `monomoe info` to see what the driver reports)");
  }
  const std::string text = args.string_or("--gpus", "all");
  if (text == "all") return visible;
  const std::int64_t n = args.int_in("--gpus", 1, 1, 64);
  if (n > visible) {
    throw ConfigError(concat("invalid --gpus = ", text, ": only ", std::to_string(visible),
                             " GPU(s) are visible"));
  }
  return static_cast<int>(n);
}

// --join [--rendezvous PATH] [--join-timeout SEC]: take part in a run another launcher started.
bench::JoinOptions parse_join(const ParsedArgs& args) {
  bench::JoinOptions j;
  j.enabled = args.has("--join");
  if (!j.enabled) {
    if (args.has("--rendezvous") || args.has("--join-timeout")) {
      throw ConfigError("--rendezvous and --join-timeout need --join");
    }
    return j;
  }
  if (args.has("--gpus")) {
    throw ConfigError("--gpus cannot be combined with --join: the launcher decides the ranks");
  }
  j.rendezvous = args.string_or("--rendezvous", "");
  j.timeout_seconds = args.double_or("--join-timeout", j.timeout_seconds);
  if (!(j.timeout_seconds > 0.0)) throw ConfigError("invalid --join-timeout: must be > 0 seconds");
  return j;
}

int run_bench_command(const ParsedArgs& args) {
  if (args.has("--virtual-ranks")) {
    throw ConfigError("bench does not run virtual ranks: they share one GPU's SMs and move no byte "
                      "over NVLink, so their times compare with nothing; check them with "
                      "`monomoe check --virtual-ranks W`");
  }
  const LayerFlags flags = parse_layer_flags(args);
  bench::BenchOptions o;
  o.config = flags.config;
  o.seed = flags.seed;
  o.warmup = static_cast<int>(args.int_in("--warmup", o.warmup, 0, 100000));
  o.iterations = static_cast<int>(args.int_in("--iters", o.iterations, 1, 100000));
  o.sample_tokens = static_cast<int>(args.int_in("--sample", o.sample_tokens, 1, 1 << 30));
  o.baseline = !args.has("--no-baseline");
  // The strongest baseline we have for the precision: CUTLASS's grouped GEMM runs bf16 only.
  const std::string g = args.string_or("--baseline-gemm", "auto");
  if (g != "auto" && g != "cublas" && g != "cutlass") {
    throw ConfigError(concat("invalid --baseline-gemm = ", g, ": must be auto, cublas or cutlass"));
  }
  // fp8's baseline runs bf16 on the dequantized weights: the stronger bf16 GEMMs serve it too.
  const bool bf16_baseline = o.config.dtype == DType::bf16 || o.config.dtype == DType::fp8;
  o.baseline_cutlass = g == "cutlass" || (g == "auto" && bf16_baseline);
  if (g == "cutlass" && !bf16_baseline) {
    throw ConfigError("--baseline-gemm cutlass runs bf16 only (--dtype bf16, or fp8 whose baseline "
                      "is bf16)");
  }
  o.ceiling = !args.has("--no-ceiling");
  o.weight_floor = !args.has("--no-floor");
  o.json_path = args.string_or("--json", "");
  o.trace_tasks_path = args.string_or("--trace-tasks", "");
  o.trace = args.has("--trace") || !o.trace_tasks_path.empty();
  o.graph = args.has("--graph");
  if (args.has("--delay-us") != args.has("--delay-rank")) {
    throw ConfigError("--delay-us and --delay-rank go together (a straggler: which rank, how long)");
  }
  if (args.has("--delay-rank")) {
    o.delay_rank = static_cast<int>(args.int_in("--delay-rank", 0, 0, 63));
  }
  o.delay_us = args.double_or("--delay-us", o.delay_us);
  if (!(o.delay_us >= 0.0 && o.delay_us <= 1e7)) {
    throw ConfigError("invalid --delay-us: must be in [0, 1e7] microseconds");
  }
  o.join = parse_join(args);
  if (o.join.enabled) {
    if (args.has("--sweep")) throw ConfigError("--sweep cannot be combined with --join");
    return bench::run_bench(o, std::cout, std::cerr);
  }
  const int visible = visible_gpus();
  o.gpus = parse_gpus(args);
  if (o.delay_rank >= o.gpus) {
    throw ConfigError(concat("invalid --delay-rank = ", std::to_string(o.delay_rank),
                             ": must be below --gpus = ", std::to_string(o.gpus)));
  }
  if (!args.has("--sweep")) return bench::run_bench(o, std::cout, std::cerr);

  const std::string var = args.value("--sweep");
  bench::SweepVariable v;
  if (var == "tokens") {
    v = bench::SweepVariable::tokens;
  } else if (var == "experts") {
    v = bench::SweepVariable::experts;
  } else if (var == "gpus") {
    v = bench::SweepVariable::gpus;
  } else {
    throw ConfigError(concat("invalid --sweep = ", var, ": must be tokens, experts or gpus"));
  }
  std::vector<std::int64_t> values = bench::default_sweep_values(v, visible);
  if (args.has("--sweep-values")) {
    values.clear();
    std::stringstream ss(args.value("--sweep-values"));
    for (std::string item; std::getline(ss, item, ',');) {
      char* end = nullptr;
      const long long n = std::strtoll(item.c_str(), &end, 10);
      if (item.empty() || *end != '\0' || n <= 0) {
        throw ConfigError(concat("invalid --sweep-values item '", item, "': a positive integer"));
      }
      values.push_back(n);
    }
  }
  if (v == bench::SweepVariable::gpus) {
    for (std::int64_t g : values) {
      if (g > visible) {
        throw ConfigError(concat("invalid --sweep-values: ", std::to_string(g), " GPUs, only ",
                                 std::to_string(visible), " visible"));
      }
    }
  }
  const std::string csv = args.string_or("--csv", concat("sweep-", var, ".csv"));
  const std::string png = args.string_or("--plot", concat("sweep-", var, ".png"));
  const int rc = bench::run_sweep(o, v, values, csv, std::cout, std::cerr);
  const std::string cmd = concat("python3 '", MONOMOE_PLOT_SCRIPT, "' '", csv, "' '", png, "'");
  if (std::system(cmd.c_str()) != 0) {
    std::cerr << "monomoe bench: no plot written; to draw it: scripts/setup-plot.sh && " << cmd
              << "\n";
  }
  return rc;
}

int run_check_command(const ParsedArgs& args) {
  bench::CheckOptions o;
  o.cases = static_cast<int>(args.int_in("--cases", o.cases, 1, 100000));
  o.seed = args.uint_or("--seed", o.seed);
  o.timeout_seconds = args.double_or("--timeout", o.timeout_seconds);
  if (!(o.timeout_seconds > 0.0)) {
    throw ConfigError("invalid --timeout: must be > 0 seconds");
  }
  o.join = parse_join(args);
  if (args.has("--virtual-ranks")) {
    if (args.has("--gpus") || o.join.enabled) {
      throw ConfigError("--virtual-ranks runs every rank on one GPU: it cannot be combined with "
                        "--gpus or --join");
    }
    o.virtual_ranks = static_cast<int>(args.int_in("--virtual-ranks", 2, 2, 64));
    parse_gpus(args);  // a clear error when no GPU is visible
    return bench::run_check(o, std::cout);
  }
  if (!o.join.enabled) o.gpus = parse_gpus(args);
  return bench::run_check(o, std::cout);
}

int run_soak_command(const ParsedArgs& args) {
  const LayerFlags flags = parse_layer_flags(args);
  bench::SoakOptions o;
  o.config = flags.config;
  o.seed = flags.seed;
  o.calls = args.int_in("--calls", o.calls, 1, std::int64_t{1} << 40);
  o.seconds = args.double_or("--seconds", o.seconds);
  if (!(o.seconds >= 0.0)) throw ConfigError("invalid --seconds: must be >= 0 (0 = no limit)");
  o.sample_tokens = static_cast<int>(args.int_in("--sample", o.sample_tokens, 1, 1 << 20));
  o.gpus = parse_gpus(args);
  return bench::run_soak(o, std::cout, std::cerr);
}

// The flags of bench and check that join a run started by another launcher (README, Launchers).
std::vector<Option> with_join_options(std::vector<Option> own) {
  own.push_back({"--join", "", "join a run started by torchrun/mpirun/srun or by hand (rank and "
                               "world from the environment; see README, Launchers)"});
  own.push_back({"--rendezvous", "PATH", "with --join: file through which rank 0 passes the NCCL id "
                                         "(default $MONOMOE_RENDEZVOUS)"});
  own.push_back({"--join-timeout", "SEC",
                 "with --join: how long ranks wait for rank 0's file (default 60)"});
  return own;
}

}  // namespace

Command soak_command() {
  return {
      .name = "soak",
      .summary = "Run many forwards in a row and watch for every way they can go wrong.",
      .details =
          "Runs --calls forwards of the layer given by the flags on every GPU, the token count\n"
          "changing every call (0 and --tokens included) and the inputs rotating over 3 sets.\n"
          "Every 100th call runs twice and must be bit-identical; every 500th call is compared\n"
          "with the float64 CPU reference on --sample tokens (all tokens with a capacity limit\n"
          "on one GPU; none with a capacity limit on several); device memory is read after the\n"
          "first call and at the end and must not grow. Prints a progress line now and then and a\n"
          "summary (calls, mismatches, max error, latency min/median/max, memory growth). The\n"
          "calls right after a repeat or a reference check get their own latency line: with\n"
          "several GPUs a rank's call waits in the kernel for its peers, whose host is then busy\n"
          "with that work. Exit status 1 on any mismatch, kernel error or growth. Example:\n"
          "  monomoe soak --gpus 2 --calls 10000",
      .options = with_layer_options({
          {"--gpus", "all|N", "GPUs to use, one worker each (default all visible)"},
          {"--calls", "N", "forwards per rank (default 10000)"},
          {"--seconds", "T", "one GPU: stop after T seconds even if calls remain (default 0 = no "
                             "limit)"},
          {"--sample", "N", "tokens compared with the reference per checked call (default 64)"},
      }),
      .run = run_soak_command,
  };
}

Command bench_command() {
  return {
      .name = "bench",
      .summary = "Check, then time the fused layer against the conventional pipeline on GPUs.",
      .details =
          "Runs the layer config given by the flags (default: the embedded config, 8192 tokens,\n"
          "hidden 2048, ffn 2048, 64 experts, top-k 2, gelu, bf16). First compares monomoe and the\n"
          "baseline with the float64 CPU reference on --sample tokens (all tokens for small\n"
          "configs) and checks every output was written; then times --iters calls of each after\n"
          "--warmup untimed ones with CUDA events and prints the median latency, the expert-FFN\n"
          "TFLOP/s (with --shared-ffn, the shared expert's GEMMs included) and the ratio. After\n"
          "the table: the baseline's expert FFN alone (its grouped GEMMs and activation, rerun on\n"
          "its last forward's rows), the GPU's dense GEMM ceiling (one large cuBLAS GEMM in the\n"
          "config's precision) and the compute floor (FFN FLOP / ceiling) with monomoe's distance\n"
          "to it. With --dtype fp8 the baseline runs bf16 on the dequantized weights (it has no\n"
          "fp8 grouped GEMM; it is checked against that bf16 problem's reference) and the ceiling\n"
          "is one cuBLASLt E4M3 GEMM without scales. With --graph, monomoe's row times\n"
          "replays of a CUDA graph captured from one forward() (the launch cost of a graph\n"
          "instead of the host-side calls), and the replays' output must be bit-identical to\n"
          "forward()'s. Exit status 1 when a result is wrong. Example:\n"
          "  monomoe bench --gpus 1 --experts 128 --topk 4 --json out.json",
      .options = with_join_options(with_layer_options({
          {"--gpus", "all|N", "GPUs to use, one worker each (default all visible)"},
          {"--warmup", "N", "untimed calls before timing (default 10)"},
          {"--iters", "N", "timed calls; the median is reported (default 50)"},
          {"--sample", "N", "tokens checked against the CPU reference (default 512)"},
          {"--no-baseline", "", "time monomoe only (no baseline, no baseline FFN alone)"},
          {"--baseline-gemm", "auto|cublas|cutlass",
           "the baseline's grouped expert GEMMs: CUTLASS's sm90 grouped GEMM (bf16 only) or cuBLAS; "
           "auto (default): CUTLASS for bf16 and fp8 (whose baseline runs bf16 on the dequantized "
           "weights), cuBLAS otherwise"},
          {"--no-ceiling", "", "skip the dense cuBLAS GEMM ceiling and the compute floor"},
          {"--no-floor", "",
           "skip the HBM read measurement and the weight-read floor (2 GiB of device memory while "
           "it runs)"},
          {"--json", "FILE", "also write the results as JSON to FILE"},
          {"--trace", "",
           "also print per-phase and per-task-type times of a forward (the last of 5 back to "
           "back; profiling)"},
          {"--trace-tasks", "FILE",
           "with the trace, write every task of that forward as CSV to FILE (block, type, a, b, "
           "start_us, math_start_us, math_end_us, end_us: math_* its tile GEMM's start and end, "
           "empty for combine tasks; rank R > 0 of several: FILE.rankR)"},
          {"--graph", "", "time monomoe as replays of a CUDA graph of one forward() (checked "
                          "bit-identical to forward())"},
          {"--delay-rank", "R", "with --delay-us: the rank that arrives late (a straggler)"},
          {"--delay-us", "D", "rank R waits D microseconds on its stream before each timed "
                              "forward of monomoe"},
          {"--sweep", "tokens|experts|gpus", "run a series over one variable; CSV + PNG plot"},
          {"--virtual-ranks", "W", "refused: virtual ranks are a test harness (check "
                                   "--virtual-ranks), their times compare with nothing"},
          {"--sweep-values", "A,B,...", "the series (default tokens 1024..16384, experts 8..128, "
                                        "gpus 1,2,4.. up to the visible count)"},
          {"--csv", "FILE", "sweep CSV (default sweep-<variable>.csv)"},
          {"--plot", "FILE", "sweep plot (default sweep-<variable>.png; needs matplotlib)"},
      })),
      .run = run_bench_command,
  };
}

Command check_command() {
  return {
      .name = "check",
      .summary = "Run random layer configurations on GPUs against the CPU reference.",
      .details =
          "Draws --cases configurations (shapes, experts, top-k, activation, precision, capacity,\n"
          "skewed routing, token counts, a shared expert) from --seed, runs each on the GPU and\n"
          "compares it with the float64 reference (fp8 only in cases with out-in weights). One\n"
          "PASS/FAIL line per case; exit status 1 if any fails.\n"
          "With --virtual-ranks W every case runs W expert-parallel ranks in this process on\n"
          "the first visible GPU (the multi-rank path without a second GPU; every rank checked).",
      .options = with_join_options({
          {"--gpus", "all|N", "GPUs to use (default all visible)"},
          {"--virtual-ranks", "W", "W ranks (2..64) on one GPU instead of one rank per GPU"},
          {"--cases", "N", "random configurations to run (default 20)"},
          {"--seed", "N", "seed of the configuration generator (default 1)"},
          {"--timeout", "SEC", "kernel wait bound per case in seconds (default 10)"},
      }),
      .run = run_check_command,
  };
}

}  // namespace monomoe::cli
