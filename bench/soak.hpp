// `monomoe soak`: many forwards in a row, as a long job makes them, with every way they can go
// wrong watched: the token count changes every call (0 and max_tokens included) and the inputs
// rotate; every 100th call is run twice and must be bit-identical; a sample of tokens is compared
// with the CPU reference every 500th call; device memory is read at the start and at the end.
#pragma once

#include <cstdint>
#include <iosfwd>

#include "monomoe/config.hpp"

namespace monomoe::bench {

struct SoakOptions {
  LayerConfig config;           // max_tokens is the largest call
  int gpus = 1;                 // one forked worker per GPU when > 1
  std::int64_t calls = 10000;   // forwards per rank
  double seconds = 0.0;         // > 0 (one GPU only): stop after this long, calls or not
  std::uint64_t seed = 1;
  int sample_tokens = 64;       // tokens of a call compared with the reference (all with capacity)
  int repeat_every = 100;       // a call run twice, bit-identical
  int check_every = 500;        // a call compared with the reference
};

// Runs the soak and prints a progress line now and then and a summary last. Returns 0 when every
// repeat was bit-identical, every checked call matched the reference and no kernel error came.
int run_soak(const SoakOptions& options, std::ostream& out, std::ostream& progress);

}  // namespace monomoe::bench
