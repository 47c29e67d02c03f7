// TMA tensor maps of the expert weights, built once per layer on the host (the weights do not
// move): the bf16 kernel's expert GEMMs read their weight tiles through them (device/gemm/tma.cuh,
// TileGemm::tma_stage).
#pragma once

#include <cuda.h>

#include <cstdint>

#include "monomoe/config.hpp"

namespace monomoe::detail {

// A weight tensor [experts][k][n] (n contiguous, elements of `dtype`) read in boxes of
// 128 bytes of n x 64 k rows x 1 expert, 128-byte swizzle; boxes past the edges read zeros.
// Throws ConfigError (naming `what`) when the driver refuses the map.
CUtensorMap weight_tensor_map(const void* base, std::int64_t experts, std::int64_t k,
                              std::int64_t n, DType dtype, const char* what);

}  // namespace monomoe::detail
