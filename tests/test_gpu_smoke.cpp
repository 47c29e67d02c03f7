// The smallest GPU test: device memory round trip through the CUDA runtime (label gpu). On a
// machine without a GPU it is skipped with the reason, which exercises MONOMOE_REQUIRE_GPU's skip
// path.
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "gpu_test.hpp"

namespace {

TEST(GpuSmoke, MemsetThenCopyBack) {
  MONOMOE_REQUIRE_GPU();
  constexpr std::size_t kBytes = std::size_t{1} << 20;
  void* dev = nullptr;
  MONOMOE_ASSERT_CUDA(cudaMalloc(&dev, kBytes));
  auto* bytes = static_cast<std::uint8_t*>(dev);
  // Two different fill values, so a copy that ignored the offset or the length would show.
  MONOMOE_ASSERT_CUDA(cudaMemset(bytes, 0xA5, kBytes / 2));
  MONOMOE_ASSERT_CUDA(cudaMemset(bytes + kBytes / 2, 0x3C, kBytes / 2));
  std::vector<std::uint8_t> host(kBytes, 0);
  MONOMOE_ASSERT_CUDA(cudaMemcpy(host.data(), dev, kBytes, cudaMemcpyDeviceToHost));
  MONOMOE_ASSERT_CUDA(cudaFree(dev));
  std::size_t wrong = 0;
  for (std::size_t i = 0; i < kBytes; ++i) {
    wrong += host[i] != (i < kBytes / 2 ? 0xA5 : 0x3C);
  }
  EXPECT_EQ(wrong, 0u) << "bytes that did not survive the round trip";
}

TEST(GpuSmoke, ReasonIsEmptyExactlyWhenAvailable) {
  std::string why = "unchanged";
  const bool available = monomoe::test::gpu_available(&why);
  EXPECT_EQ(available, why.empty()) << why;
  EXPECT_EQ(available, monomoe::test::gpu_available(nullptr));
}

}  // namespace
