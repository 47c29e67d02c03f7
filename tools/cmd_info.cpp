// `monomoe info`: what this machine offers the layer: GPUs, peer access between them, and the CUDA
// and NCCL versions (the device API needs the NCCL loaded at run time to be the one compiled in).
#include <cuda_runtime_api.h>

#include <cstdio>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "commands.hpp"
#include "monomoe/communicator.hpp"
#include "monomoe/version.hpp"

namespace monomoe::cli {
namespace {

// CUDA encodes 13.0 as 13000.
std::string cuda_version_text(int v) {
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

// NCCL_VERSION_CODE: major*10000 + minor*100 + patch (since 2.9).
std::string nccl_version_text(int v) {
  return std::to_string(v / 10000) + "." + std::to_string((v % 10000) / 100) + "." +
         std::to_string(v % 100);
}

std::string cuda_error_text(const char* call, cudaError_t err) {
  return concat(call, ": ", cudaGetErrorName(err), ": ", cudaGetErrorString(err));
}

void print_versions(std::ostream& os) {
  int runtime = 0;
  int driver = 0;
  os << "monomoe " << kVersionString << "\n";
  if (const cudaError_t e = cudaRuntimeGetVersion(&runtime); e == cudaSuccess) {
    os << "CUDA runtime  " << cuda_version_text(runtime) << "\n";
  } else {
    os << "CUDA runtime  unknown (" << cuda_error_text("cudaRuntimeGetVersion", e) << ")\n";
  }
  const cudaError_t e = cudaDriverGetVersion(&driver);
  if (e == cudaSuccess && driver > 0) {
    os << "CUDA driver   " << cuda_version_text(driver) << "\n";
  } else if (e == cudaSuccess) {
    os << "CUDA driver   none installed\n";
  } else {
    os << "CUDA driver   unknown (" << cuda_error_text("cudaDriverGetVersion", e) << ")\n";
  }
  const int compiled = nccl_compiled_version();
  os << "NCCL          compiled " << nccl_version_text(compiled) << ", loaded ";
  try {
    const int loaded = nccl_runtime_version();
    os << nccl_version_text(loaded)
       << (loaded == compiled ? " (match)\n" : " (MISMATCH: the layer will refuse to start)\n");
  } catch (const std::exception& ex) {
    os << "unknown (" << ex.what() << ")\n";
  }
}

void print_gpu(std::ostream& os, int dev) {
  cudaDeviceProp p{};
  if (const cudaError_t e = cudaGetDeviceProperties(&p, dev); e != cudaSuccess) {
    os << "  [" << dev << "] " << cuda_error_text("cudaGetDeviceProperties", e) << "\n";
    return;
  }
  char pci[32];
  std::snprintf(pci, sizeof(pci), "%04x:%02x:%02x.0", p.pciDomainID, p.pciBusID, p.pciDeviceID);
  const double gib = static_cast<double>(p.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0);
  // The persistent kernel is built for sm_90a (Hopper); other GPUs can still run `reference`.
  const bool hopper = p.major == 9 && p.minor == 0;
  os << "  [" << dev << "] " << p.name << "  sm_" << p.major << p.minor << "  "
     << p.multiProcessorCount << " SMs  " << std::fixed << std::setprecision(1) << gib
     << " GiB  pci " << pci << "  cooperative launch " << (p.cooperativeLaunch ? "yes" : "no")
     << "  kernel " << (hopper ? "supported" : "not built for this GPU") << "\n";
  os.unsetf(std::ios::floatfield);
}

// One cell of the peer matrix: can `a` access `b`'s memory, and with native atomics?
std::string peer_cell(int a, int b) {
  if (a == b) return "-";
  int can = 0;
  if (cudaDeviceCanAccessPeer(&can, a, b) != cudaSuccess) return "err";
  if (!can) return "no";
  int atomics = 0;
  if (cudaDeviceGetP2PAttribute(&atomics, cudaDevP2PAttrNativeAtomicSupported, a, b) !=
      cudaSuccess) {
    return "p2p";
  }
  return atomics ? "p2p+at" : "p2p";
}

void print_peer_matrix(std::ostream& os, int count) {
  os << "peer access (row reads/writes column):\n      ";
  for (int b = 0; b < count; ++b) os << std::setw(8) << b;
  os << "\n";
  for (int a = 0; a < count; ++a) {
    os << "  " << std::setw(4) << a;
    for (int b = 0; b < count; ++b) os << std::setw(8) << peer_cell(a, b);
    os << "\n";
  }
  os << "  p2p+at: peer access with native atomics (NVLink offers them, PCIe does not);\n"
        "  p2p: peer access without native atomics (typically PCIe); no: no peer access.\n"
        "  The NVLink state itself is not queried (that needs NVML).\n";
}

int run_info(const ParsedArgs& /*args*/) {
  print_versions(std::cout);
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    std::cout << "GPUs          none visible ("
              << (e != cudaSuccess ? cuda_error_text("cudaGetDeviceCount", e)
                                   : std::string("cudaGetDeviceCount returned 0"))
              << ")\n";
    return kExitOk;  // a machine without a GPU is a valid answer, not a failure
  }
  std::cout << "GPUs          " << count << "\n";
  for (int d = 0; d < count; ++d) print_gpu(std::cout, d);
  if (count > 1) print_peer_matrix(std::cout, count);
  return kExitOk;
}

}  // namespace

Command info_command() {
  return {
      .name = "info",
      .summary = "Show the GPUs, peer access between them, and the CUDA and NCCL versions.",
      .details = "Exits 0 also when no GPU is visible (and says why).",
      .options = {},
      .run = run_info,
  };
}

}  // namespace monomoe::cli
