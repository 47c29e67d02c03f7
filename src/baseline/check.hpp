// The cuBLAS checking macro of the baseline pipeline. CUDA calls use MONOMOE_CUDA from
// host/check.hpp; cuBLAS calls fail the same way: a CudaError naming the call, the status and the
// file:line. (Kept here while the baseline is the only cuBLAS user; it can move to host/check.hpp.)
#pragma once

#include <cublas_v2.h>

#include <string>

#include "host/check.hpp"

#define MONOMOE_CUBLAS(call)                                                                     \
  do {                                                                                           \
    const cublasStatus_t monomoe_status_ = (call);                                               \
    if (monomoe_status_ != CUBLAS_STATUS_SUCCESS) {                                              \
      ::monomoe::detail::throw_call_failed("cuBLAS", #call,                                      \
                                           (std::string(cublasGetStatusName(monomoe_status_)) +  \
                                            " (" + cublasGetStatusString(monomoe_status_) + ")") \
                                               .c_str(),                                         \
                                           __FILE__, __LINE__);                                  \
    }                                                                                            \
  } while (0)

// Checked right after each kernel launch: a bad launch configuration surfaces here, naming the
// kernel; faults inside a kernel surface at the next synchronizing call.
#define MONOMOE_CHECK_LAUNCH(kernel)                                                              \
  do {                                                                                            \
    const cudaError_t monomoe_err_ = cudaGetLastError();                                          \
    if (monomoe_err_ != cudaSuccess) {                                                            \
      ::monomoe::detail::throw_call_failed("CUDA", "launch of " #kernel,                          \
                                           cudaGetErrorString(monomoe_err_), __FILE__, __LINE__); \
    }                                                                                             \
  } while (0)
