// The device's E4M3 rounding and group quantization (src/device/fp8.cuh) against the CPU
// reference's (src/reference/fp8.hpp), value for value (label gpu): the kernel's fp8 path will be
// compared with that reference, so both must define the same numbers.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "device/fp8.cuh"
#include "gpu_test.hpp"
#include "reference/fp8.hpp"

namespace monomoe {
namespace {

// out: in[i] rounded by to_e4m3; out2: by the two-value form (to_e4m3x2, as quantize_lane8 packs
// codes), in[i] the low code of its pair (i even) or the high one.
__global__ void round_kernel(const float* in, float* out, float* out2, int n) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) {
    out[i] = device::from_e4m3(device::to_e4m3(in[i]));
    const int lo = i & ~1;
    const unsigned short two = device::to_e4m3x2(in[lo], lo + 1 < n ? in[lo + 1] : 0.f);
    out2[i] = device::from_e4m3(static_cast<__nv_fp8_storage_t>(i == lo ? two & 0xffu : two >> 8));
  }
}

struct Rounded {
  std::vector<float> one, two;  // round_kernel's out and out2
};

Rounded on_gpu_round(const std::vector<float>& in) {
  const int n = static_cast<int>(in.size());
  float *din = nullptr, *dout = nullptr, *dout2 = nullptr;
  EXPECT_EQ(cudaMalloc(&din, in.size() * 4), cudaSuccess);
  EXPECT_EQ(cudaMalloc(&dout, in.size() * 4), cudaSuccess);
  EXPECT_EQ(cudaMalloc(&dout2, in.size() * 4), cudaSuccess);
  cudaMemcpy(din, in.data(), in.size() * 4, cudaMemcpyHostToDevice);
  round_kernel<<<(n + 255) / 256, 256>>>(din, dout, dout2, n);
  Rounded out{std::vector<float>(in.size()), std::vector<float>(in.size())};
  EXPECT_EQ(cudaMemcpy(out.one.data(), dout, in.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(out.two.data(), dout2, in.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  for (float* ptr : {din, dout, dout2}) cudaFree(ptr);
  return out;
}

bool same(float a, float b) {  // equal, both NaN, or the same zero
  return (std::isnan(a) && std::isnan(b)) || std::memcmp(&a, &b, sizeof(float)) == 0;
}

TEST(Fp8Gpu, CvtRoundsAsTheReference) {
  MONOMOE_REQUIRE_GPU();
  std::vector<float> in;
  // Every value near every E4M3 value and midpoint, both signs; magnitudes across the range and
  // beyond it; the special values.
  for (int e = -12; e <= 10; ++e) {
    for (int m = 0; m < 64; ++m) {
      const float v = std::ldexp(1.f + static_cast<float>(m) / 64.f, e);
      for (float x : {v, std::nextafter(v, 0.f), std::nextafter(v, 1e30f)}) {
        in.push_back(x);
        in.push_back(-x);
      }
    }
  }
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> exponent(-14.f, 10.f);
  for (int i = 0; i < 100000; ++i) in.push_back(std::exp2(exponent(rng)) * (i % 2 ? 1.f : -1.f));
  for (float v : {0.f, -0.f, 448.f, 464.f, 1e30f, std::numeric_limits<float>::infinity(),
                  -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN(),
                  std::numeric_limits<float>::denorm_min()}) {
    in.push_back(v);
  }
  const Rounded out = on_gpu_round(in);
  int wrong = 0;
  for (std::size_t i = 0; i < in.size(); ++i) {
    const float want = reference::fp8::round_e4m3(in[i]);
    if (!same(out.one[i], want) && ++wrong <= 10) {
      ADD_FAILURE() << "e4m3(" << in[i] << "): GPU " << out.one[i] << ", reference " << want;
    }
    if (!same(out.two[i], want) && ++wrong <= 10) {
      ADD_FAILURE() << "e4m3x2 (" << (i % 2 ? "high" : "low") << " code) of " << in[i] << ": GPU "
                    << out.two[i] << ", reference " << want;
    }
  }
  EXPECT_EQ(wrong, 0) << "of " << in.size();
}

// The kernel's quantization of x for the expert GEMMs (device::quantize_x_groups, called by the
// gate phase per K slice): block b takes rows b * 64 ... over K in three slices on 64-deep bounds,
// as the gate's slices fall, one boundary inside a group ([0, 192), [192, 448), [448, hidden)):
// each group must be quantized exactly once, by the slice where it starts.
__global__ void rows_kernel(device::Params p) {
  for (int first = static_cast<int>(blockIdx.x) * 64; first < p.tokens;
       first += static_cast<int>(gridDim.x) * 64) {
    const int rows = min(64, p.tokens - first);
    device::quantize_x_groups(p, first, rows, 0, 192);
    device::quantize_x_groups(p, first, rows, 192, 448);
    device::quantize_x_groups(p, first, rows, 448, p.hidden);
  }
}

// x rows (bf16) as the kernel quantizes them before GEMM0 and dispatch: every (row, group) equal to
// the reference's rule, in the packed rows the expert GEMMs read (values, then the row's scales),
// with fewer blocks than row blocks (the grid-stride loop); a group of zeros and one holding a NaN
// among them. The buffer is poisoned first (0xFE: -448 as E4M3, -1.7e38 as fp32; not NaN, which
// the NaN group must hold), so that a group no slice took shows.
TEST(Fp8Gpu, RowsQuantizeAsTheReference) {
  MONOMOE_REQUIRE_GPU();
  constexpr int kRowsX = 300, kHidden = 1024;
  const int pitch = static_cast<int>(device::operand_pitch(kHidden, true));
  std::mt19937 rng(8);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<__nv_bfloat16> x(kRowsX * kHidden);
  std::vector<float> xf(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {  // tiny to large rows; E4M3 subnormals within
    const float spread = std::exp2(static_cast<float>(i / kHidden % 24) - 12.f);
    x[i] = __float2bfloat16(normal(rng) * spread);
  }
  // A group of zeros (scale 1, every q 0) and a group holding a NaN (scale and every q NaN).
  for (int c = 0; c < 128; ++c) x[5 * kHidden + 128 + c] = __float2bfloat16(0.f);
  x[7 * kHidden + 2 * 128 + 77] = __float2bfloat16(std::nanf(""));
  // Groups holding an infinity (amax inf: scale inf, the finite values' codes 0, the infinity's
  // NaN) and a negative NaN: the amax by bit patterns must order them as the reference does.
  x[9 * kHidden + 3 * 128 + 5] = __float2bfloat16(std::numeric_limits<float>::infinity());
  x[11 * kHidden + 4 * 128 + 100] = __float2bfloat16(-std::numeric_limits<float>::infinity());
  x[13 * kHidden + 1 * 128 + 64] = __float2bfloat16(-std::nanf(""));
  for (std::size_t i = 0; i < x.size(); ++i) xf[i] = __bfloat162float(x[i]);
  const std::size_t bytes = static_cast<std::size_t>(kRowsX) * pitch;
  void *dx = nullptr, *dq = nullptr;
  ASSERT_EQ(cudaMalloc(&dx, x.size() * 2), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&dq, bytes), cudaSuccess);
  cudaMemcpy(dx, x.data(), x.size() * 2, cudaMemcpyHostToDevice);
  cudaMemset(dq, 0xFE, bytes);
  device::Params p{};
  p.tokens = kRowsX;
  p.hidden = kHidden;
  p.x = dx;
  p.x_quant = dq;
  p.x_pitch = pitch;
  rows_kernel<<<3, 128>>>(p);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  std::vector<unsigned char> q(bytes);
  ASSERT_EQ(cudaMemcpy(q.data(), dq, bytes, cudaMemcpyDeviceToHost), cudaSuccess);
  for (void* ptr : {dx, dq}) cudaFree(ptr);
  int wrong = 0;
  std::vector<float> want(128);
  for (int r = 0; r < kRowsX; ++r) {
    const unsigned char* row = q.data() + static_cast<std::size_t>(r) * pitch;
    for (int g = 0; g < kHidden / 128; ++g) {
      const float scale =
          reference::fp8::quantize_group(xf.data() + r * kHidden + g * 128, 128, want.data());
      float got_scale;
      std::memcpy(&got_scale, row + kHidden + 4 * g, 4);
      bool ok = same(scale, got_scale);
      for (int i = 0; i < 128; ++i) {
        __nv_fp8_e4m3 v;
        v.__x = row[g * 128 + i];
        ok = ok && same(float(v), want[i]);
      }
      if (!ok && ++wrong <= 3) ADD_FAILURE() << "row " << r << " group " << g;
    }
  }
  EXPECT_EQ(wrong, 0);
}

}  // namespace
}  // namespace monomoe
