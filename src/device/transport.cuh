// Transport between ranks (world > 1): how a block reaches a peer's symmetric window.
//
// The interface every transport provides (transport_gin.cuh has the inter-node one):
//   put(coop, dst_offset, src_offset, bytes, peer)  copy `bytes` (a multiple of 16, 16-byte aligned
//       offsets) from this rank's window to `peer`'s window; every thread of the warp `coop` calls it
//   signal_add(slot, peer, value)  one thread, after its warp's puts to `peer` (and a __syncwarp):
//       adds `value` to signal `slot` of `peer`, visible only after those puts' payload
//   read_signal(slot)              this rank's signal `slot`, with acquire semantics
// LsaTransport implements it with loads and stores through a table of every rank's window base
// (flag words live in the windows); GinTransport with NCCL GIN put + signal (network, across
// nodes). Both are exercised by tests/test_transport_gpu.cu. The fused kernel (ep.cuh) also uses
// LsaTransport's direct addressing (at(): stores straight from registers into a peer's window),
// which only a load/store transport has; a GIN build of the kernel stages rows in its own window
// and put()s them instead.
//
// LsaTransport ("load/store accessible", NCCL's name) serves two kinds of peers, told apart only
// by who filled the table (host/window.hpp), never by a branch in the kernel:
//   NVLink peers   NCCL's LSA pointers of a window registered with NCCL_WIN_COLL_SYMMETRIC
//                  (ncclGetPeerPointer(win, 0, peer); the mapping is flat, so base + offset)
//   virtual ranks  W windows in one GPU's memory, one per rank of this process (loopback): the
//                  multi-rank code runs unchanged where only one GPU is available
//
// Ordering contract (DESIGN.md): payload stores, then every writer thread's __threadfence_system()
// and a sync_workers(), then ONE release store (signal) or atomic (add) by one thread; the reader
// acquires the flag before it reads any payload. System scope serves both kinds of peers.
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

__device__ __forceinline__ void red_release_sys_add_u64(unsigned long long* p,
                                                        unsigned long long v) {
  asm volatile("red.release.sys.global.add.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}

// Base of `peer`'s window in this GPU's address space, for the table LsaTransport reads: what
// ncclGetPeerPointer gives for offset 0 (host/window.cu and the transport test fill tables with it).
__device__ __forceinline__ unsigned char* lsa_window_base(ncclWindow_t win, int peer) {
  return static_cast<unsigned char*>(ncclGetPeerPointer(win, 0, peer));
}

struct LsaTransport {
  unsigned char* const* peers;  // [world]: every rank's window base; peers[rank] is this rank's
  unsigned char* local;         // this rank's window
  int rank;
  unsigned long long signal_base = 0;  // window offset of the u64 signal words (put/signal API)

  __device__ explicit LsaTransport(const Params& p)
      : peers(p.peer_window), local(p.window), rank(p.rank) {}
  __device__ LsaTransport(unsigned char* const* table, int my_rank, unsigned long long signals_at)
      : peers(table), local(table[my_rank]), rank(my_rank), signal_base(signals_at) {}

  // ---- The transport interface (see the top of this file) ----
  template <class Coop>
  __device__ __forceinline__ void put(Coop coop, unsigned long long dst_offset,
                                      unsigned long long src_offset, unsigned long long bytes,
                                      int peer) const {
    const int4* src = reinterpret_cast<const int4*>(local + src_offset);
    int4* dst = at<int4>(dst_offset, peer);
    const unsigned long long n = bytes / sizeof(int4);
    for (unsigned long long i = static_cast<unsigned long long>(coop.thread_rank()); i < n;
         i += static_cast<unsigned long long>(coop.size())) {
      dst[i] = src[i];
    }
    __threadfence_system();  // each writer's stores before the signal of its warp (contract)
  }
  __device__ __forceinline__ void signal_add(unsigned int slot, int peer,
                                             unsigned long long value) const {
    red_release_sys_add_u64(at<unsigned long long>(signal_base + 8ull * slot, peer), value);
  }
  __device__ __forceinline__ unsigned long long read_signal(unsigned int slot) const {
    return ld_acquire_sys_u64(reinterpret_cast<const unsigned long long*>(local + signal_base +
                                                                          8ull * slot));
  }

  // ---- Direct addressing (load/store transports only) ----

  // Address of byte `offset` of `peer`'s window (this rank's own window for peer == rank).
  template <class T>
  __device__ __forceinline__ T* at(unsigned long long offset, int peer) const {
    return reinterpret_cast<T*>(peers[peer] + offset);
  }
  // Release store of a flag word in `peer`'s window (after the payload, see the contract above).
  __device__ __forceinline__ void signal_u64(unsigned long long offset, int peer,
                                             unsigned long long value) const {
    st_release_sys_u64(at<unsigned long long>(offset, peer), value);
  }
  // Adds to a counter in `peer`'s window (several writers; the owner polls it).
  __device__ __forceinline__ void add(unsigned long long offset, int peer, int value) const {
    atomicAdd_system(at<int>(offset, peer), value);
  }
};

}  // namespace monomoe::device
