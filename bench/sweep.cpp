// `monomoe bench --sweep tokens|experts|gpus`: the bench over a series of one variable, monomoe and
// the baseline side by side at every point, written as CSV and plotted to PNG by
// scripts/plot_sweep.py (matplotlib from PyPI; scripts/setup-plot.sh installs it).
#include "bench/sweep.hpp"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <ostream>
#include <sstream>
#include <string>

#include "monomoe/error.hpp"

namespace monomoe::bench {

namespace {

// The number after `"key": ` inside the object that starts at `"section"` (or anywhere when the
// section is empty) of the bench's own JSON. Returns NaN-like -1 when absent.
double json_number(const std::string& text, const std::string& section, const std::string& key) {
  std::size_t from = 0;
  if (!section.empty()) {
    from = text.find("\"" + section + "\"");
    if (from == std::string::npos) return -1.0;
  }
  const std::size_t at = text.find("\"" + key + "\": ", from);
  if (at == std::string::npos) return -1.0;
  return std::strtod(text.c_str() + at + key.size() + 4, nullptr);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

std::vector<std::int64_t> default_sweep_values(SweepVariable v, int visible_gpus) {
  switch (v) {
    case SweepVariable::tokens: return {1024, 2048, 4096, 8192, 16384};
    case SweepVariable::experts: return {8, 16, 32, 64, 128};
    case SweepVariable::gpus: {
      std::vector<std::int64_t> out;
      for (int g = 1; g <= visible_gpus; g *= 2) out.push_back(g);
      return out;
    }
  }
  return {};
}

int run_sweep(const BenchOptions& base, SweepVariable variable,
              const std::vector<std::int64_t>& values, const std::string& csv_path,
              std::ostream& out, std::ostream& progress) {
  const char* name = variable == SweepVariable::tokens    ? "tokens"
                     : variable == SweepVariable::experts ? "experts"
                                                          : "gpus";
  std::ofstream csv(csv_path);
  if (!csv) throw ConfigError("bench --sweep: cannot write " + csv_path);
  // weight_floor_ms and monomoe_over_floor: the weight-read floor of the point (rank 0's touched
  // experts' bytes at the HBM rate measured there; -1 with --no-floor, which skips it).
  csv << name
      << ",gpus,monomoe_ms,baseline_ms,speedup,monomoe_tflops,baseline_tflops,weight_floor_ms,"
         "monomoe_over_floor\n";
  int status = 0;
  for (std::size_t i = 0; i < values.size(); ++i) {
    BenchOptions o = base;
    o.isolate = true;  // this process forks at every point: it must never initialise CUDA itself
    const std::int64_t v = values[i];
    switch (variable) {
      case SweepVariable::tokens: o.config.max_tokens = v; break;
      case SweepVariable::experts: o.config.experts = v; break;
      case SweepVariable::gpus: o.gpus = static_cast<int>(v); break;
    }
    o.json_path = csv_path + ".point.json";
    std::remove(o.json_path.c_str());
    progress << "sweep " << name << " = " << v << " (" << i + 1 << "/" << values.size() << ")"
             << std::endl;
    const int rc = run_bench(o, out, progress);
    const std::string js = read_file(o.json_path);
    std::remove(o.json_path.c_str());
    if (rc != 0 || js.empty()) {
      out << "sweep " << name << " = " << v << ": bench failed (status " << rc << ")\n";
      status = 1;
      continue;
    }
    const double fm = json_number(js, "monomoe", "median_ms");
    const double bm = json_number(js, "baseline", "median_ms");
    csv << v << "," << o.gpus << "," << fm << "," << bm << "," << (bm > 0 && fm > 0 ? bm / fm : -1)
        << "," << json_number(js, "monomoe", "tflops") << ","
        << json_number(js, "baseline", "tflops") << "," << json_number(js, "weight_floor", "ms")
        << "," << json_number(js, "", "monomoe_over_weight_floor") << "\n";
    csv.flush();
  }
  out << "wrote " << csv_path << "\n";
  return status;
}

}  // namespace monomoe::bench
