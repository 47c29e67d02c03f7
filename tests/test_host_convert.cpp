// bench's threaded host conversions (bench/host_convert.hpp) against plain loops: the transpose of
// matrices whose rows are not whole blocks of the threads' items, the bf16 and E4M3 encodings over
// several pieces, the E4M3 check naming a value that is not one, fp8's dequantized weights.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "bench/host_convert.hpp"
#include "monomoe/error.hpp"
#include "reference/fp8.hpp"
#include "reference/reference.hpp"

namespace monomoe {
namespace {

TEST(HostConvert, TransposesEveryMatrix) {
  constexpr std::size_t kCount = 3, kRows = 70, kCols = 45;  // 70 rows: 32 + 32 + 6
  std::vector<float> v(kCount * kRows * kCols);
  for (std::size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(i);
  const std::vector<float> t = bench::transposed(v.data(), kCount, kRows, kCols);
  ASSERT_EQ(t.size(), v.size());
  for (std::size_t m = 0; m < kCount; ++m) {
    for (std::size_t r = 0; r < kRows; ++r) {
      for (std::size_t c = 0; c < kCols; ++c) {
        ASSERT_EQ(t[m * kRows * kCols + c * kRows + r], v[m * kRows * kCols + r * kCols + c])
            << m << " " << r << " " << c;
      }
    }
  }
}

// 2.5 pieces of the threads' work: every element converted, as one thread would.
TEST(HostConvert, Bf16AndE4m3OverSeveralPieces) {
  const std::size_t n = (std::size_t{5} << 20) / 2;
  std::vector<float> v(n), e4m3_values(n);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-4.f, 4.f);
  for (std::size_t i = 0; i < n; ++i) {
    v[i] = u(rng);
    e4m3_values[i] = reference::fp8::round_e4m3(v[i] * 50.f);
  }
  const std::vector<__nv_bfloat16> b = bench::to_bf16(v.data(), n);
  const std::vector<__nv_fp8_e4m3> q = bench::to_e4m3(e4m3_values.data(), n, "w1");
  ASSERT_EQ(b.size(), n);
  ASSERT_EQ(q.size(), n);
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const __nv_bfloat16 want = __float2bfloat16_rn(v[i]);
    if (std::memcmp(&b[i], &want, sizeof(want)) != 0) ++wrong;
    if (static_cast<float>(q[i]) != e4m3_values[i]) ++wrong;
  }
  EXPECT_EQ(wrong, 0u);
}

// A value between two E4M3 values, past the first piece: refused, the tensor and element named.
TEST(HostConvert, E4m3RefusesAValueThatIsNotOne) {
  const std::size_t n = std::size_t{3} << 20, bad = (std::size_t{1} << 20) + 12345;
  std::vector<float> v(n, 0.5f);
  v[bad] = 0.3f;  // between 0.28125 and 0.3125
  try {
    bench::to_e4m3(v.data(), n, "shared_w2");
    ADD_FAILURE() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("shared_w2 element " + std::to_string(bad)), std::string::npos) << msg;
    EXPECT_NE(msg.find("not an E4M3 value"), std::string::npos) << msg;
  }
}

TEST(HostConvert, DequantizesWithTheBlockScales) {
  constexpr std::size_t kCount = 2, kIn = 256, kOut = 384;  // [in, out]; scales [out/128][in/128]
  std::mt19937 rng(4);
  std::uniform_real_distribution<float> u(-448.f, 448.f), s(0.001f, 0.01f);
  std::vector<float> w(kCount * kIn * kOut), scale(kCount * (kOut / 128) * (kIn / 128));
  for (float& x : w) x = reference::fp8::round_e4m3(u(rng));
  for (float& x : scale) x = s(rng);
  const std::vector<float> d = bench::dequantized_bf16(w.data(), scale.data(), kCount, kIn, kOut);
  ASSERT_EQ(d.size(), w.size());
  for (std::size_t m = 0; m < kCount; ++m) {
    for (std::size_t i = 0; i < kIn; ++i) {
      for (std::size_t o = 0; o < kOut; ++o) {
        const float sc = scale[m * (kOut / 128) * (kIn / 128) + (o / 128) * (kIn / 128) + i / 128];
        const std::size_t at = m * kIn * kOut + i * kOut + o;
        ASSERT_EQ(d[at], reference::round_bf16(w[at] * sc)) << m << " " << i << " " << o;
      }
    }
  }
}

}  // namespace
}  // namespace monomoe
