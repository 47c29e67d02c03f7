// The `bench` and `check` drivers: correctness against the CPU reference first, then timing of the
// fused layer and the conventional pipeline side by side, in the same process and run.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>

#include "monomoe/config.hpp"

namespace monomoe::bench {

// Joining a run started by another launcher instead of forking workers (src/launch/join.hpp):
// rank and world size from the launcher's environment, the NCCL id through a rendezvous file.
struct JoinOptions {
  bool enabled = false;
  std::string rendezvous;         // empty: MONOMOE_RENDEZVOUS
  double timeout_seconds = 60.0;  // how long ranks > 0 wait for rank 0's file
};

struct BenchOptions {
  LayerConfig config;       // max_tokens is the token count of every timed call
  int gpus = 1;
  int warmup = 10;          // untimed calls before timing
  int iterations = 50;      // timed calls; the median is reported
  std::uint64_t seed = 1;
  int sample_tokens = 512;  // tokens checked against the reference (all when the config is small)
  bool baseline = true;     // also time the conventional pipeline and its expert FFN alone
  bool baseline_cutlass = false;  // its expert GEMMs on CUTLASS's grouped GEMM (bf16), not cuBLAS
                                  // (the CLI's default for bf16: --baseline-gemm auto)
  bool ceiling = true;      // also measure the dense GEMM ceiling (bench/ceiling.hpp)
  bool weight_floor = true;  // also measure the HBM read rate, for the weight-read floor
  std::string json_path;    // write the results as JSON when non-empty
  bool trace = false;       // print where the kernel's time goes (per-phase block times)
  // With trace: also write the traced forward's tasks as CSV (block, type, a, b, start_us, end_us)
  // to this path; with several ranks, rank R > 0 writes path + ".rankR".
  std::string trace_tasks_path;
  // Time replays of a CUDA graph captured from one forward() instead of forward() calls (same
  // warm-up and median), and check that the replays' output is bit-identical to forward()'s.
  bool graph = false;
  // A straggler: rank `delay_rank` (-1: none) waits `delay_us` on its stream before each timed
  // forward of monomoe (a spin kernel, inside the timed region), as a rank that arrives late does.
  int delay_rank = -1;
  double delay_us = 0.0;
  bool isolate = false;     // run even one GPU in a forked worker (the caller forks again later)
  JoinOptions join;         // when enabled, `gpus` is ignored: the launcher started the ranks
};

// Shared by the drivers of bench/ (bench, check, soak):
// `c` as rank `rank` of `world` builds it, validated (ConfigError names the field).
LayerConfig rank_config(LayerConfig c, int rank, int world);
// The prefix of a rank's output lines: "[rank R] " with several ranks, "" with one.
std::string rank_tag(int rank, int world);

// Runs the benchmark and prints a table last. Returns the process exit code (0 = correct and timed,
// 1 = a correctness check failed).
int run_bench(const BenchOptions& options, std::ostream& out, std::ostream& progress);

struct CheckOptions {
  int gpus = 1;
  // > 0: run every case with this many virtual ranks in one process on GPU `device` (the
  // multi-rank path on one GPU; README, "Virtual ranks"), instead of one rank per GPU.
  int virtual_ranks = 0;
  int device = 0;
  int cases = 20;
  std::uint64_t seed = 1;
  double timeout_seconds = 10.0;
  JoinOptions join;
};

// Runs `cases` random configurations against the reference, one PASS/FAIL line each. Returns 0 when
// all pass, 1 otherwise.
int run_check(const CheckOptions& options, std::ostream& out);

}  // namespace monomoe::bench
