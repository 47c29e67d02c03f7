// What a baseline::Pipeline owns besides its configuration: device buffers and the CUDA/cuBLAS
// handles. Each releases itself, so a constructor that throws half-way leaks nothing.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <utility>

#include "host/check.hpp"

namespace monomoe::baseline {

// One cudaMalloc'd allocation, freed on destruction (errors there are ignored: a destructor must
// not throw, and the context may already be torn down).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(std::size_t bytes) {
    if (bytes > 0) MONOMOE_CUDA(cudaMalloc(&ptr_, bytes));
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (ptr_) cudaFree(ptr_);
  }
  template <class T = void>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
};

// One cudaMallocHost'd (pinned) allocation: host arrays that cudaMemcpyAsync reads or writes.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  explicit PinnedBuffer(std::size_t bytes) {
    if (bytes > 0) MONOMOE_CUDA(cudaMallocHost(&ptr_, bytes));
  }
  PinnedBuffer(PinnedBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)) {}
  PinnedBuffer& operator=(PinnedBuffer&& o) noexcept {
    std::swap(ptr_, o.ptr_);
    return *this;
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  ~PinnedBuffer() {
    if (ptr_) cudaFreeHost(ptr_);
  }
  template <class T = void>
  T* as() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
};

// The non-memory resources. A member, so that they are released even when the owner's constructor
// throws half-way (a member's destructor runs then; the owner's does not).
struct Handles {
  cublasHandle_t blas = nullptr;
  cudaEvent_t done = nullptr;  // end of the last forward(): its buffers are free for the next
  int* host_kept = nullptr;    // pinned [experts + 1]: rows kept per expert, then the drop total
  Handles() = default;
  Handles(const Handles&) = delete;
  Handles& operator=(const Handles&) = delete;
  ~Handles() {
    if (blas) cublasDestroy(blas);
    if (done) cudaEventDestroy(done);
    if (host_kept) cudaFreeHost(host_kept);
  }
};

}  // namespace monomoe::baseline
