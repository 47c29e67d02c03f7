// A series of bench runs over one variable (see sweep.cpp).
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

#include "bench/bench.hpp"

namespace monomoe::bench {

enum class SweepVariable { tokens, experts, gpus };

// tokens: 1024..16384 (doubling); experts: 8..128; gpus: 1, 2, 4, ... up to the visible count.
std::vector<std::int64_t> default_sweep_values(SweepVariable v, int visible_gpus);

// Runs the bench at every value (weak scaling for gpus: tokens per GPU fixed) and writes a CSV
// (variable, gpus, median ms of monomoe and baseline, ratio, TFLOP/s). Returns 1 if any point
// failed.
int run_sweep(const BenchOptions& base, SweepVariable variable,
              const std::vector<std::int64_t>& values, const std::string& csv_path,
              std::ostream& out, std::ostream& progress);

}  // namespace monomoe::bench
