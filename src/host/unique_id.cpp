// UniqueId as text (host-only, in monomoe_core: launchers pass ids through files and pipes without
// linking NCCL). UniqueId::create() lives in communicator.cpp.
#include <string>

#include "monomoe/communicator.hpp"
#include "monomoe/error.hpp"

namespace monomoe {

std::string UniqueId::to_hex() const {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string s;
  s.reserve(bytes.size() * 2);
  for (char c : bytes) {
    const auto b = static_cast<unsigned char>(c);
    s.push_back(kDigits[b >> 4]);
    s.push_back(kDigits[b & 15]);
  }
  return s;
}

UniqueId UniqueId::from_hex(const std::string& hex) {
  if (hex.size() != 2 * sizeof(UniqueId::bytes)) {
    throw ConfigError("unique id: expected " + std::to_string(2 * sizeof(UniqueId::bytes)) +
                      " hex digits, got " + std::to_string(hex.size()));
  }
  const auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    throw ConfigError(std::string("unique id: '") + c + "' is not a hex digit");
  };
  UniqueId id;
  for (std::size_t i = 0; i < id.bytes.size(); ++i) {
    id.bytes[i] = static_cast<char>(nibble(hex[2 * i]) * 16 + nibble(hex[2 * i + 1]));
  }
  return id;
}

}  // namespace monomoe
