#include "bench/graph.hpp"

#include <exception>

#include "host/check.hpp"

namespace monomoe::bench {

Graph::Graph(cudaGraph_t graph) : graph_(graph) {
  const cudaError_t err = cudaGraphInstantiate(&exec_, graph_, 0);
  if (err != cudaSuccess) {
    cudaGraphDestroy(graph_);  // no destructor runs for a constructor that throws
    MONOMOE_CUDA(err);
  }
}

Graph::~Graph() {
  if (exec_) cudaGraphExecDestroy(exec_);
  if (graph_) cudaGraphDestroy(graph_);
}

void Graph::launch(cudaStream_t stream) const { MONOMOE_CUDA(cudaGraphLaunch(exec_, stream)); }

std::vector<std::unique_ptr<Graph>> capture(const std::function<void()>& enqueue,
                                            const std::vector<cudaStream_t>& streams) {
  std::size_t begun = 0;
  std::exception_ptr failed;
  try {
    for (cudaStream_t s : streams) {
      MONOMOE_CUDA(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
      ++begun;
    }
    enqueue();
  } catch (...) {
    failed = std::current_exception();
  }
  // Every capture begun is ended, after a failure too: the streams go back to running work.
  std::vector<cudaGraph_t> graphs(begun, nullptr);
  cudaError_t ended = cudaSuccess;
  for (std::size_t i = 0; i < begun; ++i) {
    const cudaError_t err = cudaStreamEndCapture(streams[i], &graphs[i]);
    if (ended == cudaSuccess) ended = err;
  }
  if (failed || ended != cudaSuccess) {
    for (cudaGraph_t g : graphs) {
      if (g) cudaGraphDestroy(g);
    }
    if (failed) std::rethrow_exception(failed);
    MONOMOE_CUDA(ended);
  }
  std::vector<std::unique_ptr<Graph>> out;
  for (std::size_t i = 0; i < graphs.size(); ++i) {
    try {
      out.push_back(std::make_unique<Graph>(graphs[i]));
    } catch (...) {
      // Graph's constructor destroyed graphs[i]; the later ones are still ours.
      for (std::size_t j = i + 1; j < graphs.size(); ++j) cudaGraphDestroy(graphs[j]);
      throw;
    }
  }
  return out;
}

std::unique_ptr<Graph> capture(const std::function<void()>& enqueue, cudaStream_t stream) {
  auto graphs = capture(enqueue, std::vector<cudaStream_t>{stream});
  return std::move(graphs.front());
}

}  // namespace monomoe::bench
