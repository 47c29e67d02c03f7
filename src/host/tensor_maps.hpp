// TMA tensor maps, built on the host: of the expert weights once per layer (the weights do not
// move) and of the activation buffer when the workspace moves; GEMM1 of bf16, of fp8, and of tf32
// with [out, in] weights, reads both operands through them (device/gemm/tma.cuh, tma_stage).
#pragma once

#include <cuda.h>

#include <cstdint>

#include "monomoe/config.hpp"

namespace monomoe::detail {

// A tensor [count][rows][cols] (cols contiguous, elements of `dtype`'s expert weights: fp8's are
// bytes) read in boxes of 128 bytes of cols x box_rows rows x 1, 128-byte swizzle; boxes past the
// edges read zeros. Rows are `pitch` elements apart (0: cols; fp8's activation rows carry their
// scales past the values). Expert weights (count = experts): [in, out] rows K, cols N, boxes of a
// k-tile's rows (128 bytes of K); [out, in] rows N, cols K, boxes of half a tile's columns. The
// activation buffer (count 1): rows x ffn, boxes of a tile's 128 rows. Throws ConfigError (naming
// `what`) when the driver refuses the map.
CUtensorMap tile_tensor_map(const void* base, std::int64_t count, std::int64_t rows,
                            std::int64_t cols, std::int64_t box_rows, DType dtype, const char* what,
                            std::int64_t pitch = 0);

}  // namespace monomoe::detail
