// The kernels for weights stored [out, in], PyTorch nn.Linear's (launch.hpp lists every
// instantiation).
#include "device/instances.cuh"

template struct monomoe::device::Instances<true>;
