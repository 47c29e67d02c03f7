// The host's conversions of a reference problem into what bench uploads to the GPU (device_problem
// .cu): transposes, bf16 and E4M3 encodings, fp8's dequantized bf16 weights for the baseline. Each
// is spread over the host's threads (reference::parallel_for): a large fp8 shape (256 experts of
// hidden 4096, 6.4 G weight values) took minutes on one thread. The results do not depend on the
// thread count.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <cstddef>
#include <vector>

namespace monomoe::bench {

// Each of `count` row-major [rows, cols] matrices stored one after the other, transposed to
// [cols, rows]: the [in, out] weights of the reference as [out, in].
std::vector<float> transposed(const float* v, std::size_t count, std::size_t rows,
                              std::size_t cols);

// v rounded to bf16 (nearest, ties to even).
std::vector<__nv_bfloat16> to_bf16(const float* v, std::size_t n);

// v as E4M3 bytes. The values must be E4M3 values already (make_problem quantized them): a value
// that is not one would reach the GPU changed and the comparison would blame the kernel, so it
// throws ConfigError naming `what` and an element that is not.
std::vector<__nv_fp8_e4m3> to_e4m3(const float* v, std::size_t n, const char* what);

// Each of `count` fp8 matrices as the reference stores them, [in, out] E4M3 values, with its block
// scales [out / 128, in / 128] (Problem's *_scale), dequantized in the same [in, out] layout:
// e4m3 * scale as an fp32 product (what a GPU dequantization computes), rounded to bf16.
std::vector<float> dequantized_bf16(const float* w, const float* scale, std::size_t count,
                                    std::size_t in, std::size_t out);

}  // namespace monomoe::bench
