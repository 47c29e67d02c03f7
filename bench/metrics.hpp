// The arithmetic behind bench's rates and its compute floor, kept apart from CUDA so that the CPU
// tests check it (tests/test_bench_metrics.cpp).
#pragma once

#include <cstdint>

#include "monomoe/config.hpp"

namespace monomoe::bench {

// FLOP of the expert FFN over `rows` kept (token, expert) rows: GEMM0 [rows, H] x [H, w1_cols] and
// GEMM1 [rows, I] x [I, H], two FLOP per multiply-add. Biases and the activation are not counted:
// they are O(rows * (w1_cols + H)), next to nothing beside the GEMMs.
inline double ffn_flop(std::int64_t rows, const LayerConfig& c) {
  return static_cast<double>(rows) *
         (2.0 * static_cast<double>(c.hidden) * static_cast<double>(c.w1_columns()) +
          2.0 * static_cast<double>(c.ffn) * static_cast<double>(c.hidden));
}

// FLOP of the shared expert over `tokens` tokens, all of a rank's (0 without one): an expert of
// width shared_ffn that every token runs, GEMM0 [tokens, H] x [H, shared_w1_columns] and GEMM1
// [tokens, S] x [S, H].
inline double shared_flop(std::int64_t tokens, const LayerConfig& c) {
  LayerConfig shared = c;
  shared.ffn = c.shared_ffn;
  return ffn_flop(tokens, shared);
}

// FLOP of one dense GEMM [m, k] x [k, n].
inline double gemm_flop(std::int64_t m, std::int64_t n, std::int64_t k) {
  return 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
}

// TFLOP/s of `flop` done in `ms` milliseconds (0 when nothing was timed).
inline double tflops(double flop, double ms) {
  return ms > 0.0 ? flop / (ms * 1e-3) / 1e12 : 0.0;
}

// The compute floor: milliseconds that `flop` take at `ceiling_tflops`, the GPU's measured dense
// GEMM rate (0 when there is none). A floor as far as one large cuBLAS GEMM is the best rate this
// chip reaches: smaller, grouped GEMMs do not get above it, whatever is overlapped or fused.
inline double compute_floor_ms(double flop, double ceiling_tflops) {
  return ceiling_tflops > 0.0 ? flop / (ceiling_tflops * 1e12) * 1e3 : 0.0;
}

}  // namespace monomoe::bench
