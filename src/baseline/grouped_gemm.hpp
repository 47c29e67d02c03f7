// The baseline's bf16 grouped GEMM on CUTLASS's Hopper pointer-array kernel (grouped_gemm.cu).
#pragma once

#include <cuda_runtime_api.h>

#include <memory>
#include <vector>

namespace monomoe::baseline {

class CutlassGroupedGemm {
 public:
  explicit CutlassGroupedGemm(int max_groups);
  ~CutlassGroupedGemm();
  CutlassGroupedGemm(const CutlassGroupedGemm&) = delete;
  CutlassGroupedGemm& operator=(const CutlassGroupedGemm&) = delete;

  // D_g = A_g . B_g on `stream` for g < rows.size(): A_g [rows[g], k] and D_g [rows[g], n]
  // row-major, B_g [k, n] row-major, bf16 in and out, fp32 accumulation. a, b, d: device arrays of
  // the groups' pointers. n and k multiples of 8.
  void run(const std::vector<int>& rows, int n, int k, const void* const* a, const void* const* b,
           void* const* d, cudaStream_t stream);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace monomoe::baseline
