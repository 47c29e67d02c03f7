// Expert parallelism (world > 1) inside the persistent kernel, on top of the single-GPU phases:
//   start    block 0 tells every peer "this rank runs call `epoch`" (after its per-call reset);
//            nobody writes into a peer's window before that peer's start flag is seen.
//   dispatch blocks 1..dispatch_blocks copy the rows routed to other ranks' experts into the owner's
//            inbox, one row tile (<= 128 rows of one expert) per item, then raise the tile's
//            arrival flag (the epoch). Rows for local experts are not copied: GEMM0 gathers them
//            from x directly.
//   subscriber  block 0 sends this rank's per-expert row counts (the header, zeros included) to
//            every peer, reads every source's header, lists the row tiles its experts will
//            compute (recv_tiles and their parts, pack.hpp: an expert's partial tiles from
//            several sources packed into one; deterministic), publishes GEMM0 tasks for each tile
//            once every source in it has landed its rows, and combine tasks for each of its own
//            token tiles once all their expert results have come back (the `done` counters that
//            GEMM1 blocks of every rank add to).
//   GEMM1    writes each result row straight into its source rank's stage buffer, then adds to that
//            source's `done` counter of the row's token tile.
// The transport (transport.cuh) hides how peers are reached.
#pragma once

#include "device/processor.cuh"
#include "device/route.cuh"
#include "device/transport.cuh"

namespace monomoe::device {

// Bounded wait (one thread) for a flag of this rank's window (Word: unsigned long long or unsigned
// int) to hold `value`, set by `peer` (reported with `what` when the wait times out).
template <class Word>
__device__ __forceinline__ bool wait_flag(const Params& p, const Word* flag, Word value, int peer,
                                          int what) {
  static_assert(sizeof(Word) == 8 || sizeof(Word) == 4, "64- or 32-bit flags");
  return spin_bounded<64, 100>(p, p.timeout_ns, ErrorCode::timeout_peer, peer, what, [&] {
    Word now;
    if constexpr (sizeof(Word) == 8) {
      now = ld_acquire_sys_u64(flag);
    } else {
      now = ld_acquire_sys_u32(flag);
    }
    return now == value ? Poll::ready : Poll::wait;
  });
}

// Flag of row tile `tile` (counted over the segment: experts in order, then tiles) of `source`.
__device__ __forceinline__ unsigned long long arrived_offset(const Params& p, int source, int tile) {
  return p.wl.arrived + 8ull * (static_cast<unsigned long long>(source) * p.wl.tiles_per_source + tile);
}

// Block 0, thread 0, at kernel start: this rank has started call `epoch` (its window's per-call
// counters were reset before the launch).
__device__ __forceinline__ void announce_start(const Params& p) {
  const LsaTransport tr(p);
  const unsigned long long epoch = call_epoch(p);
  for (int d = 0; d < p.world; ++d) tr.signal_u64(p.wl.start + 8ull * p.rank, d, epoch);
}

__device__ __forceinline__ bool peer_started(const Params& p, int peer) {
  const auto* start = reinterpret_cast<const unsigned long long*>(p.window + p.wl.start);
  return wait_flag(p, start + peer, call_epoch(p), peer, 0);
}

// Dispatch role: row tiles of this rank's tokens bound for other ranks' experts, claimed one at a
// time; each lands in the owner's inbox segment for this source, rows in expert then token order.
template <class P>
__device__ void dispatch_rows(const Params& p, KernelSmem<P>& sm, long long* trace) {
  // The rows as the expert GEMMs read them (fp8: quantized, with their scales).
  using Op = typename ExpertTiles<P>::Elem;
  const LsaTransport tr(p);
  const Op* x = expert_x<P>(p);
  const int chunks = p.x_pitch * static_cast<int>(sizeof(Op)) / 16;  // 16-byte pieces per row
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  if (trace) trace[kTraceEp + ev_dispatch_start] = global_ns();
  for (;;) {
    if (threadIdx.x == 0) sm.task.queue_base = static_cast<int>(atomicAdd(&p.control->dispatch_next, 1u));
    sync_workers();
    const int item = sm.task.queue_base;
    sync_workers();
    if (item >= sm.route.row_tiles || aborted(p)) {
      if (trace) trace[kTraceEp + ev_dispatch_end] = global_ns();
      return;
    }
    const RowTile rt = locate_row_tile(p, sm.route, item);
    const int dest = rt.expert / p.experts_local;
    if (dest == p.rank || rt.rows <= 0) continue;
    if (threadIdx.x == 0) sm.task.task.a = peer_started(p, dest) ? 1 : 0;
    sync_workers();
    if (!sm.task.task.a) return;
    // Row i of segment (source = this rank) on `dest`: experts of `dest` in order, then positions.
    const int seg_first = rt.first - sm.route.row_base[dest * p.experts_local];
    Op* inbox = tr.at<Op>(p.wl.inbox, dest) +
                (static_cast<long long>(p.rank) * p.wl.rows_per_source + seg_first) * p.x_pitch;
    int* ids = tr.at<int>(p.wl.ids, dest) + static_cast<long long>(p.rank) * p.wl.rows_per_source +
               seg_first;
    for (int r = warp; r < rt.rows; r += kThreads / 32) {
      const int id = __ldcg(p.expert_rows + rt.first + r);
      const uint4* src =
          reinterpret_cast<const uint4*>(x + static_cast<long long>(id / p.topk) * p.x_pitch);
      uint4* dst = reinterpret_cast<uint4*>(inbox + static_cast<long long>(r) * p.x_pitch);
      // fp8's rows were written in this launch (by the gate phase): read through L2.
      if constexpr (ExpertTiles<P>::kBlockScaled) {
        for (int c = lane; c < chunks; c += 32) dst[c] = __ldcg(src + c);
      } else {
        for (int c = lane; c < chunks; c += 32) dst[c] = __ldg(src + c);
      }
      if (lane == 0) ids[r] = id;
    }
    __threadfence_system();
    sync_workers();
    if (threadIdx.x == 0) {
      const int seg_tile = item - sm.route.tile_base[dest * p.experts_local];
      tr.signal_u64(arrived_offset(p, p.rank, seg_tile), dest, call_epoch(p));
    }
  }
}

// A row tile as the subscriber listed it: its parts inside recv_parts, of sources that exist, their
// rows adding up to the tile's. Every thread checks it before using it.
__device__ __forceinline__ bool valid_recv_tile(const Params& p, int i, const RecvTile& t) {
  if (i < 0 || i >= p.max_recv_tiles || t.rows <= 0 || t.rows > kTileRows || t.parts <= 0 ||
      t.parts > p.world || t.part_first < 0 || t.part_first + t.parts > p.max_recv_parts ||
      t.expert_local < 0 || t.expert_local >= p.experts_local) {
    return false;
  }
  int rows = 0;
  for (int j = 0; j < t.parts; ++j) {
    const RecvPart q = p.recv_parts[t.part_first + j];
    if (q.source < 0 || q.source >= p.world || q.rows <= 0) return false;
    rows += q.rows;
  }
  return rows == t.rows;
}

// Row r of a (valid) row tile: its source and its index there (in the source's inbox segment, or
// in expert_rows for this rank's own rows).
struct RecvRow {
  int source, index;
};
__device__ __forceinline__ RecvRow recv_row(const Params& p, const RecvTile& t, int r) {
  for (int j = 0; j < t.parts - 1; ++j) {
    const RecvPart q = p.recv_parts[t.part_first + j];
    if (r < q.rows) return {q.source, q.first + r};
    r -= q.rows;
  }
  const RecvPart q = p.recv_parts[t.part_first + t.parts - 1];
  return {q.source, q.first + r};
}

// With peers, what the subscriber decided once every header arrived: the K slices per GEMM task
// and the row tiles it listed (Control::k_split, Control::row_tiles; the shared expert's tiles
// follow those). It wrote both before it published the first GEMM task, and this block acquired a
// task head since (queue.cuh), so they are final: read at the block's first GEMM task and kept in
// shared memory for its later ones (TaskSmem::ep_listed < 0 until then; a load per task had sat
// on every task's start). Called by every thread.
struct EpPlan {
  int k_split, listed;
};
__device__ __forceinline__ EpPlan ep_plan(const Params& p, TaskSmem& ts) {
  if (ts.ep_listed >= 0) return {ts.ep_k_split, ts.ep_listed};
  const EpPlan plan{max(1, __ldcg(&p.control->k_split)), __ldcg(&p.control->row_tiles)};
  sync_workers();  // every thread read ts.ep_listed before thread 0 writes it
  if (threadIdx.x == 0) {
    ts.ep_k_split = plan.k_split;
    ts.ep_listed = plan.listed;
  }
  return plan;
}

// A GEMM task's row tile with peers: listed tile i (the subscriber's recv_tiles), or past them a
// tile of the shared expert (shared_tile: this rank's own tokens). rows <= 0: no such tile
// (reported as bad_task).
struct EpTile {
  RecvTile recv;      // a listed tile
  SharedTile shared;  // a shared tile (recv.rows == 0)
  int expert;         // local expert, or experts_local + the shared slice
  int rows;
};
__device__ __forceinline__ EpTile ep_tile(const Params& p, int listed, int i) {
  EpTile t{};
  if (i < listed) {
    t.recv = p.recv_tiles[i];
    if (valid_recv_tile(p, i, t.recv)) {
      t.expert = t.recv.expert_local;
      t.rows = t.recv.rows;
    }
    return t;
  }
  t.shared = shared_tile(p, i - listed);
  t.expert = p.experts_local + t.shared.slice;
  t.rows = t.shared.rows;
  return t;
}

// GEMM0 task (i, b) of row tile i: column tile b / k_split, K slice b % k_split. Rows from the
// inbox segments of their sources (or from x for this rank's own tokens).
template <class P>
__device__ void run_gemm0_ep(const Params& p, KernelSmem<P>& sm, int i, int b) {
  const EpPlan plan = ep_plan(p, sm.task);
  const EpTile t = ep_tile(p, plan.listed, i);
  if (t.rows <= 0) {
    if (threadIdx.x == 0) raise_error(p, ErrorCode::bad_task, i, t.rows);
    return;
  }
  const int slices = plan.k_split;
  const int col_tile = b / slices, slice = b % slices;
  const KSlice ks = k_slice(p.hidden, slice, slices);
  if (threadIdx.x < kTileRows) {
    using Op = typename ExpertTiles<P>::Elem;
    const int r = static_cast<int>(threadIdx.x);
    const Op* src = nullptr;
    const Op* x = expert_x<P>(p);
    if (r < t.rows && t.recv.rows == 0) {
      src = x + static_cast<long long>(t.shared.token0 + r) * p.x_pitch;
    } else if (r < t.rows) {
      const RecvRow q = recv_row(p, t.recv, r);
      if (q.source == p.rank) {
        const int token = __ldcg(p.expert_rows + q.index) / p.topk;
        src = x + static_cast<long long>(token) * p.x_pitch;
      } else {
        src = reinterpret_cast<const Op*>(p.window + p.wl.inbox) +
              (static_cast<long long>(q.source) * p.wl.rows_per_source + q.index) * p.x_pitch;
      }
    }
    set_a_row(sm.gemm, r, src, p.hidden, ks.first);
  }
  if (!gemm0_math<P>(p, sm, t.expert, t.rows, col_tile, ks.first, ks.count)) return;
  if (slices > 1 &&
      !finish_k_split<P>(p, sm, 0, i * p.gemm0_col_tiles + col_tile, slice, slices, t.rows)) {
    return;  // another slice's block finishes this tile
  }
  gemm0_epilogue<P>(p, sm, t.expert, t.rows, i * kTileRows, col_tile);
  publish_block_writes();
  if (threadIdx.x == 0) {
    const int done = atomicAdd(p.rowtile_done + i, 1) + 1;
    if (done == p.gemm0_col_tiles) {
      __threadfence();
      push_tasks(p, 0, TaskType::gemm1, i, 0, p.gemm1_col_tiles * slices);
    }
  }
}

// GEMM1 of row tile i: each result row goes straight into its source rank's stage buffer (a shared
// tile's into this rank's shared_stage), then each source's per-token-tile counters learn how many
// of its rows landed.
template <class P>
__device__ void run_gemm1_ep(const Params& p, KernelSmem<P>& sm, int i, int b) {
  using Elem = typename P::Elem;
  const EpPlan plan = ep_plan(p, sm.task);
  const EpTile t = ep_tile(p, plan.listed, i);
  if (t.rows <= 0) {
    if (threadIdx.x == 0) raise_error(p, ErrorCode::bad_task, i, t.rows);
    return;
  }
  const int slices = plan.k_split;
  const int col_tile = b / slices, slice = b % slices;
  const KSlice ks = k_slice(p.ffn, slice, slices);
  if (!gemm1_math<P>(p, sm, t.expert, t.rows, i * kTileRows, col_tile, ks.first, ks.count)) {
    return;
  }
  if (slices > 1 &&
      !finish_k_split<P>(p, sm, 1, i * p.gemm1_col_tiles + col_tile, slice, slices, t.rows)) {
    return;
  }
  const LsaTransport tr(p);
  // The rows' ids: this rank's own routing, or the ids their source sent with them.
  set_gemm1_rows(sm.task, t.rows, [&](int r) {
    if (t.recv.rows == 0) return shared_dest<Elem>(p, t.shared.slice, t.shared.token0 + r);
    const RecvRow q = recv_row(p, t.recv, r);
    const int* ids = q.source == p.rank
                         ? p.expert_rows
                         : reinterpret_cast<const int*>(p.window + p.wl.ids) +
                               static_cast<long long>(q.source) * p.wl.rows_per_source;
    return stage_dest<Elem>(p, tr.at<Elem>(p.wl.stage, q.source), __ldcg(ids + q.index),
                            q.source);
  });
  gemm1_epilogue<P>(p, sm, t.expert, t.rows, col_tile);
  __threadfence_system();  // the result rows precede the counter updates, also across GPUs
  sync_workers();
  for_each_token_tile_run(sm.task, t.rows, [&](int source, int tt, int len) {
    tr.add(p.wl.done + 4ull * tt, source, len);
  });
}

// The row tiles this rank computes, from every source's header (staged in ss.header), into
// recv_tiles / recv_parts: pack_recv_tiles' list (pack.hpp), each local expert listed by a thread
// of its own once the block has summed where every expert's tiles and parts go. Called by every
// thread of the block, ss.packed zeroed before; the listing is complete at the next barrier. Not
// inlined: its loop state, inlined into the kernel, raised the whole kernel's register count.
inline __device__ __noinline__ PackResult list_recv_tiles(const Params& p, SubscriberSmem& ss,
                                                          const int* local_first) {
  const int el = p.experts_local, world = p.world;
  const int tid = static_cast<int>(threadIdx.x);
  for (int s = tid; s < world; s += kThreads) {
    segment_offsets(s, el, ss.header, ss.rows_before, ss.tiles_before);
  }
  const auto unused = [](int) { return SegmentBefore{0, 0}; };  // counting writes nothing
  for (int e = tid; e < el; e += kThreads) {
    const PackCount c =
        pack_expert(world, el, p.rank, e, ss.header, local_first[e], unused, nullptr, nullptr, 0);
    ss.tiles[e] = c.tiles;
    ss.parts[e] = c.parts;
    if (c.packed > 0) atomicAdd(&ss.packed, c.packed);
  }
  sync_workers();
  PackResult out{0, 0, ss.packed, true};
  for (int e = 0; e < el; ++e) {
    out.tiles += ss.tiles[e];
    out.parts += ss.parts[e];
  }
  out.ok = out.tiles <= p.max_recv_tiles && out.parts <= p.max_recv_parts;
  if (!out.ok) return out;
  for (int e = tid; e < el; e += kThreads) {
    int tile0 = 0, part0 = 0;
    for (int f = 0; f < e; ++f) {
      tile0 += ss.tiles[f];
      part0 += ss.parts[f];
    }
    const auto before = [&](int s) {
      return SegmentBefore{ss.rows_before[s * el + e], ss.tiles_before[s * el + e]};
    };
    pack_expert(world, el, p.rank, e, ss.header, local_first[e], before, p.recv_tiles + tile0,
                p.recv_parts + part0, part0);
  }
  return out;
}

// Whether a row tile holds rows of another rank (then it waits for their arrival flags).
__device__ __forceinline__ bool has_remote_rows(const Params& p, const RecvTile& t) {
  for (int j = 0; j < t.parts; ++j) {
    if (p.recv_parts[t.part_first + j].source != p.rank) return true;
  }
  return false;
}

// Subscriber role (block 0) with world > 1. Returns once every task of this launch is published.
template <class P>
__device__ void subscribe_ep(const Params& p, KernelSmem<P>& sm, long long* trace) {
  const LsaTransport tr(p);
  const int el = p.experts_local;
  // Events that several threads reach (the latest of them counts), into thread 0's trace slots.
  long long* shared_events = p.trace ? p.trace + kTraceStride * blockIdx.x + kTraceEp : nullptr;
  if (threadIdx.x == 0) {
    bool ok = true;
    // 1. This rank's header to every rank: rows for each of its experts, zeros included.
    for (int d = 0; d < p.world && ok; ++d) {
      ok = peer_started(p, d);
      if (!ok) break;
      int* hdr = tr.at<int>(p.wl.header + 4ull * static_cast<unsigned long long>(p.rank) * el, d);
      for (int e = 0; e < el; ++e) hdr[e] = sm.route.kept[d * el + e];
      __threadfence_system();
      tr.signal_u64(p.wl.header_flag + 8ull * p.rank, d, call_epoch(p));
    }
    // 2. Every source's header.
    const auto* hflag = reinterpret_cast<const unsigned long long*>(p.window + p.wl.header_flag);
    for (int s = 0; s < p.world && ok; ++s) ok = wait_flag(p, hflag + s, call_epoch(p), s, 1);
    if (trace) trace[kTraceEp + ev_headers_seen] = global_ns();
    sm.sub.packed = 0;
    sm.task.queue_base = ok ? 0 : -1;
  }
  sync_workers();
  if (sm.task.queue_base < 0) return;
  // 2b. The headers into shared memory, then the row tiles this rank computes, listed by the
  //     whole block (pack.hpp's rule: in local expert order, an expert's partial tiles from
  //     several sources packed together; the same list for the same headers whatever the timing).
  //     Listed by one thread from global memory, this step had taken 64 us at 64 experts on 2 GPUs
  //     and 160 us at 128 (perf log 2026-11-30).
  const int* header = reinterpret_cast<const int*>(p.window + p.wl.header);
  for (int i = static_cast<int>(threadIdx.x); i < p.world * el; i += kThreads) {
    sm.sub.header[i] = __ldcg(header + i);
  }
  sync_workers();
  const PackResult pr = list_recv_tiles(p, sm.sub, sm.route.row_base + p.rank * el);
  sync_workers();
  if (threadIdx.x == 0) {
    int n = -1;
    if (trace) trace[kTraceEp + ev_tiles_listed] = global_ns();
    if (!pr.ok) {  // the workspace plan's bounds (workspace.cpp, pack.hpp), kept honest
      raise_error(p, ErrorCode::bad_task, pr.tiles, pr.parts);
    } else {
      n = pr.tiles;
      p.control->row_tiles = n;  // read back by stats()
      p.control->packed_tiles = pr.packed;
    }
    sm.task.queue_base = n;
    if (n >= 0) {
      // Every tile this rank computes is known now: how many K slices its GEMM tasks get
      // (route.cuh), written before any GEMM task is published (the processors read it there).
      // The shared expert's tiles (this rank's own tokens) follow the listed ones.
      const int tiles = n + shared_tiles(p);
      const int slices = plan_k_split(p, tiles);
      sm.route.k_split = slices;
      p.control->k_split = slices;
      p.control->total_tasks = static_cast<unsigned int>(
          tiles * (p.gemm0_col_tiles + p.gemm1_col_tiles) * slices +
          p.token_tiles * p.combine_col_tiles);
      __threadfence();
      st_release_gpu(&p.control->total_ready, 1u);
    }
  }
  sync_workers();
  const int n = sm.task.queue_base;
  if (n < 0) return;
  // Tiles of this rank's own tokens only are ready now: every thread publishes some (the block's
  // barrier above made the listing visible to it, and push_tasks' fence passes it on).
  // The shared expert's tiles then, so that they run while peers' rows are still on their way.
  const int own_tiles = n + shared_tiles(p);
  for (int i = static_cast<int>(threadIdx.x); i < own_tiles; i += kThreads) {
    if (i >= n || !has_remote_rows(p, p.recv_tiles[i])) {
      push_tasks(p, 0, TaskType::gemm0, i, 0, p.gemm0_col_tiles * sm.route.k_split);
      if (shared_events) atomicMax(shared_events + ev_own_published, global_ns());
    }
  }
  if (threadIdx.x >= 32) return;
  // 3. Warp 0: GEMM0 tasks of tiles with other ranks' rows once every such part has landed (its
  //    source's arrival flag of the tile that carried it), then combine tasks of this rank's token
  //    tiles once their results are all back. Lanes work independently (each waits on its own).
  const int lane = static_cast<int>(threadIdx.x);
  const auto* arrived = reinterpret_cast<const unsigned long long*>(p.window);
  for (int i = lane; i < n; i += 32) {
    const RecvTile t = p.recv_tiles[i];
    bool remote = false;
    for (int j = 0; j < t.parts; ++j) {
      const RecvPart q = p.recv_parts[t.part_first + j];
      if (q.source == p.rank) continue;
      remote = true;
      if (!wait_flag(p, arrived + arrived_offset(p, q.source, q.seg_tile) / 8, call_epoch(p),
                         q.source, 2)) {
        return;
      }
    }
    if (remote) {
      push_tasks(p, 0, TaskType::gemm0, i, 0, p.gemm0_col_tiles * sm.route.k_split);
      if (shared_events) atomicMax(shared_events + ev_peer_published, global_ns());
    }
  }
  const auto* done = reinterpret_cast<const unsigned int*>(p.window + p.wl.done);
  for (int tt = lane; tt < p.token_tiles; tt += 32) {
    const unsigned int target = static_cast<unsigned int>(__ldcg(p.tokentile_target + tt));
    if (target > 0 && !wait_flag(p, done + tt, target, -1, 3)) return;
    push_tasks(p, 0, TaskType::combine, tt, 0, p.combine_col_tiles);
    if (shared_events) atomicMax(shared_events + ev_combine_published, global_ns());
  }
}

}  // namespace monomoe::device
