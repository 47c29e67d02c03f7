// One process per GPU: a Communicator binds this process to its GPU and to the other ranks.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace monomoe {

// The 128-byte NCCL unique id, as plain bytes so that it can travel through files, pipes or a
// launcher's store. Rank 0 creates it; every rank passes the same bytes to Communicator.
struct UniqueId {
  std::array<char, 128> bytes{};
  static UniqueId create();  // calls ncclGetUniqueId
  std::string to_hex() const;
  static UniqueId from_hex(const std::string& hex);  // throws ConfigError on malformed text
};

class Communicator {
 public:
  // Selects `device`, checks that the NCCL loaded at run time is the one compiled against, and joins
  // the NCCL communicator of `world` ranks. Throws CudaError / ConfigError with the cause.
  Communicator(const UniqueId& id, int rank, int world, int device);
  ~Communicator();
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;

  // `world` virtual ranks of one process on GPU `device`: the multi-rank path of MoELayer on one
  // GPU, for tests and `monomoe check --virtual-ranks` (README, "Virtual ranks"). There is no NCCL
  // communicator behind them (nccl_comm() is null); each rank's symmetric window lives in that
  // GPU's memory and peers reach it by plain loads and stores. Layers built on these run one
  // kernel per rank, each on its own stream with its share of the SMs (see VirtualRanks). Not a
  // performance mode, and the bulk-synchronous baseline refuses them. world in [2, 64].
  static std::vector<std::unique_ptr<Communicator>> make_virtual(int world, int device);

  int rank() const;
  int world() const;
  int device() const;
  bool is_virtual() const;
  void* nccl_comm() const;  // the ncclComm_t (null for virtual ranks)

  struct Impl;  // the library's own (src/host/communicator_impl.hpp)
  Impl& impl() { return *impl_; }

 private:
  explicit Communicator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// NCCL versions as NCCL_VERSION_CODE integers (e.g. 22809 for 2.28.9).
int nccl_compiled_version();
int nccl_runtime_version();
// Throws CudaError naming both versions when they differ (the device API needs one NCCL).
void check_nccl_version();

}  // namespace monomoe
