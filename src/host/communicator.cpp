#include "monomoe/communicator.hpp"

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstring>
#include <string>
#include <utility>

#include "host/check.hpp"
#include "host/communicator_impl.hpp"
#include "host/shared_workspace.hpp"
#include "host/window.hpp"
#include "monomoe/config.hpp"
#include "monomoe/error.hpp"

namespace monomoe {

static_assert(sizeof(ncclUniqueId) == sizeof(UniqueId::bytes), "UniqueId must hold ncclUniqueId");

UniqueId UniqueId::create() {
  ncclUniqueId id;
  MONOMOE_NCCL(ncclGetUniqueId(&id));
  UniqueId out;
  std::memcpy(out.bytes.data(), &id, sizeof(id));
  return out;
}

int nccl_compiled_version() { return NCCL_VERSION_CODE; }

int nccl_runtime_version() {
  int v = 0;
  MONOMOE_NCCL(ncclGetVersion(&v));
  return v;
}

void check_nccl_version() {
  const int built = nccl_compiled_version();
  const int loaded = nccl_runtime_version();
  if (built != loaded) {
    throw CudaError("NCCL version mismatch: monomoe was compiled against NCCL " +
                    std::to_string(built) + " but loaded NCCL " + std::to_string(loaded) +
                    " at run time; before NCCL 2.31 the device API needs one version (point "
                    "LD_LIBRARY_PATH / the rpath at the NCCL it was built with)");
  }
}

Communicator::Communicator(const UniqueId& id, int rank, int world, int device)
    : impl_(std::make_unique<Impl>()) {
  if (world < 1) throw ConfigError("Communicator: world = " + std::to_string(world) + " must be >= 1");
  if (rank < 0 || rank >= world) {
    throw ConfigError("Communicator: rank = " + std::to_string(rank) + " must be in [0, " +
                      std::to_string(world - 1) + "]");
  }
  int devices = 0;
  MONOMOE_CUDA(cudaGetDeviceCount(&devices));
  if (device < 0 || device >= devices) {
    throw ConfigError("Communicator: device = " + std::to_string(device) + " must be in [0, " +
                      std::to_string(devices - 1) + "] (visible GPUs)");
  }
  check_nccl_version();
  MONOMOE_CUDA(cudaSetDevice(device));
  ncclUniqueId nid;
  std::memcpy(&nid, id.bytes.data(), sizeof(nid));
  impl_->rank = rank;
  impl_->world = world;
  impl_->device = device;
  MONOMOE_NCCL(ncclCommInitRank(&impl_->comm, world, nid, rank));
}

Communicator::Communicator(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

std::vector<std::unique_ptr<Communicator>> Communicator::make_virtual(int world, int device) {
  if (world < 2 || world > Limits::kMaxWorld) {
    throw ConfigError("Communicator::make_virtual: world = " + std::to_string(world) +
                      " must be in [2, " + std::to_string(Limits::kMaxWorld) + "]");
  }
  int devices = 0;
  MONOMOE_CUDA(cudaGetDeviceCount(&devices));
  if (device < 0 || device >= devices) {
    throw ConfigError("Communicator::make_virtual: device = " + std::to_string(device) +
                      " must be in [0, " + std::to_string(devices - 1) + "] (visible GPUs)");
  }
  MONOMOE_CUDA(cudaSetDevice(device));
  const auto group = detail::make_virtual_group(world);
  std::vector<std::unique_ptr<Communicator>> out;
  for (int r = 0; r < world; ++r) {
    auto impl = std::make_unique<Impl>();
    impl->rank = r;
    impl->world = world;
    impl->device = device;
    impl->group = group;
    out.push_back(std::unique_ptr<Communicator>(new Communicator(std::move(impl))));
  }
  return out;
}

Communicator::~Communicator() {
  // A layer outliving its communicator breaks the contract, but its window must still go first.
  if (impl_) {
    if (const auto ws = impl_->workspace.lock()) ws->close_window();
  }
  if (impl_ && impl_->comm) {
    if (impl_->peer_failed) {
      ncclCommAbort(impl_->comm);  // returns without the peers (one of them is gone or stopped)
    } else {
      ncclCommDestroy(impl_->comm);
    }
  }
}

int Communicator::rank() const { return impl_->rank; }
int Communicator::world() const { return impl_->world; }
int Communicator::device() const { return impl_->device; }
bool Communicator::is_virtual() const { return impl_->group != nullptr; }
void* Communicator::nccl_comm() const { return impl_->comm; }

}  // namespace monomoe
