// The kernels for weights stored [in, out] (launch.hpp lists every instantiation).
#include "device/instances.cuh"

template struct monomoe::device::Instances<false>;
