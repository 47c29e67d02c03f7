#include "host/shared_workspace.hpp"

#include <algorithm>
#include <string>

#include "host/check.hpp"
#include "host/checked.hpp"
#include "host/communicator_impl.hpp"
#include "monomoe/error.hpp"

namespace monomoe::detail {

std::shared_ptr<SharedWorkspace> SharedWorkspace::of(Communicator& comm) {
  std::weak_ptr<SharedWorkspace>& held = comm.impl().workspace;
  std::shared_ptr<SharedWorkspace> ws = held.lock();
  if (!ws) {
    ws = std::make_shared<SharedWorkspace>(comm);
    held = ws;
  }
  return ws;
}

SharedWorkspace::SharedWorkspace(Communicator& comm) : comm_(&comm), world_(comm.world()) {
  layout_ = plan_shared(0, world_, 0);
}

SharedWorkspace::~SharedWorkspace() {
  window_.reset();  // NCCL: collective, like its opening (every rank drops its last layer alike)
  if (ws_) cudaFree(ws_);
}

SymmetricWindow& SharedWorkspace::window() const {
  if (!window_) {
    throw ConfigError(
        "the layer's communicator was destroyed, or it has no peers: no window to "
        "write to (a layer must be destroyed before its Communicator)");
  }
  return *window_;
}

void SharedWorkspace::close_window() {
  window_.reset();
  comm_ = nullptr;
}

void SharedWorkspace::reserve(const WorkspacePlan& plan) {
  if (comm_ == nullptr) throw ConfigError("the layers' Communicator was destroyed");
  const std::int64_t slots = std::max(layout_.task_slots, plan.max_tasks);
  const std::int64_t arrived = std::max(layout_.arrived_per_source, plan.window.tiles_per_source);
  const SharedLayout want = plan_shared(slots, world_, arrived);
  const std::size_t body_bytes = std::max(body_bytes_, plan.body_bytes);
  const std::size_t ws_bytes = checked_add(want.body, body_bytes, "max_tokens");
  const bool move_ws = ws_ == nullptr || want.body != layout_.body || body_bytes != body_bytes_;
  const std::size_t window_body_bytes = std::max(window_body_bytes_, plan.window.body_bytes);
  const bool move_window =
      world_ > 1 && (window_ == nullptr || want.window_body != layout_.window_body ||
                     window_body_bytes != window_body_bytes_);
  if ((move_ws || move_window) && captured_layers_ > 0) {
    throw ConfigError(
        "this layer needs more memory than the communicator's shared workspace holds, and moving "
        "it would break the CUDA graph(s) captured from " +
        std::to_string(captured_layers_) +
        " living layer(s) on the same communicator: build every layer (or the largest first) "
        "before capturing");
  }
  // Nothing of an earlier call may still run on memory about to be freed or refilled.
  MONOMOE_CUDA(cudaDeviceSynchronize());
  ++calls_;  // the layers' last results are overwritten below
  if (move_ws) {
    unsigned char* fresh = nullptr;
    MONOMOE_CUDA(cudaMalloc(&fresh, ws_bytes));
    try {
      // Poisoned first: a read of anything the kernel did not write in its call (a slot past the
      // queue, a stale tile) sees all ones, not a lucky zero. The prefix starts at zero: no
      // error, empty task slots (SharedLayout says why nothing else may be there).
      MONOMOE_CUDA(cudaMemset(fresh, 0xff, ws_bytes));
      MONOMOE_CUDA(cudaMemset(fresh, 0, want.body));
      if (ws_) {
        // The epoch goes on: the window's flags hold epochs up to it, and a flag equal to a
        // later call's epoch would read as set. An error no one has read yet stays.
        MONOMOE_CUDA(
            cudaMemcpy(fresh + want.epoch, ws_ + layout_.epoch, 8, cudaMemcpyDeviceToDevice));
        MONOMOE_CUDA(
            cudaMemcpy(fresh + want.error, ws_ + layout_.error, 16, cudaMemcpyDeviceToDevice));
      }
    } catch (...) {
      cudaFree(fresh);
      throw;
    }
    if (ws_) cudaFree(ws_);
    ws_ = fresh;
    body_bytes_ = body_bytes;
    layout_ = plan_shared(slots, world_, layout_.arrived_per_source);
  } else {
    MONOMOE_CUDA(cudaMemset(ws_ + layout_.body, 0xff, body_bytes_));
  }
  if (move_window) {
    // Opened (zero-filled) before the old one closes: if it fails, the old window stays. Both are
    // collective for NCCL ranks, in the same order on every rank.
    std::unique_ptr<SymmetricWindow> fresh = SymmetricWindow::open(
        *comm_, checked_add(want.window_body, window_body_bytes, "max_tokens"));
    window_ = std::move(fresh);
    window_body_bytes_ = window_body_bytes;
    layout_ = plan_shared(layout_.task_slots, world_, arrived);
  }
  MONOMOE_CUDA(cudaDeviceSynchronize());
}

std::uint64_t SharedWorkspace::begin_call(cudaStream_t stream, bool& captured) {
  if (!captured) {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(stream, &status) != cudaSuccess) {
      (void)cudaGetLastError();  // the call's own enqueues report what is wrong with the stream
    } else if (status != cudaStreamCaptureStatusNone) {
      captured = true;
      ++captured_layers_;
    }
  }
  return ++calls_;
}

}  // namespace monomoe::detail
