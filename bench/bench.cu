#include "bench/bench.hpp"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iomanip>
#include <ostream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "baseline/baseline.hpp"
#include "bench/ceiling.hpp"
#include "bench/weight_floor.hpp"
#include "bench/device_problem.hpp"
#include "bench/graph.hpp"
#include "bench/metrics.hpp"
#include "bench/ranks.hpp"
#include "bench/timing.hpp"
#include "device/params.cuh"  // kRouteAloneTiles
#include "host/check.hpp"
#include "host/window.hpp"
#include "launch/join.hpp"
#include "launch/workers.hpp"
#include "monomoe/monomoe.hpp"
#include "reference/reference.hpp"

namespace monomoe::bench {

namespace {

// The dense GEMM ceiling's calls: each is some 2 ms, so a few warm-ups settle cuBLAS's choice and
// the clocks, and the median of 20 is stable without making the bench noticeably longer.
constexpr int kCeilingWarmup = 5;
constexpr int kCeilingIterations = 20;

// A late rank: one thread spins for `us` microseconds of the GPU's global timer on `stream`.
__global__ void spin_kernel(long long ns) {
  long long start = 0, now = 0;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(start));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  } while (now - start < ns);
}

void spin_on_stream(double us, cudaStream_t stream) {
  spin_kernel<<<1, 1, 0, stream>>>(static_cast<long long>(us * 1e3));
  MONOMOE_CUDA(cudaGetLastError());
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Reference for the rank-0 tokens that are checked: all of them for small or capacity-limited
// configs (capacity couples tokens), else a random sample.
struct Expected {
  reference::RankResult result;      // of the bench's rank
  std::vector<std::int64_t> tokens;  // empty: all tokens
};

Expected expected_output(const reference::Problem& pr, int rank, int sample, std::uint64_t seed) {
  const std::int64_t s = pr.tokens.at(static_cast<std::size_t>(rank));
  Expected ex;
  if (pr.config.capacity_factor > 0.0 || s <= sample) {
    ex.result = reference::run(pr).ranks.at(static_cast<std::size_t>(rank));
    return ex;
  }
  std::mt19937_64 rng((seed ^ 0x5eed) + static_cast<std::uint64_t>(rank));
  for (int i = 0; i < sample; ++i) ex.tokens.push_back(static_cast<std::int64_t>(rng() % s));
  ex.result = reference::run(sample_tokens(pr, ex.tokens, rank)).ranks[0];
  return ex;
}

// Forwards the trace runs back to back; it reports the last. With peers, a call ends only when
// their results have arrived, so by the last call the ranks run in step, as in the timed loop. (A
// single call after each rank's own ceiling and HBM measurements showed their launch skew instead:
// rank 0's first task at 140-490 us on 2 GPUs, perf log 2026-11-30.)
constexpr int kTraceCalls = 5;

constexpr TaskTrace::Type kTaskTypes[] = {TaskTrace::Type::gemm0, TaskTrace::Type::gemm1,
                                          TaskTrace::Type::combine};

const char* task_type_name(TaskTrace::Type t) {
  switch (t) {
    case TaskTrace::Type::gemm0: return "gemm0";
    case TaskTrace::Type::gemm1: return "gemm1";
    case TaskTrace::Type::combine: return "combine";
  }
  return "?";
}

// Per task type of a traced forward: how many ran, their median and 90th-percentile duration, when
// the first started and the last ended (whether the phases overlap, and the tail of each); for
// GEMM tasks also the medians of its three parts: from taken to its tile GEMM's start (the row
// table, waits), the tile GEMM (operands and MMAs), and after it (K-split sums, epilogue,
// publication).
void print_task_types(const std::vector<TaskTrace>& tasks, std::ostream& out) {
  out << "tasks by type (us; the first " << MoELayer::kTaskTraceRecords << " of each block):\n";
  const auto median = [](std::vector<double>& v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  for (const TaskTrace::Type type : kTaskTypes) {
    const char* name = task_type_name(type);
    std::vector<double> len, before, math, after;
    double first = 0.0, last = 0.0;
    for (const TaskTrace& t : tasks) {
      if (t.type != type) continue;
      const double s = static_cast<double>(t.start) * 1e-3, e = static_cast<double>(t.end) * 1e-3;
      first = len.empty() ? s : std::min(first, s);
      last = len.empty() ? e : std::max(last, e);
      len.push_back(e - s);
      if (t.math_start >= 0) {
        const double ms = static_cast<double>(t.math_start) * 1e-3;
        const double me = static_cast<double>(t.math_end) * 1e-3;
        before.push_back(ms - s);
        math.push_back(me - ms);
        after.push_back(e - me);
      }
    }
    std::ostringstream line;
    line << "  " << std::left << std::setw(8) << name << std::right << std::setw(6) << len.size();
    if (!len.empty()) {
      const double med = median(len);  // (sorts len, which the p90 below reads)
      line << std::fixed << std::setprecision(1) << "  median " << med << "  p90 "
           << len[len.size() * 9 / 10] << "  first start " << first << "  last end " << last;
    }
    if (!math.empty()) {
      line << std::fixed << std::setprecision(1) << "  (parts: before " << median(before)
           << ", tile GEMM " << median(math) << ", after " << median(after) << ")";
    }
    out << line.str() << "\n";
  }
}

// Every task of a traced forward as CSV: block, type, a, b, start_us, math_start_us,
// math_end_us (its tile GEMM's; empty for combine tasks), end_us.
void write_task_csv(const std::vector<TaskTrace>& tasks, const std::string& path) {
  std::ofstream f(path);
  if (!f) throw std::runtime_error("cannot write --trace-tasks file " + path);
  f << "block,type,a,b,start_us,math_start_us,math_end_us,end_us\n" << std::fixed
    << std::setprecision(3);
  const auto us = [&](std::int64_t ns) {
    if (ns >= 0) f << static_cast<double>(ns) * 1e-3;
  };
  for (const TaskTrace& t : tasks) {
    f << t.block << ',' << task_type_name(t.type) << ',' << t.a << ',' << t.b << ',';
    us(t.start);
    f << ',';
    us(t.math_start);
    f << ',';
    us(t.math_end);
    f << ',';
    us(t.end);
    f << '\n';
  }
}

// world > 1: the rows this rank's experts ran in a forward (every forward of the bench has the same
// inputs) against the mean over ranks (every rank has the same tokens: tokens x topk rows, less
// drops). The ranks wait for each other at the end, so the busiest one sets the layer's latency
// (the top-8 shapes of issue 17).
void print_rank_rows(const ForwardStats& st, std::int64_t tokens, std::int64_t topk,
                     std::ostream& out, const std::string& lead) {
  std::int64_t rows = 0;
  for (std::int64_t r : st.rows_per_local_expert) rows += r;
  const double mean = static_cast<double>(tokens) * static_cast<double>(topk);
  std::ostringstream os;
  os << lead << rows << " rows";
  if (mean > 0) {
    os << ", " << std::fixed << std::setprecision(3) << static_cast<double>(rows) / mean
       << "x the mean over ranks (" << tokens * topk << ": tokens x topk per rank)";
  }
  out << os.str() << "\n";
}

// world > 1: the NVLink bytes of one rank's rows, out and back, and the least a layer must move.
void print_nvlink_bytes(double bytes, double bytes_min, std::ostream& out,
                        const std::string& lead) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(1) << lead << "monomoe "
     << bytes * 1e-6 << " MB (one row per routed choice, out and back); the least: "
     << bytes_min * 1e-6 << " MB (one row per token and peer rank, each way)";
  if (bytes_min > 0) os << ", " << std::setprecision(2) << bytes / bytes_min << "x of it";
  out << os.str() << "\n";
}

// world > 1: when the expert-parallel roles did their part (us from this rank's first block start):
// the dispatch blocks' copies to peers, and the subscriber's steps from the headers to the last
// published task. Nothing when no block played those roles (world 1).
void print_ep_events(const std::vector<BlockTrace>& tr, std::ostream& out, const std::string& tag,
                     double dispatch_bytes) {
  std::vector<double> start, end;
  const BlockTrace* sub = nullptr;
  for (const BlockTrace& b : tr) {
    if (b.dispatch_start >= 0) start.push_back(static_cast<double>(b.dispatch_start) * 1e-3);
    if (b.dispatch_end >= 0) end.push_back(static_cast<double>(b.dispatch_end) * 1e-3);
    if (b.headers_seen >= 0 && !sub) sub = &b;
  }
  if (start.empty() && !sub) return;
  std::sort(start.begin(), start.end());
  std::sort(end.begin(), end.end());
  const auto us = [](std::int64_t ns) { return ns < 0 ? -1.0 : static_cast<double>(ns) * 1e-3; };
  std::ostringstream os;
  os << std::fixed << std::setprecision(1);
  if (!start.empty()) {
    os << tag << "  dispatch      " << start.size() << " blocks: start min " << start.front();
    if (!end.empty()) {
      os << "  end median " << end[end.size() / 2] << "  max " << end.back() << " us";
      const double window_us = end.back() - start.front();
      if (dispatch_bytes > 0 && window_us > 0) {
        os << ": " << dispatch_bytes * 1e-6 << " MB, " << dispatch_bytes / window_us * 1e-3
           << " GB/s over the window";
      }
    }
    os << "\n";
  }
  if (sub) {
    os << tag << "  subscriber    headers seen " << us(sub->headers_seen) << "  tiles listed "
       << us(sub->tiles_listed) << "  own tasks published " << us(sub->own_published)
       << "  last peer tile published " << us(sub->peer_published) << "  last combine published "
       << us(sub->combine_published) << " us\n";
  }
  out << os.str();
}

// A traced forward: when the blocks finished each phase, how busy they were in the task loop, and
// its tasks by type (task_csv non-empty: every task into that CSV file).
void print_trace(MoELayer& layer, DeviceProblem& dev, std::int64_t tokens, cudaStream_t stream,
                 std::ostream& out, int rank, int world, const std::string& task_csv,
                 double dispatch_bytes) {
  layer.set_trace(true);  // before the calls: it allocates (and may synchronize)
  // The reported forward is also timed by events: tracing itself makes a forward longer (~7 us on
  // one GPU, ~45 us on two at the default config, perf log 2026-11-30 02:48), so the blocks' times
  // read late by about that against the timed loop.
  cudaEvent_t ev[2];
  for (auto& e : ev) MONOMOE_CUDA(cudaEventCreate(&e));
  for (int i = 0; i < kTraceCalls; ++i) {
    if (i == kTraceCalls - 1) MONOMOE_CUDA(cudaEventRecord(ev[0], stream));
    layer.forward(dev.x(), tokens, dev.y(), stream);
  }
  MONOMOE_CUDA(cudaEventRecord(ev[1], stream));
  const std::vector<BlockTrace> tr = layer.trace();  // every call rewrites every block's slots
  float traced_ms = 0.f;
  MONOMOE_CUDA(cudaEventElapsedTime(&traced_ms, ev[0], ev[1]));
  for (auto& e : ev) cudaEventDestroy(e);
  const std::vector<TaskTrace> tasks = layer.task_trace();
  layer.set_trace(false);
  if (!task_csv.empty()) write_task_csv(tasks, task_csv);
  // min, median, 90th percentile and max over the blocks, and which block had the max (a phase
  // that ends with a grid barrier waits for its slowest block); the text ends inside the
  // parenthesis of that block.
  using Samples = std::vector<std::pair<double, std::size_t>>;  // (us, block)
  const auto summary = [](Samples v) {
    std::sort(v.begin(), v.end());
    std::ostringstream os;
    os << std::fixed << std::setprecision(1) << "min " << v.front().first << "  median "
       << v[v.size() / 2].first << "  p90 " << v[v.size() * 9 / 10].first << "  max "
       << v.back().first << " us (block " << v.back().second;
    return os.str();
  };
  const auto stat = [&](auto field) {
    Samples v;
    for (std::size_t i = 0; i < tr.size(); ++i) {
      v.emplace_back(static_cast<double>(field(tr[i])) * 1e-3, i);
    }
    return summary(std::move(v)) + ")";
  };
  // A routing stamp's line over the blocks that have it (e.g. those with gate GEMM items); no
  // line when none has.
  const auto stamp_line = [&](const char* name, std::int64_t BlockTrace::*field) {
    Samples v;
    for (std::size_t i = 0; i < tr.size(); ++i) {
      if (tr[i].*field >= 0) v.emplace_back(static_cast<double>(tr[i].*field) * 1e-3, i);
    }
    if (v.empty()) return std::string();
    const std::size_t n = v.size();
    return "  " + std::string(name) + summary(std::move(v)) + "; " + std::to_string(n) +
           " blocks)\n";
  };
  if (rank > 0) {
    // The other ranks: their phase ends in one line, then their roles' events.
    const std::string tag = rank_tag(rank, world);
    out << tag << "trace: first task " << stat([](const BlockTrace& b) { return b.first_task; })
        << "\n" << tag << "       last GEMM end "
        << stat([](const BlockTrace& b) { return b.last_gemm_end; }) << "\n" << tag
        << "       end " << stat([](const BlockTrace& b) { return b.end; }) << "\n";
    print_ep_events(tr, out, tag, dispatch_bytes);
    return;
  }
  const char* whose = world > 1 ? "rank 0, " : "";
  std::ostringstream took;  // (out's own format stays as the caller set it)
  took << std::fixed << std::setprecision(3) << traced_ms;
  out << "trace (the last of " << kTraceCalls << " back-to-back forwards, " << took.str()
      << " ms by events; " << whose << tr.size()
      << " blocks, us from the first block's start):\n"
      << stamp_line("logits done   ", &BlockTrace::logits_done)
      << stamp_line("gate barrier  ", &BlockTrace::gate_barrier)
      << "  gate done     " << stat([](const BlockTrace& b) { return b.gate_done; }) << "\n"
      << stamp_line("scanned       ", &BlockTrace::scanned)
      << stamp_line("placed        ", &BlockTrace::placed)
      << "  routed        " << stat([](const BlockTrace& b) { return b.routed; }) << "\n"
      << "  first task    " << stat([](const BlockTrace& b) { return b.first_task; }) << "\n"
      << "  last GEMM end " << stat([](const BlockTrace& b) { return b.last_gemm_end; }) << "\n"
      << "  end           " << stat([](const BlockTrace& b) { return b.end; }) << "\n"
      << "  queue wait    " << stat([](const BlockTrace& b) { return b.queue_wait_ns; }) << "\n"
      << "  in GEMM tasks " << stat([](const BlockTrace& b) { return b.gemm_ns; }) << "\n"
      << "  in combines   " << stat([](const BlockTrace& b) { return b.combine_ns; }) << "\n"
      << "  tasks/block   " << stat([](const BlockTrace& b) { return b.tasks * 1000; }) << "\n";
  // A call routed without grid barriers (at most kRouteAloneTiles token tiles) gives its (tile, K
  // slice) gate items to blocks 0.. in order, and the percentiles above hide those few blocks:
  // each one's "gate done" (its slices, then the routing of the tile it completed last, or, above
  // 16 tokens, its share of the spread routing's rows). (With more tiles the stamp follows a grid
  // barrier: the same in every block.)
  const std::int64_t token_tiles = (tokens + device::kTileRows - 1) / device::kTileRows;
  const std::int64_t gate_items = token_tiles * layer.stats().gate_splits;
  if (token_tiles > 0 && token_tiles <= device::kRouteAloneTiles && gate_items <= 16 &&
      static_cast<std::size_t>(gate_items) <= tr.size()) {
    std::ostringstream line;  // (out's own format stays as the caller set it)
    line << std::fixed << std::setprecision(1) << "  gate blocks   " << gate_items
         << " items (token tiles x K slices), done at";
    for (std::size_t i = 0; i < static_cast<std::size_t>(gate_items); ++i) {
      line << (i ? ", " : " ") << static_cast<double>(tr[i].gate_done) * 1e-3;
    }
    out << line.str() << " us (blocks 0..)\n";
  }
  print_ep_events(tr, out, "", dispatch_bytes);
  print_task_types(tasks, out);
}


// The bench of one rank: in-process for one GPU, in each forked worker for several. Rank 0 prints the
// table; every rank checks its own tokens and prints its correctness lines.
int bench_rank(const BenchOptions& o, const launch::WorkerContext& w, std::ostream& out,
               std::ostream& progress) {
  const int rank = w.rank;
  const int world = w.world;
  const LayerConfig cfg = rank_config(o.config, rank, world);
  const std::int64_t s = cfg.max_tokens;
  const std::string tag = rank_tag(rank, world);
  if (rank == 0) out << "monomoe bench: " << cfg.describe() << "\n";
  auto t0 = std::chrono::steady_clock::now();
  progress << "[1/7] generating inputs (seed " << o.seed << ")..." << std::endl;
  const reference::Problem pr = reference::make_problem(
      cfg, std::vector<std::int64_t>(static_cast<std::size_t>(world), s), o.seed);
  progress << "[2/7] reference on the CPU (" << (cfg.capacity_factor > 0 || s <= o.sample_tokens
                                                     ? std::to_string(s)
                                                     : std::to_string(o.sample_tokens))
           << " tokens)..." << std::endl;
  const Expected ex = expected_output(pr, rank, o.sample_tokens, o.seed);
  progress << "      done in " << std::fixed << std::setprecision(1) << seconds_since(t0) << " s"
           << std::endl;

  progress << "[3/7] uploading and checking correctness..." << std::endl;
  t0 = std::chrono::steady_clock::now();
  Communicator comm(w.id, rank, world, w.device);
  launch::finish_rendezvous(w);
  DeviceProblem dev(pr, rank);
  MoELayer layer(cfg, comm, dev.weights());
  cudaStream_t stream = nullptr;
  MONOMOE_CUDA(cudaStreamCreate(&stream));
  dev.poison_y();
  layer.forward(dev.x(), s, dev.y(), stream);
  std::vector<std::int32_t> experts;
  std::vector<float> weights;
  layer.routing(experts, weights);
  const std::vector<float> y_forward = dev.y_host();
  const Comparison fused = compare(pr, ex.result, y_forward, experts, ex.tokens, rank);
  out << tag << "correctness monomoe:  " << fused.summary() << std::endl;
  // Rows of this rank's tokens that go to other ranks' experts: each travels out and back. The
  // least a layer must move: one row per (token, other rank it routes to), each way.
  std::int64_t rows_out = 0, rows_min = 0;
  const std::size_t k = static_cast<std::size_t>(cfg.topk);
  for (std::size_t t = 0; t * k < experts.size(); ++t) {
    std::uint64_t peers = 0;  // ranks < 64 (Limits::kMaxWorld)
    for (std::size_t j = 0; j < k; ++j) {
      const auto owner = static_cast<int>(experts[t * k + j] / cfg.experts_per_rank());
      if (owner == rank) continue;
      ++rows_out;
      peers |= std::uint64_t{1} << owner;
    }
    rows_min += std::popcount(peers);
  }
  // A row out is x as the expert GEMMs read it (fp8: E4M3 values and their scales,
  // device::operand_pitch), a row back one of y's type.
  const double row_back =
      static_cast<double>(cfg.hidden) * static_cast<double>(element_bytes(cfg.dtype));
  const double row_out = cfg.dtype == DType::fp8
                             ? static_cast<double>(device::operand_pitch(cfg.hidden, true))
                             : row_back;
  const double bytes = static_cast<double>(rows_out) * (row_out + row_back);
  const double bytes_min = static_cast<double>(rows_min) * (row_out + row_back);
  if (rank > 0) {  // rank 0 prints them under its table
    print_nvlink_bytes(bytes, bytes_min, out, tag + "NVLink bytes: ");
    print_rank_rows(layer.stats(), s, cfg.topk, out, tag + "rows its experts ran: ");
  }

  std::unique_ptr<baseline::Pipeline> base;
  Comparison base_cmp;
  const std::string base_note = baseline_note(cfg.dtype);
  if (o.baseline) {
    // The baseline takes [in, out] weights only: the same weights in that layout (fp8: dequantized
    // to bf16, which it runs instead; baseline_config).
    base = std::make_unique<baseline::Pipeline>(baseline_config(cfg), dev.weights_in_out(), comm);
    base->use_cutlass_grouped_gemm(o.baseline_cutlass);
    if (rank == 0) {
      out << "baseline expert GEMMs: "
          << (o.baseline_cutlass ? "CUTLASS sm90 grouped GEMM" : "cuBLAS grouped batched GEMM");
      if (!base_note.empty()) out << "; baseline: " << base_note;
      out << "\n";
    }
    dev.poison_y();
    base->forward(dev.x(), s, dev.y(), stream);
    MONOMOE_CUDA(cudaStreamSynchronize(stream));
    std::vector<float> bw;
    base->routing(experts, bw);
    if (base_note.empty()) {
      base_cmp = compare(pr, ex.result, dev.y_host(), experts, ex.tokens, rank);
    } else {
      // fp8: the baseline computes something else (bf16 on the dequantized weights, activations
      // not quantized), so it is checked against that problem's reference, on the same tokens, at
      // bf16's tolerance; against the fp8 reference it would differ by the quantization itself.
      const reference::Problem bpr = baseline_problem(pr);
      const Expected bex = expected_output(bpr, rank, o.sample_tokens, o.seed);
      base_cmp = compare(bpr, bex.result, dev.y_host(), experts, bex.tokens, rank);
    }
    out << tag << "correctness baseline"
        << (base_note.empty() ? "" : " (against its bf16 reference)") << ": " << base_cmp.summary()
        << std::endl;
  }
  if (!fused.passed || (base && !base_cmp.passed)) {
    // Every rank must take the same path (the layers' calls are collective): a failing rank exits
    // and the others' next forward times out, naming it.
    out << tag << "FAILED: output does not match the CPU reference; not timing" << std::endl;
    return 1;
  }

  // (With large weights this step is long: the host's conversions for the GPU, and fp8's
  // dequantized copy and second reference for the baseline.)
  progress << "      done in " << std::fixed << std::setprecision(1) << seconds_since(t0) << " s"
           << std::endl;
  progress << "[4/7] timing monomoe (" << o.warmup << " warm-up + " << o.iterations
           << (o.graph ? " replays of a CUDA graph of one forward()" : " calls") << ")..."
           << std::endl;
  const bool straggler = rank == o.delay_rank && o.delay_us > 0.0;
  // --graph: one forward() captured (every rank captures its own; nothing runs while capturing).
  std::unique_ptr<Graph> graph;
  if (o.graph) {
    graph = capture([&] { layer.forward(dev.x(), s, dev.y(), stream); }, stream);
    dev.poison_y();  // the replays must write all of y
  }
  const Timing tf = time_calls(
      [&] {
        if (straggler) spin_on_stream(o.delay_us, stream);
        if (graph) {
          graph->launch(stream);
        } else {
          layer.forward(dev.x(), s, dev.y(), stream);
        }
      },
      o.warmup, o.iterations, stream);
  if (o.delay_rank >= 0 && rank == 0) {
    out << "straggler: rank " << o.delay_rank << " waited " << o.delay_us
        << " us before each timed forward of monomoe (rank 0's latency below includes it)\n";
  }
  layer.synchronize();
  bool graph_ok = true;
  if (graph) {
    // Same x, same layer: the last replay's y must be forward()'s, bit for bit.
    const std::vector<float> y_graph = dev.y_host();
    graph_ok = y_graph.size() == y_forward.size() &&
               std::memcmp(y_graph.data(), y_forward.data(), y_graph.size() * sizeof(float)) == 0;
    graph.reset();
    out << tag << "graph: monomoe timed as replays of one forward() captured in a CUDA graph; "
        << "their output is " << (graph_ok ? "bit-identical to" : "DIFFERENT from (FAILED)")
        << " forward()'s" << std::endl;
  }
  Timing tb;
  if (base) {
    progress << "[5/7] timing the baseline pipeline..." << std::endl;
    tb = time_calls([&] { base->forward(dev.x(), s, dev.y(), stream); }, o.warmup, o.iterations,
                    stream);
  }
  // The baseline's expert FFN alone, rerun on the rows of its last timed forward. The rerun calls
  // no NCCL, so every rank times its own (each GPU does the same work, as in the forwards) and
  // rank 0 prints its own: with world > 1, the rows it received.
  Timing tffn;
  std::int64_t ffn_rows = 0;
  if (base) {
    ffn_rows = base->expert_ffn_rows();
    progress << "[6/7] timing the baseline's expert FFN alone (" << ffn_rows << " rows)..."
             << std::endl;
    if (ffn_rows > 0) {
      // The first rerun after a forward builds its pointer arrays (host round trips): untimed.
      base->rerun_expert_ffn(stream);
      tffn = time_calls([&] { base->rerun_expert_ffn(stream); }, o.warmup, o.iterations, stream);
    }
  }
  // Every rank measures its own GPU's ceiling: no rank idles at a collective meanwhile.
  DenseCeiling ceiling;
  if (o.ceiling) {
    ceiling = dense_ceiling_shape(cfg.dtype);
    progress << "[7/7] dense GEMM ceiling (cuBLAS " << ceiling.m << " x " << ceiling.n << " x "
             << ceiling.k << ", " << ceiling.math << ")..." << std::endl;
    ceiling = measure_dense_ceiling(cfg.dtype, kCeilingWarmup, kCeilingIterations, stream);
  }
  // The HBM read rate for the weight-read floor: 2 GiB, far past L2, some 0.5 ms a call.
  HbmRead hbm;
  if (o.weight_floor) {
    hbm = measure_hbm_read(std::size_t{2} << 30, kCeilingWarmup, kCeilingIterations, stream);
  }
  const ForwardStats st = layer.stats();
  // The weight-read floor counts the experts that ran rows on each rank and takes the median over
  // ranks (issue 18), so every rank's count goes to every rank.
  const std::int64_t touched = static_cast<std::int64_t>(
      std::count_if(st.rows_per_local_expert.begin(), st.rows_per_local_expert.end(),
                    [](std::int64_t r) { return r > 0; }));
  std::vector<std::int64_t> touched_ranks{touched};
  if (o.weight_floor) touched_ranks = detail::nccl_all_gather(comm, {touched});
  if (o.trace) {
    // The forward is collective: every rank runs the traced one; rank 0 prints its own blocks in
    // full, the others a summary of theirs.
    std::string csv = o.trace_tasks_path;
    if (!csv.empty() && rank > 0) csv += ".rank" + std::to_string(rank);
    // Dispatch sends each of this rank's rows for another rank's experts once.
    print_trace(layer, dev, s, stream, out, rank, world, csv, bytes / 2);
  }
  MONOMOE_CUDA(cudaStreamDestroy(stream));
  const double base_bytes = base ? static_cast<double>(base->bytes_sent()) : 0.0;
  const int status = graph_ok ? 0 : 1;
  if (rank != 0) return status;

  // Expert FFN work: every kept (token, expert) row of rank 0's tokens through GEMM0 and GEMM1, and
  // every token through the shared expert's two GEMMs.
  const double flop = ffn_flop(s * cfg.topk - st.dropped, cfg) + shared_flop(s, cfg);
  const auto ffn_tflops = [&](double ms) { return tflops(flop, ms); };
  const double ffn_alone_tflops = tflops(ffn_flop(ffn_rows, cfg), tffn.median_ms);
  const double floor_ms = compute_floor_ms(flop, ceiling.tflops);
  // Weight-read floor: the weights of the experts that ran rows (the median over ranks of their
  // count; the lower middle one for an even count of ranks), the gate, and the shared expert
  // (every token runs it), read once.
  std::vector<std::int64_t> sorted = touched_ranks;
  std::sort(sorted.begin(), sorted.end());
  const std::int64_t touched_median = sorted[(sorted.size() - 1) / 2];
  const double weight_bytes =
      static_cast<double>(touched_median) * expert_weight_bytes(cfg) +
      static_cast<double>(cfg.hidden * cfg.experts) * static_cast<double>(element_bytes(cfg.dtype)) +
      (s > 0 ? shared_weight_bytes(cfg) : 0.0);
  const double weight_floor_ms =
      o.weight_floor ? weight_bytes / (hbm.tb_per_s * 1e12) * 1e3 : 0.0;
  // All ranks' tokens per second (every rank runs the same count in lockstep).
  const auto tokens_per_s = [&](double ms) {
    return static_cast<double>(s) * world / (ms * 1e-3);
  };
  cudaDeviceProp prop{};
  MONOMOE_CUDA(cudaGetDeviceProperties(&prop, w.device));

  out << std::fixed;
  if (o.graph) out << "\nmonomoe row: CUDA-graph replays (--graph)";
  out << "\n" << std::left << std::setw(10) << "path" << std::right << std::setw(12) << "median ms"
      << std::setw(10) << "min ms" << std::setw(14) << "tokens/s" << std::setw(14)
      << "FFN TFLOP/s";
  if (world > 1) out << std::setw(12) << "MB sent" << std::setw(10) << "GB/s";
  out << "\n";
  const auto row = [&](const char* name, const Timing& t, double moved) {
    out << std::left << std::setw(10) << name << std::right << std::setprecision(3)
        << std::setw(12) << t.median_ms << std::setw(10) << t.min_ms << std::setprecision(0)
        << std::setw(14) << tokens_per_s(t.median_ms) << std::setprecision(1) << std::setw(14)
        << ffn_tflops(t.median_ms);
    if (world > 1) {
      out << std::setw(12) << moved * 1e-6 << std::setw(10) << moved / (t.median_ms * 1e-3) * 1e-9;
    }
    out << "\n";
  };
  row("monomoe", tf, bytes);
  if (base) {
    row("baseline", tb, base_bytes);
    if (!base_note.empty()) out << "baseline: " << base_note << "\n";
    out << "speed-up (baseline / monomoe, median): " << std::setprecision(2)
        << tb.median_ms / tf.median_ms << "x\n";
  }
  out << "device: " << world << " x " << prop.name << "; rank 0's view: dropped rows " << st.dropped;
  if (st.k_split > 1) out << "; expert GEMM tasks split in " << st.k_split << " K slices (few rows)";
  if (st.packed_tiles > 0) {
    out << "; " << st.packed_tiles << " of " << st.row_tiles
        << " row tiles hold rows of several ranks (packed)";
  }
  if (st.gate_splits > 2) out << "; gate GEMM split in " << st.gate_splits << " K slices";
  if (world > 1) {
    out << "; FFN TFLOP/s per GPU; MB sent = rank 0's rows to other ranks' experts, out and back";
  }
  out << "\n";
  if (world > 1) {
    print_nvlink_bytes(bytes, bytes_min, out, "NVLink bytes of rank 0: ");
    print_rank_rows(st, s, cfg.topk, out, "rows rank 0's experts ran: ");
  }
  // What the table's rates compare with: the baseline's GEMMs without its routing and exchanges,
  // and the chip's dense GEMM rate with the time the FFN's FLOP take at it.
  if (base) {
    out << "baseline expert FFN alone (grouped GEMM0 + activation + grouped GEMM1"
        << (base_note.empty() ? "" : ", bf16 on dequantized fp8 weights")
        << (world > 1 ? ", rank 0's own, on the rows it received" : "") << "): ";
    if (ffn_rows == 0) {
      out << "no rows\n";
    } else {
      out << std::setprecision(3) << tffn.median_ms << " ms median, " << std::setprecision(1)
          << ffn_alone_tflops << " TFLOP/s, " << ffn_rows << " rows; " << std::setprecision(0)
          << 100.0 * tffn.median_ms / tb.median_ms << " % of the baseline's median\n";
    }
  }
  if (o.ceiling) {
    out << "dense GEMM ceiling: " << std::setprecision(1) << ceiling.tflops
        << " TFLOP/s (one cuBLAS GEMM " << ceiling.m << " x " << ceiling.n << " x " << ceiling.k
        << ", " << ceiling.math << ", median of " << kCeilingIterations << ")\n"
        << "compute floor: " << std::setprecision(3) << floor_ms << " ms (FFN FLOP"
        << (world > 1 ? " of rank 0's tokens" : "")
        << " / ceiling); monomoe median / floor: " << std::setprecision(2)
        << tf.median_ms / floor_ms << "x\n";
  }
  if (o.weight_floor) {
    out << "weight-read floor: " << std::setprecision(3) << weight_floor_ms << " ms (";
    if (world > 1) {
      out << "the median over ranks of their experts that ran rows, " << touched_median << " of "
          << cfg.experts_per_rank() << " (by rank:";
      for (std::int64_t t : touched_ranks) out << " " << t;
      out << ")";
    } else {
      out << touched << " of " << cfg.experts_per_rank() << " experts ran rows";
    }
    out << ": " << std::setprecision(1) << weight_bytes * 1e-6 << " MB of their weights"
        << (cfg.shared_ffn > 0 ? ", the gate and the shared expert" : " and the gate") << ", at "
        << std::setprecision(2) << hbm.tb_per_s << " TB/s, the HBM read rate measured here); "
        << "monomoe median / weight floor: " << tf.median_ms / weight_floor_ms << "x";
    if (base) out << ", baseline: " << tb.median_ms / weight_floor_ms << "x";
    out << "\n";
  }

  if (!o.json_path.empty()) {
    std::ofstream js(o.json_path);
    js << std::setprecision(6) << "{\n  \"config\": \"" << cfg.describe() << "\",\n"
       << "  \"device\": \"" << prop.name << "\",\n  \"gpus\": " << world << ",\n  \"iterations\": "
       << o.iterations << ",\n  \"correct\": " << (fused.passed && graph_ok ? "true" : "false")
       << ",\n  \"rel_error\": " << fused.rel_error << ",\n  \"monomoe\": {\"median_ms\": "
       << tf.median_ms << ", \"min_ms\": " << tf.min_ms << ", \"tflops\": "
       << ffn_tflops(tf.median_ms) << ", \"tokens_per_s\": " << tokens_per_s(tf.median_ms)
       << ", \"bytes_sent\": " << bytes << ", \"bytes_least\": " << bytes_min
       << ", \"graph\": " << (o.graph ? "true" : "false") << "}";
    if (base) {
      js << ",\n  \"baseline\": {\"median_ms\": " << tb.median_ms << ", \"min_ms\": " << tb.min_ms
         << ", \"tflops\": " << ffn_tflops(tb.median_ms) << ", \"bytes_sent\": " << base_bytes
         << ", \"expert_gemm\": \"" << (o.baseline_cutlass ? "cutlass" : "cublas")
         << "\", \"dtype\": \"" << to_string(baseline_config(cfg).dtype) << "\"";
      if (!base_note.empty()) js << ", \"note\": \"" << base_note << "\"";
      js << "},\n  \"speedup\": "
         << tb.median_ms / tf.median_ms;
      js << ",\n  \"baseline_ffn\": {\"median_ms\": " << tffn.median_ms
         << ", \"min_ms\": " << tffn.min_ms << ", \"tflops\": " << ffn_alone_tflops
         << ", \"rows\": " << ffn_rows << "}";
    }
    if (o.ceiling) {
      js << ",\n  \"dense_ceiling\": {\"tflops\": " << ceiling.tflops
         << ", \"median_ms\": " << ceiling.timing.median_ms << ", \"m\": " << ceiling.m
         << ", \"n\": " << ceiling.n << ", \"k\": " << ceiling.k << ", \"math\": \"" << ceiling.math
         << "\"},\n  \"dense_ceiling_tflops\": " << ceiling.tflops
         << ",\n  \"compute_floor_ms\": " << floor_ms
         << ",\n  \"monomoe_over_floor\": " << tf.median_ms / floor_ms;
    }
    if (o.weight_floor) {
      js << ",\n  \"weight_floor\": {\"ms\": " << weight_floor_ms << ", \"bytes\": " << weight_bytes
         << ", \"experts_with_rows\": " << touched_median << ", \"hbm_read_tb_per_s\": " << hbm.tb_per_s
         << "},\n  \"monomoe_over_weight_floor\": " << tf.median_ms / weight_floor_ms;
    }
    js << "\n}\n";
    if (!js) throw ConfigError("bench: cannot write --json " + o.json_path);
    out << "wrote " << o.json_path << "\n";
  }
  out << std::flush;
  return status;
}

}  // namespace

LayerConfig rank_config(LayerConfig c, int rank, int world) {
  c.world_size = world;
  c.rank = rank;
  c.validate();
  return c;
}

std::string rank_tag(int rank, int world) {
  return world > 1 ? "[rank " + std::to_string(rank) + "] " : "";
}

launch::SupervisorOptions supervision(double timeout_seconds) {
  launch::SupervisorOptions so;
  so.grace_seconds = std::max(5.0, 2.0 * timeout_seconds);
  so.make_id = [] { return UniqueId::create(); };
  return so;
}

launch::WorkerContext joined(const JoinOptions& j) {
  return launch::join_from_environment(launch::process_environment(), j.rendezvous,
                                       j.timeout_seconds, [] { return UniqueId::create(); });
}

int run_bench(const BenchOptions& o, std::ostream& out, std::ostream& progress) {
  if (o.join.enabled) {
    const launch::WorkerContext w = joined(o.join);
    std::ostream quiet(nullptr);
    return bench_rank(o, w, out, w.rank == 0 ? progress : quiet);
  }
  if (o.gpus == 1 && !o.isolate) {
    launch::WorkerContext w;
    w.id = UniqueId::create();
    return bench_rank(o, w, out, progress);
  }
  // One worker process per GPU; the parent only supervises (it never touches CUDA).
  return launch::run_local_workers(
      o.gpus,
      [&](const launch::WorkerContext& w) {
        std::ostream quiet(nullptr);
        return bench_rank(o, w, out, w.rank == 0 ? progress : quiet);
      },
      supervision(o.config.timeout_seconds));
}

}  // namespace monomoe::bench
