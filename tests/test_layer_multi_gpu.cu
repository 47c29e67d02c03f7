// The fused layer and the bulk-synchronous baseline with expert parallelism over 2 and 4 GPUs (one
// forked process per GPU) against the float64 CPU reference, and the failure paths: a rank that
// never arrives, a worker killed mid-run (label gpu). Skips when fewer GPUs are visible.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "baseline/baseline.hpp"
#include "bench/device_problem.hpp"
#include "launch/workers.hpp"
#include "monomoe/monomoe.hpp"
#include "ep_cases.hpp"
#include "multi_gpu.hpp"
#include "pack_cases.hpp"
#include "poison_check.hpp"
#include "reference/reference.hpp"

namespace monomoe {
namespace {

// One worker: every case in order (the layer construction is collective, so all ranks walk the same
// list); with `expect_packed`, some case must have packed row tiles. Returns the number of failed
// cases.
int run_cases(int rank, int world, const UniqueId& id, const std::vector<test::EpCase>& cases,
              bool expect_packed) {
  Communicator comm(id, rank, world, rank);
  int failed = 0;
  int packed = 0;  // cases whose calls had row tiles of several ranks here (device/pack.hpp)
  for (const test::EpCase& tc : cases) {
    LayerConfig c = tc.cfg;
    c.rank = rank;
    reference::Problem pr = reference::make_problem(c, tc.tokens, 1234);
    if (tc.skew_expert >= 0) reference::skew_gate_towards(pr, tc.skew_expert, 50.f);
    if (tc.given_routing) reference::give_random_routing(pr, test::kGivenRoutingSeed);
    const reference::Result ref = reference::run(pr);
    bench::DeviceProblem dev(pr, rank);
    MoELayer layer(c, comm, dev.weights());
    std::vector<float> first;
    bool ok = true;
    std::string detail;
    for (int call = 0; call < 2 && ok; ++call) {  // the second call reuses the window (epochs)
      dev.poison_y();
      dev.forward(layer);  // with the rank's given routing when the case has one
      ok = bench::check_forward(layer, dev, pr, ref.ranks[rank], rank, detail);
      if (ok && call == 0 && layer.stats().packed_tiles > 0) ++packed;
      const std::vector<float> y = dev.y_host();
      if (call == 0) first = y;
      if (call == 1 && ok && std::memcmp(first.data(), y.data(), y.size() * sizeof(float)) != 0) {
        ok = false;
        detail += " second call differs bitwise";
      }
    }
    std::printf("[rank %d/%d] %s %s: %s\n", rank, world, ok ? "PASS" : "FAIL", tc.name,
                detail.c_str());
    failed += ok ? 0 : 1;
    if (tc.given_routing) continue;  // the baseline routes with its own gate only

    // The conventional pipeline on the same inputs (its forward is collective too), with [in, out]
    // weights (all it takes); for fp8 in bf16 on the dequantized weights, compared with that bf16
    // problem's reference (bench::baseline_problem: against the fp8 one it would differ by the
    // quantization itself).
    const bool fp8 = c.dtype == DType::fp8;
    const reference::Problem fp8_base = fp8 ? bench::baseline_problem(pr) : reference::Problem{};
    const reference::Result fp8_base_ref = fp8 ? reference::run(fp8_base) : reference::Result{};
    const reference::Problem& bpr = fp8 ? fp8_base : pr;
    const reference::RankResult& bref = fp8 ? fp8_base_ref.ranks[rank] : ref.ranks[rank];
    baseline::Pipeline pipe(bench::baseline_config(c), dev.weights_in_out(), comm);
    dev.poison_y();
    pipe.forward(dev.x(), dev.tokens(), dev.y(), nullptr);
    std::vector<std::int32_t> experts;
    std::vector<float> weights;
    pipe.routing(experts, weights);
    const bench::Comparison bc = bench::compare(bpr, bref, dev.y_host(), experts, {}, rank);
    const std::int64_t want_drops = bc.expected_dropped;
    const bool bok = bc.passed && pipe.dropped() == want_drops;
    std::printf("[rank %d/%d] %s baseline %s: %s dropped=%lld/%lld\n", rank, world,
                bok ? "PASS" : "FAIL", tc.name, bc.summary().c_str(),
                static_cast<long long>(pipe.dropped()), static_cast<long long>(want_drops));
    failed += bok ? 0 : 1;

    // The FFN rerun that bench times on each rank (received rows, no NCCL) leaves the next
    // collective forward's output bit for bit as it was.
    const std::vector<float> base_y = dev.y_host();
    for (int i = 0; i < 3; ++i) pipe.rerun_expert_ffn(nullptr);
    dev.poison_y();
    pipe.forward(dev.x(), dev.tokens(), dev.y(), nullptr);
    const std::vector<float> again = dev.y_host();
    const bool rok = std::memcmp(base_y.data(), again.data(), again.size() * sizeof(float)) == 0;
    std::printf(
        "[rank %d/%d] %s baseline %s: forward after 3 FFN reruns on %lld received rows %s\n", rank,
        world, rok ? "PASS" : "FAIL", tc.name, static_cast<long long>(pipe.expert_ffn_rows()),
        rok ? "identical" : "differs");
    failed += rok ? 0 : 1;
  }
  if (!expect_packed) return failed;
  // Most cases give an expert partial tiles from several ranks: some must have been packed.
  std::printf("[rank %d/%d] %s: %d cases with packed row tiles\n", rank, world,
              packed > 0 ? "PASS" : "FAIL", packed);
  failed += packed > 0 ? 0 : 1;
  return failed;
}

// The cases of `cases(world)` on `world` GPUs, the fused layer and the baseline.
void run_world(int world, std::vector<test::EpCase> (*cases)(int), bool expect_packed) {
  const int gpus = test::visible_gpus_without_cuda_init();
  if (gpus < world) GTEST_SKIP() << "needs " << world << " GPUs, " << gpus << " visible";
  const std::vector<int> status = test::run_forked(world, 300.0, [&](int rank, const UniqueId& id) {
    return run_cases(rank, world, id, cases(world), expect_packed);
  });
  for (int r = 0; r < world; ++r) EXPECT_EQ(status[r], 0) << "rank " << r << " (failed cases or crash)";
}

TEST(LayerMultiGpu, TwoRanks) { run_world(2, test::ep_cases, true); }
TEST(LayerMultiGpu, FourRanks) { run_world(4, test::ep_cases, true); }
// A shared expert on every rank, in the fused layer and in the baseline (its dense GEMMs over each
// rank's own tokens beside the exchanged rows).
TEST(LayerMultiGpu, SharedExpertTwoRanks) { run_world(2, test::ep_shared_expert_cases, false); }
TEST(LayerMultiGpu, SharedExpertFourRanks) { run_world(4, test::ep_shared_expert_cases, false); }
// DType::fp8 over NVLink, the fused layer against the fp8 reference and the baseline (bf16 on the
// dequantized weights) against its own.
TEST(LayerMultiGpu, Fp8TwoRanks) { run_world(2, test::ep_fp8_cases, false); }
TEST(LayerMultiGpu, Fp8FourRanks) { run_world(4, test::ep_fp8_cases, false); }

// Routings given by hand that make every kind of row tile (pack_cases.hpp), on real GPUs: each
// rank's output against the float64 reference, three calls bit-identical, its tile counts as the
// rule says. Returns the number of failed checks.
int run_packed(int rank, int world, const UniqueId& id) {
  Communicator comm(id, rank, world, rank);
  int failed = 0;
  for (const test::PackCase& pc : test::pack_cases(world)) {
    LayerConfig c = pc.cfg;
    c.rank = rank;
    const reference::Problem pr = test::make_pack_problem(pc, 31);
    const reference::Result ref = reference::run(pr);
    bench::DeviceProblem dev(pr, rank);
    MoELayer layer(c, comm, dev.weights());
    const device::PackResult want = test::expected_pack(pc, rank);
    std::vector<float> first;
    for (int call = 0; call < 3; ++call) {
      dev.poison_y();
      dev.forward(layer);  // the given routing
      std::string detail;
      bool ok = bench::check_forward(layer, dev, pr, ref.ranks[rank], rank, detail);
      const ForwardStats st = layer.stats();
      if (st.row_tiles != want.tiles || st.packed_tiles != want.packed) {
        ok = false;
        detail += " row tiles " + std::to_string(st.row_tiles) + " (packed " +
                  std::to_string(st.packed_tiles) + "), the rule says " +
                  std::to_string(want.tiles) + " (" + std::to_string(want.packed) + ")";
      }
      const std::vector<float> y = dev.y_host();
      if (call == 0) {
        first = y;
      } else if (std::memcmp(first.data(), y.data(), y.size() * sizeof(float)) != 0) {
        ok = false;
        detail += " differs bitwise from the first call";
      }
      std::printf("[rank %d/%d, call %d] %s %s: %lld row tiles, %lld packed: %s\n", rank, world,
                  call, ok ? "PASS" : "FAIL", pc.name.c_str(),
                  static_cast<long long>(st.row_tiles), static_cast<long long>(st.packed_tiles),
                  detail.c_str());
      failed += ok ? 0 : 1;
    }
  }
  return failed;
}

void run_packed_world(int world) {
  const int gpus = test::visible_gpus_without_cuda_init();
  if (gpus < world) GTEST_SKIP() << "needs " << world << " GPUs, " << gpus << " visible";
  const std::vector<int> status = test::run_forked(
      world, 300.0, [&](int rank, const UniqueId& id) { return run_packed(rank, world, id); });
  for (int r = 0; r < world; ++r) {
    EXPECT_EQ(status[r], 0) << "rank " << r << " (failed calls or crash)";
  }
}

TEST(LayerMultiGpu, PackedRowTilesTwoRanks) { run_packed_world(2); }
TEST(LayerMultiGpu, PackedRowTilesFourRanks) { run_packed_world(4); }

// Two layers of different configs on one communicator per GPU share its workspace and its NCCL
// window ("Many layers", layer.hpp): the larger is built after the smaller ran, so every rank
// grows its workspace and reopens its window (collectively, at the same layer) under the smaller;
// then they run in turn, every output checked against the float64 reference at each call and
// bit-identical to that layer's first. Returns the number of failed calls.
int run_shared(int rank, int world, const UniqueId& id) {
  Communicator comm(id, rank, world, rank);
  struct Layer {
    const test::EpCase* tc = nullptr;
    reference::Problem pr;
    reference::Result ref;
    std::unique_ptr<bench::DeviceProblem> dev;
    std::unique_ptr<MoELayer> layer;
    std::vector<float> first;
  };
  const std::vector<test::EpCase> pair = test::shared_workspace_pair(world);
  std::vector<Layer> layers(pair.size());
  for (std::size_t l = 0; l < pair.size(); ++l) {
    Layer& L = layers[l];
    L.tc = &pair[l];
    L.pr = reference::make_problem(pair[l].cfg, pair[l].tokens, 700 + l);
    L.ref = reference::run(L.pr);
    L.dev = std::make_unique<bench::DeviceProblem>(L.pr, rank);
  }
  int failed = 0;
  const auto build = [&](Layer& L) {
    LayerConfig c = L.tc->cfg;
    c.rank = rank;
    L.layer = std::make_unique<MoELayer>(c, comm, L.dev->weights());
  };
  const auto call = [&](Layer& L, const char* when) {
    L.dev->poison_y();
    L.layer->forward(L.dev->x(), L.dev->tokens(), L.dev->y(), nullptr);
    std::string detail;
    bool ok = bench::check_forward(*L.layer, *L.dev, L.pr, L.ref.ranks[rank], rank, detail);
    const std::vector<float> y = L.dev->y_host();
    if (L.first.empty()) {
      L.first = y;
    } else if (ok && std::memcmp(L.first.data(), y.data(), y.size() * sizeof(float)) != 0) {
      ok = false;
      detail += " differs bitwise from this layer's first call";
    }
    std::printf("[rank %d/%d] %s %s (%s): %s\n", rank, world, ok ? "PASS" : "FAIL", L.tc->name,
                when, detail.c_str());
    failed += ok ? 0 : 1;
  };
  build(layers[0]);
  call(layers[0], "alone");
  build(layers[1]);  // collective: every rank grows its window here
  for (int round = 0; round < 3; ++round) {
    for (Layer& L : layers) call(L, "in turn");
  }
  layers[0].layer.reset();  // not the last layer: no collective teardown yet
  call(layers[1], "after the first was destroyed");
  return failed;
}

TEST(LayerMultiGpu, LayersOfDifferentConfigsShareOneWorkspace) {
  const int gpus = test::visible_gpus_without_cuda_init();
  if (gpus < 2) GTEST_SKIP() << "needs 2 GPUs, " << gpus << " visible";
  const std::vector<int> status = test::run_forked(
      2, 300.0, [](int rank, const UniqueId& id) { return run_shared(rank, 2, id); });
  for (int r = 0; r < 2; ++r) EXPECT_EQ(status[r], 0) << "rank " << r << " (failed calls or crash)";
}

// A rank that never calls forward(): the others must report a timeout naming it, not hang.
TEST(LayerMultiGpu, MissingRankTimesOut) {
  const int gpus = test::visible_gpus_without_cuda_init();
  if (gpus < 2) GTEST_SKIP() << "needs 2 GPUs, " << gpus << " visible";
  const std::vector<int> status = test::run_forked(2, 120.0, [](int rank, const UniqueId& id) {
    Communicator comm(id, rank, 2, rank);
    LayerConfig c = test::ep_rank_config(DType::bf16, Activation::gelu, 8, 2, 2, rank);
    c.timeout_seconds = 2.0;
    reference::Problem pr = reference::make_problem(c, {100, 100}, 5);
    bench::DeviceProblem dev(pr, rank);
    MoELayer layer(c, comm, dev.weights());
    if (rank == 1) return 0;  // constructs (collective) but never runs a forward
    try {
      layer.forward(dev.x(), dev.tokens(), dev.y(), nullptr);
      layer.synchronize();
    } catch (const KernelError& e) {
      std::printf("[rank 0] expected error: %s\n", e.what());
      return std::strstr(e.what(), "rank 1") != nullptr ? 0 : 3;
    }
    return 2;  // no error: wrong
  });
  EXPECT_EQ(status[0], 0) << "rank 0 should report rank 1's timeout";
  EXPECT_EQ(status[1], 0);
}

// A NaN / inf in one token row of rank 1 on real GPUs: only that token's output and routing change,
// on both ranks (poison_check.hpp).
TEST(LayerMultiGpu, PoisonedRowIsIsolated) {
  const int gpus = test::visible_gpus_without_cuda_init();
  if (gpus < 2) GTEST_SKIP() << "needs 2 GPUs, " << gpus << " visible";
  const std::vector<int> status = test::run_forked(2, 120.0, [](int rank, const UniqueId& id) {
    Communicator comm(id, rank, 2, rank);
    LayerConfig c = test::ep_rank_config(DType::bf16, Activation::swiglu, 8, 2, 2, rank);
    const reference::Problem clean = reference::make_problem(c, {200, 150}, 17);
    bench::DeviceProblem dev(clean, rank);
    MoELayer layer(c, comm, dev.weights());
    layer.forward(dev.x(), dev.tokens(), dev.y(), nullptr);
    layer.synchronize();
    std::vector<std::int32_t> e0, e1;
    std::vector<float> w;
    layer.routing(e0, w);
    const std::vector<float> y0 = dev.y_host();
    const auto h = static_cast<std::size_t>(c.hidden);
    int bad_cases = 0;
    for (float poison : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
      constexpr std::int64_t kBad = 17;
      reference::Problem p = clean;
      p.x[1][static_cast<std::size_t>(kBad) * h + 5] = poison;
      bench::DeviceProblem bad(p, rank);
      bad.poison_y();
      layer.forward(bad.x(), bad.tokens(), bad.y(), nullptr);
      layer.synchronize();  // a kernel error throws and fails the worker
      layer.routing(e1, w);
      const std::string v = test::poisoned_row_violations(
          y0, e0, bad.y_host(), e1, bad.tokens(), c.hidden, c.topk, c.experts,
          rank == 1 ? kBad : -1, std::isnan(poison));
      if (!v.empty()) {
        std::printf("[rank %d] %s: %s\n", rank, std::isnan(poison) ? "NaN" : "inf", v.c_str());
        ++bad_cases;
      }
    }
    return bad_cases;
  });
  EXPECT_EQ(status[0], 0);
  EXPECT_EQ(status[1], 0);
}

// Ranks that build different layers: every rank is refused at construction, naming the field.
TEST(LayerMultiGpu, DifferentConfigsAreRefused) {
  const int gpus = test::visible_gpus_without_cuda_init();
  if (gpus < 2) GTEST_SKIP() << "needs 2 GPUs, " << gpus << " visible";
  const std::vector<int> status = test::run_forked(2, 120.0, [](int rank, const UniqueId& id) {
    Communicator comm(id, rank, 2, rank);
    LayerConfig c = test::ep_rank_config(DType::bf16, Activation::gelu, 8, 2, 2, rank);
    reference::Problem pr = reference::make_problem(c, {100, 100}, 5);
    if (rank == 1) c.ffn = 384;  // rank 1 builds wider experts
    bench::DeviceProblem dev(pr, rank);
    try {
      MoELayer layer(c, comm, dev.weights());
    } catch (const ConfigError& e) {
      std::printf("[rank %d] expected error: %s\n", rank, e.what());
      return std::strstr(e.what(), "ffn differs between ranks") != nullptr ? 0 : 3;
    }
    return 2;  // accepted: wrong
  });
  EXPECT_EQ(status[0], 0);
  EXPECT_EQ(status[1], 0);
}

// A worker killed with SIGKILL after the collective set-up: the survivor's forward must report a
// timeout naming the dead rank, and the supervisor must return non-zero once both are gone, within
// a bound of a few wait timeouts.
TEST(LayerMultiGpu, KilledWorkerIsReportedAndRunEnds) {
  const int gpus = test::visible_gpus_without_cuda_init();
  if (gpus < 2) GTEST_SKIP() << "needs 2 GPUs, " << gpus << " visible";
  const std::string note = "/tmp/monomoe-killed-worker-" + std::to_string(getpid());
  std::remove(note.c_str());
  launch::SupervisorOptions so;
  so.grace_seconds = 30.0;
  so.timeout_seconds = 120.0;
  so.make_id = [] { return UniqueId::create(); };
  const auto t0 = std::chrono::steady_clock::now();
  const int rc = launch::run_local_workers(2, [&](const launch::WorkerContext& w) {
    Communicator comm(w.id, w.rank, w.world, w.device);
    LayerConfig c = test::ep_rank_config(DType::bf16, Activation::gelu, 8, 2, 2, w.rank);
    c.timeout_seconds = 2.0;
    reference::Problem pr = reference::make_problem(c, {200, 200}, 9);
    bench::DeviceProblem dev(pr, w.rank);
    MoELayer layer(c, comm, dev.weights());
    if (w.rank == 1) raise(SIGKILL);  // dies after the collective construction
    std::string outcome = "no error";
    try {
      layer.forward(dev.x(), dev.tokens(), dev.y(), nullptr);
      layer.synchronize();
    } catch (const KernelError& e) {
      outcome = e.what();
    }
    std::ofstream(note) << outcome;
    return outcome.find("rank 1") != std::string::npos ? 0 : 3;
  }, so);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::ifstream in(note);
  const std::string outcome((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::remove(note.c_str());
  std::printf("killed worker: supervisor status %d after %.1f s; rank 0: %s\n", rc, seconds,
              outcome.c_str());
  EXPECT_EQ(rc, 128 + SIGKILL) << "the supervisor reports the killed worker first";
  EXPECT_NE(outcome.find("rank 1"), std::string::npos) << "rank 0 names the dead peer";
  EXPECT_LT(seconds, 60.0);
}

// A worker stopped (SIGSTOP) after the collective set-up, for longer than the timeout: the other
// rank's forward reports it within the timeout + 1 s, and destroying that rank's layer and
// communicator afterwards returns (no collective teardown with a silent peer). The supervisor
// kills the stopped worker at its run bound.
TEST(LayerMultiGpu, StoppedWorkerIsReportedAndTeardownReturns) {
  const int gpus = test::visible_gpus_without_cuda_init();
  if (gpus < 2) GTEST_SKIP() << "needs 2 GPUs, " << gpus << " visible";
  const std::string note = "/tmp/monomoe-stopped-worker-" + std::to_string(getpid());
  std::remove(note.c_str());
  constexpr double kTimeout = 2.0;
  launch::SupervisorOptions so;
  so.timeout_seconds = 25.0;  // then the stopped worker is killed
  so.make_id = [] { return UniqueId::create(); };
  const int rc = launch::run_local_workers(2, [&](const launch::WorkerContext& w) {
    std::string outcome = "no error";
    double report_s = -1, teardown_s = -1;
    {
      auto comm = std::make_unique<Communicator>(w.id, w.rank, w.world, w.device);
      LayerConfig c = test::ep_rank_config(DType::bf16, Activation::gelu, 8, 2, 2, w.rank);
      c.timeout_seconds = kTimeout;
      reference::Problem pr = reference::make_problem(c, {200, 200}, 10);
      bench::DeviceProblem dev(pr, w.rank);
      auto layer = std::make_unique<MoELayer>(c, *comm, dev.weights());
      if (w.rank == 1) raise(SIGSTOP);  // stays stopped until the supervisor kills it
      const auto t0 = std::chrono::steady_clock::now();
      try {
        layer->forward(dev.x(), dev.tokens(), dev.y(), nullptr);
        layer->synchronize();
      } catch (const KernelError& e) {
        outcome = e.what();
      }
      const auto t1 = std::chrono::steady_clock::now();
      report_s = std::chrono::duration<double>(t1 - t0).count();
      layer.reset();
      comm.reset();
      const auto t2 = std::chrono::steady_clock::now();
      teardown_s = std::chrono::duration<double>(t2 - t1).count();
    }
    std::ofstream(note) << report_s << " " << teardown_s << " " << outcome;
    return 0;
  }, so);
  std::ifstream in(note);
  double report_s = -1, teardown_s = -1;
  in >> report_s >> teardown_s;
  const std::string outcome((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::remove(note.c_str());
  std::printf("stopped worker: supervisor status %d; rank 0 reported in %.2f s, tore down in %.2f s:"
              "%s\n", rc, report_s, teardown_s, outcome.c_str());
  EXPECT_NE(outcome.find("rank 1"), std::string::npos) << "rank 0 names the stopped peer";
  EXPECT_GE(report_s, 0.0);
  EXPECT_LE(report_s, kTimeout + 1.0);
  EXPECT_GE(teardown_s, 0.0) << "rank 0 did not finish its teardown";
  EXPECT_LT(teardown_s, 5.0);
  EXPECT_EQ(rc, 124) << "the stopped worker is killed at the run bound";
}

}  // namespace
}  // namespace monomoe
