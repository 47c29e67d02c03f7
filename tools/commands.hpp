// The subcommands of `monomoe`. Adding one: write tools/cmd_<name>.cpp defining
// `Command <name>_command()` (options, help text, run function), declare it here, list it in
// kCommandFactories in tools/monomoe.cpp and add the file to tools/CMakeLists.txt.
#pragma once

#include "cli_args.hpp"

namespace monomoe::cli {

Command info_command();       // tools/cmd_info.cpp
Command reference_command();  // tools/cmd_reference.cpp
Command bench_command();      // tools/cmd_bench.cpp
Command check_command();      // tools/cmd_bench.cpp
Command soak_command();       // tools/cmd_bench.cpp

}  // namespace monomoe::cli
