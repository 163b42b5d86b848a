#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace strait::network {

// An IPv4 or IPv6 socket address.
class Address {
 public:
  Address() = default;
  explicit Address(const sockaddr* sa);
  // Parses a numeric IP (no names: resolution is a separate, explicit step). Empty on failure.
  static std::optional<Address> parse(std::string_view ip, uint32_t port);
  // Parses "1.2.3.4:80" or "[::1]:80".
  static std::optional<Address> parseHostPort(std::string_view host_port);

  int family() const { return storage_.sin6_family; }
  bool isV6() const { return family() == AF_INET6; }
  const sockaddr* sockAddr() const { return reinterpret_cast<const sockaddr*>(&storage_); }
  socklen_t sockLen() const { return isV6() ? sizeof(sockaddr_in6) : sizeof(sockaddr_in); }
  uint32_t port() const;
  void setPort(uint32_t port);
  std::string ip() const;
  // "1.2.3.4:80" / "[::1]:80"
  std::string asString() const;
  // Envoy's stat form: "1.2.3.4_80" / "[::1]_80"
  std::string statName() const;
  bool isAnyAddress() const;
  bool operator==(const Address& o) const;

 private:
  // IPv4 or IPv6 only (sockaddr_in fits in sockaddr_in6, family at the same offset): 28 bytes rather
  // than sockaddr_storage's 128, since every host and connection holds one or more.
  sockaddr_in6 storage_{};
};

}  // namespace strait::network
