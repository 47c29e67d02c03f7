// Size arithmetic that cannot wrap silently: every product and sum of buffer sizes goes through here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "monomoe/error.hpp"

namespace monomoe::detail {

// a * b, or ConfigError naming `what` when the product does not fit in 64 bits.
inline std::size_t checked_mul(std::size_t a, std::size_t b, const char* what) {
  std::size_t r = 0;
  if (__builtin_mul_overflow(a, b, &r)) {
    throw ConfigError(std::string(what) + ": size overflows 64 bits (" + std::to_string(a) + " x " +
                      std::to_string(b) + ")");
  }
  return r;
}

inline std::size_t checked_add(std::size_t a, std::size_t b, const char* what) {
  std::size_t r = 0;
  if (__builtin_add_overflow(a, b, &r)) {
    throw ConfigError(std::string(what) + ": size overflows 64 bits");
  }
  return r;
}

inline std::size_t round_up(std::size_t v, std::size_t to, const char* what) {
  return checked_mul((checked_add(v, to - 1, what)) / to, to, what);
}

}  // namespace monomoe::detail
