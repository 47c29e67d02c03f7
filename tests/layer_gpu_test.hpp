// Shared by the one-GPU layer tests (test_layer_gpu.cu, test_graph_gpu.cu): a small layer config
// and the one-rank communicator every test of a process reuses.
#pragma once

#include "monomoe/monomoe.hpp"

namespace monomoe::test {

// 512 tokens at most, hidden = ffn = 256, 8 experts, top-2, a 10 s wait bound.
inline LayerConfig small_layer_config(DType dtype, Activation act) {
  LayerConfig c;
  c.max_tokens = 512;
  c.hidden = 256;
  c.ffn = 256;
  c.experts = 8;
  c.topk = 2;
  c.dtype = dtype;
  c.activation = act;
  c.timeout_seconds = 10.0;
  return c;
}

// One NCCL communicator of one rank on GPU 0, made on first use.
inline Communicator& single_gpu() {
  static Communicator comm(UniqueId::create(), 0, 1, 0);
  return comm;
}

}  // namespace monomoe::test
