// Per-block phase times of one forward (MoELayer::set_trace): a few global stores by one thread of
// the block, and nothing at all when tracing is off (every method returns at once). Slots, as the
// host reads them (layer.cu): 0 start, 1 gate done, 2 routed, 3 end, 4 waiting for tasks, 5 in GEMM
// tasks, 6 tasks run, 7 first task taken, 8 last GEMM task finished, 9 in combine tasks.
#pragma once

#include "device/sync.cuh"

namespace monomoe::device {

class TraceRecorder {
 public:
  // Records only in the thread that passes `recorder` (one per block).
  __device__ TraceRecorder(const Params& p, bool recorder)
      : slots_(p.trace && recorder ? p.trace + blockIdx.x * kTraceSlots : nullptr) {}

  __device__ __forceinline__ void mark(int slot) {
    if (slots_) slots_[slot] = global_ns();
  }
  __device__ __forceinline__ void loop_started() {
    if (!slots_) return;
    asked_ = global_ns();
    last_gemm_end_ = asked_;
  }
  __device__ __forceinline__ void task_taken() {
    if (!slots_) return;
    got_ = global_ns();
    wait_ns_ += got_ - asked_;
    if (tasks_ == 0) first_task_ = got_;
  }
  __device__ __forceinline__ void task_done(bool gemm) {
    if (!slots_) return;
    asked_ = global_ns();
    if (gemm) {
      gemm_ns_ += asked_ - got_;
      last_gemm_end_ = asked_;
    } else {
      combine_ns_ += asked_ - got_;
    }
    ++tasks_;
  }
  __device__ __forceinline__ void loop_ended() {
    if (!slots_) return;
    slots_[3] = global_ns();
    slots_[4] = wait_ns_;
    slots_[5] = gemm_ns_;
    slots_[6] = tasks_;
    slots_[7] = tasks_ > 0 ? first_task_ : slots_[3];
    slots_[8] = last_gemm_end_;
    slots_[9] = combine_ns_;
  }

 private:
  long long* slots_;
  long long asked_ = 0, got_ = 0, wait_ns_ = 0, gemm_ns_ = 0, combine_ns_ = 0, tasks_ = 0;
  long long first_task_ = 0, last_gemm_end_ = 0;
};

}  // namespace monomoe::device
