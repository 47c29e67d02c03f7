// One checking macro per API: a failed CUDA / NCCL call becomes a CudaError naming the call, the
// error text and the file:line.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <string>

#include "monomoe/error.hpp"

namespace monomoe::detail {

[[noreturn]] inline void throw_call_failed(const char* api, const char* call, const char* what,
                                           const char* file, int line) {
  throw CudaError(std::string(api) + " call failed: " + call + ": " + what + " (" + file + ":" +
                  std::to_string(line) + ")");
}

}  // namespace monomoe::detail

#define MONOMOE_CUDA(call)                                                                   \
  do {                                                                                       \
    const cudaError_t monomoe_err_ = (call);                                                 \
    if (monomoe_err_ != cudaSuccess) {                                                       \
      ::monomoe::detail::throw_call_failed("CUDA", #call, cudaGetErrorString(monomoe_err_),  \
                                           __FILE__, __LINE__);                              \
    }                                                                                        \
  } while (0)

#define MONOMOE_NCCL(call)                                                                   \
  do {                                                                                       \
    const ncclResult_t monomoe_err_ = (call);                                                \
    if (monomoe_err_ != ncclSuccess) {                                                       \
      ::monomoe::detail::throw_call_failed("NCCL", #call, ncclGetErrorString(monomoe_err_),  \
                                           __FILE__, __LINE__);                              \
    }                                                                                        \
  } while (0)
