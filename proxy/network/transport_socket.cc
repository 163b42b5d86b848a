// The SSL stat set, declared with the transport socket seam (proxy/network/transport_socket.h).
#include "proxy/network/transport_socket.h"

namespace strait::network {

namespace {
template <typename Maker>
SslStats make(const std::string& prefix, Maker counter) {
  const std::string p = prefix + "ssl.";
  SslStats s;
  s.handshake = counter(p + "handshake");
  s.connection_error = counter(p + "connection_error");
  s.fail_verify_san = counter(p + "fail_verify_san");
  s.fail_verify_no_cert = counter(p + "fail_verify_no_cert");
  s.fail_verify_error = counter(p + "fail_verify_error");
  s.no_certificate = counter(p + "no_certificate");
  s.session_reused = counter(p + "session_reused");
  return s;
}
}  // namespace

SslStats makeSslStats(stats::Store& store, const std::string& prefix) {
  return make(prefix, [&](const std::string& n) { return store.counter(n); });
}

SslStats makeSslStats(stats::StatScope& scope, const std::string& prefix) {
  return make(prefix, [&](const std::string& n) { return scope.counter(n); });
}

}  // namespace strait::network
