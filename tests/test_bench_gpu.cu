// bench's GPU helpers on their own (label gpu), apart from the layer: the device copies of an fp8
// problem (bench::DeviceProblem) hold exactly the reference's values in the layouts of
// include/monomoe/layer.hpp (E4M3 matrices [out, in], fp32 block scales, bf16 gate, biases and x),
// and the baseline's copies hold the dequantized bf16 weights [in, out] that baseline_problem()
// describes; the dense GEMM ceiling measures in every precision, fp8's through cuBLASLt.
#include <cuda_fp8.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "bench/ceiling.hpp"
#include "bench/device_problem.hpp"
#include "gpu_problem.hpp"
#include "gpu_test.hpp"
#include "layer_gpu_test.hpp"
#include "monomoe/monomoe.hpp"
#include "reference/reference.hpp"

namespace monomoe {
namespace {

using Idx = std::size_t;

std::vector<unsigned char> download(const void* p, Idx bytes) {
  std::vector<unsigned char> h(bytes);
  if (bytes > 0) {
    test::check_cuda(cudaMemcpy(h.data(), p, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy");
  }
  return h;
}

// n elements at p as floats, stored as E4M3 bytes, bf16 or fp32.
enum class Stored { e4m3, bf16, f32 };
std::vector<float> download_as_float(const void* p, Idx n, Stored s) {
  const Idx width = s == Stored::e4m3 ? 1 : s == Stored::bf16 ? 2 : 4;
  const std::vector<unsigned char> bytes = download(p, n * width);
  std::vector<float> out(n);
  for (Idx i = 0; i < n; ++i) {
    if (s == Stored::e4m3) {
      __nv_fp8_e4m3 q;
      q.__x = bytes[i];
      out[i] = static_cast<float>(q);
    } else if (s == Stored::bf16) {
      std::uint16_t bits = 0;
      std::memcpy(&bits, bytes.data() + 2 * i, 2);
      out[i] = std::bit_cast<float>(static_cast<std::uint32_t>(bits) << 16);
    } else {
      std::memcpy(&out[i], bytes.data() + 4 * i, 4);
    }
  }
  return out;
}

// Each of `count` [rows, cols] matrices transposed to [cols, rows] (the reference's [in, out] as
// the layer's [out, in]).
std::vector<float> transposed(const float* v, Idx count, Idx rows, Idx cols) {
  std::vector<float> out(count * rows * cols);
  for (Idx m = 0; m < count; ++m) {
    for (Idx r = 0; r < rows; ++r) {
      for (Idx c = 0; c < cols; ++c) {
        out[m * rows * cols + c * rows + r] = v[m * rows * cols + r * cols + c];
      }
    }
  }
  return out;
}

// Number of positions where a and b differ (as values; both NaN counts as equal).
Idx differences(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size()) return std::max(a.size(), b.size());
  Idx d = 0;
  for (Idx i = 0; i < a.size(); ++i) {
    d += a[i] == b[i] || (std::isnan(a[i]) && std::isnan(b[i])) ? 0 : 1;
  }
  return d;
}

// Rank 1 of 2 (so that the expert slice starts past 0), swiglu (W1 of 2 x ffn columns), a shared
// expert, biases: every tensor the layer reads, compared value for value.
TEST(BenchGpu, Fp8DeviceProblemHoldsTheReferenceValues) {
  MONOMOE_REQUIRE_GPU();
  LayerConfig c = test::small_layer_config(DType::fp8, Activation::swiglu);
  c.weight_layout = WeightLayout::out_in;
  c.hidden = 384;
  c.world_size = 2;
  c.shared_ffn = 2 * c.ffn;
  const int rank = 1;
  const reference::Problem pr = reference::make_problem(c, {20, 10}, 8700);
  bench::DeviceProblem dev(pr, rank);
  const ExpertWeights w = dev.weights();
  const Idx el = static_cast<Idx>(c.experts_per_rank()), e0 = static_cast<Idx>(rank) * el;
  const Idx h = static_cast<Idx>(c.hidden), f = static_cast<Idx>(c.ffn);
  const Idx c1 = static_cast<Idx>(c.w1_columns()), sf = static_cast<Idx>(c.shared_ffn);
  const Idx sc1 = static_cast<Idx>(c.shared_w1_columns()), e = static_cast<Idx>(c.experts);
  const Idx blk = 128 * 128;
  const auto slice = [](const std::vector<float>& v, Idx from, Idx n) {
    return std::vector<float>(v.begin() + static_cast<std::ptrdiff_t>(from),
                              v.begin() + static_cast<std::ptrdiff_t>(from + n));
  };

  // The layer's copies.
  EXPECT_EQ(0u, differences(download_as_float(w.w1, el * c1 * h, Stored::e4m3),
                            transposed(pr.w1.data() + e0 * h * c1, el, h, c1)));
  EXPECT_EQ(0u, differences(download_as_float(w.w2, el * h * f, Stored::e4m3),
                            transposed(pr.w2.data() + e0 * f * h, el, f, h)));
  EXPECT_EQ(0u, differences(download_as_float(w.shared_w1, sc1 * h, Stored::e4m3),
                            transposed(pr.shared_w1.data(), 1, h, sc1)));
  EXPECT_EQ(0u, differences(download_as_float(w.shared_w2, h * sf, Stored::e4m3),
                            transposed(pr.shared_w2.data(), 1, sf, h)));
  EXPECT_EQ(0u, differences(download_as_float(w.w1_scale, el * c1 * h / blk, Stored::f32),
                            slice(pr.w1_scale, e0 * c1 * h / blk, el * c1 * h / blk)));
  EXPECT_EQ(0u, differences(download_as_float(w.w2_scale, el * h * f / blk, Stored::f32),
                            slice(pr.w2_scale, e0 * h * f / blk, el * h * f / blk)));
  EXPECT_EQ(0u, differences(download_as_float(w.shared_w1_scale, sc1 * h / blk, Stored::f32),
                            pr.shared_w1_scale));
  EXPECT_EQ(0u, differences(download_as_float(w.shared_w2_scale, h * sf / blk, Stored::f32),
                            pr.shared_w2_scale));
  EXPECT_EQ(0u, differences(download_as_float(w.gate, e * h, Stored::bf16),
                            transposed(pr.gate.data(), 1, h, e)));
  EXPECT_EQ(0u, differences(download_as_float(w.b1, el * c1, Stored::bf16),
                            slice(pr.b1, e0 * c1, el * c1)));
  EXPECT_EQ(0u, differences(download_as_float(w.b2, el * h, Stored::bf16),
                            slice(pr.b2, e0 * h, el * h)));
  EXPECT_EQ(0u, differences(download_as_float(w.shared_b1, sc1, Stored::bf16), pr.shared_b1));
  EXPECT_EQ(0u, differences(download_as_float(dev.x(), 10 * h, Stored::bf16), pr.x[1]));

  // The baseline's: [in, out] bf16, the values of baseline_problem(), no scales.
  const reference::Problem bpr = bench::baseline_problem(pr);
  const ExpertWeights b = dev.weights_in_out();
  EXPECT_EQ(b.w1_scale, nullptr);
  EXPECT_EQ(b.w2_scale, nullptr);
  EXPECT_EQ(b.shared_w1_scale, nullptr);
  EXPECT_EQ(b.shared_w2_scale, nullptr);
  EXPECT_EQ(0u, differences(download_as_float(b.w1, el * h * c1, Stored::bf16),
                            slice(bpr.w1, e0 * h * c1, el * h * c1)));
  EXPECT_EQ(0u, differences(download_as_float(b.w2, el * f * h, Stored::bf16),
                            slice(bpr.w2, e0 * f * h, el * f * h)));
  EXPECT_EQ(0u, differences(download_as_float(b.shared_w1, h * sc1, Stored::bf16), bpr.shared_w1));
  EXPECT_EQ(0u, differences(download_as_float(b.shared_w2, sf * h, Stored::bf16), bpr.shared_w2));
  EXPECT_EQ(0u, differences(download_as_float(b.gate, h * e, Stored::bf16), pr.gate));
  // Dequantized means e4m3 * scale (its block's), rounded to bf16: one element checked by hand.
  const Idx in = 200, out = 300, ex = e0 + 2;  // W1 of expert 2 of this rank, block (2, 1)
  const float q = pr.w1[ex * h * c1 + in * c1 + out];
  const float s = pr.w1_scale[ex * (c1 / 128) * (h / 128) + (out / 128) * (h / 128) + in / 128];
  EXPECT_EQ(bpr.w1[ex * h * c1 + in * c1 + out], reference::round_bf16(q * s));

  // y: bf16, poisoned to NaN, read back as float.
  dev.poison_y();
  for (float v : dev.y_host()) ASSERT_TRUE(std::isnan(v));
}

// A value that is not E4M3 in an fp8 problem's matrix is refused, naming the tensor.
TEST(BenchGpu, Fp8DeviceProblemRefusesNonE4m3Weights) {
  MONOMOE_REQUIRE_GPU();
  LayerConfig c = test::small_layer_config(DType::fp8, Activation::gelu);
  c.weight_layout = WeightLayout::out_in;
  reference::Problem pr = reference::make_problem(c, {4}, 8701);
  pr.w2[7] = 0.3f;  // between the E4M3 values 0.28125 and 0.3125
  try {
    bench::DeviceProblem dev(pr, 0);
    ADD_FAILURE() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("w2"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("not an E4M3 value"), std::string::npos) << e.what();
  }
}

// The ceiling in every precision: a positive rate at the documented shape, and fp8's through
// cuBLASLt (named in its math). A few calls each: this checks that the GEMMs run, not the rate.
TEST(BenchGpu, DenseCeilingEveryPrecision) {
  MONOMOE_REQUIRE_GPU();
  cudaStream_t stream = nullptr;
  MONOMOE_ASSERT_CUDA(cudaStreamCreate(&stream));
  for (DType d : {DType::bf16, DType::tf32, DType::fp32, DType::fp8}) {
    SCOPED_TRACE(std::string(to_string(d)));
    const bench::DenseCeiling shape = bench::dense_ceiling_shape(d);
    const bench::DenseCeiling c = bench::measure_dense_ceiling(d, 1, 3, stream);
    EXPECT_EQ(c.m, shape.m);
    EXPECT_EQ(c.k, shape.k);
    EXPECT_GT(c.tflops, 0.0);
    EXPECT_TRUE(std::isfinite(c.tflops));
    std::printf("%s ceiling: %.1f TFLOP/s (%lld^3, %s)\n", std::string(to_string(d)).c_str(),
                c.tflops, static_cast<long long>(c.m), c.math);
    if (d == DType::fp8) EXPECT_NE(std::string(c.math).find("fp8"), std::string::npos);
  }
  cudaStreamDestroy(stream);
}

}  // namespace
}  // namespace monomoe
