// Command-line parsing for the `monomoe` tool: a subcommand is one Command entry (name, summary,
// its options, a run function); the parser, the help text and the error exits come from that table.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <map>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "monomoe/config.hpp"

namespace monomoe::cli {

// Concatenates strings, string_views and literals. (Used instead of `"literal" + std::string`, on
// which GCC 12 at -O3 raises a false -Wrestrict.)
template <typename... Parts>
std::string concat(const Parts&... parts) {
  std::string s;
  (s.append(std::string_view(parts)), ...);
  return s;
}

// Exit statuses of the tool.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;  // the command ran and failed (CUDA error, wrong result)
inline constexpr int kExitUsage = 2;    // bad command line: unknown flag/command, invalid value

// A malformed command line (unknown flag, missing value, stray argument). main() prints the message
// and the command's usage to stderr and exits with kExitUsage. Invalid values and invalid
// LayerConfig combinations are reported as monomoe::ConfigError instead (also kExitUsage, message
// only).
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// One flag of a command. `metavar` empty: a switch without a value (--no-bias); otherwise the flag
// takes one value, written `--name VALUE` or `--name=VALUE`.
struct Option {
  std::string_view name;     // with the leading dashes: "--tokens"
  std::string_view metavar;  // "S", "relu|gelu|silu|swiglu", or "" for a switch
  std::string help;          // one line; say the default here
};

// The flags given to one command, after checking them against its option list.
class ParsedArgs {
 public:
  bool has(std::string_view name) const;
  // The value of a flag; throws std::logic_error when it is absent (ask has() first, or use the
  // *_or accessors).
  const std::string& value(std::string_view name) const;

  // Typed accessors: `fallback` when the flag is absent; ConfigError naming the flag when the text
  // is not a number (or out of [lo, hi]).
  std::int64_t int_or(std::string_view name, std::int64_t fallback) const;
  std::int64_t int_in(std::string_view name, std::int64_t fallback, std::int64_t lo,
                      std::int64_t hi) const;
  std::uint64_t uint_or(std::string_view name, std::uint64_t fallback) const;
  double double_or(std::string_view name, double fallback) const;
  std::string string_or(std::string_view name, std::string_view fallback) const;

  void set(std::string_view name, std::string value);  // used by parse_args

 private:
  std::map<std::string, std::string, std::less<>> values_;
};

struct Command {
  std::string_view name;     // "reference"
  std::string_view summary;  // one line for the top-level --help
  std::string_view details;  // a paragraph printed by `monomoe <name> --help` (may be empty)
  std::vector<Option> options;
  int (*run)(const ParsedArgs& args);  // returns the exit status
};

// Checks argv (the words after the command name) against `options`: unknown flags, a value missing
// or given to a switch, and positional words throw UsageError. `--help`/`-h` are not handled here.
ParsedArgs parse_args(std::span<const Option> options, std::span<const std::string_view> argv);

// `monomoe <cmd> --help` text, built from the command's table entry.
void print_command_help(std::ostream& os, const Command& cmd);
// `monomoe --help` text, listing the commands.
void print_main_help(std::ostream& os, std::span<const Command> commands);

// ---- The LayerConfig flags, shared by every command that builds a layer (reference, bench, check)
// --
//   --tokens S --hidden H --ffn I --shared-ffn N --experts E --topk K --act relu|gelu|silu|swiglu
//   --dtype bf16|tf32|fp32 --no-renorm --capacity F --no-bias --world W --seed N --timeout SEC
// Defaults are those of LayerConfig{} (the embedded default config), seed 1.
std::vector<Option> layer_options();

// layer_options() followed by a command's own options (what --help lists, in that order).
std::vector<Option> with_layer_options(std::vector<Option> own);

struct LayerFlags {
  LayerConfig config;      // rank 0; world_size from --world
  std::uint64_t seed = 1;  // input generator seed (not part of LayerConfig)
};

// Reads the flags of layer_options() from `args` over the defaults and validates the config
// (LayerConfig::validate() without a device-memory bound). Throws ConfigError naming the flag for a
// malformed value, or validate()'s message naming the field for an invalid value/combination.
LayerFlags parse_layer_flags(const ParsedArgs& args);

}  // namespace monomoe::cli
