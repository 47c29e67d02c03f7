// The symmetric window of one rank (world > 1): this rank's memory that peers write into (the same
// size and layout on every rank, workspace.hpp), and the table of every rank's window as this
// rank's kernel addresses it (Params::peer_window, read by the load/store transport). The
// Communicator decides which kind:
//   NCCL     ncclMemAlloc + ncclCommWindowRegister(NCCL_WIN_COLL_SYMMETRIC), collective; the table
//            holds NCCL's LSA peer pointers (NVLink), read once by a one-warp kernel
//   virtual  cudaMalloc on the ranks' one GPU; rank r's n-th window pairs with every other virtual
//            rank's n-th window (the order stands in for NCCL's collective registration)
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "monomoe/communicator.hpp"

namespace monomoe::detail {

class SymmetricWindow {
 public:
  // Zero-filled. Collective for NCCL ranks: every rank opens its windows in the same order.
  static std::unique_ptr<SymmetricWindow> open(Communicator& comm, std::size_t bytes);
  virtual ~SymmetricWindow() = default;

  unsigned char* local() const { return local_; }
  // Every rank's window base into table[0, world). Throws ConfigError when a virtual peer has not
  // opened its matching window (or closed it). Called by every forward: no allocation.
  virtual void peer_table(unsigned char** table) const = 0;

 protected:
  unsigned char* local_ = nullptr;
};

struct VirtualGroup;
std::shared_ptr<VirtualGroup> make_virtual_group(int world);

// Collective (every rank calls it in the same order): throws ConfigError naming the first field
// whose value differs between ranks, with both values, on every rank that sees the difference.
// NCCL ranks all-gather the values; a virtual rank compares them with those of the ranks that
// have made their matching call already (so the last rank to call sees every difference).
struct Field {
  const char* name;
  std::int64_t value;
  bool of_config = true;  // a LayerConfig field; false: what the communicator's earlier layers made
};
void agree_across_ranks(Communicator& comm, const std::vector<Field>& fields);

// Every NCCL rank's values (n on each: mine.size()), in rank order ([world][n]), by an all-gather
// through the communicator's collectives on the default stream, finished when it returns. A
// collective: every rank calls it at the same point. NCCL ranks only (virtual ranks have no NCCL
// communicator); with one rank, mine.
std::vector<std::int64_t> nccl_all_gather(Communicator& comm, const std::vector<std::int64_t>& mine);

}  // namespace monomoe::detail
