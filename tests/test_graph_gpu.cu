// forward() captured once into a CUDA graph and replayed (label gpu): 1,000 replays with new x
// contents each time (written by a kernel, no host round trip), every replay compared bit for bit
// with a forward() of the same x on the same layer, a few also with the float64 reference. On one
// GPU, and on 2 and 4 virtual ranks: one graph per rank replayed on that rank's stream (as each
// process of a real multi-GPU job would), and all ranks captured into one graph; and two layers
// that share their communicator's workspace, each with its graph, replayed in turn.
//
// What it shows: the epoch advances on the device (a replay that repeated the captured epoch would
// take the previous call's task slots and flags for its own, and hang or mix results), every step
// of forward() is legal under capture (cudaStreamCaptureModeGlobal refuses what is not), and
// replays may interleave with forward() calls. Halfway, the weights change in place: replays read
// them as forward() does.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bench/ceiling.hpp"
#include "bench/device_problem.hpp"
#include "bench/graph.hpp"
#include "ep_cases.hpp"
#include "gpu_test.hpp"
#include "layer_gpu_test.hpp"
#include "monomoe/monomoe.hpp"
#include "reference/reference.hpp"

namespace monomoe {
namespace {

constexpr int kReplays = 1000;
// Replays also compared with the float64 reference (the weights change before kReplays / 2).
bool checked_against_reference(int replay) {
  return replay == 0 || replay == 1 || replay == kReplays / 2 || replay == kReplays - 1;
}

using test::single_gpu;

// Bytes of a device buffer (synchronous).
std::vector<unsigned char> bytes_of(const void* p, std::size_t n) {
  std::vector<unsigned char> h(n);
  if (n > 0 && cudaMemcpy(h.data(), p, n, cudaMemcpyDeviceToHost) != cudaSuccess) h.clear();
  return h;
}

// The device x as the reference's floats (bf16 widens exactly).
std::vector<float> x_as_float(const void* x, std::int64_t elements, DType dtype) {
  const std::size_t n = static_cast<std::size_t>(elements);
  const std::vector<unsigned char> raw = bytes_of(x, n * element_bytes(dtype));
  std::vector<float> out(n);
  for (std::size_t i = 0; i < n && !raw.empty(); ++i) {
    if (dtype == DType::bf16) {
      std::uint16_t b = 0;
      std::memcpy(&b, raw.data() + 2 * i, 2);
      const std::uint32_t bits = static_cast<std::uint32_t>(b) << 16;
      std::memcpy(&out[i], &bits, 4);
    } else {
      std::memcpy(&out[i], raw.data() + 4 * i, 4);
    }
  }
  return out;
}

struct DeviceBuffer {
  void* ptr = nullptr;
  explicit DeviceBuffer(std::size_t bytes) {
    if (cudaMalloc(&ptr, bytes > 0 ? bytes : 16) != cudaSuccess) ptr = nullptr;
  }
  ~DeviceBuffer() {
    if (ptr) cudaFree(ptr);
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

// Rank `rank`'s weights of `from` copied over those of `to` (same config, so the same sizes and
// layout): the in-place update an optimizer step or a checkpoint load makes.
void copy_weights(const bench::DeviceProblem& from, const bench::DeviceProblem& to,
                  const LayerConfig& c) {
  const std::size_t elem = element_bytes(c.dtype);
  const std::size_t el = static_cast<std::size_t>(c.experts_per_rank());
  const std::size_t h = static_cast<std::size_t>(c.hidden), f = static_cast<std::size_t>(c.ffn);
  const std::size_t w1c = static_cast<std::size_t>(c.w1_columns());
  const ExpertWeights src = from.weights(), dst = to.weights();
  const auto copy = [&](const void* d, const void* s, std::size_t n) {
    if (d && s) {
      ASSERT_EQ(cudaSuccess,
                cudaMemcpy(const_cast<void*>(d), s, n * elem, cudaMemcpyDeviceToDevice));
    }
  };
  copy(dst.gate, src.gate, h * static_cast<std::size_t>(c.experts));
  copy(dst.w1, src.w1, el * h * w1c);
  copy(dst.b1, src.b1, el * w1c);
  copy(dst.w2, src.w2, el * f * h);
  copy(dst.b2, src.b2, el * h);
  const std::size_t sf = static_cast<std::size_t>(c.shared_ffn);
  const std::size_t sw1c = static_cast<std::size_t>(c.shared_w1_columns());
  copy(dst.shared_w1, src.shared_w1, h * sw1c);
  copy(dst.shared_b1, src.shared_b1, sw1c);
  copy(dst.shared_w2, src.shared_w2, sf * h);
  copy(dst.shared_b2, src.shared_b2, h);
}

// Where two outputs first differ, for the failure message.
std::string first_difference(const std::vector<unsigned char>& a,
                             const std::vector<unsigned char>& b, std::size_t elem) {
  if (a.size() != b.size()) {
    return "sizes " + std::to_string(a.size()) + " / " + std::to_string(b.size());
  }
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i] != b[i]) return "first at element " + std::to_string(i / elem);
  }
  return "none";
}

// The layers of one test: every rank's problem on the device, the layers (one MoELayer, or
// VirtualRanks), the output buffers of the forward() calls, and the graph(s) of one captured call.
struct Replayer {
  LayerConfig cfg;
  reference::Problem problem;      // weights of the first half of the replays
  reference::Problem new_weights;  // the same config with other weights, copied in at kReplays / 2
  std::vector<std::unique_ptr<bench::DeviceProblem>> dev;      // the graph's x and y
  std::vector<std::unique_ptr<bench::DeviceProblem>> dev_new;  // the weights copied in
  std::vector<std::unique_ptr<DeviceBuffer>> y_forward;        // forward()'s outputs
  std::vector<cudaStream_t> streams;                           // rank r's stream
  std::unique_ptr<MoELayer> layer;                             // one GPU
  std::unique_ptr<VirtualRanks> vr;                            // virtual ranks
  cudaStream_t own_stream = nullptr;

  Replayer(const LayerConfig& c, const std::vector<std::int64_t>& tokens, std::uint64_t seed)
      : cfg(c),
        problem(reference::make_problem(c, tokens, seed)),
        new_weights(reference::make_problem(c, tokens, seed + 1)) {
    const int w = static_cast<int>(c.world_size);
    std::vector<ExpertWeights> weights;
    for (int r = 0; r < w; ++r) {
      dev.push_back(std::make_unique<bench::DeviceProblem>(problem, r));
      dev_new.push_back(std::make_unique<bench::DeviceProblem>(new_weights, r));
      y_forward.push_back(std::make_unique<DeviceBuffer>(y_bytes(r)));
      weights.push_back(dev.back()->weights());
    }
    if (w == 1) {
      layer = std::make_unique<MoELayer>(c, single_gpu(), weights[0]);
      if (cudaStreamCreateWithFlags(&own_stream, cudaStreamNonBlocking) != cudaSuccess) {
        own_stream = nullptr;
      }
      streams = {own_stream};
    } else {
      vr = std::make_unique<VirtualRanks>(c, 0, weights);
      for (int r = 0; r < w; ++r) streams.push_back(vr->stream(r));
    }
  }
  ~Replayer() {
    cudaDeviceSynchronize();
    if (own_stream) cudaStreamDestroy(own_stream);
  }

  int world() const { return static_cast<int>(cfg.world_size); }
  std::int64_t tokens(int r) const { return problem.tokens[static_cast<std::size_t>(r)]; }
  std::int64_t elements(int r) const { return tokens(r) * cfg.hidden; }
  std::size_t y_bytes(int r) const {
    return static_cast<std::size_t>(elements(r)) * element_bytes(cfg.dtype);
  }
  MoELayer& layer_of(int r) { return layer ? *layer : vr->layer(r); }

  // One forward() on every rank, into the graph's y (`into_graph_y`) or forward()'s own buffers.
  void forward(bool into_graph_y) {
    if (layer) {
      layer->forward(dev[0]->x(), tokens(0), into_graph_y ? dev[0]->y() : y_forward[0]->ptr,
                     own_stream);
      return;
    }
    std::vector<const void*> x;
    std::vector<std::int64_t> t;
    std::vector<void*> y;
    for (int r = 0; r < world(); ++r) {
      x.push_back(dev[r]->x());
      t.push_back(tokens(r));
      y.push_back(into_graph_y ? dev[r]->y() : y_forward[r]->ptr);
    }
    vr->forward(x, t, y);
  }

  void synchronize() {
    if (layer) {
      layer->synchronize();
    } else {
      vr->synchronize();
    }
  }
};

// All ranks captured into ONE graph: the capture begins on rank 0's stream, the other ranks'
// streams join it through an event and rejoin it at the end, so the graph holds W independent
// branches (one per rank), which a replay runs side by side.
std::unique_ptr<bench::Graph> capture_in_one_graph(Replayer& t) {
  const int w = t.world();
  cudaStream_t origin = t.streams[0];
  std::vector<cudaEvent_t> events(static_cast<std::size_t>(w));
  for (cudaEvent_t& e : events) {
    if (cudaEventCreateWithFlags(&e, cudaEventDisableTiming) != cudaSuccess) return nullptr;
  }
  cudaGraph_t graph = nullptr;
  bool ok = cudaStreamBeginCapture(origin, cudaStreamCaptureModeGlobal) == cudaSuccess;
  if (ok) {
    ok = cudaEventRecord(events[0], origin) == cudaSuccess;
    for (int r = 1; r < w && ok; ++r) {
      ok = cudaStreamWaitEvent(t.streams[r], events[0], 0) == cudaSuccess;
    }
    if (ok) {
      try {
        t.forward(true);
      } catch (const Error& e) {
        ADD_FAILURE() << "forward() during capture: " << e.what();
        ok = false;
      }
    }
    for (int r = 1; r < w && ok; ++r) {
      ok = cudaEventRecord(events[r], t.streams[r]) == cudaSuccess &&
           cudaStreamWaitEvent(origin, events[r], 0) == cudaSuccess;
    }
    ok = cudaStreamEndCapture(origin, &graph) == cudaSuccess && ok;
  }
  for (cudaEvent_t e : events) cudaEventDestroy(e);
  if (!ok) {
    if (graph) cudaGraphDestroy(graph);
    return nullptr;
  }
  return std::make_unique<bench::Graph>(graph);
}

enum class Capture { per_rank, one_graph };

// Captures one forward() of every rank, then replays it kReplays times with new x contents, each
// replay followed by a forward() of the same x into other buffers: bit-identical, rank by rank.
void replay_and_compare(Replayer& t, Capture how, const char* name) {
  SCOPED_TRACE(name);
  const int w = t.world();
  const std::size_t elem = element_bytes(t.cfg.dtype);
  for (cudaStream_t s : t.streams) ASSERT_NE(s, nullptr);
  std::vector<std::unique_ptr<bench::Graph>> graphs;
  if (how == Capture::per_rank) {
    graphs = bench::capture([&] { t.forward(true); }, t.streams);
  } else {
    graphs.push_back(capture_in_one_graph(t));
    ASSERT_NE(graphs.back(), nullptr) << "capturing every rank into one graph failed";
  }
  int mismatches = 0, reference_checks = 0;
  for (int i = 0; i < kReplays; ++i) {
    if (i == kReplays / 2) {
      ASSERT_EQ(cudaSuccess, cudaDeviceSynchronize());
      for (int r = 0; r < w; ++r) copy_weights(*t.dev_new[r], *t.dev[r], t.cfg);
    }
    // New inputs; y poisoned with NaN (0xff bytes) for the replay and with 0x7f bytes (a large
    // finite value) for forward(): an element that either call leaves unwritten differs from the
    // other's, so bit-equality also shows that both wrote all of y.
    for (int r = 0; r < w; ++r) {
      const std::uint64_t seed =
          1000003ull * static_cast<std::uint64_t>(i) + static_cast<std::uint64_t>(r);
      if (t.elements(r) == 0) continue;
      // DeviceProblem hands x out as const: the test rewrites it.
      bench::fill_uniform(const_cast<void*>(t.dev[r]->x()), t.elements(r), t.cfg.dtype, seed,
                          t.streams[r]);
      ASSERT_EQ(cudaSuccess, cudaMemsetAsync(t.dev[r]->y(), 0xff, t.y_bytes(r), t.streams[r]));
      ASSERT_EQ(cudaSuccess,
                cudaMemsetAsync(t.y_forward[r]->ptr, 0x7f, t.y_bytes(r), t.streams[r]));
    }
    ASSERT_EQ(cudaSuccess, cudaGetLastError());
    if (how == Capture::per_rank) {
      for (int r = 0; r < w; ++r) graphs[static_cast<std::size_t>(r)]->launch(t.streams[r]);
    } else {
      // The graph runs on rank 0's stream: every rank's inputs must be in place first.
      ASSERT_EQ(cudaSuccess, cudaDeviceSynchronize());
      graphs[0]->launch(t.streams[0]);
      ASSERT_EQ(cudaSuccess, cudaStreamSynchronize(t.streams[0]));
    }
    try {
      t.synchronize();  // the replays ran on the streams the layers last used (per rank)
      t.forward(false);
      t.synchronize();
    } catch (const Error& e) {
      FAIL() << "replay " << i << ": " << e.what();
    }
    for (int r = 0; r < w; ++r) {
      const auto replayed = bytes_of(t.dev[r]->y(), t.y_bytes(r));
      const auto called = bytes_of(t.y_forward[r]->ptr, t.y_bytes(r));
      if (replayed.size() != t.y_bytes(r) || replayed != called) {
        ++mismatches;
        ADD_FAILURE() << "replay " << i << ", rank " << r << " (" << t.tokens(r)
                      << " tokens): not bit-identical to forward(): "
                      << first_difference(replayed, called, elem);
        if (mismatches >= 5) return;
      }
    }
    if (!checked_against_reference(i)) continue;
    reference::Problem pr = i < kReplays / 2 ? t.problem : t.new_weights;
    for (int r = 0; r < w; ++r) pr.x[r] = x_as_float(t.dev[r]->x(), t.elements(r), t.cfg.dtype);
    const reference::Result ref = reference::run(pr);
    for (int r = 0; r < w; ++r) {
      // The routing and drops read back are forward()'s, of the same x: the replay's, as shown.
      std::string detail;
      const bool ok = bench::check_forward(t.layer_of(r), *t.dev[r], pr, ref.ranks[r], r, detail);
      std::printf("[%s] replay %d, rank %d/%d: %s %s\n", name, i, r, w, ok ? "PASS" : "FAIL",
                  detail.c_str());
      EXPECT_TRUE(ok) << "replay " << i << ", rank " << r << ": " << detail;
      ++reference_checks;
    }
  }
  std::printf(
      "[%s] %d replays x %d rank(s): %d not bit-identical to forward(); %d reference checks\n",
      name, kReplays, w, mismatches, reference_checks);
}

TEST(GraphReplay, OneGpu) {
  MONOMOE_REQUIRE_GPU();
  struct Case {
    const char* name;
    DType dtype;
    Activation act;
    WeightLayout layout;
    double capacity;
    std::int64_t shared_slices = 0;  // shared_ffn / ffn
  };
  const Case cases[] = {
      {"bf16 gelu in-out", DType::bf16, Activation::gelu, WeightLayout::in_out, 0.0},
      {"tf32 swiglu out-in", DType::tf32, Activation::swiglu, WeightLayout::out_in, 0.0},
      {"fp32 relu, capacity 0.5", DType::fp32, Activation::relu, WeightLayout::in_out, 0.5},
      {"bf16 swiglu out-in, shared expert 2 x ffn", DType::bf16, Activation::swiglu,
       WeightLayout::out_in, 0.0, 2},
  };
  std::uint64_t seed = 900;
  for (const Case& k : cases) {
    LayerConfig c = test::small_layer_config(k.dtype, k.act);
    c.weight_layout = k.layout;
    c.capacity_factor = k.capacity;
    c.shared_ffn = k.shared_slices * c.ffn;
    Replayer t(c, {300}, seed++);
    replay_and_compare(t, Capture::per_rank, k.name);
  }
}

// Two layers of one communicator share its workspace ("Many layers", layer.hpp), each captured
// into its own graph on one stream; the graphs are replayed in turn with new inputs, each replay
// bit-identical to a forward() of the same layer on the same x, with a third layer's forward()
// calls in between. While the captured layers live, a layer that would need more memory is
// refused (building it would move the memory under their graphs); one that fits is built.
TEST(GraphReplay, LayersSharingAWorkspace) {
  MONOMOE_REQUIRE_GPU();
  constexpr int kTurns = 200;
  LayerConfig big;
  big.max_tokens = 768;
  big.hidden = 384;
  big.ffn = 384;
  big.experts = 12;
  big.topk = 4;
  big.dtype = DType::tf32;
  big.activation = Activation::swiglu;
  big.weight_layout = WeightLayout::out_in;
  big.timeout_seconds = 10.0;
  LayerConfig small = big;
  small.max_tokens = 512;
  small.hidden = 256;
  small.ffn = 256;
  small.experts = 8;
  small.topk = 2;
  small.dtype = DType::bf16;
  small.activation = Activation::gelu;
  small.weight_layout = WeightLayout::in_out;
  struct Layer {
    reference::Problem pr;
    std::unique_ptr<bench::DeviceProblem> dev;  // the graph's x and y
    std::unique_ptr<DeviceBuffer> y_forward;
    std::unique_ptr<MoELayer> layer;
    std::unique_ptr<bench::Graph> graph;
    std::size_t y_bytes = 0;
  };
  std::vector<Layer> layers(3);
  const LayerConfig configs[] = {big, small, small};
  const std::int64_t tokens[] = {700, 300, 129};
  for (std::size_t l = 0; l < 3; ++l) {
    Layer& L = layers[l];
    L.pr = reference::make_problem(configs[l], {tokens[l]}, 990 + l);
    L.dev = std::make_unique<bench::DeviceProblem>(L.pr, 0);
    L.y_bytes = static_cast<std::size_t>(tokens[l] * configs[l].hidden) *
                element_bytes(configs[l].dtype);
    L.y_forward = std::make_unique<DeviceBuffer>(L.y_bytes);
  }
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaSuccess, cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  for (std::size_t l = 0; l < 2; ++l) {
    Layer& L = layers[l];
    L.layer = std::make_unique<MoELayer>(configs[l], single_gpu(), L.dev->weights());
    L.graph = bench::capture(
        [&] { L.layer->forward(L.dev->x(), tokens[l], L.dev->y(), stream); }, stream);
    ASSERT_NE(L.graph, nullptr);
  }
  {
    LayerConfig larger = big;
    larger.max_tokens = 2 * big.max_tokens;  // the same weights' shapes, more scratch memory
    try {
      MoELayer refused(larger, single_gpu(), layers[0].dev->weights());
      ADD_FAILURE() << "a layer larger than the shared workspace was built under captured graphs";
    } catch (const ConfigError& e) {
      std::printf("expected error: %s\n", e.what());
      EXPECT_NE(std::string(e.what()).find("captur"), std::string::npos) << e.what();
    }
  }
  layers[2].layer = std::make_unique<MoELayer>(configs[2], single_gpu(), layers[2].dev->weights());
  int mismatches = 0;
  for (int i = 0; i < kTurns && mismatches < 5; ++i) {
    for (std::size_t l = 0; l < 2; ++l) {
      Layer& L = layers[l];
      bench::fill_uniform(const_cast<void*>(L.dev->x()), tokens[l] * configs[l].hidden,
                          configs[l].dtype, 7919ull * static_cast<std::uint64_t>(i) + l, stream);
      ASSERT_EQ(cudaSuccess, cudaMemsetAsync(L.dev->y(), 0xff, L.y_bytes, stream));
      ASSERT_EQ(cudaSuccess, cudaMemsetAsync(L.y_forward->ptr, 0x7f, L.y_bytes, stream));
    }
    try {
      // Replays and forward() calls of the three layers, one after another on the stream.
      layers[0].graph->launch(stream);
      layers[1].graph->launch(stream);
      if (i % 10 == 0) {
        layers[2].layer->forward(layers[2].dev->x(), tokens[2], layers[2].dev->y(), stream);
      }
      for (std::size_t l = 0; l < 2; ++l) {
        layers[l].layer->forward(layers[l].dev->x(), tokens[l], layers[l].y_forward->ptr, stream);
      }
      for (Layer& L : layers) L.layer->synchronize();
    } catch (const Error& e) {
      FAIL() << "turn " << i << ": " << e.what();
    }
    for (std::size_t l = 0; l < 2; ++l) {
      const auto replayed = bytes_of(layers[l].dev->y(), layers[l].y_bytes);
      const auto called = bytes_of(layers[l].y_forward->ptr, layers[l].y_bytes);
      if (replayed.size() != layers[l].y_bytes || replayed != called) {
        ++mismatches;
        ADD_FAILURE() << "turn " << i << ", layer " << l << ": replay not bit-identical to "
                      << "forward(): " << first_difference(replayed, called,
                                                           element_bytes(configs[l].dtype));
      }
    }
  }
  // Each layer's last x against the float64 reference, by a forward() of its own.
  for (std::size_t l = 0; l < 3; ++l) {
    Layer& L = layers[l];
    reference::Problem pr = L.pr;
    pr.x[0] = x_as_float(L.dev->x(), tokens[l] * configs[l].hidden, configs[l].dtype);
    const reference::Result ref = reference::run(pr);
    ASSERT_EQ(cudaSuccess, cudaMemsetAsync(L.dev->y(), 0xff, L.y_bytes, stream));
    L.layer->forward(L.dev->x(), tokens[l], L.dev->y(), stream);
    std::string detail;
    EXPECT_TRUE(bench::check_forward(*L.layer, *L.dev, pr, ref.ranks[0], 0, detail))
        << "layer " << l << ": " << detail;
    std::printf("[layers sharing a workspace] layer %zu: %s\n", l, detail.c_str());
  }
  std::printf("[layers sharing a workspace] %d turns: %d replays not bit-identical to forward()\n",
              kTurns, mismatches);
  for (Layer& L : layers) L.graph.reset();
  layers.clear();
  cudaStreamDestroy(stream);
}

void virtual_ranks(int world, Capture how) {
  MONOMOE_REQUIRE_GPU();
  LayerConfig c = test::ep_base(DType::bf16, Activation::gelu, 4 * world, 2);
  c.world_size = world;
  // Uneven ranks, one of them without tokens (it still runs: it owns experts).
  std::vector<std::int64_t> tokens = {300, 0, 384, 129};
  tokens.resize(static_cast<std::size_t>(world));
  if (world == 2) tokens = {300, 129};
  Replayer t(c, tokens, 950 + static_cast<std::uint64_t>(world));
  const std::string name = std::to_string(world) + " virtual ranks, " +
                           (how == Capture::per_rank ? "a graph per rank" : "one graph");
  replay_and_compare(t, how, name.c_str());
}

TEST(GraphReplay, TwoVirtualRanks) { virtual_ranks(2, Capture::per_rank); }
TEST(GraphReplay, FourVirtualRanks) { virtual_ranks(4, Capture::per_rank); }
TEST(GraphReplay, TwoVirtualRanksInOneGraph) { virtual_ranks(2, Capture::one_graph); }
TEST(GraphReplay, FourVirtualRanksInOneGraph) { virtual_ranks(4, Capture::one_graph); }

}  // namespace
}  // namespace monomoe
