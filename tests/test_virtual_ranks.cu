// The multi-rank path of the fused layer on ONE GPU: W = 2, 4 and 8 virtual ranks (VirtualRanks)
// run the expert-parallel cases of ep_cases.hpp against the float64 reference, exactly as the real
// multi-GPU test does, twice each (the second call reuses the windows and must be bit-identical);
// and a rank that never starts must be reported by the others within the timeout (label gpu).
// What this cannot show: ordering and visibility across GPUs (NVLink); test_layer_multi_gpu.cu does.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "bench/device_problem.hpp"
#include "ep_cases.hpp"
#include "gpu_test.hpp"
#include "pack_cases.hpp"
#include "monomoe/monomoe.hpp"
#include "poison_check.hpp"
#include "reference/reference.hpp"

namespace monomoe {
namespace {

// Every rank's device copy of a problem (x, weights, y).
struct VirtualProblem {
  std::vector<std::unique_ptr<bench::DeviceProblem>> ranks;
  VirtualProblem(const reference::Problem& pr, int world) {
    for (int r = 0; r < world; ++r) ranks.push_back(std::make_unique<bench::DeviceProblem>(pr, r));
  }
  std::vector<ExpertWeights> weights() const {
    std::vector<ExpertWeights> w;
    for (const auto& d : ranks) w.push_back(d->weights());
    return w;
  }
  // One forward of every rank (with its given routing when the problem has one).
  void forward(VirtualRanks& vr, const std::vector<bool>& run = {}) {
    std::vector<const void*> x;
    std::vector<std::int64_t> tokens;
    std::vector<void*> y;
    std::vector<Routing> routing;
    for (auto& d : ranks) {
      d->poison_y();
      x.push_back(d->x());
      tokens.push_back(d->tokens());
      y.push_back(d->y());
      if (d->routing_given()) routing.push_back(d->routing());
    }
    vr.forward(x, tokens, y, run, routing);
  }
};

// vr.synchronize()'s KernelError message, or "" when every rank finished without one.
std::string synchronize_error(VirtualRanks& vr) {
  try {
    vr.synchronize();
  } catch (const KernelError& e) {
    return e.what();
  }
  return "";
}

// Rank-calls of run_cases(): those that failed, whose GEMM tasks were split in K slices (the
// few-rows path), and with row tiles of several sources (device/pack.hpp).
struct Tally {
  int failed = 0, split = 0, packed = 0;
};

// Every case on `world` virtual ranks, twice (the second call reuses the windows and must be
// bit-identical), every rank's output against the reference.
Tally run_cases(int world, const std::vector<test::EpCase>& cases) {
  Tally tally;
  for (const test::EpCase& tc : cases) {
    reference::Problem pr = reference::make_problem(tc.cfg, tc.tokens, 1234);
    if (tc.skew_expert >= 0) reference::skew_gate_towards(pr, tc.skew_expert, 50.f);
    if (tc.given_routing) reference::give_random_routing(pr, test::kGivenRoutingSeed);
    const reference::Result ref = reference::run(pr);
    VirtualProblem dev(pr, world);
    VirtualRanks vr(tc.cfg, 0, dev.weights());
    std::vector<std::vector<float>> first(static_cast<std::size_t>(world));
    for (int call = 0; call < 2; ++call) {  // the second call reuses the windows (epochs)
      dev.forward(vr);
      std::string error;
      try {
        vr.synchronize();
      } catch (const Error& e) {
        error = e.what();
      }
      for (int r = 0; r < world; ++r) {
        std::string detail = error;
        bool ok = error.empty() &&
                  bench::check_forward(vr.layer(r), *dev.ranks[r], pr, ref.ranks[r], r, detail);
        const std::vector<float> y = dev.ranks[r]->y_host();
        if (call == 0) first[r] = y;
        if (call == 1 && ok &&
            std::memcmp(first[r].data(), y.data(), y.size() * sizeof(float)) != 0) {
          ok = false;
          detail += " second call differs bitwise";
        }
        if (!ok || r == 0) {
          std::printf("[virtual rank %d/%d, call %d] %s %s: %s\n", r, world, call,
                      ok ? "PASS" : "FAIL", tc.name, detail.c_str());
        }
        tally.failed += ok ? 0 : 1;
        EXPECT_TRUE(ok) << tc.name << ", virtual rank " << r << ", call " << call << ": " << detail;
        if (error.empty()) {
          const ForwardStats st = vr.layer(r).stats();
          tally.split += st.k_split > 1 ? 1 : 0;
          tally.packed += st.packed_tiles > 0 ? 1 : 0;
        }
      }
    }
  }
  return tally;
}

void run_world(int world) {
  MONOMOE_REQUIRE_GPU();
  const Tally t = run_cases(world, test::ep_cases(world));
  std::printf("%d virtual ranks: %d failed rank-calls, %d split K, %d with packed row tiles\n",
              world, t.failed, t.split, t.packed);
  // The small cases (one expert per rank, ranks with few or no tokens) give a rank fewer GEMM tasks
  // than its share of the blocks: the split runs with peers too.
  EXPECT_GT(t.split, 0);
  // Experts get partial tiles from several ranks in most cases (a few tokens per rank above all).
  EXPECT_GT(t.packed, 0);
}

// The trace of a forward with peers: block 0 is the subscriber (headers, listing, own tiles'
// tasks, the last combine published, in that order, before its own task loop), blocks 1.. are
// dispatch blocks (start before end, both after routing), no other block plays a role, and the
// traced forward's output is still right.
TEST(LayerVirtualRanks, TraceShowsTheExpertParallelRoles) {
  MONOMOE_REQUIRE_GPU();
  constexpr int kWorld = 2;
  const test::EpCase tc = test::ep_cases(kWorld).front();  // bf16 gelu, 300 and 200 tokens
  reference::Problem pr = reference::make_problem(tc.cfg, tc.tokens, 77);
  const reference::Result ref = reference::run(pr);
  VirtualProblem dev(pr, kWorld);
  VirtualRanks vr(tc.cfg, 0, dev.weights());
  for (int r = 0; r < kWorld; ++r) vr.layer(r).set_trace(true);
  dev.forward(vr);
  vr.synchronize();
  for (int r = 0; r < kWorld; ++r) {
    SCOPED_TRACE("virtual rank " + std::to_string(r));
    std::string detail;
    EXPECT_TRUE(bench::check_forward(vr.layer(r), *dev.ranks[r], pr, ref.ranks[r], r, detail))
        << detail;
    const std::vector<BlockTrace> tr = vr.layer(r).trace();
    ASSERT_GT(tr.size(), 2u);
    const BlockTrace& sub = tr[0];
    EXPECT_GE(sub.headers_seen, sub.routed);
    EXPECT_GE(sub.tiles_listed, sub.headers_seen);
    if (sub.own_published >= 0) EXPECT_GE(sub.own_published, sub.tiles_listed);
    if (sub.peer_published >= 0) EXPECT_GE(sub.peer_published, sub.tiles_listed);
    EXPECT_GE(sub.combine_published, sub.tiles_listed);
    EXPECT_LE(sub.combine_published, sub.end);
    EXPECT_EQ(sub.dispatch_start, -1);
    int dispatchers = 0;
    for (std::size_t b = 1; b < tr.size(); ++b) {
      SCOPED_TRACE("block " + std::to_string(b));
      const BlockTrace& t = tr[b];
      EXPECT_EQ(t.headers_seen, -1);
      EXPECT_EQ(t.tiles_listed, -1);
      EXPECT_EQ(t.combine_published, -1);
      if (t.dispatch_start < 0) {
        EXPECT_EQ(t.dispatch_end, -1);
        continue;
      }
      ++dispatchers;
      EXPECT_EQ(static_cast<int>(b), dispatchers);  // blocks 1..dispatch_blocks
      EXPECT_GE(t.dispatch_start, t.routed);
      EXPECT_GE(t.dispatch_end, t.dispatch_start);
      EXPECT_LE(t.dispatch_end, t.end);
    }
    EXPECT_GE(dispatchers, 1);
    vr.layer(r).set_trace(false);
  }
}

TEST(LayerVirtualRanks, TwoRanks) { run_world(2); }
TEST(LayerVirtualRanks, FourRanks) { run_world(4); }
TEST(LayerVirtualRanks, EightRanks) { run_world(8); }

// A shared expert on every rank (ep_cases.hpp, ep_shared_expert_cases): each rank runs it on its
// own tokens only, a rank without tokens included.
void run_shared_expert(int world) {
  MONOMOE_REQUIRE_GPU();
  const Tally t = run_cases(world, test::ep_shared_expert_cases(world));
  std::printf("%d virtual ranks with a shared expert: %d failed rank-calls\n", world, t.failed);
}

TEST(LayerVirtualRanks, SharedExpertTwoRanks) { run_shared_expert(2); }
TEST(LayerVirtualRanks, SharedExpertFourRanks) { run_shared_expert(4); }

// DType::fp8 with peers (ep_cases.hpp, ep_fp8_cases): every rank's output against the float64
// reference of the fp8 layer (docs/fp8.md) at bench::tolerance(fp8), twice, bit-identical, drops
// counted. Whether the few-rows split or packing happens is the kernel's choice here: not required.
void run_fp8(int world) {
  MONOMOE_REQUIRE_GPU();
  const Tally t = run_cases(world, test::ep_fp8_cases(world));
  std::printf("%d virtual ranks, fp8: %d failed rank-calls, %d split K, %d with packed row tiles\n",
              world, t.failed, t.split, t.packed);
}

TEST(LayerVirtualRanks, Fp8TwoRanks) { run_fp8(2); }
TEST(LayerVirtualRanks, Fp8FourRanks) { run_fp8(4); }

// fp8 SwiGLU GEMM0 tasks split in K with peers (ep_cases.hpp, ep_fp8_swiglu_split_cases: a slice
// stores its gate and up results, the last sums both, run_gemm0_ep): against the reference, twice,
// bit-identical, and some rank-call must have split.
TEST(LayerVirtualRanks, Fp8SwigluSplitK) {
  MONOMOE_REQUIRE_GPU();
  for (int world : {2, 4}) {
    const Tally t = run_cases(world, test::ep_fp8_swiglu_split_cases(world));
    std::printf("%d virtual ranks, fp8 swiglu: %d failed rank-calls, %d split K\n", world, t.failed,
                t.split);
    EXPECT_GT(t.split, 0) << world << " virtual ranks: no rank-call split K";
  }
}

// Routings given by hand that make every kind of row tile (pack_cases.hpp: a source's full tile,
// an exact 128, remainders of up to 7 sources packed with the owner's own rows, remainders cut
// between two tiles, one source only, none): every rank's output against the float64 reference,
// three calls bit-identical, and each rank's tile counts as the rule says.
TEST(LayerVirtualRanks, PackedRowTiles) {
  MONOMOE_REQUIRE_GPU();
  for (int world : {2, 4, 8}) {
    for (const test::PackCase& pc : test::pack_cases(world)) {
      SCOPED_TRACE(pc.name + ", " + std::to_string(world) + " virtual ranks");
      const reference::Problem pr = test::make_pack_problem(pc, 31);
      const reference::Result ref = reference::run(pr);
      VirtualProblem dev(pr, world);
      VirtualRanks vr(pc.cfg, 0, dev.weights());
      std::vector<std::vector<float>> first(static_cast<std::size_t>(world));
      for (int call = 0; call < 3; ++call) {
        dev.forward(vr);
        vr.synchronize();
        for (int r = 0; r < world; ++r) {
          std::string detail;
          EXPECT_TRUE(bench::check_forward(vr.layer(r), *dev.ranks[r], pr, ref.ranks[r], r, detail))
              << "rank " << r << ", call " << call << ": " << detail;
          const ForwardStats st = vr.layer(r).stats();
          const device::PackResult want = test::expected_pack(pc, r);
          EXPECT_EQ(st.row_tiles, want.tiles) << "rank " << r;
          EXPECT_EQ(st.packed_tiles, want.packed) << "rank " << r;
          const std::vector<float> y = dev.ranks[r]->y_host();
          if (call == 0) {
            first[r] = y;
          } else {
            EXPECT_EQ(std::memcmp(first[r].data(), y.data(), y.size() * sizeof(float)), 0)
                << "rank " << r << ", call " << call << " differs bitwise from the first";
          }
          if (call == 0) {
            std::printf("[%d virtual ranks, rank %d] %s: %lld row tiles, %lld packed, "
                        "k_split %lld: %s\n",
                        world, r, pc.name.c_str(), static_cast<long long>(st.row_tiles),
                        static_cast<long long>(st.packed_tiles), static_cast<long long>(st.k_split),
                        detail.c_str());
          }
        }
      }
      // Expert 0 packs its owner's own rows with its peers' (a packed tile on rank 0).
      EXPECT_GT(test::expected_pack(pc, 0).packed, 0);
    }
  }
}

// Two layers of different configs on the same virtual ranks (the second VirtualRanks built on the
// first's ranks) share each rank's workspace and window ("Many layers", layer.hpp): the larger is
// built after the smaller ran, so every rank's workspace grows and its window is reopened (the
// ranks' n-th windows pair up again) under the smaller; then they run in turn, every rank's output
// checked against the float64 reference at each call and bit-identical to that layer's first.
void run_shared(int world) {
  MONOMOE_REQUIRE_GPU();
  struct Layer {
    const test::EpCase* tc;
    reference::Problem pr;
    reference::Result ref;
    std::unique_ptr<VirtualProblem> dev;
    std::unique_ptr<VirtualRanks> vr;
    std::vector<std::vector<float>> first;
  };
  const std::vector<test::EpCase> pair = test::shared_workspace_pair(world);
  std::vector<Layer> layers(pair.size());
  for (std::size_t l = 0; l < pair.size(); ++l) {
    Layer& L = layers[l];
    L.tc = &pair[l];
    L.pr = reference::make_problem(pair[l].cfg, pair[l].tokens, 700 + l);
    L.ref = reference::run(L.pr);
    L.dev = std::make_unique<VirtualProblem>(L.pr, world);
    L.first.resize(static_cast<std::size_t>(world));
  }
  int failed = 0;
  const auto call = [&](Layer& L, const std::string& label) {
    L.dev->forward(*L.vr);
    std::string error;
    try {
      L.vr->synchronize();
    } catch (const Error& e) {
      error = e.what();
    }
    for (int r = 0; r < world; ++r) {
      std::string detail = error;
      bool ok = error.empty() && bench::check_forward(L.vr->layer(r), *L.dev->ranks[r], L.pr,
                                                      L.ref.ranks[r], r, detail);
      const std::vector<float> y = L.dev->ranks[r]->y_host();
      if (L.first[r].empty()) {
        L.first[r] = y;
      } else if (ok && std::memcmp(L.first[r].data(), y.data(), y.size() * sizeof(float)) != 0) {
        ok = false;
        detail += " differs bitwise from this layer's first call";
      }
      if (!ok || r == 0) {
        std::printf("[virtual rank %d/%d, %s] %s %s: %s\n", r, world, label.c_str(),
                    ok ? "PASS" : "FAIL", L.tc->name, detail.c_str());
      }
      failed += ok ? 0 : 1;
      EXPECT_TRUE(ok) << L.tc->name << ", virtual rank " << r << ", " << label << ": " << detail;
    }
  };
  layers[0].vr = std::make_unique<VirtualRanks>(pair[0].cfg, 0, layers[0].dev->weights());
  call(layers[0], "alone");
  layers[1].vr = std::make_unique<VirtualRanks>(pair[1].cfg, *layers[0].vr, layers[1].dev->weights());
  for (int round = 0; round < 3; ++round) {
    for (Layer& L : layers) call(L, "round " + std::to_string(round));
  }
  // The ranks outlive the VirtualRanks that made them; the other layer keeps the memory.
  layers[0].vr.reset();
  call(layers[1], "after the first was destroyed");
  std::printf("%d virtual ranks, two layers sharing the workspace: %d failed rank-calls\n", world,
              failed);
}

TEST(LayerVirtualRanks, TwoRanksShareOneWorkspace) { run_shared(2); }
TEST(LayerVirtualRanks, FourRanksShareOneWorkspace) { run_shared(4); }

// A NaN / inf in one token row of rank 1 (routed to rank 0's experts when NaN): only that token's
// output and routing change, on every rank (poison_check.hpp).
TEST(LayerVirtualRanks, PoisonedRowIsIsolated) {
  MONOMOE_REQUIRE_GPU();
  LayerConfig c = test::ep_base(DType::bf16, Activation::swiglu, 8, 2);
  c.world_size = 2;
  const reference::Problem clean = reference::make_problem(c, {200, 150}, 17);
  VirtualProblem dev(clean, 2);
  VirtualRanks vr(c, 0, dev.weights());
  dev.forward(vr);
  vr.synchronize();
  std::vector<std::vector<float>> y0(2);
  std::vector<std::vector<std::int32_t>> e0(2);
  std::vector<float> w;
  for (int r = 0; r < 2; ++r) {
    y0[r] = dev.ranks[r]->y_host();
    vr.layer(r).routing(e0[r], w);
  }
  const auto h = static_cast<std::size_t>(c.hidden);
  for (float poison : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    SCOPED_TRACE(std::isnan(poison) ? "NaN" : "inf");
    constexpr std::int64_t kBad = 17;
    reference::Problem p = clean;
    p.x[1][static_cast<std::size_t>(kBad) * h + 5] = poison;
    VirtualProblem bad(p, 2);  // the same weights (the layers keep reading dev's)
    bad.forward(vr);
    vr.synchronize();  // no kernel error
    for (int r = 0; r < 2; ++r) {
      std::vector<std::int32_t> e1;
      vr.layer(r).routing(e1, w);
      EXPECT_EQ(test::poisoned_row_violations(y0[r], e0[r], bad.ranks[r]->y_host(), e1,
                                              bad.ranks[r]->tokens(), c.hidden, c.topk, c.experts,
                                              r == 1 ? kBad : -1, std::isnan(poison)),
                "")
          << "rank " << r;
    }
  }
}

// One virtual rank never starts its forward: every other rank stops at its bounded wait and names
// it; nothing hangs.
TEST(LayerVirtualRanks, MissingRankTimesOut) {
  MONOMOE_REQUIRE_GPU();
  LayerConfig c = test::ep_base(DType::bf16, Activation::gelu, 16, 2);
  c.world_size = 4;
  c.timeout_seconds = 1.0;
  const reference::Problem pr = reference::make_problem(c, {100, 100, 100, 100}, 5);
  VirtualProblem dev(pr, 4);
  VirtualRanks vr(c, 0, dev.weights());
  dev.forward(vr, {true, true, false, true});
  const std::string error = synchronize_error(vr);
  std::printf("expected error: %s\n", error.c_str());
  EXPECT_NE(error.find("rank 2 did not start"), std::string::npos) << error;
}

// A given routing with an id out of range on one rank: that rank's call raises KernelError naming
// topk_ids, the token and the value, and skips that one choice; the launch still runs the whole
// exchange, so every other rank's output is right and none of them reports an error or waits.
TEST(LayerVirtualRanks, BadGivenIdIsReportedByItsRankOnly) {
  MONOMOE_REQUIRE_GPU();
  LayerConfig c = test::ep_base(DType::bf16, Activation::gelu, 16, 2);
  c.world_size = 4;
  reference::Problem pr = reference::make_problem(c, {100, 120, 90, 64}, 8);
  reference::give_random_routing(pr, 9);
  const reference::Result ref = reference::run(pr);
  reference::Problem wrong = pr;
  wrong.topk_ids[2][3 * 2 + 0] = 99;  // rank 2, token 3, choice 0
  VirtualProblem dev(wrong, 4);
  VirtualRanks vr(c, 0, dev.weights());
  dev.forward(vr);
  const std::string error = synchronize_error(vr);
  std::printf("expected error: %s\n", error.c_str());
  EXPECT_NE(error.find("virtual rank 2: "), std::string::npos) << error;
  EXPECT_NE(error.find("topk_ids[3, 0] = 99 is not an expert id in [0, 16)"), std::string::npos)
      << error;
  for (int r = 0; r < 4; ++r) {
    if (r == 2) continue;
    std::string detail;
    EXPECT_TRUE(bench::check_forward(vr.layer(r), *dev.ranks[r], pr, ref.ranks[r], r, detail))
        << "rank " << r << ": " << detail;
  }
  std::vector<std::uint8_t> others(90, 1);
  others[3] = 0;
  const double err =
      reference::relative_error(dev.ranks[2]->y_host(), ref.ranks[2].y, c.hidden, others);
  EXPECT_LE(err, bench::tolerance(c.dtype)) << "rank 2's other tokens";
}

// Ranks that build different layers are refused at construction, naming the field, before any
// window is shared.
TEST(LayerVirtualRanks, DifferentConfigsAreRefused) {
  MONOMOE_REQUIRE_GPU();
  LayerConfig c = test::ep_base(DType::bf16, Activation::gelu, 8, 2);
  c.world_size = 2;
  const reference::Problem pr = reference::make_problem(c, {100, 100}, 6);
  const VirtualProblem dev(pr, 2);
  auto comms = Communicator::make_virtual(2, 0);
  LayerConfig c0 = c, c1 = c;
  c1.rank = 1;
  c1.max_tokens = 256;  // rank 1 was built for fewer tokens
  MoELayer first(c0, *comms[0], dev.ranks[0]->weights());
  try {
    MoELayer second(c1, *comms[1], dev.ranks[1]->weights());
    ADD_FAILURE() << "rank 1's different max_tokens was accepted";
  } catch (const ConfigError& e) {
    std::printf("expected error: %s\n", e.what());
    EXPECT_NE(std::string(e.what()).find("max_tokens differs between ranks"), std::string::npos)
        << e.what();
  }
}

// Arguments that cannot make W ranks are refused before any GPU work.
TEST(LayerVirtualRanks, RefusesBadArguments) {
  LayerConfig c = test::ep_base(DType::bf16, Activation::gelu, 8, 2);
  c.world_size = 1;
  EXPECT_THROW(VirtualRanks(c, 0, {ExpertWeights{}}), ConfigError);
  c.world_size = 4;
  try {
    VirtualRanks vr(c, 0, std::vector<ExpertWeights>(3));
    ADD_FAILURE() << "three weight sets for four ranks were accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("world_size"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace monomoe
