// DType::fp8's numerics (src/reference/fp8.hpp, docs/fp8.md) and the CPU reference's fp8 layer
// against a per-token computation written from the definition (label cpu).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "monomoe/config.hpp"
#include "monomoe/error.hpp"
#include "reference/fp8.hpp"
#include "reference/reference.hpp"
#include "rel_diff.hpp"

namespace monomoe {
namespace {

using reference::Problem;
using reference::RankResult;
using reference::fp8::kBlock;
using reference::fp8::quantize_group;
using reference::fp8::quantize_weight_blocks;
using reference::fp8::round_e4m3;
using Idx = std::size_t;

Idx ix(std::int64_t v) {
  return static_cast<Idx>(v);
}

// The E4M3 ("fn") value of a byte: sign, 4 exponent bits (bias 7), 3 mantissa bits; exponent 0 is
// subnormal (m * 2^-9); S.1111.111 is NaN.
float decode_e4m3(unsigned bits) {
  const unsigned e = (bits >> 3) & 15u, m = bits & 7u;
  if (e == 15u && m == 7u) return std::numeric_limits<float>::quiet_NaN();
  const float mag = e == 0 ? std::ldexp(static_cast<float>(m), -9)
                           : std::ldexp(1.f + static_cast<float>(m) / 8.f, static_cast<int>(e) - 7);
  return bits & 0x80u ? -mag : mag;
}

// The finite non-negative E4M3 values in ascending order, with their mantissa bits.
struct Code {
  float value;
  unsigned mantissa;
};
std::vector<Code> positive_codes() {
  std::vector<Code> v;
  for (unsigned b = 0; b < 0x7f; ++b) v.push_back({decode_e4m3(b), b & 7u});  // 0x7f is NaN
  return v;
}

TEST(Fp8Rounding, EveryE4m3ValueIsAFixedPoint) {
  int finite = 0;
  for (unsigned b = 0; b < 256; ++b) {
    const float v = decode_e4m3(b);
    if (std::isnan(v)) {
      EXPECT_TRUE(std::isnan(round_e4m3(v)));
      continue;
    }
    ++finite;
    EXPECT_EQ(round_e4m3(v), v) << "code " << b;
    EXPECT_EQ(std::signbit(round_e4m3(v)), std::signbit(v)) << "code " << b;
  }
  EXPECT_EQ(finite, 254);
  EXPECT_EQ(decode_e4m3(0x7e), 448.f);
  EXPECT_EQ(decode_e4m3(0x01), std::ldexp(1.f, -9));
}

TEST(Fp8Rounding, MidpointsGoToTheEvenMantissaAndTheRestToTheNearest) {
  const std::vector<Code> codes = positive_codes();
  for (std::size_t i = 0; i + 1 < codes.size(); ++i) {
    const Code lo = codes[i], hi = codes[i + 1];
    const float mid = (lo.value + hi.value) / 2;  // exact: both have few bits
    SCOPED_TRACE(std::to_string(lo.value) + " .. " + std::to_string(hi.value));
    EXPECT_EQ(round_e4m3(mid), (lo.mantissa & 1u) == 0 ? lo.value : hi.value);
    EXPECT_EQ(round_e4m3(std::nextafter(mid, 0.f)), lo.value);
    EXPECT_EQ(round_e4m3(std::nextafter(mid, 1e9f)), hi.value);
    EXPECT_EQ(round_e4m3(-mid), -round_e4m3(mid));
  }
}

TEST(Fp8Rounding, SaturatesAtThe448sAndKeepsNaN) {
  for (float v : {448.f, 449.f, 463.9f, 464.f, 500.f, 1e30f, std::numeric_limits<float>::infinity()}) {
    EXPECT_EQ(round_e4m3(v), 448.f) << v;
    EXPECT_EQ(round_e4m3(-v), -448.f) << v;
  }
  EXPECT_TRUE(std::isnan(round_e4m3(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_EQ(round_e4m3(std::ldexp(1.f, -10)), 0.f);  // half the least subnormal: ties to 0 (even)
  EXPECT_EQ(round_e4m3(std::ldexp(1.5f, -10)), std::ldexp(1.f, -9));
  EXPECT_EQ(round_e4m3(1e-30f), 0.f);
}

TEST(Fp8Quantize, GroupScaleMapsTheLargestToThe448sWithinHalfASpacing) {
  std::vector<float> v(kBlock), q(kBlock);
  for (Idx i = 0; i < v.size(); ++i) v[i] = std::sin(0.37f * static_cast<float>(i)) * 3.f;
  v[17] = -5.25f;  // the group's amax
  const float scale = quantize_group(v.data(), v.size(), q.data());
  EXPECT_EQ(scale, 5.25f / 448.f);
  EXPECT_EQ(q[17], -448.f);
  for (Idx i = 0; i < v.size(); ++i) {
    EXPECT_EQ(round_e4m3(q[i]), q[i]);
    EXPECT_LE(std::fabs(q[i]), 448.f);
    // Half a spacing of E4M3: 2^-4 of the value for normal numbers, 2^-10 below 2^-6.
    const double err = std::fabs(static_cast<double>(q[i]) - static_cast<double>(v[i]) * (448.0 / 5.25));
    EXPECT_LE(err, std::max(std::fabs(static_cast<double>(q[i])) / 16.0, std::ldexp(1.0, -10)) * 1.0001)
        << i;
  }
  // A group of zeros: scale 1, zeros; a NaN poisons its group only.
  std::vector<float> zero(kBlock, 0.f);
  EXPECT_EQ(quantize_group(zero.data(), zero.size(), q.data()), 1.f);
  for (float x : q) EXPECT_EQ(x, 0.f);
  v[3] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(std::isnan(quantize_group(v.data(), v.size(), q.data())));
  for (float x : q) EXPECT_TRUE(std::isnan(x));
}

TEST(Fp8Quantize, WeightBlocksAreIndependentAndEachReachesThe448s) {
  const Idx rows = 256, cols = 384;  // [out, in]: 2 x 3 blocks
  std::vector<float> w(rows * cols), q(rows * cols), scale(6);
  for (Idx i = 0; i < w.size(); ++i) w[i] = std::cos(0.011f * static_cast<float>(i)) * 0.1f;
  w[5 * cols + 300] = 7.f;  // an outlier in block (0, 2)
  quantize_weight_blocks(w.data(), rows, cols, q.data(), scale.data());
  for (Idx rb = 0; rb < 2; ++rb) {
    for (Idx cb = 0; cb < 3; ++cb) {
      float amax = 0.f, qmax = 0.f;
      for (Idx r = rb * 128; r < rb * 128 + 128; ++r) {
        for (Idx c = cb * 128; c < cb * 128 + 128; ++c) {
          amax = std::max(amax, std::fabs(w[r * cols + c]));
          qmax = std::max(qmax, std::fabs(q[r * cols + c]));
          EXPECT_EQ(round_e4m3(q[r * cols + c]), q[r * cols + c]);
        }
      }
      EXPECT_EQ(scale[rb * 3 + cb], amax / 448.f) << rb << "," << cb;
      EXPECT_EQ(qmax, 448.f) << rb << "," << cb;
    }
  }
  EXPECT_EQ(scale[2], 7.f / 448.f);
  EXPECT_LT(scale[1], 0.1f / 448.f * 1.0001f);  // the outlier's neighbours keep their own scale
}

// ---- The reference's fp8 layer
// ----------------------------------------------------------------------

LayerConfig fp8_config(Activation a, bool bias, std::int64_t shared_slices) {
  LayerConfig c;
  c.max_tokens = 64;
  c.hidden = 256;
  c.ffn = 256;
  c.experts = 4;
  c.topk = 2;
  c.activation = a;
  c.dtype = DType::fp8;
  c.weight_layout = WeightLayout::out_in;
  c.bias = bias;
  c.shared_ffn = shared_slices * c.ffn;
  return c;
}

// One FFN of one token from the definition (docs/fp8.md), as the GPU will compute it: x quantized
// per 128 channels; for every output, per 128-deep K block the products of E4M3 values summed,
// then scaled by the block's two scales and added (the promotion); bias and activation; h rounded
// to float and quantized likewise; GEMM1 the same way. Acc = double: the reference's values up to
// the order of the sums; Acc = float: what fp32 accumulation gives. Weights [in, out] as Problem
// stores them, scales [out / 128, in / 128].
template <class Acc>
std::vector<double> fp8_ffn(const LayerConfig& c, const float* w1, const float* s1, const float* b1,
                             const float* w2, const float* s2, const float* b2, Idx f,
                             const float* x) {
  const bool swiglu = c.activation == Activation::swiglu;
  const Idx h = ix(c.hidden), c1 = swiglu ? 2 * f : f, kb = ix(kBlock);
  const auto quantized = [&](const std::vector<float>& v, std::vector<float>& q) {
    std::vector<float> s(v.size() / kb);
    for (Idx g = 0; g < s.size(); ++g) s[g] = quantize_group(v.data() + g * kb, kb, q.data() + g * kb);
    return s;
  };
  // out[n] = sum over K blocks of (sum in the block of a[k] w[k, n]) * sa[block] * sw[n, block].
  const auto gemm = [&](const std::vector<float>& a, const std::vector<float>& sa, const float* w,
                        const float* sw, Idx depth, Idx cols) {
    std::vector<Acc> out(cols, Acc{0});
    for (Idx n = 0; n < cols; ++n) {
      for (Idx b = 0; b < depth / kb; ++b) {
        Acc part{0};
        for (Idx k = b * kb; k < b * kb + kb; ++k) part += Acc(a[k]) * Acc(w[k * cols + n]);
        out[n] += part * Acc(sa[b]) * Acc(sw[(n / kb) * (depth / kb) + b]);
      }
    }
    return out;
  };
  std::vector<float> xin(x, x + h), xq(h);
  const std::vector<float> xs = quantized(xin, xq);
  const std::vector<Acc> pre = gemm(xq, xs, w1, s1, h, c1);
  std::vector<float> act(f), aq(f);
  const auto bias1 = [&](Idx i) { return b1 ? Acc(b1[i]) : Acc{0}; };
  for (Idx i = 0; i < f; ++i) {
    const Acc v = pre[i] + bias1(i);
    const auto silu = [](Acc u) { return u / (Acc{1} + std::exp(-u)); };
    Acc a{0};
    switch (c.activation) {
      case Activation::relu: a = v > 0 ? v : Acc{0}; break;
      case Activation::gelu: a = Acc(0.5) * v * (Acc{1} + std::erf(v / std::sqrt(Acc{2}))); break;
      case Activation::silu: a = silu(v); break;
      case Activation::swiglu: a = silu(v) * (pre[f + i] + bias1(f + i)); break;
    }
    act[i] = static_cast<float>(a);
  }
  const std::vector<float> as = quantized(act, aq);
  const std::vector<Acc> out = gemm(aq, as, w2, s2, f, h);
  std::vector<double> y(h);
  for (Idx q = 0; q < h; ++q) y[q] = static_cast<double>(out[q]) + (b2 ? b2[q] : 0.0);
  return y;
}

// y of rank `rank` from the reference's routing (choices, weights, kept), every FFN by fp8_ffn.
template <class Acc>
std::vector<double> fp8_y(const Problem& p, const RankResult& rr, Idx rank) {
  const LayerConfig& c = p.config;
  const Idx h = ix(c.hidden), f = ix(c.ffn), k = ix(c.topk), c1 = ix(c.w1_columns());
  const Idx blocks = ix(kBlock * kBlock);
  const bool b = c.bias;
  std::vector<double> y(rr.y.size(), 0.0);
  for (Idx t = 0; t < ix(p.tokens[rank]); ++t) {
    const float* x = p.x[rank].data() + t * h;
    for (Idx j = 0; j < k; ++j) {
      if (!rr.kept[t * k + j]) continue;
      const Idx e = ix(rr.topk_expert[t * k + j]);
      const auto out = fp8_ffn<Acc>(c, p.w1.data() + e * h * c1, p.w1_scale.data() + e * h * c1 / blocks,
                                    b ? p.b1.data() + e * c1 : nullptr, p.w2.data() + e * f * h,
                                    p.w2_scale.data() + e * f * h / blocks,
                                    b ? p.b2.data() + e * h : nullptr, f, x);
      for (Idx q = 0; q < h; ++q) y[t * h + q] += rr.topk_weight[t * k + j] * out[q];
    }
    if (c.shared_ffn > 0) {
      const auto out = fp8_ffn<Acc>(c, p.shared_w1.data(), p.shared_w1_scale.data(),
                                    b ? p.shared_b1.data() : nullptr, p.shared_w2.data(),
                                    p.shared_w2_scale.data(), b ? p.shared_b2.data() : nullptr,
                                    ix(c.shared_ffn), x);
      for (Idx q = 0; q < h; ++q) y[t * h + q] += out[q];
    }
  }
  return y;
}

using test::rel_diff;

TEST(ReferenceFp8, ProblemHoldsE4m3WeightsWithBlockScalesAndBf16Rest) {
  const LayerConfig c = fp8_config(Activation::swiglu, true, 1);
  const Problem p = reference::make_problem(c, {20}, 5);
  const Idx blocks = ix(kBlock * kBlock);
  EXPECT_EQ(p.w1_scale.size(), p.w1.size() / blocks);
  EXPECT_EQ(p.w2_scale.size(), p.w2.size() / blocks);
  EXPECT_EQ(p.shared_w1_scale.size(), p.shared_w1.size() / blocks);
  EXPECT_EQ(p.shared_w2_scale.size(), p.shared_w2.size() / blocks);
  for (const std::vector<float>* w : {&p.w1, &p.w2, &p.shared_w1, &p.shared_w2}) {
    float amax = 0.f;
    for (float v : *w) {
      ASSERT_EQ(round_e4m3(v), v);
      amax = std::max(amax, std::fabs(v));
    }
    EXPECT_EQ(amax, 448.f);
  }
  for (float s : p.w1_scale) EXPECT_GT(s, 0.f);
  for (const std::vector<float>* v : {&p.x[0], &p.gate, &p.b1, &p.b2, &p.shared_b1}) {
    for (float x : *v) ASSERT_EQ(reference::round_bf16(x), x);
  }
}

TEST(ReferenceFp8, EqualsTheDefinitionPerToken) {
  for (Activation a : {Activation::relu, Activation::gelu, Activation::silu, Activation::swiglu}) {
    for (bool bias : {true, false}) {
      for (std::int64_t shared : {0, 2}) {
        SCOPED_TRACE(std::string(to_string(a)) + " bias=" + std::to_string(bias) +
                     " shared=" + std::to_string(shared));
        LayerConfig c = fp8_config(a, bias, shared);
        c.world_size = 2;
        c.capacity_factor = shared == 0 ? 0.75 : 0.0;  // drops too
        const Problem p = reference::make_problem(c, {37, 21}, 7 + static_cast<std::uint64_t>(a));
        const reference::Result r = reference::run(p, 2);
        for (Idx rank = 0; rank < 2; ++rank) {
          EXPECT_LT(rel_diff(r.ranks[rank].y, fp8_y<double>(p, r.ranks[rank], rank)), 1e-12);
        }
      }
    }
  }
}

// What the GPU's fp32 accumulation changes against the reference (sums in another order and
// precision, now and then an activation on the other side of an E4M3 rounding midpoint): far
// below the comparison's tolerance (bench::tolerance, 2e-2), as docs/fp8.md argues.
TEST(ReferenceFp8, Fp32AccumulationStaysFarInsideTheTolerance) {
  for (Activation a : {Activation::gelu, Activation::swiglu}) {
    SCOPED_TRACE(to_string(a));
    const LayerConfig c = fp8_config(a, true, 1);
    const Problem p = reference::make_problem(c, {64}, 11);
    const reference::Result r = reference::run(p, 2);
    const double d = rel_diff(fp8_y<float>(p, r.ranks[0], 0), r.ranks[0].y);
    EXPECT_LT(d, 2e-3);
    EXPECT_GT(d, 0.0);  // float sums do differ: the comparison is not vacuous
  }
}

// The quantization itself (not seen by the GPU comparison, which quantizes alike): the fp8 layer
// against the same weights dequantized and run unquantized in float64. A few percent, as E4M3's
// 3 mantissa bits give.
TEST(ReferenceFp8, QuantizationErrorIsAFewPercent) {
  LayerConfig c = fp8_config(Activation::gelu, true, 0);
  const Problem p = reference::make_problem(c, {64}, 13);
  Problem plain = p;
  plain.config.dtype = DType::fp32;
  const Idx blocks = ix(kBlock * kBlock), h = ix(c.hidden), f = ix(c.ffn);
  const auto dequantize = [&](std::vector<float>& w, const std::vector<float>& s, Idx in, Idx out) {
    for (Idx m = 0; m < w.size() / (in * out); ++m) {
      for (Idx i = 0; i < in; ++i) {
        for (Idx o = 0; o < out; ++o) {
          w[m * in * out + i * out + o] *= s[m * in * out / blocks + (o / 128) * (in / 128) + i / 128];
        }
      }
    }
  };
  dequantize(plain.w1, p.w1_scale, h, f);
  dequantize(plain.w2, p.w2_scale, f, h);
  plain.w1_scale.clear();
  plain.w2_scale.clear();
  plain.shared_w1_scale.clear();
  plain.shared_w2_scale.clear();
  const reference::Result q = reference::run(p, 2);
  const reference::Result u = reference::run(plain, 2);
  ASSERT_EQ(q.ranks[0].topk_expert, u.ranks[0].topk_expert);  // the gate is bf16 either way
  const double d = rel_diff(q.ranks[0].y, u.ranks[0].y);
  EXPECT_GT(d, 5e-3);
  EXPECT_LT(d, 0.1);
}

TEST(ReferenceFp8, ConfigAndProblemErrorsNameTheField) {
  LayerConfig c = fp8_config(Activation::gelu, true, 0);
  c.weight_layout = WeightLayout::in_out;
  try {
    c.validate();
    ADD_FAILURE() << "no ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("weight_layout"), std::string::npos) << e.what();
  }
  Problem p = reference::make_problem(fp8_config(Activation::gelu, true, 0), {4}, 3);
  p.w2_scale.pop_back();
  try {
    reference::run(p, 1);
    ADD_FAILURE() << "no ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("w2_scale"), std::string::npos) << e.what();
  }
  EXPECT_EQ(parse_dtype("fp8"), DType::fp8);
  EXPECT_EQ(to_string(DType::fp8), "fp8");
  EXPECT_EQ(element_bytes(DType::fp8), 2u);
  EXPECT_EQ(weight_element_bytes(DType::fp8), 1u);
}

}  // namespace
}  // namespace monomoe
