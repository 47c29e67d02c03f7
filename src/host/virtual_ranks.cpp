#include "monomoe/virtual_ranks.hpp"

#include <cuda_runtime_api.h>

#include <string>

#include "host/check.hpp"
#include "monomoe/communicator.hpp"
#include "monomoe/error.hpp"

namespace monomoe {

// The W ranks: their communicators and streams, shared by every VirtualRanks built on them.
struct VirtualRanks::Ranks {
  int device = 0;
  std::vector<std::unique_ptr<Communicator>> comms;
  std::vector<cudaStream_t> streams;

  ~Ranks() {
    for (cudaStream_t s : streams) cudaStreamDestroy(s);
  }
};

struct VirtualRanks::Impl {
  int world = 0;
  std::shared_ptr<Ranks> ranks;  // declared first: outlives the layers
  std::vector<std::unique_ptr<MoELayer>> layers;
  std::vector<bool> launched;
};

namespace {

void check_weights(const LayerConfig& config, const std::vector<ExpertWeights>& weights) {
  if (config.world_size < 2) {
    throw ConfigError("VirtualRanks: LayerConfig.world_size = " +
                      std::to_string(config.world_size) + " must be >= 2");
  }
  if (weights.size() != static_cast<std::size_t>(config.world_size)) {
    throw ConfigError("VirtualRanks: weights has " + std::to_string(weights.size()) +
                      " entries, LayerConfig.world_size is " + std::to_string(config.world_size));
  }
}

}  // namespace

void VirtualRanks::build_layers(const LayerConfig& config,
                                const std::vector<ExpertWeights>& weights) {
  Impl& m = *impl_;
  for (int r = 0; r < m.world; ++r) {
    LayerConfig c = config;
    c.rank = r;
    m.layers.push_back(std::make_unique<MoELayer>(c, *m.ranks->comms[static_cast<std::size_t>(r)],
                                                  weights[static_cast<std::size_t>(r)]));
  }
  m.launched.assign(static_cast<std::size_t>(m.world), false);
}

VirtualRanks::VirtualRanks(const LayerConfig& config, int device,
                           const std::vector<ExpertWeights>& weights)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  check_weights(config, weights);
  m.world = static_cast<int>(config.world_size);
  m.ranks = std::make_shared<Ranks>();
  m.ranks->device = device;
  m.ranks->comms = Communicator::make_virtual(m.world, device);
  for (int r = 0; r < m.world; ++r) {
    cudaStream_t s = nullptr;
    // Non-blocking: no implicit synchronization with the legacy stream may serialize the ranks.
    MONOMOE_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    m.ranks->streams.push_back(s);
  }
  build_layers(config, weights);
}

VirtualRanks::VirtualRanks(const LayerConfig& config, const VirtualRanks& same_ranks,
                           const std::vector<ExpertWeights>& weights)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  check_weights(config, weights);
  if (config.world_size != same_ranks.world()) {
    throw ConfigError(
        "VirtualRanks: LayerConfig.world_size = " + std::to_string(config.world_size) +
        " differs from the shared ranks' " + std::to_string(same_ranks.world()));
  }
  m.world = same_ranks.world();
  m.ranks = same_ranks.impl_->ranks;
  MONOMOE_CUDA(cudaSetDevice(m.ranks->device));
  build_layers(config, weights);
}

VirtualRanks::~VirtualRanks() {
  // Every rank's kernel must be gone before any window is freed.
  if (impl_) cudaDeviceSynchronize();
}

int VirtualRanks::world() const { return impl_->world; }

MoELayer& VirtualRanks::layer(int rank) {
  if (rank < 0 || rank >= impl_->world) {
    throw ConfigError("VirtualRanks::layer: rank = " + std::to_string(rank) + " must be in [0, " +
                      std::to_string(impl_->world - 1) + "]");
  }
  return *impl_->layers[static_cast<std::size_t>(rank)];
}

cudaStream_t VirtualRanks::stream(int rank) const {
  if (rank < 0 || rank >= impl_->world) {
    throw ConfigError("VirtualRanks::stream: rank = " + std::to_string(rank) + " must be in [0, " +
                      std::to_string(impl_->world - 1) + "]");
  }
  return impl_->ranks->streams[static_cast<std::size_t>(rank)];
}

void VirtualRanks::forward(const std::vector<const void*>& x,
                           const std::vector<std::int64_t>& tokens, const std::vector<void*>& y,
                           const std::vector<bool>& run, const std::vector<Routing>& routing) {
  Impl& m = *impl_;
  const std::size_t w = static_cast<std::size_t>(m.world);
  const auto need = [&](std::size_t n, const char* what) {
    if (n != w) {
      throw ConfigError(std::string("VirtualRanks::forward: ") + what + " has " +
                        std::to_string(n) + " entries, world is " + std::to_string(m.world));
    }
  };
  need(x.size(), "x");
  need(tokens.size(), "tokens");
  need(y.size(), "y");
  if (!run.empty()) need(run.size(), "run");
  if (!routing.empty()) need(routing.size(), "routing");
  // Set only when it differs: this may run while the streams are captured into CUDA graphs, where
  // the fewer runtime calls besides the captured work, the fewer to doubt.
  int current = -1;
  MONOMOE_CUDA(cudaGetDevice(&current));
  if (current != m.ranks->device) MONOMOE_CUDA(cudaSetDevice(m.ranks->device));
  for (std::size_t r = 0; r < w; ++r) {
    m.launched[r] = run.empty() || run[r];
    if (!m.launched[r]) continue;
    if (routing.empty()) {
      m.layers[r]->forward(x[r], tokens[r], y[r], m.ranks->streams[r]);
    } else {
      m.layers[r]->forward(x[r], tokens[r], y[r], m.ranks->streams[r], routing[r]);
    }
  }
}

void VirtualRanks::synchronize() {
  Impl& m = *impl_;
  std::string first;
  for (std::size_t r = 0; r < m.layers.size(); ++r) {
    if (!m.launched[r]) continue;
    try {
      m.layers[r]->synchronize();
    } catch (const KernelError& e) {
      if (first.empty()) first = "virtual rank " + std::to_string(r) + ": " + e.what();
    }
  }
  if (!first.empty()) throw KernelError(first);
}

}  // namespace monomoe
