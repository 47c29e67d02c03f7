// The device memory that every MoELayer built on one Communicator shares: one workspace
// (cudaMalloc) and, with world > 1, one symmetric window, each sized for the largest layer built
// on it so far. The layers of a model run one after another, so they need one set of scratch
// buffers, not one each: a further layer costs its weights and a few words of host memory. Why
// layers of different configs can share them: workspace.hpp, SharedLayout.
//
// Lifetime: held by the layers (shared_ptr), and weakly by the communicator, so it is made by the
// first layer and freed with the last (a program that drops its model gets the memory back). Its
// window is closed before the NCCL communicator goes: layers are destroyed before their
// communicator, and ~Communicator closes a window that a layer outliving it still holds.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>

#include "host/window.hpp"
#include "host/workspace.hpp"
#include "monomoe/communicator.hpp"

namespace monomoe::detail {

class SharedWorkspace {
 public:
  // The workspace of `comm`'s layers, made (empty) on first use.
  static std::shared_ptr<SharedWorkspace> of(Communicator& comm);
  explicit SharedWorkspace(Communicator& comm);
  ~SharedWorkspace();
  SharedWorkspace(const SharedWorkspace&) = delete;
  SharedWorkspace& operator=(const SharedWorkspace&) = delete;

  // Makes room for a layer of `plan`; called by every layer's constructor, after the ranks agreed
  // on its config. Synchronizes the device (no earlier call may still run on memory that is about
  // to be freed or refilled). When the prefixes or the layers' area must grow, allocates the new
  // memory (all-ones in the layers' area, zero in the prefix, the epoch and an unread kernel error
  // carried over) and frees the old; a window that must grow is reopened, which is collective:
  // every rank builds the same layers in the same order (their configs are compared first), so
  // every rank grows at the same layer. Otherwise the layers' area is refilled with all ones, so
  // that the new layer's first call reads all ones wherever it reads what it did not write (and the
  // other layers' last results there are gone: it counts as a call, see calls()). Throws
  // ConfigError before touching anything when the memory would move while a layer whose forward()
  // was captured into a CUDA graph lives.
  void reserve(const WorkspacePlan& plan);

  // Current addresses, read by every forward(): they change only in reserve().
  const SharedLayout& layout() const { return layout_; }
  unsigned char* base() const { return ws_; }
  unsigned char* body() const { return ws_ + layout_.body; }
  SymmetricWindow& window() const;  // world > 1; throws ConfigError once closed
  unsigned char* window_body() const { return window().local() + layout_.window_body; }
  // The window's size: the prefix and the layers' area (0 before the first layer with peers).
  std::size_t window_bytes() const {
    return window_ ? layout_.window_body + window_body_bytes_ : 0;
  }

  // Called by forward() before it enqueues anything: returns the call's number among the calls of
  // every layer of the communicator and the reserve()s (a layer's stats() can tell whether
  // another layer ran, or was built, since its own last call).
  // The first call captured into a CUDA graph sets `captured` (the layer's flag) and pins the
  // memory until that layer is destroyed, which calls release_capture().
  std::uint64_t begin_call(cudaStream_t stream, bool& captured);
  std::uint64_t calls() const { return calls_; }
  void release_capture() { --captured_layers_; }

  // The communicator is being destroyed while a layer still holds this (a layer must not outlive
  // it): closes the window while the NCCL communicator can still deregister it.
  void close_window();

 private:
  Communicator* comm_;
  std::int64_t world_;
  SharedLayout layout_;
  std::size_t body_bytes_ = 0;         // the layers' area of the workspace
  std::size_t window_body_bytes_ = 0;  // the layers' area of the window
  unsigned char* ws_ = nullptr;
  std::unique_ptr<SymmetricWindow> window_;
  std::uint64_t calls_ = 0;
  int captured_layers_ = 0;  // living layers with a captured forward(): the memory may not move
};

}  // namespace monomoe::detail
