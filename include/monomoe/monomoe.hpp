// monomoe: a whole distributed Mixture-of-Experts layer as one persistent GPU kernel.
#pragma once

#include "monomoe/communicator.hpp"
#include "monomoe/config.hpp"
#include "monomoe/error.hpp"
#include "monomoe/layer.hpp"
#include "monomoe/version.hpp"
#include "monomoe/virtual_ranks.hpp"
