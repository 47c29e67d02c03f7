#include "cli_args.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <ostream>
#include <sstream>

#include "monomoe/error.hpp"
#include "monomoe/version.hpp"

namespace monomoe::cli {

namespace {

const Option* find_option(std::span<const Option> options, std::string_view name) {
  for (const Option& o : options) {
    if (o.name == name) return &o;
  }
  return nullptr;
}

[[noreturn]] void bad_value(std::string_view flag, std::string_view text, std::string_view wanted) {
  throw ConfigError(concat("invalid value for ", flag, ": '", text, "' is not ", wanted));
}

// The whole text must be the number: "12x", "", " 3" are rejected.
template <typename T>
T parse_number(std::string_view flag, std::string_view text, std::string_view wanted) {
  T v{};
  const char* end = text.data() + text.size();
  const auto [ptr, ec] = std::from_chars(text.data(), end, v);
  if (ec == std::errc::result_out_of_range) {
    throw ConfigError(concat("invalid value for ", flag, ": '", text, "' is out of range"));
  }
  if (ec != std::errc{} || ptr != end || text.empty()) bad_value(flag, text, wanted);
  return v;
}

std::string default_text(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

// Column at which option help starts in --help output.
constexpr std::size_t kHelpColumn = 32;

void print_option_line(std::ostream& os, std::string_view flags, std::string_view help) {
  std::string left = concat("  ", flags);
  if (left.size() + 1 < kHelpColumn) {
    left.resize(kHelpColumn, ' ');
  } else {
    left.append("\n").append(kHelpColumn, ' ');
  }
  os << left << help << "\n";
}

}  // namespace

// ---- ParsedArgs ---------------------------------------------------------------------------------

bool ParsedArgs::has(std::string_view name) const {
  return values_.find(name) != values_.end();
}

const std::string& ParsedArgs::value(std::string_view name) const {
  const auto it = values_.find(name);
  if (it == values_.end()) throw std::logic_error(concat("flag ", name, " was not given"));
  return it->second;
}

void ParsedArgs::set(std::string_view name, std::string value) {
  values_.insert_or_assign(std::string(name), std::move(value));
}

std::int64_t ParsedArgs::int_or(std::string_view name, std::int64_t fallback) const {
  if (!has(name)) return fallback;
  return parse_number<std::int64_t>(name, value(name), "an integer");
}

std::int64_t ParsedArgs::int_in(std::string_view name, std::int64_t fallback, std::int64_t lo,
                                std::int64_t hi) const {
  const std::int64_t v = int_or(name, fallback);
  if (v < lo || v > hi) {
    throw ConfigError(concat("invalid value for ", name, ": ", std::to_string(v), " must be in [",
                             std::to_string(lo), ", ", std::to_string(hi), "]"));
  }
  return v;
}

std::uint64_t ParsedArgs::uint_or(std::string_view name, std::uint64_t fallback) const {
  if (!has(name)) return fallback;
  return parse_number<std::uint64_t>(name, value(name), "a non-negative integer");
}

double ParsedArgs::double_or(std::string_view name, double fallback) const {
  if (!has(name)) return fallback;
  const double v = parse_number<double>(name, value(name), "a number");
  if (!std::isfinite(v)) bad_value(name, value(name), "a finite number");
  return v;
}

std::string ParsedArgs::string_or(std::string_view name, std::string_view fallback) const {
  return has(name) ? value(name) : std::string(fallback);
}

// ---- Parsing and help ---------------------------------------------------------------------------

ParsedArgs parse_args(std::span<const Option> options, std::span<const std::string_view> argv) {
  ParsedArgs out;
  for (std::size_t i = 0; i < argv.size(); ++i) {
    const std::string_view word = argv[i];
    if (word.size() < 2 || word[0] != '-') {
      throw UsageError(concat("unexpected argument '", word, "'"));
    }
    const std::size_t eq = word.find('=');
    const std::string_view name = word.substr(0, eq);
    const Option* opt = find_option(options, name);
    if (opt == nullptr) throw UsageError(concat("unknown flag '", name, "'"));
    if (opt->metavar.empty()) {
      if (eq != std::string_view::npos) {
        throw UsageError(concat("flag ", name, " takes no value"));
      }
      out.set(name, "");
    } else if (eq != std::string_view::npos) {
      out.set(name, std::string(word.substr(eq + 1)));
    } else {
      // The next word is the value even when it starts with '-', so that "--seed -1" reaches the
      // number check (and fails there with a message naming the flag) instead of looking unknown.
      if (i + 1 >= argv.size()) {
        throw UsageError(concat("flag ", name, " needs a value (", opt->metavar, ")"));
      }
      out.set(name, std::string(argv[++i]));
    }
  }
  return out;
}

void print_command_help(std::ostream& os, const Command& cmd) {
  os << "usage: monomoe " << cmd.name << (cmd.options.empty() ? "" : " [options]") << "\n\n"
     << cmd.summary << "\n";
  if (!cmd.details.empty()) os << "\n" << cmd.details << "\n";
  os << "\noptions:\n";
  for (const Option& o : cmd.options) {
    std::string flags(o.name);
    if (!o.metavar.empty()) flags.append(" ").append(o.metavar);
    print_option_line(os, flags, o.help);
  }
  print_option_line(os, "-h, --help", "print this help and exit");
}

void print_main_help(std::ostream& os, std::span<const Command> commands) {
  os << "monomoe " << kVersionString
     << ": a Mixture-of-Experts layer as one persistent GPU kernel\n\n"
     << "usage: monomoe <command> [options]\n"
     << "       monomoe <command> --help\n\ncommands:\n";
  for (const Command& c : commands) {
    std::string left = concat("  ", c.name);
    left.resize(std::max<std::size_t>(left.size() + 2, 14), ' ');
    os << left << c.summary << "\n";
  }
  os << "\noptions:\n";
  print_option_line(os, "-h, --help", "print this help and exit");
  print_option_line(os, "--version", "print the version and exit");
  os << "\nexit status: 0 success, 1 the command failed, 2 bad command line or invalid "
        "configuration\n";
}

// ---- LayerConfig flags --------------------------------------------------------------------------

std::vector<Option> layer_options() {
  const LayerConfig d;
  const auto with_default = [](std::string_view help, const auto& v) {
    return concat(help, " (default ", v, ")");
  };
  const auto n = [](std::int64_t v) { return std::to_string(v); };
  return {
      {"--tokens", "S",
       with_default("tokens per rank per call, LayerConfig.max_tokens", n(d.max_tokens))},
      {"--hidden", "H", with_default("model width, a multiple of 128", n(d.hidden))},
      {"--ffn", "I", with_default("expert FFN width, a multiple of 128", n(d.ffn))},
      {"--shared-ffn", "N",
       with_default(concat("shared expert width, a dense FFN that every token runs: 0 = none, "
                           "else a multiple of --ffn up to ",
                           n(Limits::kMaxSharedSlices), "x"),
                    n(d.shared_ffn))},
      {"--experts", "E", with_default("experts over all ranks", n(d.experts))},
      {"--topk", "K", with_default("experts per token", n(d.topk))},
      {"--act", "relu|gelu|silu|swiglu",
       with_default("expert activation", to_string(d.activation))},
      {"--dtype", "bf16|tf32|fp32|fp8",
       with_default("input/weight precision (fp8: E4M3 expert weights with 128 x 128 block "
                    "scales, bf16 x, gate and biases; needs --weight-layout out-in)",
                    to_string(d.dtype))},
      {"--weight-layout", "in-out|out-in",
       with_default("how expert and gate weights are stored; out-in is PyTorch nn.Linear's",
                    to_string(d.weight_layout))},
      {"--no-renorm", "", "do not renormalize the top-k gate weights"},
      {"--capacity", "F",
       with_default("capacity factor per (source rank, expert); 0 = dropless",
                    default_text(d.capacity_factor))},
      {"--no-bias", "", "experts without biases b1, b2"},
      {"--world", "W", with_default("ranks (GPUs); experts must divide by it", n(d.world_size))},
      {"--seed", "N", "seed of the random inputs (default 1)"},
      {"--timeout", "SEC",
       with_default("bound on every wait inside the kernel", default_text(d.timeout_seconds))},
  };
}

std::vector<Option> with_layer_options(std::vector<Option> own) {
  std::vector<Option> all = layer_options();
  for (Option& o : own) all.push_back(std::move(o));
  return all;
}

LayerFlags parse_layer_flags(const ParsedArgs& args) {
  LayerFlags f;
  LayerConfig& c = f.config;
  c.max_tokens = args.int_or("--tokens", c.max_tokens);
  c.hidden = args.int_or("--hidden", c.hidden);
  c.ffn = args.int_or("--ffn", c.ffn);
  c.shared_ffn = args.int_or("--shared-ffn", c.shared_ffn);
  c.experts = args.int_or("--experts", c.experts);
  c.topk = args.int_or("--topk", c.topk);
  if (args.has("--act")) {
    const auto a = parse_activation(args.value("--act"));
    if (!a) bad_value("--act", args.value("--act"), "one of relu, gelu, silu, swiglu");
    c.activation = *a;
  }
  if (args.has("--dtype")) {
    const auto d = parse_dtype(args.value("--dtype"));
    if (!d) bad_value("--dtype", args.value("--dtype"), "one of bf16, tf32, fp32, fp8");
    c.dtype = *d;
  }
  if (args.has("--weight-layout")) {
    const auto l = parse_weight_layout(args.value("--weight-layout"));
    if (!l) bad_value("--weight-layout", args.value("--weight-layout"), "one of in-out, out-in");
    c.weight_layout = *l;
  }
  if (args.has("--no-renorm")) c.renormalize = false;
  c.capacity_factor = args.double_or("--capacity", c.capacity_factor);
  if (args.has("--no-bias")) c.bias = false;
  c.world_size = args.int_or("--world", c.world_size);
  c.rank = 0;
  c.timeout_seconds = args.double_or("--timeout", c.timeout_seconds);
  f.seed = args.uint_or("--seed", f.seed);
  c.validate();
  return f;
}

}  // namespace monomoe::cli
