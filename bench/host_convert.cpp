#include "bench/host_convert.hpp"

#include <algorithm>
#include <cmath>
#include <sstream>

#include "monomoe/error.hpp"
#include "reference/fp8.hpp"
#include "reference/parallel.hpp"
#include "reference/reference.hpp"  // round_bf16

namespace monomoe::bench {

namespace {

// Elementwise work goes to the threads in pieces of this many values (a few ms each).
constexpr std::size_t kPiece = std::size_t{1} << 20;

// f(i) for every i in [0, n), in pieces on the host's threads.
template <class F>
void for_each_index(std::size_t n, const F& f) {
  reference::parallel_for((n + kPiece - 1) / kPiece, 0, [&](std::size_t piece, std::size_t) {
    const std::size_t end = std::min(n, (piece + 1) * kPiece);
    for (std::size_t i = piece * kPiece; i < end; ++i) f(i);
  });
}

constexpr std::size_t kScaleBlock = static_cast<std::size_t>(reference::fp8::kBlock);

}  // namespace

std::vector<float> transposed(const float* v, std::size_t count, std::size_t rows,
                              std::size_t cols) {
  std::vector<float> out(count * rows * cols);
  // Items of 32 source rows of one matrix: each writes 32 consecutive floats of every output row.
  constexpr std::size_t kRows = 32;
  const std::size_t blocks = (rows + kRows - 1) / kRows;
  reference::parallel_for(count * blocks, 0, [&](std::size_t item, std::size_t) {
    const std::size_t m = item / blocks, r0 = (item % blocks) * kRows;
    const std::size_t r1 = std::min(rows, r0 + kRows);
    const float* src = v + m * rows * cols;
    float* dst = out.data() + m * rows * cols;
    for (std::size_t c = 0; c < cols; ++c) {
      for (std::size_t r = r0; r < r1; ++r) dst[c * rows + r] = src[r * cols + c];
    }
  });
  return out;
}

std::vector<__nv_bfloat16> to_bf16(const float* v, std::size_t n) {
  std::vector<__nv_bfloat16> out(n);
  for_each_index(n, [&](std::size_t i) { out[i] = __float2bfloat16_rn(v[i]); });
  return out;
}

std::vector<__nv_fp8_e4m3> to_e4m3(const float* v, std::size_t n, const char* what) {
  std::vector<__nv_fp8_e4m3> q(n);
  for_each_index(n, [&](std::size_t i) {
    q[i] = __nv_fp8_e4m3(v[i]);
    const float back = static_cast<float>(q[i]);
    if (back != v[i] && !(std::isnan(back) && std::isnan(v[i]))) {
      std::ostringstream os;
      os << "bench::DeviceProblem: " << what << " element " << i << " = " << v[i]
         << " is not an E4M3 value (it converts to " << back
         << "); an fp8 problem's expert matrices must hold E4M3 values, as "
            "reference::make_problem makes them";
      throw ConfigError(os.str());
    }
  });
  return q;
}

std::vector<float> dequantized_bf16(const float* w, const float* scale, std::size_t count,
                                    std::size_t in, std::size_t out) {
  const std::size_t in_blocks = in / kScaleBlock, out_blocks = out / kScaleBlock;
  std::vector<float> d(count * in * out);
  // One item per input row of one matrix.
  reference::parallel_for(count * in, 0, [&](std::size_t item, std::size_t) {
    const std::size_t m = item / in, i = item % in;
    const float* sm = scale + m * in_blocks * out_blocks;
    const float* wr = w + item * out;
    float* dr = d.data() + item * out;
    for (std::size_t o = 0; o < out; ++o) {
      dr[o] = reference::round_bf16(wr[o] * sm[(o / kScaleBlock) * in_blocks + i / kScaleBlock]);
    }
  });
  return d;
}

}  // namespace monomoe::bench
