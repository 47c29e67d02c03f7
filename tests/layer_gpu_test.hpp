// Shared by the one-GPU layer tests (test_layer_gpu.cu, test_graph_gpu.cu): a small layer config
// and the one-rank communicator every test of a process reuses.
#pragma once

#include <cstdlib>

#include "monomoe/monomoe.hpp"

namespace monomoe::test {

// The kernel's wait bound in these tests: 10 s, or MONOMOE_TEST_TIMEOUT seconds when set
// (scripts/sanitize.sh raises it: under compute-sanitizer the blocks run many times slower, and a
// bounded wait must not fire for that).
inline double test_timeout_seconds() {
  const char* s = std::getenv("MONOMOE_TEST_TIMEOUT");
  const double v = s ? std::atof(s) : 0.0;
  return v > 0.0 && v <= 3600.0 ? v : 10.0;
}

// 512 tokens at most, hidden = ffn = 256, 8 experts, top-2, test_timeout_seconds().
inline LayerConfig small_layer_config(DType dtype, Activation act) {
  LayerConfig c;
  c.max_tokens = 512;
  c.hidden = 256;
  c.ffn = 256;
  c.experts = 8;
  c.topk = 2;
  c.dtype = dtype;
  c.activation = act;
  c.timeout_seconds = test_timeout_seconds();
  return c;
}

// One NCCL communicator of one rank on GPU 0, made on first use.
inline Communicator& single_gpu() {
  static Communicator comm(UniqueId::create(), 0, 1, 0);
  return comm;
}

}  // namespace monomoe::test
