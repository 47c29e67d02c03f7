// Shared by the poisoned-input GPU tests (one GPU, virtual ranks, 2 GPUs): what a token row with a
// NaN or an inf may change. Issue 13's rule, as the kernel implements it (device/gate.cuh): only
// that token's output (not finite) and routing (defined: NaN logits take the lowest experts not
// chosen yet, in order); every other token bit-identical to the run without the poisoned row.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace monomoe::test {

// One rank's outputs and routing ([tokens, hidden] as float, [tokens, k] expert ids) of a clean
// run (y0, e0) and of the run where token `bad` (-1: none on this rank) was poisoned (y1, e1).
// Returns an empty string when the rule holds, otherwise what broke it.
inline std::string poisoned_row_violations(const std::vector<float>& y0,
                                           const std::vector<std::int32_t>& e0,
                                           const std::vector<float>& y1,
                                           const std::vector<std::int32_t>& e1, std::int64_t tokens,
                                           std::int64_t hidden, std::int64_t k,
                                           std::int64_t experts, std::int64_t bad, bool nan) {
  const auto h = static_cast<std::size_t>(hidden);
  const auto kk = static_cast<std::size_t>(k);
  std::string out;
  std::int64_t changed = 0;
  for (std::int64_t t = 0; t < tokens; ++t) {
    if (t == bad) continue;
    const auto ut = static_cast<std::size_t>(t);
    changed += std::memcmp(y0.data() + ut * h, y1.data() + ut * h, h * sizeof(float)) != 0;
    changed += std::memcmp(e0.data() + ut * kk, e1.data() + ut * kk, kk * sizeof(std::int32_t)) != 0;
  }
  if (changed != 0) out += std::to_string(changed) + " outputs/routes of other tokens changed; ";
  if (bad < 0) return out;
  const auto ub = static_cast<std::size_t>(bad);
  std::vector<bool> seen(static_cast<std::size_t>(experts), false);
  for (std::size_t j = 0; j < kk; ++j) {
    const std::int32_t e = e1[ub * kk + j];
    if (e < 0 || e >= experts || seen[static_cast<std::size_t>(e)]) {
      out += "choice " + std::to_string(j) + " of the poisoned token is expert " + std::to_string(e) +
             " (out of range or repeated); ";
      continue;
    }
    seen[static_cast<std::size_t>(e)] = true;
    if (nan && e != static_cast<std::int32_t>(j)) {
      out += "NaN logits: choice " + std::to_string(j) + " is expert " + std::to_string(e) +
             ", not " + std::to_string(j) + "; ";
    }
  }
  std::size_t finite = 0;
  for (std::size_t q = 0; q < h; ++q) finite += std::isfinite(y1[ub * h + q]) ? 1 : 0;
  if (finite != 0) out += std::to_string(finite) + " finite outputs of the poisoned token; ";
  return out;
}

}  // namespace monomoe::test
