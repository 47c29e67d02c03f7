// bench's arithmetic (bench/metrics.hpp): the FFN FLOP count, TFLOP/s and the compute floor.
#include <gtest/gtest.h>

#include <cstdint>

#include "bench/metrics.hpp"
#include "monomoe/config.hpp"

namespace monomoe::bench {
namespace {

TEST(BenchMetrics, FfnFlopCountsBothGemms) {
  LayerConfig c;
  c.hidden = 256;
  c.ffn = 512;
  // One row: [1, 256] x [256, 512] then [1, 512] x [512, 256], two FLOP per multiply-add.
  EXPECT_DOUBLE_EQ(ffn_flop(1, c), 2.0 * 256 * 512 + 2.0 * 512 * 256);
  EXPECT_DOUBLE_EQ(ffn_flop(10, c), 10.0 * ffn_flop(1, c));
  EXPECT_DOUBLE_EQ(ffn_flop(0, c), 0.0);
  // swiglu's W1 has both halves: GEMM0 does twice the work, GEMM1 the same.
  LayerConfig g = c;
  g.activation = Activation::swiglu;
  EXPECT_DOUBLE_EQ(ffn_flop(1, g), 2.0 * 256 * 1024 + 2.0 * 512 * 256);
}

// The shared expert runs every token: [tokens, H] x [H, S1] then [tokens, S] x [S, H], S1 = 2 S
// for swiglu; nothing without one.
TEST(BenchMetrics, SharedFlopCountsBothGemmsOfEveryToken) {
  LayerConfig c;
  c.hidden = 256;
  c.ffn = 128;
  EXPECT_DOUBLE_EQ(shared_flop(100, c), 0.0);
  c.shared_ffn = 384;
  EXPECT_DOUBLE_EQ(shared_flop(1, c), 2.0 * 256 * 384 + 2.0 * 384 * 256);
  EXPECT_DOUBLE_EQ(shared_flop(10, c), 10.0 * shared_flop(1, c));
  c.activation = Activation::swiglu;
  EXPECT_DOUBLE_EQ(shared_flop(1, c), 2.0 * 256 * 768 + 2.0 * 384 * 256);
  // The routed experts' count is untouched by it.
  EXPECT_DOUBLE_EQ(ffn_flop(1, c), 2.0 * 256 * 256 + 2.0 * 128 * 256);
}

// The README's 1xH200 line: default config, 8192 tokens x top-2 kept rows, 0.836 ms -> 328.8.
TEST(BenchMetrics, TflopsMatchesTheReadmeNumber) {
  const LayerConfig c;
  EXPECT_NEAR(tflops(ffn_flop(8192 * 2, c), 0.836), 328.8, 0.05);
  EXPECT_DOUBLE_EQ(tflops(gemm_flop(8192, 8192, 8192), 1.0), 2.0 * 8192.0 * 8192 * 8192 / 1e9);
}

TEST(BenchMetrics, FloorIsTheTimeAtTheCeiling) {
  const LayerConfig c;
  const double flop = ffn_flop(8192 * 2, c);
  // 2.75e11 FLOP at 700 TFLOP/s.
  EXPECT_NEAR(compute_floor_ms(flop, 700.0), flop / 700e12 * 1e3, 1e-12);
  EXPECT_NEAR(compute_floor_ms(flop, 700.0), 0.3927, 1e-4);
  // A kernel timed at t ms runs at tflops(flop, t); at that rate the floor is t itself.
  EXPECT_NEAR(compute_floor_ms(flop, tflops(flop, 0.836)), 0.836, 1e-12);
}

TEST(BenchMetrics, NothingTimedGivesZeroNotInfinity) {
  EXPECT_DOUBLE_EQ(tflops(1e12, 0.0), 0.0);
  EXPECT_DOUBLE_EQ(compute_floor_ms(1e12, 0.0), 0.0);
}

}  // namespace
}  // namespace monomoe::bench
