// The float64 CPU reference of the MoE layer (DESIGN.md, "What the layer computes"), all ranks at
// once. Three phases:
//   1. gate: per token, logits in float64, a stable softmax, top-k with ties to the lower expert,
//      and the (optionally renormalized) weights; or the routing the problem gives, as it is;
//   2. capacity: per (source rank, expert), the first `cap` choices in ascending token order are
//      kept, the rest dropped and counted (skipped when dropless);
//   3. experts: for choice j = 0, 1, ..., k-1 in turn, every kept row (token, j) runs through
//      FFN_{e_j} and y_t += w_j * FFN_{e_j}(x_t). Rows of one expert are processed in blocks so
//      that a weight tile is read once per block, not once per token;
//   4. the shared expert (config.shared_ffn > 0): y_t += FFN_shared(x_t) for every token, from its
//      whole weights (the kernel runs it in slices: an error in the slicing shows here).
// Determinism: every output element is a sum taken in one fixed order (ascending hidden/ffn index;
// choices in ascending j) by one code path, whatever the blocking and thread count, and phases are
// separated by joins. So the result is bit-identical for any number of threads.
#include "reference/reference.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "monomoe/error.hpp"
#include "reference/fp8.hpp"
#include "reference/parallel.hpp"

namespace monomoe::reference {

namespace {

std::size_t sz(std::int64_t v) {
  return static_cast<std::size_t>(v);
}

void require_size(const char* what, std::size_t have, std::size_t want) {
  if (have != want) {
    throw ConfigError(std::string("reference::run: Problem.") + what + " has " +
                      std::to_string(have) + " values, expected " + std::to_string(want));
  }
}

void validate_problem(const Problem& p) {
  const LayerConfig& c = p.config;
  LayerConfig any_rank = c;  // the reference runs every rank; config.rank is ignored
  any_rank.rank = 0;
  any_rank.validate();
  const std::size_t world = sz(c.world_size);
  if (p.tokens.size() != world) {
    throw ConfigError("reference::run: Problem.tokens has " + std::to_string(p.tokens.size()) +
                      " entries, expected world_size = " + std::to_string(world));
  }
  require_size("x (ranks)", p.x.size(), world);
  for (std::size_t r = 0; r < world; ++r) {
    if (p.tokens[r] < 0 || p.tokens[r] > c.max_tokens) {
      throw ConfigError("reference::run: Problem.tokens[" + std::to_string(r) +
                        "] = " + std::to_string(p.tokens[r]) +
                        " must be in [0, max_tokens = " + std::to_string(c.max_tokens) + "]");
    }
    const std::string what = "x[" + std::to_string(r) + "]";
    require_size(what.c_str(), p.x[r].size(), sz(p.tokens[r]) * sz(c.hidden));
  }
  const std::size_t e = sz(c.experts);
  const std::size_t h = sz(c.hidden);
  const std::size_t c1 = sz(c.w1_columns());
  require_size("gate", p.gate.size(), h * e);
  require_size("w1", p.w1.size(), e * h * c1);
  require_size("w2", p.w2.size(), e * sz(c.ffn) * h);
  if (c.bias) {
    require_size("b1", p.b1.size(), e * c1);
    require_size("b2", p.b2.size(), e * h);
  }
  const std::size_t sc1 = sz(c.shared_w1_columns());
  require_size("shared_w1", p.shared_w1.size(), h * sc1);
  require_size("shared_w2", p.shared_w2.size(), sz(c.shared_ffn) * h);
  if (c.bias && c.shared_ffn > 0) {
    require_size("shared_b1", p.shared_b1.size(), sc1);
    require_size("shared_b2", p.shared_b2.size(), h);
  }
  if (c.dtype == DType::fp8) {
    const std::size_t b = sz(fp8::kBlock) * sz(fp8::kBlock);
    require_size("w1_scale", p.w1_scale.size(), e * h * c1 / b);
    require_size("w2_scale", p.w2_scale.size(), e * sz(c.ffn) * h / b);
    require_size("shared_w1_scale", p.shared_w1_scale.size(), h * sc1 / b);
    require_size("shared_w2_scale", p.shared_w2_scale.size(), sz(c.shared_ffn) * h / b);
  }
  if (!p.routing_given() && p.topk_weights.empty()) return;
  // A given routing: sizes, and ids as the kernel accepts them (in range, distinct per token).
  require_size("topk_ids (ranks)", p.topk_ids.size(), world);
  require_size("topk_weights (ranks)", p.topk_weights.size(), world);
  const std::size_t k = sz(c.topk);
  for (std::size_t r = 0; r < world; ++r) {
    std::string rank = "[";  // built by appending: GCC 12 warns falsely on "[" + std::string
    rank += std::to_string(r);
    rank += ']';
    require_size(("topk_ids" + rank).c_str(), p.topk_ids[r].size(), sz(p.tokens[r]) * k);
    require_size(("topk_weights" + rank).c_str(), p.topk_weights[r].size(), sz(p.tokens[r]) * k);
    for (std::size_t t = 0; t < sz(p.tokens[r]); ++t) {
      const std::int32_t* ids = p.topk_ids[r].data() + t * k;
      for (std::size_t j = 0; j < k; ++j) {
        const auto at = [&] {
          return "reference::run: Problem.topk_ids" + rank + "[" + std::to_string(t) + ", " +
                 std::to_string(j) + "] = " + std::to_string(ids[j]);
        };
        if (ids[j] < 0 || sz(ids[j]) >= e) {
          throw ConfigError(at() + " is not an expert id in [0, " + std::to_string(e) + ")");
        }
        if (std::find(ids, ids + j, ids[j]) != ids + j) {
          throw ConfigError(at() + ": token " + std::to_string(t) + " lists that expert twice");
        }
      }
    }
  }
}

// ---- Phase 1: gate
// -------------------------------------------------------------------------------

// Routes one token: writes its k experts, weights and margin.
void route_token(const LayerConfig& c, const float* x, const float* gate, double* logits,
                 double* prob, std::int32_t* expert, double* weight, double* margin) {
  const std::size_t h = sz(c.hidden);
  const std::size_t e = sz(c.experts);
  const std::size_t k = sz(c.topk);
  std::fill(logits, logits + e, 0.0);
  for (std::size_t q = 0; q < h; ++q) {
    const double xv = x[q];
    const float* row = gate + q * e;
    for (std::size_t j = 0; j < e; ++j) logits[j] += xv * static_cast<double>(row[j]);
  }
  // Stable softmax: subtract the largest logit (a NaN logit makes every probability NaN).
  double top = logits[0];
  bool nan = false;
  for (std::size_t j = 0; j < e; ++j) {
    nan = nan || std::isnan(logits[j]);
    top = std::max(top, logits[j]);
  }
  double sum = 0.0;
  for (std::size_t j = 0; j < e; ++j) {
    prob[j] = nan ? std::numeric_limits<double>::quiet_NaN() : std::exp(logits[j] - top);
    sum += prob[j];
  }
  for (std::size_t j = 0; j < e; ++j) prob[j] /= sum;

  // Top-k by repeated selection on the logits (the order of the probabilities where they are
  // finite): a strict '>' while scanning upwards keeps the lower index on ties, and NaN or -inf
  // logits are never larger than anything. When only those are left, as for a token with a NaN or
  // inf in its row of x, the lowest expert not taken yet is chosen; its weight is then NaN.
  std::uint64_t taken[4] = {0, 0, 0, 0};  // bit set over <= 256 experts
  const auto is_taken = [&](std::size_t j) { return (taken[j / 64] >> (j % 64)) & 1u; };
  const auto best_free = [&]() {
    std::size_t best = e;
    double best_logit = -std::numeric_limits<double>::infinity();
    for (std::size_t j = 0; j < e; ++j) {
      if (!is_taken(j) && logits[j] > best_logit) {
        best = j;
        best_logit = logits[j];
      }
    }
    for (std::size_t j = 0; best == e && j < e; ++j) {
      if (!is_taken(j)) best = j;
    }
    return best;
  };
  double chosen_sum = 0.0;
  for (std::size_t j = 0; j < k; ++j) {
    const std::size_t b = best_free();
    taken[b / 64] |= std::uint64_t{1} << (b % 64);
    expert[j] = static_cast<std::int32_t>(b);
    weight[j] = prob[b];
    chosen_sum += prob[b];
  }
  if (c.renormalize) {
    for (std::size_t j = 0; j < k; ++j) weight[j] /= chosen_sum;
  }
  // The gap in logits, not in probabilities: softmax keeps the order, and a logit gap is what a GPU's
  // rounding of the gate GEMM has to overcome (probabilities of e^-50 differ by nothing).
  *margin = k == e ? 1.0 : logits[sz(expert[k - 1])] - logits[best_free()];
}

// ---- Phase 3: experts
// ----------------------------------------------------------------------------

// Tiles of the row-block GEMM. A weight tile (kDepthTile x kColTile floats, 128 KiB) stays in L2
// while every group of kGroupRows rows of the block streams over it; a group's accumulators
// (kGroupRows x kColTile doubles, 8 KiB) stay in L1.
constexpr std::size_t kBlockRows = 32;  // rows (token copies) of one expert per work item
constexpr std::size_t kGroupRows = 4;   // rows updated together by the inner loop
constexpr std::size_t kColTile = 256;
constexpr std::size_t kDepthTile = 128;
static_assert(kBlockRows % kGroupRows == 0);

// out[r, n] = sum_{d ascending} in[r, d] * w[d, n] for r < rows (a multiple of kGroupRows),
// n < cols, d < depth. Each element is summed from 0.0 in ascending d by the same statement for
// every row, so its value does not depend on the tiling or on the other rows of the block.
// With `scale` (fp8), w holds E4M3 values and the weight is w[d, n] * scale[(n / 128) * (depth /
// 128) + d / 128] (its [out, in] blocks), exact in float64; depth and cols are multiples of 128.
void block_gemm(const double* in, std::size_t rows, std::size_t depth, const float* w,
                std::size_t cols, double* out, const float* scale = nullptr) {
  static_assert(kDepthTile == fp8::kBlock && kColTile % fp8::kBlock == 0,
                "a depth tile is one row of scale blocks");
  double acc[kGroupRows][kColTile];
  double col_scale[kColTile];  // fp8: the scale of each column of the current (n0, d0) tile
  for (std::size_t n0 = 0; n0 < cols; n0 += kColTile) {
    const std::size_t nn = std::min(kColTile, cols - n0);
    for (std::size_t d0 = 0; d0 < depth; d0 += kDepthTile) {
      const std::size_t dd = std::min(kDepthTile, depth - d0);
      for (std::size_t n = 0; scale && n < nn; ++n) {
        col_scale[n] = scale[(n0 + n) / kDepthTile * (depth / kDepthTile) + d0 / kDepthTile];
      }
      for (std::size_t r0 = 0; r0 < rows; r0 += kGroupRows) {
        for (std::size_t g = 0; g < kGroupRows; ++g) {
          if (d0 == 0) {
            std::fill(acc[g], acc[g] + nn, 0.0);
          } else {
            std::memcpy(acc[g], out + (r0 + g) * cols + n0, nn * sizeof(double));
          }
        }
        const double* a0 = in + (r0 + 0) * depth;
        const double* a1 = in + (r0 + 1) * depth;
        const double* a2 = in + (r0 + 2) * depth;
        const double* a3 = in + (r0 + 3) * depth;
        for (std::size_t d = d0; d < d0 + dd; ++d) {
          const float* wr = w + d * cols + n0;
          const double x0 = a0[d], x1 = a1[d], x2 = a2[d], x3 = a3[d];
          for (std::size_t n = 0; n < nn; ++n) {
            const double wv = scale ? wr[n] * col_scale[n] : wr[n];
            acc[0][n] += x0 * wv;
            acc[1][n] += x1 * wv;
            acc[2][n] += x2 * wv;
            acc[3][n] += x3 * wv;
          }
        }
        for (std::size_t g = 0; g < kGroupRows; ++g) {
          std::memcpy(out + (r0 + g) * cols + n0, acc[g], nn * sizeof(double));
        }
      }
    }
  }
}
static_assert(kGroupRows == 4, "block_gemm's inner loop is written for 4 rows");

double act_relu(double v) {
  return v > 0.0 ? v : 0.0;
}
double act_gelu(double v) {
  return 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
}
double act_silu(double v) {
  return v / (1.0 + std::exp(-v));
}

// One row of an expert's input: a kept choice of a token of a rank.
struct Row {
  std::int32_t rank;
  std::int64_t token;
};

// A block of rows of one expert: the work item of phase 3.
struct Block {
  std::size_t expert;
  std::size_t begin, end;  // into rows_of[expert]
};

// Scratch of one worker, sized for a block.
struct Scratch {
  std::vector<double> x, pre, act, out;
};

// One FFN's weights, [in, out] as Problem stores them: a routed expert's slices of w1..b2, or the
// shared expert's (b1, b2 nullptr without biases).
struct FfnWeights {
  const float* w1;  // [hidden, c1]
  const float* b1;  // [c1]
  const float* w2;  // [ffn, hidden]
  const float* b2;  // [hidden]
  std::size_t ffn, c1;
  const float* w1_scale;  // fp8: [c1 / 128, hidden / 128]; nullptr otherwise
  const float* w2_scale;  // fp8: [hidden / 128, ffn / 128]
};

FfnWeights expert_weights(const Problem& p, std::size_t e) {
  const LayerConfig& c = p.config;
  const std::size_t h = sz(c.hidden), f = sz(c.ffn), c1 = sz(c.w1_columns());
  const bool fp8 = c.dtype == DType::fp8;
  const std::size_t b = sz(fp8::kBlock) * sz(fp8::kBlock);
  return {p.w1.data() + e * h * c1,
          c.bias ? p.b1.data() + e * c1 : nullptr,
          p.w2.data() + e * f * h,
          c.bias ? p.b2.data() + e * h : nullptr,
          f,
          c1,
          fp8 ? p.w1_scale.data() + e * h * c1 / b : nullptr,
          fp8 ? p.w2_scale.data() + e * f * h / b : nullptr};
}

FfnWeights shared_weights(const Problem& p) {
  const LayerConfig& c = p.config;
  const bool fp8 = c.dtype == DType::fp8;
  return {p.shared_w1.data(),
          c.bias ? p.shared_b1.data() : nullptr,
          p.shared_w2.data(),
          c.bias ? p.shared_b2.data() : nullptr,
          sz(c.shared_ffn),
          sz(c.shared_w1_columns()),
          fp8 ? p.shared_w1_scale.data() : nullptr,
          fp8 ? p.shared_w2_scale.data() : nullptr};
}

// fp8: each row of `rows` rows of `width` (a multiple of 128) doubles replaced by its values
// quantized per 128 channels (fp8::quantize_group, from the values rounded to float) times the
// group's scale: what the layer's expert GEMMs multiply.
void quantize_rows(double* v, std::size_t rows, std::size_t width) {
  const std::size_t b = sz(fp8::kBlock);
  float in[fp8::kBlock], q[fp8::kBlock];
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::size_t g = 0; g < width; g += b) {
      double* group = v + r * width + g;
      for (std::size_t i = 0; i < b; ++i) in[i] = static_cast<float>(group[i]);
      const double scale = fp8::quantize_group(in, b, q);
      for (std::size_t i = 0; i < b; ++i) group[i] = static_cast<double>(q[i]) * scale;
    }
  }
}

// y[row] += weight_of(row) * FFN(x[row]) for the rows of one block.
template <class WeightOf>
void run_block(const Problem& p, Result& res, const std::vector<Row>& rows, const Block& blk,
               const FfnWeights& wt, const WeightOf& weight_of, Scratch& s) {
  const LayerConfig& c = p.config;
  const std::size_t h = sz(c.hidden);
  const std::size_t f = wt.ffn;
  const std::size_t c1 = wt.c1;
  const std::size_t n = blk.end - blk.begin;
  const std::size_t padded = (n + kGroupRows - 1) / kGroupRows * kGroupRows;

  s.x.assign(padded * h, 0.0);  // padding rows are zero and their outputs are never read
  s.pre.resize(padded * c1);
  s.act.resize(padded * f);
  s.out.resize(padded * h);
  for (std::size_t i = 0; i < n; ++i) {
    const Row& row = rows[blk.begin + i];
    const float* xr = p.x[sz(row.rank)].data() + sz(row.token) * h;
    std::copy(xr, xr + h, s.x.begin() + static_cast<std::ptrdiff_t>(i * h));
  }

  const bool fp8 = wt.w1_scale != nullptr;
  if (fp8) quantize_rows(s.x.data(), n, h);
  block_gemm(s.x.data(), padded, h, wt.w1, c1, s.pre.data(), wt.w1_scale);
  const auto b1_at = [&](std::size_t col) { return wt.b1 ? static_cast<double>(wt.b1[col]) : 0.0; };
  for (std::size_t i = 0; i < padded; ++i) {
    const double* pre = s.pre.data() + i * c1;
    double* a = s.act.data() + i * f;
    for (std::size_t q = 0; q < f; ++q) {
      const double v = pre[q] + b1_at(q);
      switch (c.activation) {
        case Activation::relu:
          a[q] = act_relu(v);
          break;
        case Activation::gelu:
          a[q] = act_gelu(v);
          break;
        case Activation::silu:
          a[q] = act_silu(v);
          break;
        case Activation::swiglu:
          a[q] = act_silu(v) * (pre[f + q] + b1_at(f + q));
          break;
      }
    }
  }
  if (fp8) quantize_rows(s.act.data(), n, f);
  block_gemm(s.act.data(), padded, f, wt.w2, h, s.out.data(), wt.w2_scale);

  for (std::size_t i = 0; i < n; ++i) {
    const Row& row = rows[blk.begin + i];
    const double w = weight_of(row);
    double* y = res.ranks[sz(row.rank)].y.data() + sz(row.token) * h;
    const double* o = s.out.data() + i * h;
    for (std::size_t q = 0; q < h; ++q) {
      const double ffn = wt.b2 ? o[q] + static_cast<double>(wt.b2[q]) : o[q];
      y[q] += w * ffn;
    }
  }
}

}  // namespace

Result run(const Problem& p, int threads) {
  return run(p, threads, ForcedRoutes{});
}

Result run(const Problem& p, int threads, const ForcedRoutes& forced) {
  if (threads < 0) {
    throw ConfigError("reference::run: threads = " + std::to_string(threads) +
                      " must be >= 0 (0 = all hardware threads)");
  }
  if (threads == 0) threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  validate_problem(p);
  const LayerConfig& c = p.config;
  const std::size_t world = sz(c.world_size);
  const std::size_t h = sz(c.hidden);
  const std::size_t e = sz(c.experts);
  const std::size_t k = sz(c.topk);

  Result res;
  res.ranks.resize(world);
  res.dropped_per_expert.assign(e, 0);
  for (std::size_t r = 0; r < world; ++r) {
    RankResult& rr = res.ranks[r];
    const std::size_t s = sz(p.tokens[r]);
    rr.y.assign(s * h, 0.0);
    rr.topk_expert.assign(s * k, 0);
    rr.topk_weight.assign(s * k, 0.0);
    rr.kept.assign(s * k, 1);
    rr.topk_margin.assign(s, 0.0);
    rr.dropped_per_expert.assign(e, 0);
  }

  // Phase 1: gate, over chunks of tokens of every rank.
  constexpr std::size_t kGateChunk = 256;
  struct Chunk {
    std::size_t rank, begin, end;
  };
  std::vector<Chunk> chunks;
  for (std::size_t r = 0; r < world; ++r) {
    const std::size_t s = sz(p.tokens[r]);
    for (std::size_t t = 0; t < s; t += kGateChunk)
      chunks.push_back({r, t, std::min(s, t + kGateChunk)});
  }
  // Forced choices, by token of forced.rank: index into forced.experts, or -1.
  std::vector<std::int64_t> forced_at;
  if (!forced.tokens.empty() && p.routing_given()) {
    throw ConfigError(
        "reference::run: forced routes with a given routing (Problem.topk_ids): "
        "a given routing has no near-ties to force");
  }
  if (!forced.tokens.empty()) {
    if (forced.rank < 0 || sz(forced.rank) >= world) {
      throw ConfigError("reference::run: forced.rank = " + std::to_string(forced.rank) +
                        " must be in [0, " + std::to_string(world - 1) + "]");
    }
    if (forced.experts.size() != forced.tokens.size() * k) {
      throw ConfigError("reference::run: forced.experts holds " +
                        std::to_string(forced.experts.size()) + " ids, expected tokens * topk = " +
                        std::to_string(forced.tokens.size() * k));
    }
    forced_at.assign(sz(p.tokens[sz(forced.rank)]), -1);
    for (std::size_t i = 0; i < forced.tokens.size(); ++i) {
      const std::int64_t t = forced.tokens[i];
      if (t < 0 || sz(t) >= forced_at.size()) {
        throw ConfigError("reference::run: forced token " + std::to_string(t) +
                          " is not a token of rank " + std::to_string(forced.rank));
      }
      for (std::size_t j = 0; j < k; ++j) {
        const std::int32_t ex = forced.experts[i * k + j];
        if (ex < 0 || sz(ex) >= e) {
          throw ConfigError("reference::run: forced expert " + std::to_string(ex) +
                            " must be in [0, " + std::to_string(e - 1) + "]");
        }
        for (std::size_t q = 0; q < j; ++q) {
          if (forced.experts[i * k + q] == ex) {
            throw ConfigError("reference::run: forced token " + std::to_string(t) +
                              " lists expert " + std::to_string(ex) + " twice");
          }
        }
      }
      forced_at[sz(t)] = static_cast<std::int64_t>(i);
    }
  }
  parallel_for(chunks.size(), threads, [&](std::size_t i, std::size_t) {
    const Chunk& ch = chunks[i];
    RankResult& rr = res.ranks[ch.rank];
    std::vector<double> logits(e), prob(e);
    const bool forced_rank = !forced_at.empty() && ch.rank == sz(forced.rank);
    if (p.routing_given()) {
      // The caller's router decided: its experts and weights as they are.
      const std::vector<std::int32_t>& ids = p.topk_ids[ch.rank];
      const std::vector<float>& weights = p.topk_weights[ch.rank];
      for (std::size_t slot = ch.begin * k; slot < ch.end * k; ++slot) {
        rr.topk_expert[slot] = ids[slot];
        rr.topk_weight[slot] = static_cast<double>(weights[slot]);
      }
      for (std::size_t t = ch.begin; t < ch.end; ++t) rr.topk_margin[t] = 1.0;
      return;
    }
    for (std::size_t t = ch.begin; t < ch.end; ++t) {
      route_token(c, p.x[ch.rank].data() + t * h, p.gate.data(), logits.data(), prob.data(),
                  rr.topk_expert.data() + t * k, rr.topk_weight.data() + t * k, &rr.topk_margin[t]);
      if (!forced_rank || forced_at[t] < 0) continue;
      const std::int32_t* chosen = forced.experts.data() + sz(forced_at[t]) * k;
      double sum = 0.0;
      for (std::size_t j = 0; j < k; ++j) sum += prob[sz(chosen[j])];
      for (std::size_t j = 0; j < k; ++j) {
        rr.topk_expert[t * k + j] = chosen[j];
        rr.topk_weight[t * k + j] = c.renormalize ? prob[sz(chosen[j])] / sum : prob[sz(chosen[j])];
      }
      rr.topk_margin[t] = 1.0;
    }
  });

  // Phase 2: capacity, serial. A token selects an expert at most once, so scanning tokens in
  // ascending order keeps exactly the first `cap` tokens of each (source rank, expert).
  if (c.capacity_factor > 0.0) {
    for (std::size_t r = 0; r < world; ++r) {
      RankResult& rr = res.ranks[r];
      const std::int64_t cap = c.capacity(p.tokens[r]);
      std::vector<std::int64_t> count(e, 0);
      for (std::size_t slot = 0; slot < rr.topk_expert.size(); ++slot) {
        const std::size_t ex = sz(rr.topk_expert[slot]);
        if (count[ex] < cap) {
          ++count[ex];
        } else {
          rr.kept[slot] = 0;
          ++rr.dropped_per_expert[ex];
          ++res.dropped_per_expert[ex];
          ++res.dropped;
        }
      }
    }
  }

  // Phase 3: experts, one pass per choice so that y_t sums its choices in ascending j. Within a
  // pass each token has one row, so blocks write disjoint outputs.
  std::vector<Scratch> scratch(static_cast<std::size_t>(threads));
  std::vector<std::vector<Row>> rows_of(e);
  std::vector<Block> blocks;
  for (std::size_t j = 0; j < k; ++j) {
    for (auto& rows : rows_of) rows.clear();
    for (std::size_t r = 0; r < world; ++r) {
      const RankResult& rr = res.ranks[r];
      for (std::size_t t = 0; t < sz(p.tokens[r]); ++t) {
        if (!rr.kept[t * k + j]) continue;
        rows_of[sz(rr.topk_expert[t * k + j])].push_back(
            {static_cast<std::int32_t>(r), static_cast<std::int64_t>(t)});
      }
    }
    blocks.clear();
    for (std::size_t ex = 0; ex < e; ++ex) {
      for (std::size_t b = 0; b < rows_of[ex].size(); b += kBlockRows) {
        blocks.push_back({ex, b, std::min(rows_of[ex].size(), b + kBlockRows)});
      }
    }
    parallel_for(blocks.size(), threads, [&](std::size_t i, std::size_t worker) {
      const Block& blk = blocks[i];
      const auto weight_of = [&](const Row& row) {
        return res.ranks[sz(row.rank)].topk_weight[sz(row.token) * k + j];
      };
      run_block(p, res, rows_of[blk.expert], blk, expert_weights(p, blk.expert), weight_of,
                scratch[worker]);
    });
  }

  // Phase 4: the shared expert, every token of every rank with weight 1, after the k choices.
  if (c.shared_ffn > 0) {
    std::vector<Row> all;
    for (std::size_t r = 0; r < world; ++r) {
      for (std::size_t t = 0; t < sz(p.tokens[r]); ++t) {
        all.push_back({static_cast<std::int32_t>(r), static_cast<std::int64_t>(t)});
      }
    }
    blocks.clear();
    for (std::size_t b = 0; b < all.size(); b += kBlockRows) {
      blocks.push_back({0, b, std::min(all.size(), b + kBlockRows)});
    }
    const FfnWeights shared = shared_weights(p);
    parallel_for(blocks.size(), threads, [&](std::size_t i, std::size_t worker) {
      run_block(p, res, all, blocks[i], shared, [](const Row&) { return 1.0; }, scratch[worker]);
    });
  }
  return res;
}

}  // namespace monomoe::reference
