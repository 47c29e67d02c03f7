#include "reference/fp8.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

namespace monomoe::reference::fp8 {

float round_e4m3(float v) {
  if (std::isnan(v)) return v;
  const float a = std::fabs(v);
  if (a >= kMax) return std::copysign(kMax, v);  // satfinite (also for +-inf)
  // The spacing of E4M3 values around a: 2^(e - 3) for a in [2^e, 2^(e + 1)) with e >= -6 (3
  // mantissa bits), 2^-9 below 2^-6 (subnormals). a / spacing is exact (a power of two), rint
  // rounds it half to even in the default rounding mode, and the product is exact again.
  int e = 0;
  std::frexp(a, &e);  // a = m * 2^e, m in [0.5, 1): a in [2^(e - 1), 2^e)
  const float spacing = std::ldexp(1.f, std::max(e - 1, -6) - 3);
  // Below 448 the largest result is 448 itself (spacing 32 from 256 up): no overflow to handle.
  return std::copysign(std::rint(a / spacing) * spacing, v);
}

namespace {

float amax_scale(float amax, float* inv) {
  if (amax == 0.f) {
    *inv = 1.f;
    return 1.f;
  }
  *inv = kMax / amax;
  return amax / kMax;
}

}  // namespace

float quantize_group(const float* v, std::size_t n, float* q) {
  float amax = 0.f;
  for (std::size_t i = 0; i < n; ++i) {
    const float a = std::fabs(v[i]);
    // NaN must win: max() would drop it.
    amax = std::isnan(a) || std::isnan(amax) ? std::numeric_limits<float>::quiet_NaN()
                                             : std::max(amax, a);
  }
  float inv = 0.f;
  const float scale = amax_scale(amax, &inv);
  for (std::size_t i = 0; i < n; ++i) q[i] = round_e4m3(v[i] * inv);
  return scale;
}

void quantize_weight_blocks(const float* w, std::size_t rows, std::size_t cols, float* q,
                            float* scale) {
  const std::size_t b = static_cast<std::size_t>(kBlock);
  const std::size_t col_blocks = (cols + b - 1) / b;
  for (std::size_t r0 = 0; r0 < rows; r0 += b) {
    for (std::size_t c0 = 0; c0 < cols; c0 += b) {
      const std::size_t r1 = std::min(rows, r0 + b), c1 = std::min(cols, c0 + b);
      float amax = 0.f;
      for (std::size_t r = r0; r < r1; ++r) {
        for (std::size_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(w[r * cols + c]));
      }
      float inv = 0.f;
      scale[(r0 / b) * col_blocks + c0 / b] = amax_scale(amax, &inv);
      for (std::size_t r = r0; r < r1; ++r) {
        for (std::size_t c = c0; c < c1; ++c) q[r * cols + c] = round_e4m3(w[r * cols + c] * inv);
      }
    }
  }
}

}  // namespace monomoe::reference::fp8
