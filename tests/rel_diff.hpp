// ||a - b|| / ||b|| of two float64 outputs (||a - b|| when b is all zeros): how the CPU tests
// compare two computations of the same layer. Header-only, for any test.
#pragma once

#include <cmath>
#include <cstddef>
#include <vector>

namespace monomoe::test {

inline double rel_diff(const std::vector<double>& a, const std::vector<double>& b) {
  double num = 0.0, den = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    num += (a[i] - b[i]) * (a[i] - b[i]);
    den += b[i] * b[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

}  // namespace monomoe::test
