// Routings given by hand that make every kind of row tile of device/pack.hpp, for the multi-rank
// tests (test_virtual_ranks.cu, test_layer_multi_gpu.cu): one expert per rank, top-1, so that
// rows[source][expert] says exactly how many rows each source sends each expert.
//   expert 0: its own rank's 5 rows, 130 from rank 1 (a full tile and 2), 0 from rank 2, 100 from
//             rank 3, 3 from each further rank: every remainder, the local one included, in one
//             packed tile (up to 7 sources)
//   expert 1: exactly 128 from rank 0 (a full tile, never packed), none from its own rank, 127 + 1
//             from ranks 2 and 3 (a packed tile of exactly 128 rows)
//   expert 2: 60 rows from rank 1 only (nothing to pack)
//   expert 3: 70 from every rank: remainders cut across tile boundaries
//   expert e >= 4: 20 from rank e - 1 and 20 of its own
// Tokens of a rank take their experts in an interleaved order, so an expert's rows are not
// consecutive tokens. With 2 ranks only experts 0 and 1 exist.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "device/pack.hpp"
#include "ep_cases.hpp"
#include "reference/reference.hpp"

namespace monomoe::test {

struct PackCase {
  std::string name;
  LayerConfig cfg;                     // world_size set; rank filled per rank
  std::vector<std::vector<int>> rows;  // [source][expert]
};

inline std::vector<std::vector<int>> pack_rows(int w) {
  std::vector<std::vector<int>> r(static_cast<std::size_t>(w),
                                  std::vector<int>(static_cast<std::size_t>(w), 0));
  const auto set = [&](int s, int e, int n) {
    if (s < w && e < w) r[static_cast<std::size_t>(s)][static_cast<std::size_t>(e)] = n;
  };
  set(0, 0, 5);
  set(1, 0, 130);
  set(3, 0, 100);
  for (int s = 4; s < w; ++s) set(s, 0, 3);
  set(0, 1, 128);
  set(2, 1, 127);
  set(3, 1, 1);
  set(1, 2, 60);
  for (int s = 0; s < w; ++s) set(s, 3, 70);
  for (int e = 4; e < w; ++e) {
    set(e - 1, e, 20);
    set(e, e, 20);
  }
  return r;
}

// Two precisions and layouts (bf16 gelu [in, out]; tf32 swiglu [out, in]), hidden and ffn of 256:
// K splits in 2 slices on a rank's share of the GPU (few tiles), so packed tiles meet split K too.
inline std::vector<PackCase> pack_cases(int w) {
  std::vector<PackCase> v;
  {
    LayerConfig c = ep_base(DType::bf16, Activation::gelu, w, 1);
    c.world_size = w;
    v.push_back({"bf16 gelu, rows packed by hand", c, pack_rows(w)});
  }
  {
    LayerConfig c = ep_base(DType::tf32, Activation::swiglu, w, 1);
    c.weight_layout = WeightLayout::out_in;
    c.bias = true;
    c.world_size = w;
    v.push_back({"tf32 swiglu out-in with bias, rows packed by hand", c, pack_rows(w)});
  }
  return v;
}

// The problem of a case: each rank's tokens (the sum of its rows) and their given routing.
inline reference::Problem make_pack_problem(const PackCase& pc, std::uint64_t seed) {
  const int w = static_cast<int>(pc.cfg.world_size);
  std::vector<std::int64_t> tokens;
  for (const auto& to : pc.rows) {
    std::int64_t n = 0;
    for (int c : to) n += c;
    tokens.push_back(n);
  }
  reference::Problem pr = reference::make_problem(pc.cfg, tokens, seed);
  pr.topk_ids.assign(static_cast<std::size_t>(w), {});
  pr.topk_weights.assign(static_cast<std::size_t>(w), {});
  for (int s = 0; s < w; ++s) {
    // Round-robin over the experts that still have rows to take: interleaved token order.
    std::vector<int> left = pc.rows[static_cast<std::size_t>(s)];
    for (bool any = true; any;) {
      any = false;
      for (int e = 0; e < w; ++e) {
        if (left[static_cast<std::size_t>(e)] == 0) continue;
        --left[static_cast<std::size_t>(e)];
        any = true;
        const std::size_t t = pr.topk_ids[static_cast<std::size_t>(s)].size();
        pr.topk_ids[static_cast<std::size_t>(s)].push_back(e);
        pr.topk_weights[static_cast<std::size_t>(s)].push_back(0.25f +
                                                               0.125f * static_cast<float>(t % 7));
      }
    }
  }
  return pr;
}

// The row tiles and packed tiles rank `rank` computes for the case, by the rule (pack.hpp).
inline device::PackResult expected_pack(const PackCase& pc, int rank) {
  const int w = static_cast<int>(pc.cfg.world_size);
  std::vector<int> header;  // [source][local expert]: one local expert per rank
  for (int s = 0; s < w; ++s)
    header.push_back(pc.rows[static_cast<std::size_t>(s)][static_cast<std::size_t>(rank)]);
  std::vector<int> local_first(1, 0), seg_rows(static_cast<std::size_t>(w)),
      seg_tiles(static_cast<std::size_t>(w));
  std::vector<device::RecvTile> tiles(static_cast<std::size_t>(4 * w));
  std::vector<device::RecvPart> parts(static_cast<std::size_t>(8 * w));
  return device::pack_recv_tiles(w, 1, rank, header.data(), local_first.data(), seg_rows.data(),
                                 seg_tiles.data(), tiles.data(), static_cast<int>(tiles.size()),
                                 parts.data(), static_cast<int>(parts.size()));
}

}  // namespace monomoe::test
