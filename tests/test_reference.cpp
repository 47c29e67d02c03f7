// The CPU reference: hand-checked tiny layers, properties of the routing, capacity and outputs on
// random problems, determinism over thread counts, and the input generator.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "monomoe/config.hpp"
#include "monomoe/error.hpp"
#include "reference/reference.hpp"
#include "rel_diff.hpp"

namespace monomoe::reference {
namespace {

using Idx = std::size_t;
Idx ix(std::int64_t v) {
  return static_cast<Idx>(v);
}

const Activation kActivations[] = {Activation::relu, Activation::gelu, Activation::silu,
                                   Activation::swiglu};

LayerConfig small_config(std::int64_t experts, std::int64_t topk, Activation act,
                         DType dtype = DType::fp32) {
  LayerConfig c;
  c.max_tokens = 256;
  c.hidden = 128;
  c.ffn = 128;
  c.experts = experts;
  c.topk = topk;
  c.activation = act;
  c.dtype = dtype;
  return c;
}

// The activations, written out again here so the test does not trust the reference's own.
double act(Activation a, double v) {
  switch (a) {
    case Activation::relu:
      return v < 0.0 ? 0.0 : v;
    case Activation::gelu:
      return 0.5 * v * (1.0 + std::erf(v * 0.70710678118654752440));
    case Activation::silu:
    case Activation::swiglu:
      return v * (1.0 / (1.0 + std::exp(-v)));
  }
  return 0.0;
}

// Softmax over the logits x . gate, recomputed here (float64, ascending h).
std::vector<double> probabilities(const Problem& p, Idx rank, Idx t) {
  const Idx h = ix(p.config.hidden), e = ix(p.config.experts);
  std::vector<double> l(e, 0.0);
  for (Idx q = 0; q < h; ++q) {
    for (Idx j = 0; j < e; ++j) l[j] += double(p.x[rank][t * h + q]) * double(p.gate[q * e + j]);
  }
  const double top = *std::max_element(l.begin(), l.end());
  double sum = 0.0;
  for (double& v : l) sum += (v = std::exp(v - top));
  for (double& v : l) v /= sum;
  return l;
}

// FFN_e(x) the slow, obvious way.
// One FFN of width f ([in, out] weights; b1, b2 nullptr without biases), token by token.
std::vector<double> naive_ffn(const Problem& p, const float* w1, const float* b1, const float* w2,
                              const float* b2, Idx f, const float* x) {
  const LayerConfig& c = p.config;
  const Idx h = ix(c.hidden), c1 = c.activation == Activation::swiglu ? 2 * f : f;
  std::vector<double> pre(c1, 0.0), a(f), out(h, 0.0);
  for (Idx i = 0; i < c1; ++i) {
    for (Idx q = 0; q < h; ++q) pre[i] += double(x[q]) * double(w1[q * c1 + i]);
    if (b1) pre[i] += b1[i];
  }
  for (Idx i = 0; i < f; ++i) {
    a[i] = c.activation == Activation::swiglu ? act(Activation::silu, pre[i]) * pre[f + i]
                                              : act(c.activation, pre[i]);
  }
  for (Idx q = 0; q < h; ++q) {
    for (Idx i = 0; i < f; ++i) out[q] += a[i] * double(w2[i * h + q]);
    if (b2) out[q] += b2[q];
  }
  return out;
}

std::vector<double> naive_ffn(const Problem& p, Idx e, const float* x) {
  const LayerConfig& c = p.config;
  const Idx h = ix(c.hidden), f = ix(c.ffn), c1 = ix(c.w1_columns());
  return naive_ffn(p, p.w1.data() + e * h * c1, c.bias ? p.b1.data() + e * c1 : nullptr,
                   p.w2.data() + e * f * h, c.bias ? p.b2.data() + e * h : nullptr, f, x);
}

// y of one rank from the reference's own routing, with naive FFNs.
std::vector<double> naive_y(const Problem& p, const RankResult& rr, Idx rank) {
  const Idx h = ix(p.config.hidden), k = ix(p.config.topk);
  std::vector<double> y(rr.y.size(), 0.0);
  for (Idx t = 0; t < ix(p.tokens[rank]); ++t) {
    for (Idx j = 0; j < k; ++j) {
      if (!rr.kept[t * k + j]) continue;
      const auto out = naive_ffn(p, ix(rr.topk_expert[t * k + j]), p.x[rank].data() + t * h);
      for (Idx q = 0; q < h; ++q) y[t * h + q] += rr.topk_weight[t * k + j] * out[q];
    }
    if (p.config.shared_ffn > 0) {
      const bool b = p.config.bias;
      const auto out = naive_ffn(p, p.shared_w1.data(), b ? p.shared_b1.data() : nullptr,
                                 p.shared_w2.data(), b ? p.shared_b2.data() : nullptr,
                                 ix(p.config.shared_ffn), p.x[rank].data() + t * h);
      for (Idx q = 0; q < h; ++q) y[t * h + q] += out[q];
    }
  }
  return y;
}

using test::rel_diff;

bool same_bits(const std::vector<double>& a, const std::vector<double>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
}

// ---- Hand-checked layers
// ------------------------------------------------------------------------- hidden = ffn = 128, E
// in {2, 4}, three tokens. The gate routes by the first E features (gate[e, e] = 1, else 0: logit e
// = x[e]). Expert e is diagonal: W1_e = s_e I (SwiGLU: the up half u_e I), W2_e = t_e I, so
// FFN_e(x)[h] = t_e act(s_e x[h] + b1[h]) + b2[h], with every product exact.
const float kS[] = {1.0f, -0.5f, 2.0f, 0.75f};
const float kT[] = {2.0f, 1.5f, -1.0f, 0.5f};
const float kU[] = {0.5f, 1.0f, -1.0f, 2.0f};
const float kHead[3][4] = {
    {2.0f, -1.0f, 0.5f, 0.25f}, {-1.0f, 1.5f, 0.25f, 3.0f}, {0.5f, 0.75f, -2.0f, 0.0f}};
// Expert order of each token, by hand from kHead.
const std::int32_t kOrder2[3][2] = {{0, 1}, {1, 0}, {1, 0}};
const std::int32_t kOrder4[3][4] = {{0, 2, 3, 1}, {3, 1, 2, 0}, {1, 0, 3, 2}};

Problem hand_problem(std::int64_t experts, std::int64_t topk, Activation a, bool bias,
                     bool renormalize) {
  Problem p;
  p.config = small_config(experts, topk, a);
  p.config.bias = bias;
  p.config.renormalize = renormalize;
  const Idx h = 128, f = 128, e = ix(experts), c1 = ix(p.config.w1_columns());
  p.tokens = {3};
  p.x.assign(1, std::vector<float>(3 * h));
  for (Idx t = 0; t < 3; ++t) {
    for (Idx q = 0; q < h; ++q) {
      // Both signs and zeros; multiples of 1/4, so everything below is exact in float.
      p.x[0][t * h + q] = q < 4 ? kHead[t][q] : float(int((q * 7 + t * 3) % 11) - 5) * 0.25f;
    }
  }
  p.gate.assign(h * e, 0.0f);
  for (Idx j = 0; j < e; ++j) p.gate[j * e + j] = 1.0f;
  p.w1.assign(e * h * c1, 0.0f);
  p.w2.assign(e * f * h, 0.0f);
  for (Idx j = 0; j < e; ++j) {
    for (Idx q = 0; q < h; ++q) {
      p.w1[(j * h + q) * c1 + q] = kS[j];
      if (a == Activation::swiglu) p.w1[(j * h + q) * c1 + f + q] = kU[j];
      p.w2[(j * f + q) * h + q] = kT[j];
    }
  }
  if (bias) {
    p.b1.resize(e * c1);
    p.b2.resize(e * h);
    for (Idx i = 0; i < p.b1.size(); ++i) p.b1[i] = float(int(i % 5) - 2) * 0.125f;
    for (Idx i = 0; i < p.b2.size(); ++i) p.b2[i] = float(int(i % 3) - 1) * 0.0625f;
  }
  return p;
}

TEST(ReferenceHand, LiteralValues) {
  // relu, E = 2, k = 1, no bias. Token 0 picks expert 0 (x0 = 2 > x1 = -1): y = 2 relu(x).
  // Token 1 picks expert 1 (1.5 > -1): y = 1.5 relu(-0.5 x).
  Problem p = hand_problem(2, 1, Activation::relu, false, true);
  Result r = run(p, 1);
  const auto& y = r.ranks[0].y;
  EXPECT_EQ(y[0 * 128 + 0], 4.0);   // 2 * relu(2)
  EXPECT_EQ(y[0 * 128 + 1], 0.0);   // 2 * relu(-1)
  EXPECT_EQ(y[1 * 128 + 0], 0.75);  // 1.5 * relu(-0.5 * -1)
  EXPECT_EQ(y[1 * 128 + 1], 0.0);   // 1.5 * relu(-0.75)
  EXPECT_EQ(r.ranks[0].topk_weight[0], 1.0);

  // Without renormalization the one weight is the softmax probability itself.
  p.config.renormalize = false;
  r = run(p, 1);
  const double p0 = 1.0 / (1.0 + std::exp(-3.0));  // softmax(2, -1)[0]
  EXPECT_NEAR(r.ranks[0].topk_weight[0], p0, 1e-15);
  EXPECT_NEAR(r.ranks[0].y[0], 4.0 * p0, 1e-14);
  EXPECT_NEAR(r.ranks[0].topk_margin[0], 3.0, 1e-15);  // logit gap 2 - (-1)
}

TEST(ReferenceHand, ActivationsSanity) {
  // The test's own activations against published values.
  EXPECT_NEAR(act(Activation::gelu, 1.0), 0.8413447460685429, 1e-15);
  EXPECT_NEAR(act(Activation::gelu, -1.0), -0.15865525393145707, 1e-15);
  EXPECT_NEAR(act(Activation::silu, 2.0), 1.7615941559557649, 1e-15);
  EXPECT_EQ(act(Activation::relu, -3.0), 0.0);
}

TEST(ReferenceHand, EveryActivationBiasAndRenormalization) {
  struct Shape {
    std::int64_t experts, topk;
  };
  for (Shape s : {Shape{2, 1}, Shape{2, 2}, Shape{4, 1}, Shape{4, 2}, Shape{4, 3}, Shape{4, 4}}) {
    for (Activation a : kActivations) {
      for (bool bias : {false, true}) {
        for (bool renorm : {false, true}) {
          SCOPED_TRACE(std::string(to_string(a)) + " E=" + std::to_string(s.experts) +
                       " k=" + std::to_string(s.topk) + " bias=" + std::to_string(bias) +
                       " renorm=" + std::to_string(renorm));
          const Problem p = hand_problem(s.experts, s.topk, a, bias, renorm);
          const Result r = run(p, 2);
          const RankResult& rr = r.ranks[0];
          const Idx e = ix(s.experts), k = ix(s.topk), h = 128, f = 128;
          ASSERT_EQ(rr.y.size(), 3 * h);
          EXPECT_EQ(r.dropped, 0);
          for (Idx t = 0; t < 3; ++t) {
            // Softmax of the first E features, by hand.
            std::vector<double> prob(e);
            double sum = 0.0;
            for (Idx j = 0; j < e; ++j) sum += prob[j] = std::exp(double(kHead[t][j]));
            double chosen = 0.0;
            for (Idx j = 0; j < k; ++j) {
              const std::int32_t want = e == 2 ? kOrder2[t][j] : kOrder4[t][j];
              ASSERT_EQ(rr.topk_expert[t * k + j], want) << "token " << t << " choice " << j;
              chosen += prob[ix(want)] / sum;
            }
            for (Idx q = 0; q < h; ++q) {
              const double xv = p.x[0][t * h + q];
              double want = 0.0;
              for (Idx j = 0; j < k; ++j) {
                const Idx ex = ix(rr.topk_expert[t * k + j]);
                const double w = prob[ex] / sum / (renorm ? chosen : 1.0);
                if (q == 0) {
                  EXPECT_NEAR(rr.topk_weight[t * k + j], w, 1e-14);
                }
                const double b1 = bias ? p.b1[ex * p.config.w1_columns() + q] : 0.0;
                const double b1u = bias && a == Activation::swiglu ? p.b1[ex * 2 * f + f + q] : 0.0;
                const double b2 = bias ? p.b2[ex * h + q] : 0.0;
                double hid = act(a, kS[ex] * xv + b1);
                if (a == Activation::swiglu) hid *= kU[ex] * xv + b1u;
                want += w * (kT[ex] * hid + b2);
              }
              ASSERT_NEAR(rr.y[t * h + q], want, 1e-13 * (1.0 + std::abs(want)))
                  << "token " << t << " h " << q;
            }
          }
        }
      }
    }
  }
}

// ---- Routing properties
// --------------------------------------------------------------------------

TEST(ReferenceRouting, TopKOfTheRecomputedSoftmax) {
  for (bool renorm : {true, false}) {
    LayerConfig c = small_config(16, 4, Activation::gelu);
    c.renormalize = renorm;
    const Problem p = make_problem(c, {96}, 21);
    const Result r = run(p, 2);
    const RankResult& rr = r.ranks[0];
    const Idx k = 4;
    for (Idx t = 0; t < 96; ++t) {
      const std::vector<double> prob = probabilities(p, 0, t);
      std::vector<bool> chosen(16, false);
      double sum = 0.0;
      for (Idx j = 0; j < k; ++j) {
        const Idx e = ix(rr.topk_expert[t * k + j]);
        ASSERT_LT(e, 16u);
        ASSERT_FALSE(chosen[e]) << "expert chosen twice";
        chosen[e] = true;
        sum += prob[e];
        if (j > 0) {
          EXPECT_GE(prob[ix(rr.topk_expert[t * k + j - 1])], prob[e]) << "not descending";
        }
      }
      const Idx last = ix(rr.topk_expert[t * k + k - 1]);
      double next = 0.0;
      for (Idx e = 0; e < 16; ++e) {
        if (chosen[e]) continue;
        EXPECT_LE(prob[e], prob[last]) << "token " << t << ": expert " << e << " beats " << last;
        next = std::max(next, prob[e]);
      }
      EXPECT_NEAR(rr.topk_margin[t], std::log(prob[last] / next), 1e-9);  // the logit gap
      double wsum = 0.0;
      for (Idx j = 0; j < k; ++j) {
        const double pe = prob[ix(rr.topk_expert[t * k + j])];
        EXPECT_NEAR(rr.topk_weight[t * k + j], renorm ? pe / sum : pe, 1e-14);
        wsum += rr.topk_weight[t * k + j];
      }
      if (renorm) {
        EXPECT_NEAR(wsum, 1.0, 1e-14);
      } else {
        EXPECT_LT(wsum, 1.0);
      }
    }
  }
}

// A token with a NaN or inf in its row of x: NaN logits route to the k lowest experts (in order),
// an inf feature routes by the infinite logits; either way its weights and output are not finite,
// and every other token's output is exactly what it is without the poisoned row.
TEST(ReferenceRouting, PoisonedRowRoutesDefinedAndStaysIsolated) {
  LayerConfig c = small_config(8, 3, Activation::gelu);
  const Problem clean = make_problem(c, {40}, 23);
  const Result rc = run(clean, 2);
  const std::size_t h = static_cast<std::size_t>(c.hidden);
  for (float poison : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    SCOPED_TRACE(poison);
    Problem p = clean;
    p.x[0][7 * h + 5] = poison;
    const Result r = run(p, 2);
    const RankResult& rr = r.ranks[0];
    std::vector<bool> chosen(8, false);
    for (Idx j = 0; j < 3; ++j) {
      const std::int32_t e = rr.topk_expert[7 * 3 + j];
      ASSERT_GE(e, 0);
      ASSERT_LT(e, 8);
      EXPECT_FALSE(chosen[ix(e)]);
      chosen[ix(e)] = true;
      if (std::isnan(poison)) {
        EXPECT_EQ(e, static_cast<std::int32_t>(j)) << "NaN: the lowest experts";
      }
      EXPECT_FALSE(std::isfinite(rr.topk_weight[7 * 3 + j]));
    }
    for (Idx t = 0; t < 40; ++t) {
      for (Idx q = 0; q < h; ++q) {
        const double v = rr.y[t * h + q];
        if (t == 7) {
          EXPECT_FALSE(std::isfinite(v));
        } else {
          ASSERT_EQ(v, rc.ranks[0].y[t * h + q]) << "token " << t << " changed";
        }
      }
    }
  }
}

TEST(ReferenceRouting, ExactTiesGoToTheLowerExpert) {
  // A zero gate ties every expert: the k lowest indices win, with equal weights and no margin.
  LayerConfig c = small_config(8, 3, Activation::relu);
  Problem p = make_problem(c, {20}, 3);
  std::fill(p.gate.begin(), p.gate.end(), 0.0f);
  Result r = run(p, 1);
  for (Idx t = 0; t < 20; ++t) {
    for (Idx j = 0; j < 3; ++j) {
      EXPECT_EQ(r.ranks[0].topk_expert[t * 3 + j], std::int32_t(j));
      EXPECT_NEAR(r.ranks[0].topk_weight[t * 3 + j], 1.0 / 3.0, 1e-15);
    }
    EXPECT_EQ(r.ranks[0].topk_margin[t], 0.0);
  }

  // Columns 2 and 6 identical and dominant: every token ties them; 2 comes first.
  for (std::int64_t k : {1, 2}) {
    c.topk = k;
    p = make_problem(c, {20}, 4);
    skew_gate_towards(p, 2, 20.0f);
    for (Idx q = 0; q < 128; ++q) p.gate[q * 8 + 6] = p.gate[q * 8 + 2];
    r = run(p, 2);
    for (Idx t = 0; t < 20; ++t) {
      EXPECT_EQ(r.ranks[0].topk_expert[t * ix(k)], 2);
      if (k == 1) {
        EXPECT_EQ(r.ranks[0].topk_margin[t], 0.0);
      } else {
        EXPECT_EQ(r.ranks[0].topk_expert[t * 2 + 1], 6);
        EXPECT_EQ(r.ranks[0].topk_weight[t * 2], r.ranks[0].topk_weight[t * 2 + 1]);
        EXPECT_GT(r.ranks[0].topk_margin[t], 10.0);  // logit gap ~20 to a third choice
      }
    }
  }
}

TEST(ReferenceRouting, SkewSendsEveryTokenToOneExpert) {
  for (DType d : {DType::bf16, DType::fp32}) {
    LayerConfig c = small_config(16, 2, Activation::silu, d);
    c.world_size = 2;
    Problem p = make_problem(c, {40, 25}, 8);
    skew_gate_towards(p, 11, 50.0f);
    if (d == DType::bf16) {
      for (float v : p.gate) ASSERT_EQ(round_bf16(v), v);
    }
    const Result r = run(p, 2);
    for (const RankResult& rr : r.ranks) {
      for (Idx t = 0; t < rr.topk_margin.size(); ++t) {
        EXPECT_EQ(rr.topk_expert[t * 2], 11);
        EXPECT_GT(rr.topk_weight[t * 2], 0.999999);
      }
    }
  }
  Problem p = make_problem(small_config(4, 1, Activation::relu), {1}, 1);
  EXPECT_THROW(skew_gate_towards(p, 4, 1.0f), ConfigError);
  EXPECT_THROW(skew_gate_towards(p, -1, 1.0f), ConfigError);
}

TEST(ReferenceRouting, AllExpertsChosenHasMarginOne) {
  const Problem p = make_problem(small_config(4, 4, Activation::gelu), {10}, 5);
  const Result r = run(p, 1);
  for (double m : r.ranks[0].topk_margin) EXPECT_EQ(m, 1.0);
}

// ---- Capacity
// ------------------------------------------------------------------------------------

TEST(ReferenceCapacity, SkewedTopOneDropsAllButTheFirstTokens) {
  LayerConfig c = small_config(8, 1, Activation::gelu);
  c.capacity_factor = 1.0;  // cap = ceil(64 * 1 / 8) = 8
  Problem p = make_problem(c, {64}, 9);
  skew_gate_towards(p, 3, 50.0f);
  const Result r = run(p, 2);
  const RankResult& rr = r.ranks[0];
  EXPECT_EQ(r.dropped, 56);
  for (Idx e = 0; e < 8; ++e) {
    EXPECT_EQ(r.dropped_per_expert[e], e == 3 ? 56 : 0);
    EXPECT_EQ(rr.dropped_per_expert[e], e == 3 ? 56 : 0);
  }
  Problem dropless = p;
  dropless.config.capacity_factor = 0.0;
  const Result full = run(dropless, 1);
  EXPECT_EQ(full.dropped, 0);
  for (Idx t = 0; t < 64; ++t) {
    EXPECT_EQ(rr.kept[t], t < 8 ? 1 : 0) << t;
    const std::vector<double> row(rr.y.begin() + long(t * 128), rr.y.begin() + long(t * 128 + 128));
    if (t < 8) {
      // Kept tokens are untouched by the drops of others (same weights, not renormalized).
      const std::vector<double> want(full.ranks[0].y.begin() + long(t * 128),
                                     full.ranks[0].y.begin() + long(t * 128 + 128));
      EXPECT_TRUE(same_bits(row, want)) << t;
    } else {
      EXPECT_TRUE(std::all_of(row.begin(), row.end(), [](double v) { return v == 0.0; })) << t;
    }
  }
}

TEST(ReferenceCapacity, DropsCountedPerRankAndExpert) {
  LayerConfig c = small_config(8, 2, Activation::swiglu);
  c.world_size = 2;
  c.capacity_factor = 1.0;  // cap: rank 0 ceil(64*2/8) = 16, rank 1 ceil(40*2/8) = 10
  Problem p = make_problem(c, {64, 40}, 10);
  skew_gate_towards(p, 5, 50.0f);
  const Result r = run(p, 2);
  std::vector<std::int64_t> total(8, 0);
  std::int64_t all = 0;
  for (Idx rank = 0; rank < 2; ++rank) {
    const RankResult& rr = r.ranks[rank];
    const std::int64_t cap = rank == 0 ? 16 : 10;
    ASSERT_EQ(c.capacity(p.tokens[rank]), cap);
    std::vector<std::int64_t> seen(8, 0), dropped(8, 0);
    for (Idx t = 0; t < ix(p.tokens[rank]); ++t) {
      for (Idx j = 0; j < 2; ++j) {
        const Idx e = ix(rr.topk_expert[t * 2 + j]);
        // The first `cap` tokens that chose e (ascending) are kept, the rest dropped.
        EXPECT_EQ(rr.kept[t * 2 + j], seen[e] < cap ? 1 : 0) << "rank " << rank << " token " << t;
        dropped[e] += seen[e] < cap ? 0 : 1;
        ++seen[e];
      }
    }
    EXPECT_EQ(rr.dropped_per_expert, dropped) << "rank " << rank;
    EXPECT_EQ(dropped[5], p.tokens[rank] - cap);  // every token's first choice is expert 5
    for (Idx e = 0; e < 8; ++e) total[e] += dropped[e];
    for (std::int64_t d : dropped) all += d;
    // Dropped choices add nothing.
    EXPECT_LT(rel_diff(rr.y, naive_y(p, rr, rank)), 1e-13);
  }
  EXPECT_EQ(r.dropped_per_expert, total);
  EXPECT_EQ(r.dropped, all);
  EXPECT_GT(all, 0);
}

TEST(ReferenceCapacity, DroplessNeverDrops) {
  LayerConfig c = small_config(8, 2, Activation::relu);
  Problem p = make_problem(c, {100}, 11);
  skew_gate_towards(p, 0, 50.0f);
  const Result r = run(p, 2);
  EXPECT_EQ(r.dropped, 0);
  for (std::uint8_t k : r.ranks[0].kept) EXPECT_EQ(k, 1);
}

// ---- Outputs
// -------------------------------------------------------------------------------------

// Forcing a token onto other experts: its weights are the reference's probabilities of them, the
// other tokens are untouched, and under a capacity limit the forced token takes a slot of its new
// expert, so a later token of that expert is dropped instead.
TEST(ReferenceForced, ChoicesWeightsAndCapacityFollowTheForcedExperts) {
  LayerConfig c = small_config(4, 1, Activation::gelu);
  c.max_tokens = 8;
  c.capacity_factor = 0.5;  // capacity(8) with 4 experts, top-1: 1 row per (source, expert)
  Problem p = make_problem(c, {8}, 21);
  skew_gate_towards(p, 2, 50.f);  // every token picks expert 2; the first one is kept
  const Result plain = run(p);
  ASSERT_EQ(plain.ranks[0].topk_expert[0], 2);
  ASSERT_EQ(plain.ranks[0].kept[0], 1);
  ASSERT_EQ(plain.ranks[0].kept[1], 0);

  ForcedRoutes f;
  f.tokens = {0};
  f.experts = {1};
  const Result forced = run(p, 0, f);
  const RankResult& r = forced.ranks[0];
  EXPECT_EQ(r.topk_expert[0], 1);
  EXPECT_DOUBLE_EQ(r.topk_weight[0], 1.0);  // renormalized over its single choice
  EXPECT_EQ(r.topk_margin[0], 1.0);
  EXPECT_EQ(r.kept[1], 1) << "token 1 now holds expert 2's slot";
  EXPECT_EQ(r.dropped_per_expert[2], plain.ranks[0].dropped_per_expert[2] - 1);
  for (Idx t = 2; t < 8; ++t) EXPECT_EQ(r.topk_expert[t], plain.ranks[0].topk_expert[t]);

  c.renormalize = false;
  p.config = c;
  const Result raw = run(p, 0, f);
  const std::vector<double> prob = probabilities(p, 0, 0);
  EXPECT_DOUBLE_EQ(raw.ranks[0].topk_weight[0], prob[1]);
}

TEST(ReferenceForced, SameChoicesGiveTheSameResult) {
  LayerConfig c = small_config(8, 2, Activation::silu);
  c.max_tokens = 64;
  const Problem p = make_problem(c, {64}, 5);
  const Result plain = run(p);
  ForcedRoutes f;
  for (std::int64_t t = 0; t < 64; t += 3) {
    f.tokens.push_back(t);
    f.experts.push_back(plain.ranks[0].topk_expert[ix(t) * 2]);
    f.experts.push_back(plain.ranks[0].topk_expert[ix(t) * 2 + 1]);
  }
  const Result forced = run(p, 1, f);
  EXPECT_EQ(forced.ranks[0].topk_expert, plain.ranks[0].topk_expert);
  for (Idx i = 0; i < plain.ranks[0].y.size(); ++i) {
    ASSERT_NEAR(forced.ranks[0].y[i], plain.ranks[0].y[i], 1e-12);
  }
}

TEST(ReferenceForced, RejectsBadForcedRoutes) {
  LayerConfig c = small_config(4, 2, Activation::relu);
  c.max_tokens = 4;
  const Problem p = make_problem(c, {4}, 1);
  const auto fails = [&](ForcedRoutes f) {
    try {
      run(p, 0, f);
    } catch (const ConfigError&) {
      return true;
    }
    return false;
  };
  EXPECT_TRUE(fails({0, {4}, {0, 1}}));     // token out of range
  EXPECT_TRUE(fails({0, {0}, {0, 4}}));     // expert out of range
  EXPECT_TRUE(fails({0, {0}, {1, 1}}));     // repeated expert
  EXPECT_TRUE(fails({0, {0}, {1}}));        // too few ids
  EXPECT_TRUE(fails({1, {0}, {0, 1}}));     // rank out of range
}

// ---- Routing given by the caller
// ----------------------------------------------------------------

// The given experts and weights are taken as they are: no softmax, no renormalization (the flag is
// on here), margins 1.0, and the output is the naive sum over them.
TEST(ReferenceGiven, ExpertsAndWeightsAreUsedAsGiven) {
  LayerConfig c = small_config(8, 3, Activation::gelu);
  c.world_size = 2;
  c.renormalize = true;
  Problem p = make_problem(c, {40, 17}, 31);
  give_random_routing(p, 5);
  const Result r = run(p, 2);
  bool some_sum_is_not_one = false;
  for (Idx rank = 0; rank < 2; ++rank) {
    const RankResult& rr = r.ranks[rank];
    EXPECT_EQ(rr.topk_expert, p.topk_ids[rank]);
    for (Idx i = 0; i < rr.topk_weight.size(); ++i) {
      ASSERT_EQ(rr.topk_weight[i], double(p.topk_weights[rank][i])) << i;
    }
    for (Idx t = 0; t < ix(p.tokens[rank]); ++t) {
      const double sum =
          rr.topk_weight[t * 3] + rr.topk_weight[t * 3 + 1] + rr.topk_weight[t * 3 + 2];
      some_sum_is_not_one = some_sum_is_not_one || std::abs(sum - 1.0) > 0.01;
      EXPECT_EQ(rr.topk_margin[t], 1.0);
    }
    for (std::uint8_t kept : rr.kept) EXPECT_EQ(kept, 1);
    EXPECT_LT(rel_diff(rr.y, naive_y(p, rr, rank)), 1e-13);
  }
  EXPECT_TRUE(some_sum_is_not_one) << "the weights were renormalized";
  EXPECT_EQ(r.dropped, 0);
}

// The gate is not read: a different gate gives bit for bit the same result.
TEST(ReferenceGiven, TheGateIsNotRead) {
  LayerConfig c = small_config(8, 2, Activation::swiglu);
  Problem p = make_problem(c, {64}, 32);
  give_random_routing(p, 6);
  Problem skewed = p;
  skewed.gate.assign(skewed.gate.size(), 0.0f);
  skewed.gate[3] = 100.0f;
  const Result a = run(p, 1);
  const Result b = run(skewed, 3);
  EXPECT_TRUE(same_bits(a.ranks[0].y, b.ranks[0].y));
  EXPECT_EQ(a.ranks[0].topk_expert, b.ranks[0].topk_expert);
}

// Capacity applies to given routing by the gate's rule: per (source rank, expert), the first `cap`
// choices in ascending token order are kept; the drops are counted and the kept weights unchanged.
TEST(ReferenceGiven, CapacityDropsByTheSameRule) {
  LayerConfig c = small_config(4, 2, Activation::relu);
  c.world_size = 2;
  c.max_tokens = 32;
  c.capacity_factor = 0.5;  // cap: rank 0 ceil(0.5*32*2/4) = 8, rank 1 ceil(0.5*10*2/4) = 3
  Problem p = make_problem(c, {32, 10}, 33);
  // Every token's first choice is expert 1, the second one of 0, 2, 3 in turn: expert 1 overflows.
  p.topk_ids.assign(2, {});
  p.topk_weights.assign(2, {});
  for (Idx rank = 0; rank < 2; ++rank) {
    for (Idx t = 0; t < ix(p.tokens[rank]); ++t) {
      const std::int32_t others[3] = {0, 2, 3};
      p.topk_ids[rank].insert(p.topk_ids[rank].end(), {1, others[t % 3]});
      p.topk_weights[rank].insert(p.topk_weights[rank].end(), {0.75f, 0.5f});
    }
  }
  const Result r = run(p, 2);
  std::int64_t all = 0;
  for (Idx rank = 0; rank < 2; ++rank) {
    const RankResult& rr = r.ranks[rank];
    const std::int64_t cap = c.capacity(p.tokens[rank]);
    ASSERT_EQ(cap, rank == 0 ? 8 : 3);
    std::vector<std::int64_t> seen(4, 0), dropped(4, 0);
    for (Idx slot = 0; slot < rr.kept.size(); ++slot) {
      const Idx e = ix(p.topk_ids[rank][slot]);
      EXPECT_EQ(rr.kept[slot], seen[e] < cap ? 1 : 0) << "rank " << rank << " slot " << slot;
      dropped[e] += seen[e] < cap ? 0 : 1;
      ++seen[e];
    }
    EXPECT_EQ(rr.dropped_per_expert, dropped) << "rank " << rank;
    EXPECT_EQ(dropped[1], p.tokens[rank] - cap);
    for (std::int64_t d : dropped) all += d;
    EXPECT_EQ(rr.topk_weight[0], 0.75);
    EXPECT_LT(rel_diff(rr.y, naive_y(p, rr, rank)), 1e-13);
  }
  EXPECT_EQ(r.dropped, all);
  EXPECT_GT(all, 0);
}

TEST(ReferenceGiven, RejectsBadRouting) {
  LayerConfig c = small_config(4, 2, Activation::relu);
  c.max_tokens = 4;
  Problem p = make_problem(c, {3}, 34);
  give_random_routing(p, 7);
  const auto error = [](const Problem& q, const ForcedRoutes& f = {}) -> std::string {
    try {
      run(q, 0, f);
    } catch (const ConfigError& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_EQ(error(p), "");
  Problem q = p;
  q.topk_ids[0][3] = 4;  // token 1, choice 1
  EXPECT_NE(error(q).find("topk_ids[0][1, 1] = 4 is not an expert id in [0, 4)"), std::string::npos)
      << error(q);
  q.topk_ids[0][3] = -1;
  EXPECT_NE(error(q).find("= -1 is not an expert id"), std::string::npos) << error(q);
  q = p;
  q.topk_ids[0][5] = q.topk_ids[0][4];  // token 2 lists one expert twice
  EXPECT_NE(error(q).find("token 2 lists that expert twice"), std::string::npos) << error(q);
  q = p;
  q.topk_ids[0].pop_back();
  EXPECT_NE(error(q).find("topk_ids[0] has 5 values, expected 6"), std::string::npos) << error(q);
  q = p;
  q.topk_weights.clear();
  EXPECT_NE(error(q).find("topk_weights"), std::string::npos) << error(q);
  EXPECT_NE(error(p, {0, {0}, {0, 1}}).find("forced routes with a given routing"),
            std::string::npos);
}

TEST(ReferenceGiven, RandomRoutingIsDistinctPositiveAndSeeded) {
  LayerConfig c = small_config(6, 3, Activation::gelu);
  c.world_size = 2;
  Problem a = make_problem(c, {50, 20}, 1);
  Problem b = a, d = a;
  give_random_routing(a, 8);
  give_random_routing(b, 8);
  give_random_routing(d, 9);
  EXPECT_EQ(a.topk_ids, b.topk_ids);
  EXPECT_EQ(a.topk_weights, b.topk_weights);
  EXPECT_NE(a.topk_ids, d.topk_ids);
  EXPECT_NE(a.topk_weights, d.topk_weights);
  std::vector<int> uses(6, 0);
  for (Idx rank = 0; rank < 2; ++rank) {
    ASSERT_EQ(a.topk_ids[rank].size(), ix(a.tokens[rank]) * 3);
    for (Idx t = 0; t < ix(a.tokens[rank]); ++t) {
      const std::int32_t* ids = a.topk_ids[rank].data() + t * 3;
      for (Idx j = 0; j < 3; ++j) {
        ASSERT_GE(ids[j], 0);
        ASSERT_LT(ids[j], 6);
        ++uses[ix(ids[j])];
        for (Idx q = 0; q < j; ++q) ASSERT_NE(ids[q], ids[j]) << "token " << t;
        const float w = a.topk_weights[rank][t * 3 + j];
        ASSERT_TRUE(w >= 0.1f && w <= 1.0f) << w;
      }
    }
  }
  for (int u : uses) EXPECT_GT(u, 0);  // 210 choices over 6 experts: every one is used
  // k = E: every token lists every expert once.
  c.topk = 6;
  Problem all = make_problem(c, {10, 10}, 2);
  give_random_routing(all, 3);
  for (const auto& ids : all.topk_ids) {
    for (Idx t = 0; t < 10; ++t) {
      std::vector<std::int32_t> row(ids.begin() + long(t * 6), ids.begin() + long(t * 6 + 6));
      std::sort(row.begin(), row.end());
      EXPECT_EQ(row, (std::vector<std::int32_t>{0, 1, 2, 3, 4, 5}));
    }
  }
}

TEST(ReferenceOutput, MatchesNaiveOnUnevenShapes) {
  // Widths that cross the reference's internal tiles, several row blocks per expert, odd E and k.
  LayerConfig c = small_config(5, 3, Activation::swiglu);
  c.hidden = 384;
  c.ffn = 640;
  c.capacity_factor = 1.5;
  const Problem p = make_problem(c, {101}, 12);
  const Result r = run(p, 2);
  EXPECT_LT(rel_diff(r.ranks[0].y, naive_y(p, r.ranks[0], 0)), 1e-13);
  for (Activation a : {Activation::relu, Activation::gelu, Activation::silu}) {
    c.activation = a;
    c.capacity_factor = 0.0;
    c.bias = a != Activation::gelu;
    const Problem q = make_problem(c, {37}, 13);
    const Result s = run(q, 3);
    EXPECT_LT(rel_diff(s.ranks[0].y, naive_y(q, s.ranks[0], 0)), 1e-13) << to_string(a);
  }
}

TEST(ReferenceOutput, BitIdenticalForAnyThreadCount) {
  LayerConfig c = small_config(8, 2, Activation::swiglu);
  c.world_size = 2;
  c.hidden = 256;
  c.capacity_factor = 1.25;
  const Problem p = make_problem(c, {150, 77}, 14);
  const Result one = run(p, 1);
  for (int threads : {2, 7, 0}) {
    SCOPED_TRACE(threads);
    const Result other = run(p, threads);
    ASSERT_EQ(other.ranks.size(), 2u);
    for (Idx rank = 0; rank < 2; ++rank) {
      const RankResult& a = one.ranks[rank];
      const RankResult& b = other.ranks[rank];
      EXPECT_TRUE(same_bits(a.y, b.y));
      EXPECT_TRUE(same_bits(a.topk_weight, b.topk_weight));
      EXPECT_TRUE(same_bits(a.topk_margin, b.topk_margin));
      EXPECT_EQ(a.topk_expert, b.topk_expert);
      EXPECT_EQ(a.kept, b.kept);
      EXPECT_EQ(a.dropped_per_expert, b.dropped_per_expert);
    }
    EXPECT_EQ(one.dropped, other.dropped);
  }
}

TEST(ReferenceOutput, OrderOneForEveryActivationAndWidth) {
  struct Width {
    std::int64_t hidden, ffn;
  };
  for (Width w : {Width{256, 256}, Width{1024, 512}}) {
    for (DType d : {DType::bf16, DType::fp32}) {
      for (Activation a : kActivations) {
        SCOPED_TRACE(std::string(to_string(a)) + " " + std::string(to_string(d)) +
                     " H=" + std::to_string(w.hidden));
        LayerConfig c = small_config(8, 2, a, d);
        c.hidden = w.hidden;
        c.ffn = w.ffn;
        const Problem p = make_problem(c, {24}, 15);
        const Result r = run(p, 2);
        double sq = 0.0, peak = 0.0;
        for (double v : r.ranks[0].y) {
          ASSERT_TRUE(std::isfinite(v));
          sq += v * v;
          peak = std::max(peak, std::abs(v));
        }
        const double rms = std::sqrt(sq / double(r.ranks[0].y.size()));
        EXPECT_GT(rms, 0.05);
        EXPECT_LT(rms, 3.0);
        EXPECT_LT(peak, 30.0);
        // The gate is neither flat nor one-hot: top weights spread over (1/k, 1).
        double top = 0.0;
        for (Idx t = 0; t < 24; ++t) top += r.ranks[0].topk_weight[t * 2];
        EXPECT_GT(top / 24, 0.5);
        EXPECT_LT(top / 24, 0.95);
      }
    }
  }
}

TEST(ReferenceOutput, UnevenTokensPerRankIncludingNone) {
  LayerConfig c = small_config(6, 2, Activation::gelu);
  c.world_size = 3;
  const Problem p = make_problem(c, {5, 0, 17}, 16);
  ASSERT_TRUE(p.x[1].empty());
  const Result r = run(p, 2);
  ASSERT_EQ(r.ranks.size(), 3u);
  const std::int64_t expect[] = {5, 0, 17};
  for (Idx rank = 0; rank < 3; ++rank) {
    const RankResult& rr = r.ranks[rank];
    const Idx s = ix(expect[rank]);
    EXPECT_EQ(rr.y.size(), s * 128);
    EXPECT_EQ(rr.topk_expert.size(), s * 2);
    EXPECT_EQ(rr.topk_weight.size(), s * 2);
    EXPECT_EQ(rr.kept.size(), s * 2);
    EXPECT_EQ(rr.topk_margin.size(), s);
    EXPECT_EQ(rr.dropped_per_expert.size(), 6u);
    // Each rank's tokens give the same bits as a one-rank problem holding only them.
    if (s == 0) continue;
    Problem alone = p;
    alone.config.world_size = 1;
    alone.tokens = {expect[rank]};
    alone.x = {p.x[rank]};
    EXPECT_TRUE(same_bits(run(alone, 1).ranks[0].y, rr.y)) << "rank " << rank;
  }
}

TEST(ReferenceOutput, RejectsInconsistentProblems) {
  const LayerConfig c = small_config(4, 2, Activation::relu);
  const Problem good = make_problem(c, {8}, 17);
  Problem p = good;
  p.tokens = {8, 8};
  EXPECT_THROW(run(p), ConfigError);
  p = good;
  p.x[0].pop_back();
  EXPECT_THROW(run(p), ConfigError);
  p = good;
  p.w2.resize(3);
  EXPECT_THROW(run(p), ConfigError);
  p = good;
  p.b1.clear();
  EXPECT_THROW(run(p), ConfigError);
  p = good;
  p.tokens = {c.max_tokens + 1};
  EXPECT_THROW(run(p), ConfigError);
  EXPECT_THROW(run(good, -1), ConfigError);
  p = good;
  p.config.topk = 5;
  EXPECT_THROW(run(p), ConfigError);
  // config.rank does not matter to the reference.
  p = good;
  p.config.rank = 3;
  EXPECT_NO_THROW(run(p, 1));
}

// ---- The shared expert
// -------------------------------------------------------------------------------------

// The layer of `p` (one rank, a given routing, a shared expert of m = shared_ffn / ffn slices) as
// a layer without a shared expert: m more experts, slice j's W1 columns (swiglu: its gate and up
// columns) and W2 rows, b2 on slice 0 only, each chosen by every token with weight 1 after its k
// choices. The kernel runs the shared expert this way (docs/shared-experts.md).
Problem shared_as_experts(const Problem& p) {
  const LayerConfig& c = p.config;
  const Idx h = ix(c.hidden), f = ix(c.ffn), e = ix(c.experts), k = ix(c.topk);
  const Idx m = ix(c.shared_slices()), c1 = ix(c.w1_columns()), sc1 = ix(c.shared_w1_columns());
  const Idx sf = ix(c.shared_ffn);
  const bool swiglu = c.activation == Activation::swiglu;
  Problem q = p;
  q.config.shared_ffn = 0;
  q.config.experts = c.experts + c.shared_slices();
  q.config.topk = c.topk + c.shared_slices();
  q.gate.assign(h * (e + m), 0.0f);  // not read: the routing is given
  q.shared_w1.clear();
  q.shared_b1.clear();
  q.shared_w2.clear();
  q.shared_b2.clear();
  for (Idx j = 0; j < m; ++j) {
    for (Idx d = 0; d < h; ++d) {
      for (Idx n = 0; n < f; ++n) {
        q.w1.push_back(p.shared_w1[d * sc1 + j * f + n]);
      }
      if (swiglu) {
        for (Idx n = 0; n < f; ++n) q.w1.push_back(p.shared_w1[d * sc1 + sf + j * f + n]);
      }
    }
    q.w2.insert(q.w2.end(), p.shared_w2.begin() + long(j * f * h),
                p.shared_w2.begin() + long((j + 1) * f * h));
    if (c.bias) {
      q.b1.insert(q.b1.end(), p.shared_b1.begin() + long(j * f), p.shared_b1.begin() + long((j + 1) * f));
      if (swiglu) {
        q.b1.insert(q.b1.end(), p.shared_b1.begin() + long(sf + j * f),
                    p.shared_b1.begin() + long(sf + (j + 1) * f));
      }
      if (j == 0) {
        q.b2.insert(q.b2.end(), p.shared_b2.begin(), p.shared_b2.end());
      } else {
        q.b2.insert(q.b2.end(), h, 0.0f);
      }
    }
  }
  EXPECT_EQ(q.w1.size(), (e + m) * h * c1);
  q.topk_ids[0].clear();
  q.topk_weights[0].clear();
  for (Idx t = 0; t < ix(p.tokens[0]); ++t) {
    for (Idx j = 0; j < k; ++j) {
      q.topk_ids[0].push_back(p.topk_ids[0][t * k + j]);
      q.topk_weights[0].push_back(p.topk_weights[0][t * k + j]);
    }
    for (Idx j = 0; j < m; ++j) {
      q.topk_ids[0].push_back(static_cast<std::int32_t>(e + j));
      q.topk_weights[0].push_back(1.0f);
    }
  }
  return q;
}

TEST(ReferenceShared, EqualsItsSlicesRunAsExpertsWithWeightOne) {
  for (Activation a : kActivations) {
    for (std::int64_t m : {1, 3}) {
      for (bool bias : {true, false}) {
        SCOPED_TRACE(std::string(to_string(a)) + " m=" + std::to_string(m) +
                     " bias=" + std::to_string(bias));
        LayerConfig c = small_config(6, 2, a);
        c.shared_ffn = m * c.ffn;
        c.bias = bias;
        Problem p = make_problem(c, {45}, 31);
        give_random_routing(p, 32);
        const Result whole = run(p, 2);
        const Result sliced = run(shared_as_experts(p), 3);
        EXPECT_LT(rel_diff(whole.ranks[0].y, sliced.ranks[0].y), 1e-13);
        EXPECT_LT(rel_diff(whole.ranks[0].y, naive_y(p, whole.ranks[0], 0)), 1e-13);
      }
    }
  }
}

TEST(ReferenceShared, AddsToEveryTokenOfEveryRankWithTheGatesRouting) {
  LayerConfig c = small_config(8, 2, Activation::swiglu);
  c.world_size = 2;
  c.hidden = 256;
  c.shared_ffn = 2 * c.ffn;
  c.capacity_factor = 1.25;
  const Problem p = make_problem(c, {70, 0}, 33);
  Problem none = p;
  none.config.shared_ffn = 0;
  none.shared_w1.clear();
  none.shared_b1.clear();
  none.shared_w2.clear();
  none.shared_b2.clear();
  const Result with = run(p, 2);
  const Result without = run(none, 2);
  // The shared expert changes no routing or capacity decision, and every token's output.
  EXPECT_EQ(with.ranks[0].topk_expert, without.ranks[0].topk_expert);
  EXPECT_EQ(with.ranks[0].kept, without.ranks[0].kept);
  EXPECT_EQ(with.dropped, without.dropped);
  EXPECT_LT(rel_diff(with.ranks[0].y, naive_y(p, with.ranks[0], 0)), 1e-13);
  const Idx h = ix(c.hidden);
  for (Idx t = 0; t < 70; ++t) {
    double diff = 0.0;
    for (Idx q = 0; q < h; ++q) diff += std::abs(with.ranks[0].y[t * h + q] - without.ranks[0].y[t * h + q]);
    EXPECT_GT(diff, 1e-3) << "token " << t;
  }
  EXPECT_TRUE(with.ranks[1].y.empty());
}

TEST(ReferenceShared, RejectsMissingOrMissizedWeights) {
  LayerConfig c = small_config(4, 2, Activation::gelu);
  c.shared_ffn = c.ffn;
  const Problem good = make_problem(c, {8}, 34);
  EXPECT_EQ(good.shared_w1.size(), ix(c.hidden * c.shared_ffn));
  EXPECT_EQ(good.shared_b2.size(), ix(c.hidden));
  Problem p = good;
  p.shared_w1.pop_back();
  EXPECT_THROW(run(p), ConfigError);
  p = good;
  p.shared_b1.clear();
  EXPECT_THROW(run(p), ConfigError);
  p = good;
  p.config.shared_ffn = 0;  // weights given but no shared expert configured
  EXPECT_THROW(run(p), ConfigError);
}

// ---- Inputs
// --------------------------------------------------------------------------------------

TEST(ReferenceProblem, DeterministicPerSeedAndDifferentAcrossSeeds) {
  LayerConfig c = small_config(4, 2, Activation::swiglu);
  c.world_size = 2;
  const Problem a = make_problem(c, {9, 3}, 42);
  const Problem b = make_problem(c, {9, 3}, 42);
  const Problem d = make_problem(c, {9, 3}, 43);
  EXPECT_EQ(a.x, b.x);
  EXPECT_EQ(a.gate, b.gate);
  EXPECT_EQ(a.w1, b.w1);
  EXPECT_EQ(a.b1, b.b1);
  EXPECT_EQ(a.w2, b.w2);
  EXPECT_EQ(a.b2, b.b2);
  EXPECT_NE(a.x[0], d.x[0]);
  EXPECT_NE(a.x[1], d.x[1]);
  EXPECT_NE(a.x[0], a.x[1]);
  EXPECT_NE(a.gate, d.gate);
  EXPECT_NE(a.w1, d.w1);
  EXPECT_NE(a.w2, d.w2);
  EXPECT_NE(a.b1, d.b1);
  EXPECT_NE(a.b2, d.b2);
  // Sizes and ranges.
  EXPECT_EQ(a.w1.size(), 4u * 128 * 256);
  EXPECT_EQ(a.w2.size(), 4u * 128 * 128);
  EXPECT_EQ(a.b1.size(), 4u * 256);
  EXPECT_EQ(a.b2.size(), 4u * 128);
  for (float v : a.x[0]) ASSERT_TRUE(v >= -1.0f && v <= 1.0f);
  for (float v : a.b1) ASSERT_TRUE(v >= -0.1f && v <= 0.1f);
  // More tokens extend x without changing the first ones; the weights do not change.
  const Problem longer = make_problem(c, {20, 3}, 42);
  EXPECT_TRUE(std::equal(a.x[0].begin(), a.x[0].end(), longer.x[0].begin()));
  EXPECT_EQ(a.w1, longer.w1);
  // No bias, no bias tensors.
  c.bias = false;
  const Problem nb = make_problem(c, {1, 1}, 42);
  EXPECT_TRUE(nb.b1.empty());
  EXPECT_TRUE(nb.b2.empty());
}

TEST(ReferenceProblem, Bf16ValuesAreRounded) {
  LayerConfig c = small_config(4, 2, Activation::gelu, DType::bf16);
  const Problem p = make_problem(c, {16}, 18);
  const auto all_bf16 = [](const std::vector<float>& v) {
    return std::all_of(v.begin(), v.end(), [](float f) { return round_bf16(f) == f; });
  };
  EXPECT_TRUE(all_bf16(p.x[0]));
  EXPECT_TRUE(all_bf16(p.gate));
  EXPECT_TRUE(all_bf16(p.w1));
  EXPECT_TRUE(all_bf16(p.b1));
  EXPECT_TRUE(all_bf16(p.w2));
  EXPECT_TRUE(all_bf16(p.b2));
  // fp32 problems keep the full mantissa (so the rounding above is not vacuous).
  c.dtype = DType::fp32;
  EXPECT_FALSE(all_bf16(make_problem(c, {16}, 18).w1));
}

TEST(ReferenceProblem, RejectsBadTokenCounts) {
  LayerConfig c = small_config(4, 2, Activation::relu);
  c.world_size = 2;
  EXPECT_THROW(make_problem(c, {1}, 1), ConfigError);
  EXPECT_THROW(make_problem(c, {1, 2, 3}, 1), ConfigError);
  EXPECT_THROW(make_problem(c, {1, -1}, 1), ConfigError);
  EXPECT_THROW(make_problem(c, {c.max_tokens + 1, 0}, 1), ConfigError);
  c.topk = 9;
  EXPECT_THROW(make_problem(c, {1, 1}, 1), ConfigError);
  try {
    c.topk = 2;
    make_problem(c, {1}, 1);
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("tokens"), std::string::npos) << e.what();
  }
}

// ---- Helpers
// -------------------------------------------------------------------------------------

TEST(ReferenceHelpers, RoundBf16) {
  const float one = 1.0f;
  const float ulp = std::ldexp(1.0f, -7);  // bf16 spacing at 1
  EXPECT_EQ(round_bf16(one), one);
  EXPECT_EQ(round_bf16(one + ulp / 2), one);                                // tie: to even (down)
  EXPECT_EQ(round_bf16(one + 3 * ulp / 2), one + 2 * ulp);                  // tie: to even (up)
  EXPECT_EQ(round_bf16(one + ulp / 2 + std::ldexp(1.0f, -20)), one + ulp);  // above the tie
  EXPECT_EQ(round_bf16(-(one + 3 * ulp / 2)), -(one + 2 * ulp));
  EXPECT_EQ(round_bf16(3.14159265f), 3.140625f);
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(round_bf16(inf), inf);
  EXPECT_EQ(round_bf16(-inf), -inf);
  EXPECT_EQ(round_bf16(std::numeric_limits<float>::max()), inf);
  EXPECT_TRUE(std::isnan(round_bf16(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(std::isnan(round_bf16(std::numeric_limits<float>::signaling_NaN())));
  EXPECT_TRUE(std::signbit(round_bf16(-0.0f)));
  const float tiny = std::numeric_limits<float>::denorm_min();
  EXPECT_EQ(round_bf16(tiny), 0.0f);
}

TEST(ReferenceHelpers, RelativeError) {
  const std::vector<double> b = {3.0, 4.0, 0.0, 1.0};
  EXPECT_EQ(relative_error({3.0f, 4.0f, 0.0f, 1.0f}, b), 0.0);
  // ||(0, 0, 0, 1)|| / ||(3, 4, 0, 1)|| = 1 / sqrt(26)
  EXPECT_NEAR(relative_error({3.0f, 4.0f, 0.0f, 2.0f}, b), 1.0 / std::sqrt(26.0), 1e-15);
  // Rows of 2: only row 0 compared (error 0), only row 1 compared (1 / 1).
  EXPECT_EQ(relative_error({3.0f, 4.0f, 0.0f, 2.0f}, b, 2, {1, 0}), 0.0);
  EXPECT_NEAR(relative_error({3.0f, 4.0f, 0.0f, 2.0f}, b, 2, {0, 1}), 1.0, 1e-15);
  // Zero reference: the absolute norm.
  EXPECT_NEAR(relative_error({3.0f, 4.0f}, {0.0, 0.0}), 5.0, 1e-15);
  // Non-finite values in a compared row are an infinite error; in a masked row they are ignored.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(std::isinf(relative_error({3.0f, nan, 0.0f, 1.0f}, b)));
  EXPECT_TRUE(std::isinf(relative_error({3.0f, 4.0f, 0.0f, -INFINITY}, b)));
  EXPECT_EQ(relative_error({3.0f, 4.0f, nan, 1.0f}, b, 2, {1, 0}), 0.0);
  EXPECT_EQ(relative_error({}, {}), 0.0);
  EXPECT_THROW(relative_error({1.0f}, b), Error);
  EXPECT_THROW(relative_error({3.0f, 4.0f, 0.0f, 1.0f}, b, 3), Error);
  EXPECT_THROW(relative_error({3.0f, 4.0f, 0.0f, 1.0f}, b, 2, {1}), Error);
}

}  // namespace
}  // namespace monomoe::reference
