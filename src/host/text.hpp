#pragma once
// Error and description text without iostreams. The library builds its messages here, not with
// std::ostringstream: inside a PyTorch process the first integer inserted into an ostream from
// libmonomoe crashed (2026-11-29, H200 machine: SIGSEGV in basic_ostream::_M_insert<long> while
// formatting a KernelError; the same code is fine in our C++ programs). std::to_chars needs no
// locale and no stream, so the text cannot depend on what else the process has loaded.
#include <charconv>
#include <concepts>
#include <string>
#include <string_view>

namespace monomoe::text {

inline void append(std::string& s, std::string_view v) { s.append(v); }
inline void append(std::string& s, const char* v) { s.append(v); }
inline void append(std::string& s, const std::string& v) { s.append(v); }

template <class T>
  requires(std::integral<T> || std::floating_point<T>)
void append(std::string& s, T v) {
  char buf[64];
  if constexpr (std::same_as<T, bool>) {
    s.push_back(v ? '1' : '0');
  } else {
    // Floating point: the shortest text that reads back to v (2 for 2.0, 0.1 for 0.1).
    const auto r = std::to_chars(buf, buf + sizeof buf, v);
    s.append(buf, r.ptr);
  }
}

// cat("rank ", 3, " took ", 1.5, " s") == "rank 3 took 1.5 s"
template <class... A>
std::string cat(const A&... parts) {
  std::string s;
  (append(s, parts), ...);
  return s;
}

}  // namespace monomoe::text
