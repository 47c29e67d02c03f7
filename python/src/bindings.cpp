// monomoe._C: the C++ API for Python, with device memory and streams passed as integer addresses
// (no PyTorch at build time; python/monomoe/module.py takes them from torch tensors). Errors keep
// their kind: ConfigError is a ValueError, CudaError and KernelError are RuntimeErrors, each with
// the C++ message (the field and its limit, the call and its file:line, the kernel's record).
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "monomoe/monomoe.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

void* address(std::uintptr_t p) { return reinterpret_cast<void*>(p); }

// Enum fields travel as the names the CLI uses ("gelu", "bf16", "out-in").
template <class T, class Parse>
T parse_field(const std::string& text, Parse parse, const char* field, const char* choices) {
  const auto v = parse(text);
  if (!v) {
    throw monomoe::ConfigError("invalid LayerConfig." + std::string(field) + " = '" + text +
                               "': must be one of " + choices);
  }
  return *v;
}

}  // namespace

NB_MODULE(_C, m) {
  m.doc() = "monomoe: a distributed Mixture-of-Experts layer as one persistent GPU kernel";
  // Layers and configs held by module-level objects at interpreter exit are expected, not leaks.
  nb::set_leak_warnings(false);
  nb::exception<monomoe::ConfigError>(m, "ConfigError", PyExc_ValueError);
  nb::exception<monomoe::KernelError>(m, "KernelError", PyExc_RuntimeError);
  nb::exception<monomoe::CudaError>(m, "CudaError", PyExc_RuntimeError);

  m.def("version", [] { return std::string(monomoe::kVersionString); });
  m.def("nccl_versions", [] {
    return std::make_tuple(monomoe::nccl_compiled_version(), monomoe::nccl_runtime_version());
  }, "(compiled, loaded) NCCL versions as NCCL_VERSION_CODE integers");
  m.def("unique_id", [] {
    const monomoe::UniqueId id = monomoe::UniqueId::create();
    return nb::bytes(id.bytes.data(), id.bytes.size());
  }, "a new NCCL unique id (128 bytes), made on one rank and given to all");

  using monomoe::LayerConfig;
  nb::class_<LayerConfig>(m, "LayerConfig")
      .def(nb::init<>())
      .def_rw("max_tokens", &LayerConfig::max_tokens)
      .def_rw("hidden", &LayerConfig::hidden)
      .def_rw("ffn", &LayerConfig::ffn)
      .def_rw("shared_ffn", &LayerConfig::shared_ffn)
      .def_rw("experts", &LayerConfig::experts)
      .def_rw("topk", &LayerConfig::topk)
      .def_rw("renormalize", &LayerConfig::renormalize)
      .def_rw("capacity_factor", &LayerConfig::capacity_factor)
      .def_rw("bias", &LayerConfig::bias)
      .def_rw("world_size", &LayerConfig::world_size)
      .def_rw("rank", &LayerConfig::rank)
      .def_rw("timeout_seconds", &LayerConfig::timeout_seconds)
      .def_prop_rw(
          "activation", [](const LayerConfig& c) { return std::string(to_string(c.activation)); },
          [](LayerConfig& c, const std::string& v) {
            c.activation = parse_field<monomoe::Activation>(v, monomoe::parse_activation,
                                                            "activation", "relu, gelu, silu, swiglu");
          })
      .def_prop_rw(
          "dtype", [](const LayerConfig& c) { return std::string(to_string(c.dtype)); },
          [](LayerConfig& c, const std::string& v) {
            c.dtype = parse_field<monomoe::DType>(v, monomoe::parse_dtype, "dtype",
                                                  "bf16, tf32, fp32, fp8");
          })
      .def_prop_rw(
          "weight_layout",
          [](const LayerConfig& c) { return std::string(to_string(c.weight_layout)); },
          [](LayerConfig& c, const std::string& v) {
            c.weight_layout = parse_field<monomoe::WeightLayout>(
                v, monomoe::parse_weight_layout, "weight_layout", "in-out, out-in");
          })
      .def("experts_per_rank", &LayerConfig::experts_per_rank)
      .def("w1_columns", &LayerConfig::w1_columns)
      .def("shared_w1_columns", &LayerConfig::shared_w1_columns)
      .def("capacity", &LayerConfig::capacity, "tokens"_a,
           "rows kept per (source rank, expert) in a call with `tokens` tokens (tokens when "
           "dropless)")
      .def("validate", [](const LayerConfig& c) { c.validate(); },
           "raises ConfigError (a ValueError) naming the first invalid field and its limit")
      .def("describe", &LayerConfig::describe)
      .def("__repr__", [](const LayerConfig& c) { return "LayerConfig(" + c.describe() + ")"; });

  using monomoe::Communicator;
  nb::class_<Communicator>(m, "Communicator")
      .def("__init__",
           [](Communicator* self, nb::bytes id, int rank, int world, int device) {
             monomoe::UniqueId uid;
             if (id.size() != uid.bytes.size()) {
               throw monomoe::ConfigError("Communicator: the unique id must be " +
                                          std::to_string(uid.bytes.size()) + " bytes, got " +
                                          std::to_string(id.size()));
             }
             std::copy(id.c_str(), id.c_str() + id.size(), uid.bytes.begin());
             new (self) Communicator(uid, rank, world, device);
           },
           "unique_id"_a, "rank"_a, "world"_a, "device"_a,
           "joins the NCCL communicator of `world` ranks (collective); one process per GPU")
      .def_prop_ro("rank", &Communicator::rank)
      .def_prop_ro("world", &Communicator::world)
      .def_prop_ro("device", &Communicator::device);

  using monomoe::MoELayer;
  nb::class_<MoELayer>(m, "Layer")
      .def("__init__",
           [](MoELayer* self, const LayerConfig& c, Communicator& comm, std::uintptr_t gate,
              std::uintptr_t w1, std::uintptr_t b1, std::uintptr_t w2, std::uintptr_t b2,
              std::uintptr_t shared_w1, std::uintptr_t shared_b1, std::uintptr_t shared_w2,
              std::uintptr_t shared_b2, std::uintptr_t w1_scale, std::uintptr_t w2_scale,
              std::uintptr_t shared_w1_scale, std::uintptr_t shared_w2_scale) {
             new (self) MoELayer(c, comm,
                                 monomoe::ExpertWeights{.gate = address(gate),
                                                        .w1 = address(w1),
                                                        .b1 = address(b1),
                                                        .w2 = address(w2),
                                                        .b2 = address(b2),
                                                        .shared_w1 = address(shared_w1),
                                                        .shared_b1 = address(shared_b1),
                                                        .shared_w2 = address(shared_w2),
                                                        .shared_b2 = address(shared_b2),
                                                        .w1_scale = address(w1_scale),
                                                        .w2_scale = address(w2_scale),
                                                        .shared_w1_scale =
                                                            address(shared_w1_scale),
                                                        .shared_w2_scale =
                                                            address(shared_w2_scale)});
           },
           "config"_a, "comm"_a, "gate"_a, "w1"_a, "b1"_a, "w2"_a, "b2"_a, "shared_w1"_a = 0,
           "shared_b1"_a = 0, "shared_w2"_a = 0, "shared_b2"_a = 0, "w1_scale"_a = 0,
           "w2_scale"_a = 0, "shared_w1_scale"_a = 0, "shared_w2_scale"_a = 0,
           nb::keep_alive<1, 3>(),  // the communicator outlives the layer
           "device addresses of this rank's weights and of the shared expert (config.shared_ffn > "
           "0), in config.weight_layout (0 for no bias, no shared expert); with dtype fp8 also "
           "the fp32 128 x 128 block scales of w1, w2 and the shared expert's (0 otherwise)")
      .def("forward",
           [](MoELayer& l, std::uintptr_t x, std::int64_t tokens, std::uintptr_t y,
              std::uintptr_t stream, std::optional<std::uintptr_t> topk_ids,
              std::optional<std::uintptr_t> topk_weights) {
             const auto s = reinterpret_cast<cudaStream_t>(stream);
             if (!topk_ids && !topk_weights) {
               l.forward(address(x), tokens, address(y), s);
               return;
             }
             // Either one given: the routing overload, which names a missing (null) one.
             const monomoe::Routing routing{
                 static_cast<const std::int32_t*>(address(topk_ids.value_or(0))),
                 static_cast<const float*>(address(topk_weights.value_or(0)))};
             l.forward(address(x), tokens, address(y), s, routing);
           },
           "x"_a, "tokens"_a, "y"_a, "stream"_a, "topk_ids"_a = nb::none(),
           "topk_weights"_a = nb::none(),
           "y = MoE(x) on `stream` (asynchronous; kernel errors surface at synchronize/stats). "
           "With topk_ids (int32) and topk_weights (float32), device addresses of [tokens, topk] "
           "arrays, the layer skips its gate and uses that routing as it is")
      .def("synchronize", &MoELayer::synchronize)
      .def("routing", [](MoELayer& l) {
        std::vector<std::int32_t> experts;
        std::vector<float> weights;
        l.routing(experts, weights);
        return std::make_tuple(experts, weights);
      }, "(experts, weights) of the last forward, [tokens * topk] each, row-major (synchronizes)")
      .def("stats", [](MoELayer& l) {
        const monomoe::ForwardStats s = l.stats();
        return std::make_tuple(s.tokens, s.dropped, s.dropped_per_expert);
      }, "(tokens, dropped, dropped_per_expert) of the last forward (synchronizes)")
      .def_prop_ro("config", &MoELayer::config);
}
