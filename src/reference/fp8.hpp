// FP8 (E4M3) numerics of DType::fp8, exactly as the layer defines them (docs/fp8.md), for the CPU
// reference and its tests; the kernel must produce the same values (with the hardware's
// cvt.rn.satfinite.e4m3x2.f32 for the rounding).
//
//   weights      E4M3 values with one fp32 scale per 128 x 128 block of the [out, in] matrix, the
//                value meant being e4m3 * scale (Hugging Face FP8 checkpoints store exactly this
//                scale, under the name weight_scale_inv); see quantize_weight_blocks.
//   activations  x (bf16) before GEMM0 and the activation h before GEMM1, per token per group of
//                128 channels: amax = max |v| over the group, q = e4m3(v * (448 / amax)), scale =
//                amax / 448, every step in fp32 round-to-nearest; a group of zeros gets scale 1
//                and q = 0. See quantize_group.
#pragma once

#include <cstddef>
#include <cstdint>

namespace monomoe::reference::fp8 {

inline constexpr float kMax = 448.f;         // largest finite E4M3 value
inline constexpr std::int64_t kBlock = 128;  // channels per activation group, block edge of weights

// v rounded to the nearest E4M3 value, ties to even, saturated to +-448 (what
// cvt.rn.satfinite.e4m3x2.f32 does); NaN stays NaN. E4M3 here is the "fn" variant: 4 exponent
// bits (bias 7), 3 mantissa bits, no infinities; subnormals down to 2^-9.
float round_e4m3(float v);

// One group of n values (n <= kBlock): q[i] = round_e4m3(v[i] * (448 / amax)), returns the scale
// amax / 448 (1 for a group of zeros). A non-finite value makes amax non-finite and every q NaN
// (a poisoned row stays poisoned, as in the other precisions).
float quantize_group(const float* v, std::size_t n, float* q);

// A [rows, cols] row-major matrix in [out, in] orientation (rows = out), quantized per 128 x 128
// block: q[r, c] = round_e4m3(w[r, c] * (448 / amax_b)), scale[rb * ceil(cols / 128) + cb] =
// amax_b / 448 (1 for a block of zeros). rows and cols need not be multiples of 128.
void quantize_weight_blocks(const float* w, std::size_t rows, std::size_t cols, float* q,
                            float* scale);

}  // namespace monomoe::reference::fp8
