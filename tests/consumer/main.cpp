// Uses the installed public API: builds and validates a LayerConfig and asks the shared library for
// its NCCL version (so the link and the run-time loading of libmonomoe are both exercised).
#include <iostream>
#include <monomoe/monomoe.hpp>

int main() {
  monomoe::LayerConfig config;
  config.max_tokens = 1024;
  config.hidden = 1024;
  config.ffn = 2048;
  config.experts = 16;
  config.topk = 2;
  config.activation = monomoe::Activation::swiglu;
  config.world_size = 4;
  config.validate();
  std::cout << "consumer: monomoe " << monomoe::kVersionString << ": " << config.describe() << "\n";

  monomoe::LayerConfig bad = config;
  bad.topk = 0;
  try {
    bad.validate();
    std::cerr << "consumer: topk = 0 was accepted\n";
    return 1;
  } catch (const monomoe::ConfigError& e) {
    std::cout << "consumer: rejected as expected: " << e.what() << "\n";
  }

  std::cout << "consumer: NCCL compiled " << monomoe::nccl_compiled_version() << "\n";
  return 0;
}
