// Transport between ranks (world > 1): how a block reaches a peer's symmetric window. The kernel
// only uses the operations below, so another transport (NCCL GIN put + signal across nodes) can take
// the place of this one. LsaTransport is the same-node path: NVLink loads/stores through NCCL's peer
// pointers (ncclGetPeerPointer on a window registered with NCCL_WIN_COLL_SYMMETRIC).
//
// Ordering contract (DESIGN.md): payload stores, then every writer thread's __threadfence_system()
// and a __syncthreads(), then ONE release store (signal) or atomic (add) by one thread; the reader
// acquires the flag before it reads any payload.
#pragma once

#include <nccl.h>
#include <nccl_device.h>

#include "device/params.cuh"

namespace monomoe::device {

__device__ __forceinline__ unsigned long long ld_acquire_sys_u64(const unsigned long long* p) {
  unsigned long long v;
  asm volatile("ld.acquire.sys.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ unsigned int ld_acquire_sys_u32(const unsigned int* p) {
  unsigned int v;
  asm volatile("ld.acquire.sys.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void st_release_sys_u64(unsigned long long* p, unsigned long long v) {
  asm volatile("st.release.sys.global.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}
__device__ __forceinline__ void st_release_sys_u32(unsigned int* p, unsigned int v) {
  asm volatile("st.release.sys.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

struct LsaTransport {
  ncclWindow_t win;
  unsigned char* local;  // this rank's window
  int rank;

  __device__ explicit LsaTransport(const Params& p)
      : win(static_cast<ncclWindow_t>(p.win)), local(p.window), rank(p.rank) {}

  // Address of byte `offset` of `peer`'s window (this rank's own window for peer == rank).
  template <class T>
  __device__ __forceinline__ T* at(unsigned long long offset, int peer) const {
    if (peer == rank) return reinterpret_cast<T*>(local + offset);
    return static_cast<T*>(ncclGetPeerPointer(win, offset, peer));
  }
  // Release store of a flag word in `peer`'s window (after the payload, see the contract above).
  __device__ __forceinline__ void signal_u64(unsigned long long offset, int peer,
                                             unsigned long long value) const {
    st_release_sys_u64(at<unsigned long long>(offset, peer), value);
  }
  __device__ __forceinline__ void signal_u32(unsigned long long offset, int peer,
                                             unsigned int value) const {
    st_release_sys_u32(at<unsigned int>(offset, peer), value);
  }
  // Adds to a counter in `peer`'s window (several writers; the owner polls it).
  __device__ __forceinline__ void add(unsigned long long offset, int peer, int value) const {
    atomicAdd_system(at<int>(offset, peer), value);
  }
};

}  // namespace monomoe::device
