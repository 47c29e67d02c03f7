// W ranks of one expert-parallel layer in this process, on one GPU: the multi-rank path of the
// fused kernel (dispatch into peers' windows, the subscriber, results written back to the source
// rank, start flags, bounded waits) tested where one GPU is all there is. README, "Virtual ranks".
//
// Not a performance mode: the ranks share the GPU's SMs (each kernel gets 1/W of them) and no
// byte crosses NVLink, so ordering and visibility across GPUs are proven only by real multi-GPU
// runs. CUDA does not promise that the W kernels run at the same time; when one does not start,
// the others stop at their bounded waits and report it (KernelError naming the rank), never hang.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "monomoe/config.hpp"
#include "monomoe/layer.hpp"

namespace monomoe {

class VirtualRanks {
 public:
  // config.world_size = W in [2, 64] (config.rank is ignored); weights[r] are rank r's weights,
  // as MoELayer takes them. Builds W virtual communicators and W layers on GPU `device`.
  VirtualRanks(const LayerConfig& config, int device, const std::vector<ExpertWeights>& weights);
  // Another layer on the ranks of `same_ranks` (their communicators and streams, kept alive by
  // both): as the layers of a model built on one Communicator per rank, the two share each rank's
  // workspace and window (README, "Many layers") and must not run at the same time; each rank's
  // calls run in order on its one stream. config.world_size must be same_ranks.world(). Building
  // is collective over the ranks, as it is for MoELayer.
  VirtualRanks(const LayerConfig& config, const VirtualRanks& same_ranks,
               const std::vector<ExpertWeights>& weights);
  ~VirtualRanks();
  VirtualRanks(const VirtualRanks&) = delete;
  VirtualRanks& operator=(const VirtualRanks&) = delete;

  int world() const;
  // One forward on every rank r (x[r], tokens[r], y[r] as MoELayer::forward takes them), each on
  // its own stream; returns once all are launched. `run`, when given, leaves out the ranks whose
  // entry is false (a rank that never starts: its peers must report it). `routing`, when given,
  // is each rank's own tokens' routing (MoELayer::forward with a Routing).
  void forward(const std::vector<const void*>& x, const std::vector<std::int64_t>& tokens,
               const std::vector<void*>& y, const std::vector<bool>& run = {},
               const std::vector<Routing>& routing = {});
  // Waits for every rank launched by the last forward(); throws the first rank's KernelError (by
  // rank), its message prefixed with "virtual rank r: ".
  void synchronize();
  MoELayer& layer(int rank);
  // The stream rank `rank`'s forward runs on (non-blocking, owned here). To capture the ranks into
  // CUDA graphs, begin a capture on every rank's stream, call forward(), end every capture: one
  // graph per rank, replayed on that rank's stream, so that the W kernels run side by side as
  // forward() runs them (tests/test_graph_gpu.cu).
  cudaStream_t stream(int rank) const;

 private:
  struct Ranks;
  struct Impl;
  void build_layers(const LayerConfig& config, const std::vector<ExpertWeights>& weights);
  std::unique_ptr<Impl> impl_;
};

}  // namespace monomoe
