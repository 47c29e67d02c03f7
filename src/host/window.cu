#include "host/window.hpp"

#include <cuda_runtime_api.h>
#include <nccl.h>
#include <nccl_device.h>

#include <algorithm>
#include <mutex>
#include <string>

#include "device/transport.cuh"
#include "host/check.hpp"
#include "host/communicator_impl.hpp"
#include "monomoe/error.hpp"

namespace monomoe::detail {

// The windows of W virtual ranks, by opening order: windows[n][r] is rank r's n-th window (null
// until opened, and after it is closed). Their sizes agree: the layers compared their configs
// (agree_across_ranks) before opening them.
struct VirtualGroup {
  int world = 0;
  std::mutex mu;  // the ranks may be driven from several host threads
  std::vector<std::vector<unsigned char*>> windows;
  // agreements[n][r]: the values rank r gave to its n-th agree_across_ranks() (empty: not yet).
  std::vector<std::vector<std::vector<std::int64_t>>> agreements;
};

std::shared_ptr<VirtualGroup> make_virtual_group(int world) {
  auto g = std::make_shared<VirtualGroup>();
  g->world = world;
  return g;
}

namespace {

__global__ void read_lsa_bases(ncclWindow_t win, int world, unsigned char** out) {
  for (int r = static_cast<int>(threadIdx.x); r < world; r += static_cast<int>(blockDim.x)) {
    out[r] = device::lsa_window_base(win, r);
  }
}

class NcclWindow final : public SymmetricWindow {
 public:
  NcclWindow(Communicator::Impl& owner, int world, std::size_t bytes)
      : owner_(owner), comm_(owner.comm) {
    void* buf = nullptr;
    MONOMOE_NCCL(ncclMemAlloc(&buf, bytes));
    local_ = static_cast<unsigned char*>(buf);
    try {
      MONOMOE_CUDA(cudaMemset(local_, 0, bytes));
      MONOMOE_NCCL(ncclCommWindowRegister(comm_, local_, bytes, &win_, NCCL_WIN_COLL_SYMMETRIC));
    } catch (...) {
      ncclMemFree(local_);  // no destructor runs for a constructor that throws
      throw;
    }
    // The peers' bases do not move while the window is registered: read them once.
    unsigned char** table = nullptr;
    MONOMOE_CUDA(cudaMalloc(&table, sizeof(unsigned char*) * static_cast<std::size_t>(world)));
    read_lsa_bases<<<1, 32>>>(win_, world, table);
    const cudaError_t launched = cudaGetLastError();
    table_.resize(static_cast<std::size_t>(world));
    const cudaError_t copied = cudaMemcpy(table_.data(), table, sizeof(unsigned char*) * table_.size(),
                                          cudaMemcpyDeviceToHost);
    cudaFree(table);
    MONOMOE_CUDA(launched);
    MONOMOE_CUDA(copied);
  }
  ~NcclWindow() override {
    // Collective, like the registration: skipped when a peer stopped answering (the
    // communicator's abort releases the registration without the peers).
    if (win_ && !owner_.peer_failed) ncclCommWindowDeregister(comm_, win_);
    if (local_) ncclMemFree(local_);
  }
  void peer_table(unsigned char** table) const override {
    std::copy(table_.begin(), table_.end(), table);
  }

 private:
  Communicator::Impl& owner_;  // outlives the window: a layer is destroyed before its communicator
  ncclComm_t comm_;
  ncclWindow_t win_ = nullptr;
  std::vector<unsigned char*> table_;
};

class VirtualWindow final : public SymmetricWindow {
 public:
  VirtualWindow(std::shared_ptr<VirtualGroup> group, int rank, int index, std::size_t bytes)
      : group_(std::move(group)), rank_(rank), index_(index) {
    MONOMOE_CUDA(cudaMalloc(&local_, bytes));
    const cudaError_t zeroed = cudaMemset(local_, 0, bytes);
    if (zeroed != cudaSuccess) {
      cudaFree(local_);  // no destructor runs for a constructor that throws
      MONOMOE_CUDA(zeroed);
    }
    const std::lock_guard<std::mutex> lock(group_->mu);
    auto& w = group_->windows;
    while (static_cast<int>(w.size()) <= index_) {
      w.emplace_back(static_cast<std::size_t>(group_->world));
    }
    w[static_cast<std::size_t>(index_)][static_cast<std::size_t>(rank_)] = local_;
  }
  ~VirtualWindow() override {
    {
      const std::lock_guard<std::mutex> lock(group_->mu);
      group_->windows[static_cast<std::size_t>(index_)][static_cast<std::size_t>(rank_)] = nullptr;
    }
    cudaFree(local_);
  }
  void peer_table(unsigned char** table) const override {
    const std::lock_guard<std::mutex> lock(group_->mu);
    const auto& row = group_->windows[static_cast<std::size_t>(index_)];
    for (int r = 0; r < group_->world; ++r) {
      table[r] = row[static_cast<std::size_t>(r)];
      if (table[r] == nullptr) {
        throw ConfigError("virtual rank " + std::to_string(r) + " has no layer matching rank " +
                          std::to_string(rank_) + "'s (window " + std::to_string(index_) +
                          "): every virtual rank builds its MoELayer, in the same order, before "
                          "any rank calls forward()");
      }
    }
  }

 private:
  std::shared_ptr<VirtualGroup> group_;
  int rank_, index_;
};

}  // namespace

namespace {

[[noreturn]] void disagree(const Field& f, int rank, std::int64_t mine, int other,
                           std::int64_t theirs) {
  throw ConfigError(
      (f.of_config ? "LayerConfig." : "") + std::string(f.name) + " differs between ranks: rank " +
      std::to_string(rank) + " has " + std::to_string(mine) + ", rank " + std::to_string(other) +
      " has " + std::to_string(theirs) +
      (f.of_config ? " (every rank builds its layer from the same config, but for its rank)"
                   : " (every rank builds and destroys the same layers in the same order)"));
}

}  // namespace

void agree_across_ranks(Communicator& comm, const std::vector<Field>& fields) {
  Communicator::Impl& c = comm.impl();
  const std::size_t n = fields.size();
  std::vector<std::int64_t> mine(n);
  for (std::size_t i = 0; i < n; ++i) mine[i] = fields[i].value;
  if (c.group) {
    VirtualGroup& g = *c.group;
    const std::lock_guard<std::mutex> lock(g.mu);
    const std::size_t index = static_cast<std::size_t>(c.agreements++);
    while (g.agreements.size() <= index) g.agreements.emplace_back(static_cast<std::size_t>(g.world));
    auto& row = g.agreements[index];
    row[static_cast<std::size_t>(c.rank)] = mine;
    for (int r = 0; r < g.world; ++r) {
      const auto& theirs = row[static_cast<std::size_t>(r)];
      if (theirs.empty() || r == c.rank) continue;
      for (std::size_t i = 0; i < n; ++i) {
        if (theirs[i] != mine[i]) disagree(fields[i], c.rank, mine[i], r, theirs[i]);
      }
    }
    return;
  }
  if (c.world == 1) return;
  const std::vector<std::int64_t> all = nccl_all_gather(comm, mine);
  for (int r = 0; r < c.world; ++r) {
    for (std::size_t i = 0; i < n; ++i) {
      const std::int64_t theirs = all[static_cast<std::size_t>(r) * n + i];
      if (theirs != mine[i]) disagree(fields[i], c.rank, mine[i], r, theirs);
    }
  }
}

std::vector<std::int64_t> nccl_all_gather(Communicator& comm,
                                          const std::vector<std::int64_t>& mine) {
  Communicator::Impl& c = comm.impl();
  if (c.world == 1) return mine;
  // The communicator's collectives run on the device: through a device buffer.
  const std::size_t n = mine.size();
  const std::size_t bytes = n * sizeof(std::int64_t);
  std::int64_t* buf = nullptr;
  MONOMOE_CUDA(cudaMalloc(&buf, bytes * static_cast<std::size_t>(c.world)));
  std::vector<std::int64_t> all(n * static_cast<std::size_t>(c.world));
  try {
    MONOMOE_CUDA(cudaMemcpy(buf + n * static_cast<std::size_t>(c.rank), mine.data(), bytes,
                            cudaMemcpyHostToDevice));
    MONOMOE_NCCL(ncclAllGather(buf + n * static_cast<std::size_t>(c.rank), buf, n, ncclInt64,
                               c.comm, nullptr));
    MONOMOE_CUDA(cudaMemcpy(all.data(), buf, all.size() * sizeof(std::int64_t),
                            cudaMemcpyDeviceToHost));
  } catch (...) {
    cudaFree(buf);
    throw;
  }
  cudaFree(buf);
  return all;
}

std::unique_ptr<SymmetricWindow> SymmetricWindow::open(Communicator& comm, std::size_t bytes) {
  Communicator::Impl& c = comm.impl();
  if (c.group) {
    return std::make_unique<VirtualWindow>(c.group, c.rank, c.windows_opened++, bytes);
  }
  return std::make_unique<NcclWindow>(c, c.world, bytes);
}

}  // namespace monomoe::detail
