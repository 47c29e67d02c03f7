// The inter-node transport: NCCL GIN (GPU-initiated networking) put + signal, with the interface of
// transport.cuh. Data moves window to window over the network (or NCCL's proxy); a signal is one
// of the device communicator's GIN signals, and its update is ordered after the payload of the puts
// that precede it on the same context to the same peer (gin.h), which gives the contract the
// kernel needs without fences of its own.
//
// Needs an ncclDevComm created with ginSignalCount >= the slots used (ncclDevCommCreate); its
// ginContextCount is 0 where the communicator has no GIN (one host without a GIN-capable NIC), and
// then this transport must not be used (the host checks; see tests/test_transport_gpu.cu).
#pragma once

#include <nccl.h>
#include <nccl_device.h>

namespace monomoe::device {

struct GinTransport {
  ncclGin gin;
  ncclTeam world;
  ncclWindow_t win;

  __device__ GinTransport(const ncclDevComm& comm, ncclWindow_t window, int context = 0)
      : gin(comm, context), world(ncclTeamWorld(comm)), win(window) {}

  template <class Coop>
  __device__ __forceinline__ void put(Coop coop, unsigned long long dst_offset,
                                      unsigned long long src_offset, unsigned long long bytes,
                                      int peer) const {
    gin.put(world, peer, win, dst_offset, win, src_offset, bytes, ncclGin_None{}, ncclGin_None{},
            coop);
  }
  __device__ __forceinline__ void signal_add(unsigned int slot, int peer,
                                             unsigned long long value) const {
    gin.signal(world, peer, ncclGin_SignalAdd{static_cast<ncclGinSignal_t>(slot), value});
  }
  __device__ __forceinline__ unsigned long long read_signal(unsigned int slot) const {
    return gin.readSignal(static_cast<ncclGinSignal_t>(slot));
  }
};

}  // namespace monomoe::device
