// What stands behind a Communicator: an NCCL communicator, or one of W virtual ranks of this
// process that share one GPU (and the registry of their windows, host/window.hpp).
#pragma once

#include <nccl.h>

#include <memory>

#include "monomoe/communicator.hpp"

namespace monomoe::detail {
struct VirtualGroup;    // host/window.cu
class SharedWorkspace;  // host/shared_workspace.hpp
}  // namespace monomoe::detail

namespace monomoe {

struct Communicator::Impl {
  int rank = 0;
  int world = 1;
  int device = 0;
  ncclComm_t comm = nullptr;                    // null for virtual ranks
  std::shared_ptr<detail::VirtualGroup> group;  // virtual ranks: shared by the W communicators
  int windows_opened = 0;  // symmetric windows opened so far (pairs the ranks' n-th windows)
  int agreements = 0;      // agree_across_ranks() calls so far (pairs the ranks' n-th calls)
  // The workspace and window that the layers built on this communicator share; held by the
  // layers, made by the first and freed with the last.
  std::weak_ptr<detail::SharedWorkspace> workspace;
  // A layer's kernel found a peer unresponsive (a timeout naming it): collective teardown would
  // wait for that peer forever, so windows skip their deregistration and the communicator is
  // aborted (ncclCommAbort) instead of destroyed.
  bool peer_failed = false;
};

}  // namespace monomoe
