// `monomoe bench` and `monomoe check`: the GPU drivers. Both check the fused layer against the
// float64 CPU reference; bench then times it next to the conventional pipeline (bench/bench.hpp).
#include <cstdlib>
#include <iostream>
#include <string>

#include <cuda_runtime.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/bench.hpp"
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

int run_bench_command(const ParsedArgs& args) {
  const LayerFlags flags = parse_layer_flags(args);
  bench::BenchOptions o;
  o.config = flags.config;
  o.seed = flags.seed;
  o.warmup = static_cast<int>(args.int_in("--warmup", o.warmup, 0, 100000));
  o.iterations = static_cast<int>(args.int_in("--iters", o.iterations, 1, 100000));
  o.sample_tokens = static_cast<int>(args.int_in("--sample", o.sample_tokens, 1, 1 << 30));
  o.baseline = !args.has("--no-baseline");
  o.json_path = args.string_or("--json", "");
  o.trace = args.has("--trace");
  o.gpus = parse_gpus(args);
  return bench::run_bench(o, std::cout, std::cerr);
}

int run_check_command(const ParsedArgs& args) {
  bench::CheckOptions o;
  o.cases = static_cast<int>(args.int_in("--cases", o.cases, 1, 100000));
  o.seed = args.uint_or("--seed", o.seed);
  o.timeout_seconds = args.double_or("--timeout", o.timeout_seconds);
  if (!(o.timeout_seconds > 0.0)) {
    throw ConfigError("invalid --timeout: must be > 0 seconds");
  }
  o.gpus = parse_gpus(args);
  return bench::run_check(o, std::cout);
}

}  // namespace

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
          "TFLOP/s and the ratio. Exit status 1 when a result is wrong. Example:\n"
          "  monomoe bench --gpus 1 --experts 128 --topk 4 --json out.json",
      .options = with_layer_options({
          {"--gpus", "all|N", "GPUs to use, one worker each (default all visible)"},
          {"--warmup", "N", "untimed calls before timing (default 10)"},
          {"--iters", "N", "timed calls; the median is reported (default 50)"},
          {"--sample", "N", "tokens checked against the CPU reference (default 512)"},
          {"--no-baseline", "", "time monomoe only"},
          {"--json", "FILE", "also write the results as JSON to FILE"},
          {"--trace", "", "also print per-phase times of one forward (profiling)"},
      }),
      .run = run_bench_command,
  };
}

Command check_command() {
  return {
      .name = "check",
      .summary = "Run random layer configurations on GPUs against the CPU reference.",
      .details =
          "Draws --cases configurations (shapes, experts, top-k, activation, precision, capacity,\n"
          "skewed routing, token counts) from --seed, runs each on the GPU and compares it with\n"
          "the float64 reference. One PASS/FAIL line per case; exit status 1 if any fails.",
      .options = {
          {"--gpus", "all|N", "GPUs to use (default all visible)"},
          {"--cases", "N", "random configurations to run (default 20)"},
          {"--seed", "N", "seed of the configuration generator (default 1)"},
          {"--timeout", "SEC", "kernel wait bound per case in seconds (default 10)"},
      },
      .run = run_check_command,
  };
}

}  // namespace monomoe::cli
