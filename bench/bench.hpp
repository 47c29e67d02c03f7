// The `bench` and `check` drivers: correctness against the CPU reference first, then timing of the
// fused layer and the conventional pipeline side by side, in the same process and run.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>

#include "monomoe/config.hpp"

namespace monomoe::bench {

struct BenchOptions {
  LayerConfig config;       // max_tokens is the token count of every timed call
  int gpus = 1;
  int warmup = 10;          // untimed calls before timing
  int iterations = 50;      // timed calls; the median is reported
  std::uint64_t seed = 1;
  int sample_tokens = 512;  // tokens checked against the reference (all when the config is small)
  bool baseline = true;     // also time the conventional pipeline
  std::string json_path;    // write the results as JSON when non-empty
  bool trace = false;       // print where the kernel's time goes (per-phase block times)
};

// Runs the benchmark and prints a table last. Returns the process exit code (0 = correct and timed,
// 1 = a correctness check failed).
int run_bench(const BenchOptions& options, std::ostream& out, std::ostream& progress);

struct CheckOptions {
  int gpus = 1;
  int cases = 20;
  std::uint64_t seed = 1;
  double timeout_seconds = 10.0;
};

// Runs `cases` random configurations against the reference, one PASS/FAIL line each. Returns 0 when
// all pass, 1 otherwise.
int run_check(const CheckOptions& options, std::ostream& out);

}  // namespace monomoe::bench
