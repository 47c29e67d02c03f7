// Row tiles of the received rows (world > 1): which rows of which sources each GEMM row tile of a
// local expert holds (docs/ep-pack.md). In plain C++ so that the kernel's subscriber (ep.cuh), the
// host's workspace plan (host/workspace.cpp) and a CPU test (tests/test_workspace.cpp) share one
// definition of the rule and of its bounds.
//
// The rule, per local expert, sources in rank order: each source's full 128-row tiles are tiles of
// their own (they start as soon as that source's rows land). The remainders (the last, partial
// tile of each source, < 128 rows) are packed into shared tiles of 128 rows (the last fewer), in
// source order, a remainder cut between two tiles where it straddles the boundary; such a tile
// starts once every source in it has sent that tile. Remainders are packed only when that makes
// fewer tiles than leaving each alone: with few rows per expert the layer reads an expert's weights
// once per tile, so packing is what keeps world sources from costing world weight reads.
#pragma once

#include "device/split.hpp"  // MONOMOE_HOST_DEVICE

namespace monomoe::device {

inline constexpr int kPackTileRows = 128;  // params.cuh: kTileRows (static_assert there)

// One row tile this rank's experts compute: rows of one local expert, the concatenation of its
// parts recv_parts[part_first, part_first + parts). hidden_act rows [index * 128, index * 128 +
// rows) belong to it.
struct RecvTile {
  int expert_local;  // local expert index
  int rows;          // 1..128
  int part_first;    // its first part in recv_parts
  int parts;         // 1..world; more than 1 only for a packed tile
};
static_assert(sizeof(RecvTile) == 16);

// A run of one source's rows inside a row tile, all inside one of the source's own row tiles.
struct RecvPart {
  int source;    // rank the rows came from (== this rank: rows read from x through expert_rows)
  int first;     // its first row: in the source's inbox segment, or in expert_rows when local
  int rows;      // 1..128
  int seg_tile;  // the source's row tile (its arrival flag) that carries them, counted over its
                 // segment for this rank: experts in order, then tiles
};
static_assert(sizeof(RecvPart) == 16);

// Parts a call can list, for a rank that may compute at most `max_tiles` row tiles the old way (one
// per (source, local expert) segment piece of up to 128 rows: WorkspacePlan::row_tiles). Packing
// never makes more tiles than that (it packs only when it saves tiles), and each tile of an expert
// beyond its first packed one cuts at most one remainder in two: an expert whose R remainders pack
// into P < R tiles has at most R + P - 1 < 2 R parts for them.
MONOMOE_HOST_DEVICE constexpr long long recv_parts_bound(long long max_tiles) {
  return 2 * max_tiles;
}

struct PackResult {
  int tiles;   // row tiles listed
  int parts;   // parts listed
  int packed;  // tiles with rows of more than one source
  bool ok;     // false: max_tiles or max_parts was too small
};

// What one local expert lists: its tiles, their parts, and how many of the tiles are packed.
struct PackCount {
  int tiles, parts, packed;
};

// Where a source's rows for one local expert sit in its segment for this rank: the rows and row
// tiles it sends this rank's experts before that one.
struct SegmentBefore {
  int rows, tiles;
};

// The row tiles of local expert e by the rule above, from rows[s] = header[s * experts_local + e]
// (rows source s sends it). Counts them, and writes them where `tiles` and `parts` are not null:
// its tiles to tiles[0, ...), its parts to parts[0, ...), whose index in the whole list starts at
// part_base. local_first: the first of this rank's own rows of expert e in expert_rows;
// before(s): the SegmentBefore of source s for expert e (called only when writing). Experts are
// independent given those: the kernel lists them in parallel, one thread each (ep.cuh);
// pack_recv_tiles below, one after another.
// Tiles and parts are only written, never read back (in the kernel they are global memory).
template <class Before>
MONOMOE_HOST_DEVICE inline PackCount pack_expert(int world, int experts_local, int rank, int e,
                                                 const int* header, int local_first, Before before,
                                                 RecvTile* tiles, RecvPart* parts, int part_base) {
  constexpr int kRows = kPackTileRows;
  PackCount n{0, 0, 0};
  RecvTile cur{};  // the tile being filled, stored when the next one starts or the expert ends
  const auto store_cur = [&] {
    if (n.tiles == 0) return;
    if (tiles) tiles[n.tiles - 1] = cur;
    n.packed += cur.parts > 1 ? 1 : 0;
  };
  const auto add_tile = [&] {
    store_cur();
    cur = RecvTile{e, 0, part_base + n.parts, 0};
    ++n.tiles;
  };
  // A part of `rows` rows of source s, from its row `at` for this expert, in its tile `tile`
  // counted from its first for this expert.
  const auto add_part = [&](int s, int at, int rows, int tile) {
    if (parts) {
      const auto b = before(s);
      parts[n.parts] = RecvPart{s, (s == rank ? local_first : b.rows) + at, rows, b.tiles + tile};
    }
    ++n.parts;
    cur.rows += rows;
    cur.parts += 1;
  };
  // Full tiles, and what the remainders would make.
  int remainders = 0, remainder_rows = 0;
  for (int s = 0; s < world; ++s) {
    const int rows = header[s * experts_local + e];
    for (int m = 0; (m + 1) * kRows <= rows; ++m) {
      add_tile();
      add_part(s, m * kRows, kRows, m);
    }
    if (rows % kRows != 0) {
      ++remainders;
      remainder_rows += rows % kRows;
    }
  }
  const bool pack = (remainder_rows + kRows - 1) / kRows < remainders;
  // Remainders, in source order: each its own tile, or filling shared tiles.
  int room = 0;  // rows left in the current packed tile
  for (int s = 0; s < world; ++s) {
    const int rows = header[s * experts_local + e];
    const int full = rows / kRows;
    int left = rows % kRows;
    int at = full * kRows;
    if (!pack && left > 0) {
      add_tile();
      add_part(s, at, left, full);
      left = 0;
    }
    while (left > 0) {
      if (room == 0) {
        add_tile();
        room = kRows;
      }
      const int take = left < room ? left : room;
      add_part(s, at, take, full);
      at += take;
      left -= take;
      room -= take;
    }
  }
  store_cur();
  return n;
}

// Row tiles a source's `rows` rows for one expert take in its own segment (its arrival flags).
MONOMOE_HOST_DEVICE constexpr int source_tiles(int rows) {
  return (rows + kPackTileRows - 1) / kPackTileRows;
}

// Source s's SegmentBefore for every local expert, into rows_before[s * experts_local + e] and
// tiles_before[s * experts_local + e] (what the kernel's parallel listing hands pack_expert).
MONOMOE_HOST_DEVICE inline void segment_offsets(int s, int experts_local, const int* header,
                                                int* rows_before, int* tiles_before) {
  int rows = 0, tiles = 0;
  for (int e = 0; e < experts_local; ++e) {
    const int i = s * experts_local + e;
    rows_before[i] = rows;
    tiles_before[i] = tiles;
    rows += header[i];
    tiles += source_tiles(header[i]);
  }
}

// Lists the row tiles of a rank's local experts, one expert after another (the kernel's parallel
// listing, ep.cuh, makes the same list). header[s * experts_local + e]: rows source s sends local
// expert e; local_first[e]: the first of this rank's own rows of expert e in expert_rows. seg_rows,
// seg_tiles: scratch of `world` ints. Tiles come in expert order; an expert's full tiles first
// (sources in order), then its remainders, packed or alone. Nothing is written past an expert
// whose tiles or parts would not fit.
MONOMOE_HOST_DEVICE inline PackResult pack_recv_tiles(int world, int experts_local, int rank,
                                                      const int* header, const int* local_first,
                                                      int* seg_rows, int* seg_tiles,
                                                      RecvTile* tiles, int max_tiles,
                                                      RecvPart* parts, int max_parts) {
  PackResult out{0, 0, 0, true};
  for (int s = 0; s < world; ++s) seg_rows[s] = seg_tiles[s] = 0;
  const auto before = [&](int s) { return SegmentBefore{seg_rows[s], seg_tiles[s]}; };
  for (int e = 0; e < experts_local; ++e) {
    const PackCount c = pack_expert(world, experts_local, rank, e, header, local_first[e], before,
                                    nullptr, nullptr, 0);
    if (out.tiles + c.tiles > max_tiles || out.parts + c.parts > max_parts) {
      out.ok = false;
      return out;
    }
    pack_expert(world, experts_local, rank, e, header, local_first[e], before, tiles + out.tiles,
                parts + out.parts, out.parts);
    out.tiles += c.tiles;
    out.parts += c.parts;
    out.packed += c.packed;
    for (int s = 0; s < world; ++s) {
      const int rows = header[s * experts_local + e];
      seg_rows[s] += rows;
      seg_tiles[s] += source_tiles(rows);
    }
  }
  return out;
}

}  // namespace monomoe::device
