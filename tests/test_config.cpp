// LayerConfig: every rejection of validate() names its field, sizes never wrap, names round-trip.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <ostream>
#include <string>
#include <vector>

#include "host/checked.hpp"
#include "host/text.hpp"
#include "monomoe/config.hpp"
#include "monomoe/error.hpp"

namespace monomoe {
namespace {

// Passes when validate(memory) throws ConfigError whose message contains every one of `words`.
::testing::AssertionResult rejected(const LayerConfig& c, const std::vector<std::string>& words,
                                    std::size_t memory = 0) {
  try {
    c.validate(memory);
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    for (const std::string& w : words) {
      if (msg.find(w) == std::string::npos) {
        return ::testing::AssertionFailure() << "message lacks '" << w << "': " << msg;
      }
    }
    return ::testing::AssertionSuccess() << msg;
  } catch (const std::exception& e) {
    return ::testing::AssertionFailure() << "threw a different type: " << e.what();
  }
  return ::testing::AssertionFailure() << "accepted: " << c.describe();
}

TEST(Config, DefaultValidates) {
  const LayerConfig c;
  EXPECT_NO_THROW(c.validate());
  EXPECT_NO_THROW(c.validate(std::size_t{80} << 30));  // fits an 80 GB GPU
  EXPECT_EQ(c.experts_per_rank(), 64);
  EXPECT_EQ(c.w1_columns(), c.ffn);
}

TEST(Config, EdgesOfEveryRangeValidate) {
  LayerConfig c;
  c.max_tokens = 1;
  c.hidden = Limits::kShapeMultiple;
  c.ffn = Limits::kShapeMultiple;
  c.experts = 1;
  c.topk = 1;
  EXPECT_NO_THROW(c.validate());
  c.experts = Limits::kMaxExperts;
  c.topk = Limits::kMaxTopK;
  c.world_size = Limits::kMaxWorld;
  c.rank = Limits::kMaxWorld - 1;
  c.capacity_factor = 1.25;
  EXPECT_NO_THROW(c.validate());
}

// One rejected config: how to break the default, and the words the message must contain.
struct Rejection {
  const char* name;
  std::function<void(LayerConfig&)> edit;
  std::vector<std::string> words;
};

// Printed as its name (gtest would otherwise dump the lambda's bytes).
void PrintTo(const Rejection& r, std::ostream* os) { *os << r.name; }

class ConfigRejects : public ::testing::TestWithParam<Rejection> {};

TEST_P(ConfigRejects, NamesTheField) {
  LayerConfig c;
  GetParam().edit(c);
  EXPECT_TRUE(rejected(c, GetParam().words));
}

const double kNaN = std::numeric_limits<double>::quiet_NaN();
const double kInf = std::numeric_limits<double>::infinity();

INSTANTIATE_TEST_SUITE_P(
    Validate, ConfigRejects,
    ::testing::Values(
        Rejection{"experts_not_divisible_by_world",
                  [](LayerConfig& c) { c.world_size = 3; },
                  {"experts", "64", "divisible", "world_size"}},
        Rejection{"topk_over_experts",
                  [](LayerConfig& c) {
                    c.experts = 4;
                    c.topk = 5;
                  },
                  {"topk", "5"}},
        Rejection{"topk_over_8", [](LayerConfig& c) { c.topk = 9; }, {"topk", "9", "8"}},
        Rejection{"topk_zero", [](LayerConfig& c) { c.topk = 0; }, {"topk", "0"}},
        Rejection{"topk_negative", [](LayerConfig& c) { c.topk = -2; }, {"topk", "-2"}},
        Rejection{"max_tokens_zero", [](LayerConfig& c) { c.max_tokens = 0; }, {"max_tokens"}},
        Rejection{
            "max_tokens_negative", [](LayerConfig& c) { c.max_tokens = -1; }, {"max_tokens", "-1"}},
        Rejection{"max_tokens_over_limit",
                  [](LayerConfig& c) { c.max_tokens = Limits::kMaxTokens + 1; },
                  {"max_tokens"}},
        Rejection{"hidden_zero", [](LayerConfig& c) { c.hidden = 0; }, {"hidden"}},
        Rejection{"hidden_negative", [](LayerConfig& c) { c.hidden = -256; }, {"hidden", "-256"}},
        Rejection{"hidden_not_multiple_of_128",
                  [](LayerConfig& c) { c.hidden = 1000; },
                  {"hidden", "1000", "128"}},
        Rejection{"hidden_over_limit",
                  [](LayerConfig& c) { c.hidden = Limits::kMaxHidden + 128; },
                  {"hidden"}},
        Rejection{"ffn_zero", [](LayerConfig& c) { c.ffn = 0; }, {"ffn"}},
        Rejection{"ffn_negative", [](LayerConfig& c) { c.ffn = -128; }, {"ffn", "-128"}},
        Rejection{
            "ffn_not_multiple_of_128", [](LayerConfig& c) { c.ffn = 200; }, {"ffn", "200", "128"}},
        Rejection{"ffn_over_limit", [](LayerConfig& c) { c.ffn = Limits::kMaxFfn + 128; }, {"ffn"}},
        Rejection{"experts_zero",
                  [](LayerConfig& c) {
                    c.experts = 0;
                    c.topk = 1;
                  },
                  {"experts"}},
        Rejection{"experts_negative",
                  [](LayerConfig& c) {
                    c.experts = -8;
                    c.topk = 1;
                  },
                  {"experts", "-8"}},
        Rejection{
            "experts_over_limit", [](LayerConfig& c) { c.experts = 512; }, {"experts", "512"}},
        Rejection{"world_size_zero", [](LayerConfig& c) { c.world_size = 0; }, {"world_size"}},
        Rejection{
            "world_size_over_64", [](LayerConfig& c) { c.world_size = 65; }, {"world_size", "65"}},
        Rejection{"rank_negative",
                  [](LayerConfig& c) {
                    c.world_size = 2;
                    c.rank = -1;
                  },
                  {"rank", "-1"}},
        Rejection{"rank_equal_to_world",
                  [](LayerConfig& c) {
                    c.world_size = 2;
                    c.rank = 2;
                  },
                  {"rank", "2"}},
        Rejection{"capacity_factor_negative",
                  [](LayerConfig& c) { c.capacity_factor = -0.5; },
                  {"capacity_factor"}},
        Rejection{"capacity_factor_nan",
                  [](LayerConfig& c) { c.capacity_factor = kNaN; },
                  {"capacity_factor"}},
        Rejection{"capacity_factor_inf",
                  [](LayerConfig& c) { c.capacity_factor = kInf; },
                  {"capacity_factor"}},
        Rejection{
            "timeout_zero", [](LayerConfig& c) { c.timeout_seconds = 0.0; }, {"timeout_seconds"}},
        Rejection{"timeout_negative",
                  [](LayerConfig& c) { c.timeout_seconds = -1.0; },
                  {"timeout_seconds"}},
        Rejection{
            "timeout_nan", [](LayerConfig& c) { c.timeout_seconds = kNaN; }, {"timeout_seconds"}},
        // FP8 checkpoints store [out, in] matrices with [out / 128, in / 128] block scales.
        Rejection{"fp8_with_in_out_weights",
                  [](LayerConfig& c) { c.dtype = DType::fp8; },
                  {"weight_layout", "in-out", "fp8"}}),
    [](const ::testing::TestParamInfo<Rejection>& info) { return std::string(info.param.name); });

TEST(Config, RejectsLayerLargerThanDeviceMemory) {
  const LayerConfig c;
  const std::size_t need = c.weight_bytes() + c.workspace_bytes();
  EXPECT_NO_THROW(c.validate(need));  // exactly enough is enough
  EXPECT_TRUE(rejected(c, {"max_tokens", "device memory", std::to_string(need)}, need - 1));
  EXPECT_TRUE(rejected(c, {"max_tokens"}, std::size_t{1} << 20));
}

// The weight-bytes tests' shape: hidden 256, ffn 384 (SwiGLU: W1 768 columns), 8 experts over 2
// ranks (4 local).
LayerConfig two_rank_swiglu(DType dtype) {
  LayerConfig c;
  c.hidden = 256;
  c.ffn = 384;
  c.experts = 8;
  c.world_size = 2;
  c.activation = Activation::swiglu;
  c.dtype = dtype;
  return c;
}

TEST(Config, WeightBytesMatchTheShapes) {
  LayerConfig c = two_rank_swiglu(DType::fp32);
  // Gate [H, E] + per local expert W1 [H, 2I], W2 [I, H], b1 [2I], b2 [H]; 4 bytes each.
  const std::size_t local = 4;  // experts 8 over world 2
  std::size_t n = 256 * 8 + local * (256 * 768 + 384 * 256 + 768 + 256);
  EXPECT_EQ(c.weight_bytes(), n * 4);
  c.bias = false;
  c.dtype = DType::bf16;
  n = 256 * 8 + local * (256 * 768 + 384 * 256);
  EXPECT_EQ(c.weight_bytes(), n * 2);
}

// fp8 with [out, in] weights: E4M3 matrices (1 byte), an fp32 scale per 128 x 128 block of each,
// and the gate and biases in bf16 (2 bytes), the shared expert's included.
TEST(Config, Fp8WeightBytesCountE4m3ScalesAndBf16) {
  LayerConfig c = two_rank_swiglu(DType::fp8);
  c.weight_layout = WeightLayout::out_in;
  c.shared_ffn = 384;
  EXPECT_NO_THROW(c.validate());
  const std::size_t local = 4;  // experts 8 over world 2
  const std::size_t matrices = local * (768 * 256 + 256 * 384) + (768 * 256 + 256 * 384);
  const std::size_t small = 256 * 8 + local * (768 + 256) + (768 + 256);
  EXPECT_EQ(c.weight_bytes(), matrices * 1 + matrices / (128 * 128) * 4 + small * 2);
  EXPECT_EQ(element_bytes(DType::fp8), 2u);
  EXPECT_EQ(weight_element_bytes(DType::fp8), 1u);
}

// No field-by-field valid config can overflow 64 bits (the largest needs ~2^51 bytes), so the size
// arithmetic is tested directly, and the largest config must be refused by name, not wrap around.
TEST(Config, SizeArithmeticIsChecked) {
  using detail::checked_add;
  using detail::checked_mul;
  const std::size_t max = std::numeric_limits<std::size_t>::max();
  EXPECT_EQ(checked_mul(std::size_t{1} << 31, std::size_t{1} << 32, "hidden"),
            std::size_t{1} << 63);
  EXPECT_EQ(checked_add(max - 1, 1, "ffn"), max);
  try {
    checked_mul(std::size_t{1} << 32, std::size_t{1} << 32, "hidden");
    ADD_FAILURE() << "2^64 did not overflow";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("hidden"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("overflows"), std::string::npos) << e.what();
  }
  EXPECT_THROW(checked_add(max, 1, "max_tokens"), ConfigError);
  EXPECT_THROW(detail::round_up(max - 3, 256, "max_tokens"), ConfigError);
}

TEST(Config, LargestConfigIsRefusedByNameOnARealGpu) {
  LayerConfig c;
  c.max_tokens = Limits::kMaxTokens;
  c.hidden = Limits::kMaxHidden;
  c.ffn = Limits::kMaxFfn;
  c.experts = Limits::kMaxExperts;
  c.topk = Limits::kMaxTopK;
  c.activation = Activation::swiglu;
  c.dtype = DType::fp32;
  // Either the workspace plan refuses it or the memory check does (a wrapped size would pass), and
  // the message names a shape field.
  try {
    c.validate(std::size_t{192} << 30);
    ADD_FAILURE() << "accepted: " << c.describe();
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    bool named = false;
    for (const char* f : {"max_tokens", "hidden", "ffn", "experts", "topk"}) {
      named = named || msg.find(f) != std::string::npos;
    }
    EXPECT_TRUE(named) << msg;
  }
  // The weights alone: 256 experts * (H*2I + I*H) + H*E + biases, in fp32, ~13 TB, no wrap.
  const double h = 65536.0, i = 65536.0, e = 256.0;
  const double expect = 4.0 * (h * e + e * (h * 2 * i + i * h) + e * (2 * i + h));
  EXPECT_EQ(static_cast<double>(c.weight_bytes()), expect);
}

TEST(Config, Capacity) {
  LayerConfig c;
  c.experts = 8;
  c.topk = 2;
  EXPECT_EQ(c.capacity(512), 512);  // dropless: unbounded
  c.capacity_factor = 1.0;
  EXPECT_EQ(c.capacity(512), 128);  // ceil(1.0 * 512 * 2 / 8)
  c.capacity_factor = 1.3;
  EXPECT_EQ(c.capacity(100), 33);  // ceil(32.5)
  c.capacity_factor = 0.01;
  EXPECT_EQ(c.capacity(10), 1);  // at least one row
  c.capacity_factor = 100.0;
  EXPECT_EQ(c.capacity(10), 10);  // never more than the tokens
}

TEST(Config, SwigluDoublesW1) {
  LayerConfig c;
  c.ffn = 384;
  c.activation = Activation::swiglu;
  EXPECT_EQ(c.w1_columns(), 768);
}

TEST(Config, NamesRoundTrip) {
  for (Activation a : {Activation::relu, Activation::gelu, Activation::silu, Activation::swiglu}) {
    EXPECT_EQ(parse_activation(to_string(a)), a) << to_string(a);
  }
  for (DType d : {DType::bf16, DType::tf32, DType::fp32}) {
    EXPECT_EQ(parse_dtype(to_string(d)), d) << to_string(d);
  }
  EXPECT_EQ(to_string(Activation::swiglu), "swiglu");
  EXPECT_EQ(to_string(DType::tf32), "tf32");
  for (const char* bad : {"", "tanh", "RELU", "gelu ", "bf16"}) {
    EXPECT_FALSE(parse_activation(bad).has_value()) << bad;
  }
  for (const char* bad : {"", "fp16", "BF16", "fp32 ", "relu"}) {
    EXPECT_FALSE(parse_dtype(bad).has_value()) << bad;
  }
  for (WeightLayout l : {WeightLayout::in_out, WeightLayout::out_in}) {
    EXPECT_EQ(parse_weight_layout(to_string(l)), l) << to_string(l);
  }
  EXPECT_EQ(to_string(WeightLayout::out_in), "out-in");
  for (const char* bad : {"", "in_out", "OUT-IN", "nk", "out-in "}) {
    EXPECT_FALSE(parse_weight_layout(bad).has_value()) << bad;
  }
  EXPECT_EQ(element_bytes(DType::bf16), 2u);
  EXPECT_EQ(element_bytes(DType::tf32), 4u);
  EXPECT_EQ(element_bytes(DType::fp32), 4u);
}

TEST(Config, SharedExpertIsAMultipleOfFfn) {
  LayerConfig c;
  EXPECT_EQ(c.shared_ffn, 0) << "no shared expert by default";
  EXPECT_EQ(c.describe().find("shared_ffn"), std::string::npos);
  const std::size_t without = c.weight_bytes();
  c.shared_ffn = 2 * c.ffn;
  c.activation = Activation::swiglu;
  EXPECT_NO_THROW(c.validate());
  EXPECT_EQ(c.shared_slices(), 2);
  EXPECT_EQ(c.shared_w1_columns(), 4 * c.ffn);
  EXPECT_NE(c.describe().find("shared_ffn=4096"), std::string::npos) << c.describe();
  c.activation = Activation::gelu;
  // Its replicated weights count: W1 and W2 of hidden x shared_ffn, b1 and b2.
  const std::size_t shared = 2 * (2 * 2048 * 4096 + 4096 + 2048);
  EXPECT_EQ(c.weight_bytes(), without + shared);
  c.shared_ffn = Limits::kMaxSharedSlices * c.ffn;
  EXPECT_NO_THROW(c.validate());
  c.shared_ffn = 3 * 128;  // a multiple of the tile but not of ffn
  EXPECT_TRUE(rejected(c, {"LayerConfig.shared_ffn", "384", "multiple of ffn = 2048"}));
  c.shared_ffn = (Limits::kMaxSharedSlices + 1) * c.ffn;
  EXPECT_TRUE(rejected(c, {"LayerConfig.shared_ffn", "must be in [0, 16384]"}));
  c.shared_ffn = -c.ffn;
  EXPECT_TRUE(rejected(c, {"LayerConfig.shared_ffn"}));
}

TEST(Config, DescribeNamesTheShape) {
  LayerConfig c;
  c.activation = Activation::swiglu;
  c.world_size = 4;
  const std::string d = c.describe();
  for (const char* part : {"tokens=8192", "hidden=2048", "ffn=2048", "experts=64", "topk=2",
                           "act=swiglu", "dtype=bf16", "world=4"}) {
    EXPECT_NE(d.find(part), std::string::npos) << part << " not in: " << d;
  }
  EXPECT_EQ(d.find("weights="), std::string::npos) << "the default layout is not spelled out";
  c.weight_layout = WeightLayout::out_in;
  EXPECT_NE(c.describe().find("weights=out-in"), std::string::npos) << c.describe();
}

TEST(Config, ConfigErrorIsAMonomoeError) {
  LayerConfig c;
  c.topk = 0;
  EXPECT_THROW(c.validate(), Error);
  EXPECT_THROW(c.validate(), std::runtime_error);
}

}  // namespace
}  // namespace monomoe

TEST(Config, TextCatFormatsWithoutStreams) {
  using monomoe::text::cat;
  EXPECT_EQ(cat("rank ", 3, " took ", 1.5, " s"), "rank 3 took 1.5 s");
  EXPECT_EQ(cat(-7, "/", std::size_t{18446744073709551615u}), "-7/18446744073709551615");
  EXPECT_EQ(cat(2.0, " ", 0.1, " ", 1.25f, " ", true, false), "2 0.1 1.25 10");
  EXPECT_EQ(cat(std::string("a"), std::string_view("b"), "c"), "abc");
  monomoe::LayerConfig c;
  c.capacity_factor = 1.25;
  EXPECT_NE(c.describe().find("capacity=1.25 bias=1"), std::string::npos) << c.describe();
}
