#include "proxy/network/address.h"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>

namespace strait::network {

Address::Address(const sockaddr* sa) {
  if (sa->sa_family == AF_INET6) {
    std::memcpy(&storage_, sa, sizeof(sockaddr_in6));
  } else {
    std::memcpy(&storage_, sa, sizeof(sockaddr_in));
  }
}

std::optional<Address> Address::parse(std::string_view ip, uint32_t port) {
  if (port > 65535) return std::nullopt;
  std::string s(ip);
  Address a;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&a.storage_);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&a.storage_);
  if (inet_pton(AF_INET, s.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(static_cast<uint16_t>(port));
    return a;
  }
  if (s.size() > 2 && s.front() == '[' && s.back() == ']') s = s.substr(1, s.size() - 2);
  if (inet_pton(AF_INET6, s.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<uint16_t>(port));
    return a;
  }
  return std::nullopt;
}

std::optional<Address> Address::parseHostPort(std::string_view hp) {
  size_t colon = hp.rfind(':');
  if (colon == std::string_view::npos) return std::nullopt;
  std::string_view host = hp.substr(0, colon);
  std::string_view port_s = hp.substr(colon + 1);
  uint32_t port = 0;
  auto [ptr, ec] = std::from_chars(port_s.data(), port_s.data() + port_s.size(), port);
  if (ec != std::errc() || ptr != port_s.data() + port_s.size() || port_s.empty()) return std::nullopt;
  return parse(host, port);
}

uint32_t Address::port() const {
  if (isV6()) return ntohs(reinterpret_cast<const sockaddr_in6*>(&storage_)->sin6_port);
  return ntohs(reinterpret_cast<const sockaddr_in*>(&storage_)->sin_port);
}

void Address::setPort(uint32_t port) {
  if (isV6()) {
    reinterpret_cast<sockaddr_in6*>(&storage_)->sin6_port = htons(static_cast<uint16_t>(port));
  } else {
    reinterpret_cast<sockaddr_in*>(&storage_)->sin_port = htons(static_cast<uint16_t>(port));
  }
}

std::string Address::ip() const {
  char buf[INET6_ADDRSTRLEN] = {0};
  if (isV6()) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&storage_)->sin6_addr, buf, sizeof(buf));
  } else {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&storage_)->sin_addr, buf, sizeof(buf));
  }
  return buf;
}

// Built by appending: GCC 12's -Wrestrict reports a false positive on `"[" + std::string` at -O3.
std::string Address::asString() const {
  std::string s;
  if (isV6()) s.push_back('[');
  s.append(ip());
  if (isV6()) s.push_back(']');
  s.push_back(':');
  s.append(std::to_string(port()));
  return s;
}

std::string Address::statName() const {
  std::string s;
  if (isV6()) s.push_back('[');
  s.append(ip());
  if (isV6()) s.push_back(']');
  for (char& c : s) {
    if (c == ':') c = '_';
  }
  s.push_back('_');
  s.append(std::to_string(port()));
  return s;
}

bool Address::isAnyAddress() const {
  if (isV6()) {
    return IN6_IS_ADDR_UNSPECIFIED(&reinterpret_cast<const sockaddr_in6*>(&storage_)->sin6_addr);
  }
  return reinterpret_cast<const sockaddr_in*>(&storage_)->sin_addr.s_addr == htonl(INADDR_ANY);
}

bool Address::operator==(const Address& o) const {
  if (family() != o.family()) return false;
  if (isV6()) {
    auto* a = reinterpret_cast<const sockaddr_in6*>(&storage_);
    auto* b = reinterpret_cast<const sockaddr_in6*>(&o.storage_);
    return a->sin6_port == b->sin6_port && std::memcmp(&a->sin6_addr, &b->sin6_addr, sizeof(in6_addr)) == 0;
  }
  auto* a = reinterpret_cast<const sockaddr_in*>(&storage_);
  auto* b = reinterpret_cast<const sockaddr_in*>(&o.storage_);
  return a->sin_port == b->sin_port && a->sin_addr.s_addr == b->sin_addr.s_addr;
}

}  // namespace strait::network
