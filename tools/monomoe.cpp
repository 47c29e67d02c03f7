// `monomoe`: the command-line tool. Dispatches to the subcommands listed in kCommandFactories and
// turns every error into a message and an exit status (see cli_args.hpp).
#include <exception>
#include <iostream>
#include <string_view>
#include <vector>

#include "cli_args.hpp"
#include "commands.hpp"
#include "monomoe/error.hpp"
#include "monomoe/version.hpp"

namespace monomoe::cli {
namespace {

// The command table: one line per subcommand, in the order `monomoe --help` lists them.
constexpr Command (*kCommandFactories[])() = {
    info_command,
    reference_command,
    bench_command,
    check_command,
    soak_command,
};

bool is_help(std::string_view w) {
  return w == "--help" || w == "-h";
}

int run_command(const Command& cmd, std::span<const std::string_view> words) {
  for (std::string_view w : words) {
    if (is_help(w)) {
      print_command_help(std::cout, cmd);
      return kExitOk;
    }
  }
  const std::string prefix = concat("monomoe ", cmd.name, ": ");
  try {
    const ParsedArgs args = parse_args(cmd.options, words);
    return cmd.run(args);
  } catch (const UsageError& e) {
    std::cerr << prefix << e.what() << "\n\n";
    print_command_help(std::cerr, cmd);
    return kExitUsage;
  } catch (const ConfigError& e) {
    // Invalid values and configurations: the message names the field and its limit.
    std::cerr << prefix << e.what() << "\n";
    return kExitUsage;
  } catch (const std::exception& e) {
    std::cerr << prefix << "error: " << e.what() << "\n";
    return kExitFailure;
  }
}

int main_impl(std::span<const std::string_view> words) {
  std::vector<Command> commands;
  for (auto make : kCommandFactories) commands.push_back(make());

  if (words.empty()) {
    std::cerr << "monomoe: no command given\n\n";
    print_main_help(std::cerr, commands);
    return kExitUsage;
  }
  const std::string_view first = words[0];
  if (is_help(first)) {
    print_main_help(std::cout, commands);
    return kExitOk;
  }
  if (first == "--version") {
    std::cout << "monomoe " << kVersionString << "\n";
    return kExitOk;
  }
  for (const Command& c : commands) {
    if (c.name == first) return run_command(c, words.subspan(1));
  }
  std::cerr << "monomoe: unknown " << (first.starts_with('-') ? "flag" : "command") << " '" << first
            << "'\n\n";
  print_main_help(std::cerr, commands);
  return kExitUsage;
}

}  // namespace
}  // namespace monomoe::cli

int main(int argc, char** argv) {
  const std::vector<std::string_view> words(argv + 1, argv + argc);
  try {
    return monomoe::cli::main_impl(words);
  } catch (const std::exception& e) {
    std::cerr << "monomoe: error: " << e.what() << "\n";
    return monomoe::cli::kExitFailure;
  }
}
