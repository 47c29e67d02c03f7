// Errors that monomoe reports. Every failure reaches the caller as one of these exceptions, with a
// message that names the cause (the field and its limit, the CUDA/NCCL call and its file:line, or the
// kernel-side error code).
#pragma once

#include <stdexcept>
#include <string>

namespace monomoe {

// Base class of every monomoe exception.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// An invalid LayerConfig (or forward() argument): the message names the field, the value and the limit.
class ConfigError : public Error {
 public:
  using Error::Error;
};

// A CUDA runtime, cuBLAS or NCCL call failed; the message names the call and its file:line.
class CudaError : public Error {
 public:
  using Error::Error;
};

// The persistent kernel stopped itself (a bounded wait timed out, an index was out of range, a peer
// aborted). The message carries the decoded kernel error record.
class KernelError : public Error {
 public:
  using Error::Error;
};

}  // namespace monomoe
