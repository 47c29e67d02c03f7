// CUDA graphs of forward() calls, captured from streams: `bench --graph` times their replays, and
// the graph tests (tests/test_graph_gpu.cu) compare replays with forward() calls.
#pragma once

#include <cuda_runtime_api.h>

#include <functional>
#include <memory>
#include <vector>

namespace monomoe::bench {

// An instantiated CUDA graph, replayed with launch().
class Graph {
 public:
  explicit Graph(cudaGraph_t graph);  // takes ownership of `graph` and instantiates it
  ~Graph();
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
  void launch(cudaStream_t stream) const;

 private:
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
};

// Captures the work `enqueue` puts on each of `streams` (cudaStreamCaptureModeGlobal: nothing
// runs, and a call that is not allowed during capture fails) into one graph per stream, in the
// order of `streams`. Work that `enqueue` puts on one stream must not wait for another's. When
// `enqueue` throws, every capture is ended and the exception goes on.
std::vector<std::unique_ptr<Graph>> capture(const std::function<void()>& enqueue,
                                            const std::vector<cudaStream_t>& streams);
std::unique_ptr<Graph> capture(const std::function<void()>& enqueue, cudaStream_t stream);

}  // namespace monomoe::bench
