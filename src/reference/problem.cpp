// Seeded inputs for the CPU reference and the GPU checks, and the numeric helpers those checks
// share (bf16 rounding, relative error).
//
// Every tensor (and every expert's slice of a weight tensor, and every rank's x) draws from its own
// counter-based stream: element i of a stream is a pure function of (seed, stream id, i). So the
// values do not depend on how many threads fill them, and growing one tensor (more tokens, another
// rank) leaves the others unchanged.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "monomoe/error.hpp"
#include "reference/fp8.hpp"
#include "reference/parallel.hpp"
#include "reference/reference.hpp"

namespace monomoe::reference {

namespace {

// One splitmix64 step: a bijective 64-bit mixer, good enough to decorrelate counters.
std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Stream ids. Each names one tensor (or slice); `index` is the expert or the rank.
// give_random_routing's streams (routing_ids, routing_weights) are indexed by the rank.
enum class Stream : std::uint64_t {
  x = 1,
  gate = 2,
  w1 = 3,
  b1 = 4,
  w2 = 5,
  b2 = 6,
  routing_ids = 7,
  routing_weights = 8,
  shared_w1 = 9,
  shared_b1 = 10,
  shared_w2 = 11,
  shared_b2 = 12,
};

class UniformStream {
 public:
  UniformStream(std::uint64_t seed, Stream s, std::uint64_t index)
      : key_(mix64(mix64(seed ^ 0x6D6F6E6F6D6F65ull) + static_cast<std::uint64_t>(s)) +
             mix64(index + 0x9E3779B97F4A7C15ull)) {}

  // Element i uniform in [-a, a), with 24 random bits (all a float can hold in [0.5, 1)).
  float at(std::uint64_t i, double a) const {
    const double u = static_cast<double>(bits(i) >> 40) * 0x1.0p-24;  // [0, 1)
    return static_cast<float>((2.0 * u - 1.0) * a);
  }
  // Element i as 64 random bits.
  std::uint64_t bits(std::uint64_t i) const {
    return mix64(key_ + (i + 1) * 0x9E3779B97F4A7C15ull);
  }

 private:
  std::uint64_t key_;
};

// Fills out[0, n) from the stream, rounding to bf16 when asked.
void fill(float* out, std::size_t n, const UniformStream& s, double a, bool bf16) {
  for (std::size_t i = 0; i < n; ++i) {
    const float v = s.at(i, a);
    out[i] = bf16 ? round_bf16(v) : v;
  }
}

std::size_t sz(std::int64_t v) {
  return static_cast<std::size_t>(v);
}

// fp8: a matrix stored [in, out] replaced by its E4M3 values, blocked as its [out, in]
// orientation; scale gets [out / 128, in / 128]. The blocks are the same squares either way, so
// the storage is quantized as it is and only the small scale array is transposed.
void quantize_in_out(float* w, std::size_t in_rows, std::size_t out_cols, float* scale) {
  const std::size_t b = sz(fp8::kBlock);
  std::vector<float> scale_in_out((in_rows / b) * (out_cols / b));
  fp8::quantize_weight_blocks(w, in_rows, out_cols, w, scale_in_out.data());
  for (std::size_t ib = 0; ib < in_rows / b; ++ib) {
    for (std::size_t ob = 0; ob < out_cols / b; ++ob) {
      scale[ob * (in_rows / b) + ib] = scale_in_out[ib * (out_cols / b) + ob];
    }
  }
}

}  // namespace

Problem make_problem(const LayerConfig& config, const std::vector<std::int64_t>& tokens,
                     std::uint64_t seed) {
  // The reference covers every rank at once; which rank the config names does not matter.
  LayerConfig checked = config;
  checked.rank = 0;
  checked.validate();
  if (static_cast<std::int64_t>(tokens.size()) != config.world_size) {
    throw ConfigError(
        "reference::make_problem: tokens has " + std::to_string(tokens.size()) +
        " entries, expected one per rank (world_size = " + std::to_string(config.world_size) + ")");
  }
  for (std::size_t r = 0; r < tokens.size(); ++r) {
    if (tokens[r] < 0 || tokens[r] > config.max_tokens) {
      throw ConfigError("reference::make_problem: tokens[" + std::to_string(r) +
                        "] = " + std::to_string(tokens[r]) +
                        " must be in [0, max_tokens = " + std::to_string(config.max_tokens) + "]");
    }
  }

  // fp8's x, gate and biases are bf16; its expert matrices are quantized below.
  const bool fp8 = config.dtype == DType::fp8;
  const bool bf16 = config.dtype == DType::bf16 || fp8;
  const bool bf16_matrices = config.dtype == DType::bf16;
  const std::size_t h = sz(config.hidden);
  const std::size_t f = sz(config.ffn);
  const std::size_t e = sz(config.experts);
  const std::size_t c1 = sz(config.w1_columns());

  // Scales: x has variance 1/3. The gate's a = 2*sqrt(3/H) gives logits of variance 4/3; W1's
  // sqrt(2)*sqrt(3/H) gives pre-activations of variance 2/3; W2's sqrt(3/I) keeps the output's
  // variance near the activation's mean square. Everything stays O(1) at any width.
  const double x_scale = 1.0;
  const double gate_scale = 2.0 * std::sqrt(3.0 / static_cast<double>(h));
  const double w1_scale = std::sqrt(2.0) * std::sqrt(3.0 / static_cast<double>(h));
  const double w2_scale = std::sqrt(3.0 / static_cast<double>(f));
  const double bias_scale = 0.1;

  Problem p;
  p.config = config;
  p.tokens = tokens;
  p.x.resize(tokens.size());
  p.gate.resize(h * e);
  p.w1.resize(e * h * c1);
  p.w2.resize(e * f * h);
  if (config.bias) {
    p.b1.resize(e * c1);
    p.b2.resize(e * h);
  }
  const std::size_t sf = sz(config.shared_ffn);
  const std::size_t sc1 = sz(config.shared_w1_columns());
  p.shared_w1.resize(h * sc1);
  p.shared_w2.resize(sf * h);
  if (config.bias && sf > 0) {
    p.shared_b1.resize(sc1);
    p.shared_b2.resize(h);
  }
  // W2 of the shared expert: the same rule as the routed ones' over its own fan-in.
  const double shared_w2_scale = sf > 0 ? std::sqrt(3.0 / static_cast<double>(sf)) : 0.0;
  const std::size_t blocks = sz(fp8::kBlock) * sz(fp8::kBlock);
  if (fp8) {
    p.w1_scale.resize(e * h * c1 / blocks);
    p.w2_scale.resize(e * f * h / blocks);
    p.shared_w1_scale.resize(h * sc1 / blocks);
    p.shared_w2_scale.resize(sf * h / blocks);
  }
  // A matrix stored [in, out] (in_rows x out_cols) filled from a stream, and for fp8 quantized
  // per block with its scales [out / 128, in / 128] into `scale`.
  const auto fill_matrix = [&](float* w, std::size_t in_rows, std::size_t out_cols,
                               const UniformStream& stream, double a, float* scale) {
    fill(w, in_rows * out_cols, stream, a, bf16_matrices);
    if (fp8) quantize_in_out(w, in_rows, out_cols, scale);
  };

  // Jobs: one per rank's x, then one per expert (its W1, W2 and biases), then the gate (and the
  // shared expert).
  const std::size_t world = tokens.size();
  parallel_for(world + e + 1, 0, [&](std::size_t job, std::size_t) {
    if (job < world) {
      std::vector<float>& x = p.x[job];
      x.resize(sz(tokens[job]) * h);
      fill(x.data(), x.size(), UniformStream(seed, Stream::x, job), x_scale, bf16);
    } else if (job < world + e) {
      const std::size_t ex = job - world;
      fill_matrix(p.w1.data() + ex * h * c1, h, c1, UniformStream(seed, Stream::w1, ex), w1_scale,
                  fp8 ? p.w1_scale.data() + ex * h * c1 / blocks : nullptr);
      fill_matrix(p.w2.data() + ex * f * h, f, h, UniformStream(seed, Stream::w2, ex), w2_scale,
                  fp8 ? p.w2_scale.data() + ex * f * h / blocks : nullptr);
      if (config.bias) {
        fill(p.b1.data() + ex * c1, c1, UniformStream(seed, Stream::b1, ex), bias_scale, bf16);
        fill(p.b2.data() + ex * h, h, UniformStream(seed, Stream::b2, ex), bias_scale, bf16);
      }
    } else {
      fill(p.gate.data(), p.gate.size(), UniformStream(seed, Stream::gate, 0), gate_scale, bf16);
      fill_matrix(p.shared_w1.data(), h, sc1, UniformStream(seed, Stream::shared_w1, 0), w1_scale,
                  p.shared_w1_scale.data());
      fill_matrix(p.shared_w2.data(), sf, h, UniformStream(seed, Stream::shared_w2, 0),
                  shared_w2_scale, p.shared_w2_scale.data());
      fill(p.shared_b1.data(), p.shared_b1.size(), UniformStream(seed, Stream::shared_b1, 0),
           bias_scale, bf16);
      fill(p.shared_b2.data(), p.shared_b2.size(), UniformStream(seed, Stream::shared_b2, 0),
           bias_scale, bf16);
    }
  });
  return p;
}

void skew_gate_towards(Problem& p, std::int64_t expert, float bias) {
  const LayerConfig& c = p.config;
  if (expert < 0 || expert >= c.experts) {
    throw ConfigError("reference::skew_gate_towards: expert = " + std::to_string(expert) +
                      " must be in [0, experts = " + std::to_string(c.experts) + ")");
  }
  if (p.gate.size() != sz(c.hidden) * sz(c.experts)) {
    throw ConfigError("reference::skew_gate_towards: gate has " + std::to_string(p.gate.size()) +
                      " values, expected hidden * experts");
  }
  // Logits are x . gate, and x ~ U(-1, 1) can cancel any fixed column. Pinning feature 0 of every
  // token to 1 (exact in bf16) makes gate[0, expert] a bias that every token sees with the same
  // sign.
  const std::size_t h = sz(c.hidden);
  for (std::vector<float>& x : p.x) {
    for (std::size_t at = 0; at < x.size(); at += h) x[at] = 1.0f;
  }
  float& g = p.gate[sz(expert)];  // row 0, column `expert`
  g += bias;
  if (c.dtype == DType::bf16 || c.dtype == DType::fp8) g = round_bf16(g);  // fp8's gate is bf16
}

void give_random_routing(Problem& p, std::uint64_t seed) {
  const LayerConfig& c = p.config;
  const std::size_t e = sz(c.experts);
  const std::size_t k = sz(c.topk);
  if (k < 1 || k > e) {
    throw ConfigError("reference::give_random_routing: topk = " + std::to_string(c.topk) +
                      " must be in [1, experts = " + std::to_string(c.experts) + "]");
  }
  const std::size_t world = p.tokens.size();
  p.topk_ids.assign(world, {});
  p.topk_weights.assign(world, {});
  std::vector<std::int32_t> deck(e);
  for (std::size_t r = 0; r < world; ++r) {
    const UniformStream ids(seed, Stream::routing_ids, r);
    const UniformStream weights(seed, Stream::routing_weights, r);
    const std::size_t choices = sz(p.tokens[r]) * k;
    p.topk_ids[r].resize(choices);
    p.topk_weights[r].resize(choices);
    for (std::size_t t = 0; t < sz(p.tokens[r]); ++t) {
      // The first k steps of a Fisher-Yates shuffle: k distinct experts, each equally likely.
      for (std::size_t i = 0; i < e; ++i) deck[i] = static_cast<std::int32_t>(i);
      for (std::size_t j = 0; j < k; ++j) {
        const std::size_t pick = j + ids.bits(t * k + j) % (e - j);
        std::swap(deck[j], deck[pick]);
        p.topk_ids[r][t * k + j] = deck[j];
        p.topk_weights[r][t * k + j] = 0.55f + weights.at(t * k + j, 0.45);  // [0.1, 1)
      }
    }
  }
}

// ---- Numeric helpers shared with the GPU checks -------------------------------------------------

float round_bf16(float v) {
  std::uint32_t bits = std::bit_cast<std::uint32_t>(v);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    return std::bit_cast<float>(bits | 0x00400000u);  // NaN stays NaN (made quiet, as the GPU does)
  }
  // Round to nearest, ties to even on the 16 bits that are dropped. Infinity stays infinity and the
  // largest finite floats round up to infinity, as __float2bfloat16_rn does.
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return std::bit_cast<float>(bits & 0xffff0000u);
}

double relative_error(const std::vector<float>& a, const std::vector<double>& b,
                      std::int64_t row_width, const std::vector<std::uint8_t>& row_mask) {
  if (a.size() != b.size()) {
    throw Error("reference::relative_error: sizes differ (" + std::to_string(a.size()) + " vs " +
                std::to_string(b.size()) + ")");
  }
  if (row_width < 1 || b.size() % sz(row_width) != 0) {
    throw Error("reference::relative_error: row_width = " + std::to_string(row_width) +
                " does not divide " + std::to_string(b.size()) + " values");
  }
  const std::size_t width = sz(row_width);
  const std::size_t rows = b.size() / width;
  if (!row_mask.empty() && row_mask.size() != rows) {
    throw Error("reference::relative_error: row_mask has " + std::to_string(row_mask.size()) +
                " entries for " + std::to_string(rows) + " rows");
  }
  double num = 0.0, den = 0.0;
  for (std::size_t r = 0; r < rows; ++r) {
    if (!row_mask.empty() && row_mask[r] == 0) continue;
    for (std::size_t i = r * width; i < (r + 1) * width; ++i) {
      if (!std::isfinite(a[i])) return std::numeric_limits<double>::infinity();
      const double d = static_cast<double>(a[i]) - b[i];
      num += d * d;
      den += b[i] * b[i];
    }
  }
  return den > 0.0 ? std::sqrt(num / den) : std::sqrt(num);
}

}  // namespace monomoe::reference
