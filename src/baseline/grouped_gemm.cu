// The baseline's bf16 grouped GEMM through CUTLASS's Hopper pointer-array kernel (TMA, wgmma,
// warp-specialized cooperative schedule): D_g = A_g . B_g for g < groups, A_g [M_g, K] and D_g
// [M_g, N] row-major, B_g [K, N] row-major (the in-out expert weights), fp32 accumulation. It is
// what a conventional pipeline built on a library grouped GEMM runs (torch's grouped GEMM is
// CUTLASS-based too); cuBLAS's grouped GEMM reaches about half its rate on these shapes.
#include "baseline/grouped_gemm.hpp"

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/thread/linear_combination.h>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/gemm/dispatch_policy.hpp>
#include <cutlass/gemm/group_array_problem_shape.hpp>
#include <cutlass/gemm/kernel/gemm_universal.hpp>

#include <string>
#include <vector>

#include "host/check.hpp"
#include "monomoe/error.hpp"

namespace monomoe::baseline {

namespace {

using namespace cute;
using ProblemShape = cutlass::gemm::GroupProblemShape<Shape<int, int, int>>;  // (M, N, K) per group
using Element = cutlass::bfloat16_t;
using LayoutA = cutlass::layout::RowMajor;
using LayoutB = cutlass::layout::RowMajor;
using LayoutD = cutlass::layout::RowMajor;
constexpr int kAlign = 128 / cutlass::sizeof_bits<Element>::value;  // 16 bytes
using TileShape = Shape<_128, _256, _64>;
using ClusterShape = Shape<_1, _1, _1>;

using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, float, float, void, LayoutD*, kAlign, Element,
    LayoutD*, kAlign, cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative,
    cutlass::epilogue::fusion::LinearCombination<Element, float, void, float>>::CollectiveOp;

using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, LayoutA*, kAlign, Element,
    LayoutB*, kAlign, float, TileShape, ClusterShape,
    cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
        sizeof(typename Epilogue::SharedStorage))>,
    cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative>::CollectiveOp;

using Kernel = cutlass::gemm::kernel::GemmUniversal<ProblemShape, Mainloop, Epilogue>;
using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
using StrideA = typename Kernel::InternalStrideA;
using StrideB = typename Kernel::InternalStrideB;
using StrideD = typename Kernel::InternalStrideD;

void check_cutlass(cutlass::Status s, const char* what) {
  if (s != cutlass::Status::kSuccess) {
    throw CudaError(std::string("baseline CUTLASS grouped GEMM: ") + what + ": " +
                    cutlassGetStatusString(s));
  }
}

template <class T>
T* device_array(std::size_t n) {
  T* p = nullptr;
  MONOMOE_CUDA(cudaMalloc(&p, n * sizeof(T)));
  return p;
}

}  // namespace

struct CutlassGroupedGemm::Impl {
  int max_groups = 0;
  int sm_count = 0;
  typename ProblemShape::UnderlyingProblemShape* shapes = nullptr;  // [max_groups]
  StrideA* stride_a = nullptr;
  StrideB* stride_b = nullptr;
  StrideD* stride_d = nullptr;
  void* workspace = nullptr;
  std::size_t workspace_bytes = 0;
  std::vector<typename ProblemShape::UnderlyingProblemShape> host_shapes;
  std::vector<StrideA> host_a;
  std::vector<StrideB> host_b;
  std::vector<StrideD> host_d;

  ~Impl() {
    cudaFree(shapes);
    cudaFree(stride_a);
    cudaFree(stride_b);
    cudaFree(stride_d);
    cudaFree(workspace);
  }
};

CutlassGroupedGemm::CutlassGroupedGemm(int max_groups) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.max_groups = max_groups;
  int device = 0;
  MONOMOE_CUDA(cudaGetDevice(&device));
  MONOMOE_CUDA(cudaDeviceGetAttribute(&m.sm_count, cudaDevAttrMultiProcessorCount, device));
  const auto n = static_cast<std::size_t>(max_groups);
  m.shapes = device_array<typename ProblemShape::UnderlyingProblemShape>(n);
  m.stride_a = device_array<StrideA>(n);
  m.stride_b = device_array<StrideB>(n);
  m.stride_d = device_array<StrideD>(n);
}

CutlassGroupedGemm::~CutlassGroupedGemm() = default;

void CutlassGroupedGemm::run(const std::vector<int>& rows, int n, int k, const void* const* a,
                             const void* const* b, void* const* d, cudaStream_t stream) {
  Impl& m = *impl_;
  const int groups = static_cast<int>(rows.size());
  if (groups == 0) return;
  if (groups > m.max_groups) {
    throw ConfigError("baseline CUTLASS grouped GEMM: " + std::to_string(groups) +
                      " groups, built for " + std::to_string(m.max_groups));
  }
  m.host_shapes.clear();
  m.host_a.clear();
  m.host_b.clear();
  m.host_d.clear();
  for (int g = 0; g < groups; ++g) {
    m.host_shapes.push_back({rows[static_cast<std::size_t>(g)], n, k});
    // Row-major A [M, K]: (K, 1, 0); B [K, N] row-major seen as CUTLASS's (N, K): (1, N, 0);
    // row-major D [M, N]: (N, 1, 0). One batch per group, so the batch strides are 0.
    StrideA sa{};
    StrideB sb{};
    StrideD sd{};
    get<0>(sa) = k;  // the unit and batch modes are static in these stride types
    get<1>(sb) = n;
    get<0>(sd) = n;
    m.host_a.push_back(sa);
    m.host_b.push_back(sb);
    m.host_d.push_back(sd);
  }
  const auto copy = [&](auto* dst, const auto& src) {
    MONOMOE_CUDA(cudaMemcpyAsync(dst, src.data(), src.size() * sizeof(src[0]),
                                 cudaMemcpyHostToDevice, stream));
  };
  copy(m.shapes, m.host_shapes);
  copy(m.stride_a, m.host_a);
  copy(m.stride_b, m.host_b);
  copy(m.stride_d, m.host_d);

  cutlass::KernelHardwareInfo hw;
  hw.sm_count = m.sm_count;
  typename Gemm::Arguments args{
      cutlass::gemm::GemmUniversalMode::kGrouped,
      {groups, m.shapes, m.host_shapes.data()},
      {reinterpret_cast<const Element**>(const_cast<const void**>(a)), m.stride_a,
       reinterpret_cast<const Element**>(const_cast<const void**>(b)), m.stride_b},
      {{}, nullptr, m.stride_d, reinterpret_cast<Element**>(const_cast<void**>(d)), m.stride_d},
      hw};
  args.epilogue.thread.alpha = 1.0f;
  args.epilogue.thread.beta = 0.0f;
  Gemm gemm;
  check_cutlass(gemm.can_implement(args), "can_implement");
  const std::size_t need = Gemm::get_workspace_size(args);
  if (need > m.workspace_bytes) {
    cudaFree(m.workspace);
    m.workspace = nullptr;
    MONOMOE_CUDA(cudaMalloc(&m.workspace, need));
    m.workspace_bytes = need;
  }
  check_cutlass(gemm.initialize(args, m.workspace, stream), "initialize");
  check_cutlass(gemm.run(stream), "run");
}

}  // namespace monomoe::baseline
