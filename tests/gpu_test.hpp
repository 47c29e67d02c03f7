// Helpers for GPU tests (ctest label `gpu`): a test that needs a GPU starts with
// MONOMOE_REQUIRE_GPU(), which skips it, with the reason printed, on a machine without one.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <string>

namespace monomoe::test {

// True when the CUDA runtime sees at least one device; otherwise false, with the reason (the
// failing call's error, or "0 devices") in *why. Probed once per process: the answer cannot change
// while the process runs, and a failed runtime initialisation fails the same way every time.
inline bool gpu_available(std::string* why) {
  static const std::string reason = [] {
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
      std::string msg = std::string("cudaGetDeviceCount failed: ") + cudaGetErrorName(err) + " (" +
                        cudaGetErrorString(err) + ")";
      if (err == cudaErrorInsufficientDriver) msg += "; is an NVIDIA driver loaded?";
      return msg;
    }
    if (count == 0) return std::string("cudaGetDeviceCount found 0 devices");
    return std::string();
  }();
  if (why != nullptr) *why = reason;
  return reason.empty();
}

}  // namespace monomoe::test

// Skips the calling test (GTEST_SKIP returns from it) when no GPU is usable.
#define MONOMOE_REQUIRE_GPU()                                       \
  do {                                                              \
    std::string monomoe_no_gpu_reason_;                             \
    if (!::monomoe::test::gpu_available(&monomoe_no_gpu_reason_)) { \
      GTEST_SKIP() << "no GPU: " << monomoe_no_gpu_reason_;         \
    }                                                               \
  } while (false)

// Asserts that a CUDA runtime call succeeded, printing the call and the error's name.
#define MONOMOE_ASSERT_CUDA(call)                                       \
  do {                                                                  \
    const cudaError_t monomoe_cuda_err_ = (call);                       \
    ASSERT_EQ(monomoe_cuda_err_, cudaSuccess)                           \
        << #call << ": " << cudaGetErrorName(monomoe_cuda_err_) << " (" \
        << cudaGetErrorString(monomoe_cuda_err_) << ")";                \
  } while (false)
