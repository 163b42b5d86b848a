#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/common/buffer.h"
#include "proxy/stats/stats.h"

namespace strait::network {

// What the TLS layer learnt about a connection and its peer. A plaintext connection has none
// (Connection::ssl() is null). Valid once the handshake is complete; filters, the router and stats read
// the peer identity from here.
class SslInfo {
 public:
  virtual ~SslInfo() = default;
  // The peer sent a certificate / it verified against the trust store and the SAN matchers.
  virtual bool peerCertificatePresented() const = 0;
  virtual bool peerCertificateValidated() const = 0;
  // Subject alternative names of the peer's leaf certificate: URI (SPIFFE IDs), DNS.
  virtual const std::vector<std::string>& uriSanPeerCertificate() const = 0;
  virtual const std::vector<std::string>& dnsSansPeerCertificate() const = 0;
  virtual const std::vector<std::string>& uriSanLocalCertificate() const = 0;
  // Serial number of the peer's leaf certificate, lower-case hex; empty without one.
  virtual const std::string& serialNumberPeerCertificate() const = 0;
  // The peer's leaf certificate for x-forwarded-client-cert, computed on each call (the HCM calls them
  // once per connection): the SHA-256 of its DER in lower-case hex, its subject (RFC 2253), its PEM, and
  // the PEM of the chain the peer sent (leaf first). Empty without a peer certificate.
  virtual std::string sha256PeerCertificateDigest() const { return {}; }
  virtual std::string subjectPeerCertificate() const { return {}; }
  virtual std::string pemEncodedPeerCertificate() const { return {}; }
  virtual std::string pemEncodedPeerCertificateChain() const { return {}; }
  // The server name the client asked for (SNI) and the negotiated application protocol (ALPN).
  virtual std::string_view sni() const = 0;
  virtual std::string_view alpn() const = 0;
  virtual std::string_view tlsVersion() const = 0;   // "TLSv1.3"
  virtual std::string_view cipherSuite() const = 0;  // "TLS_AES_128_GCM_SHA256"
  virtual bool sessionReused() const = 0;
};

// Handshakes per peer identity (the URI SAN of the peer's certificate, its SPIFFE ID):
// <prefix>ssl.peer.<id>.handshake, made on first sight of an identity (once per identity, under a lock
// taken once per handshake, never per request). Past kMaxIdentities they count as ssl.peer.other.
class PeerIdentityCounters {
 public:
  static constexpr size_t kMaxIdentities = 256;
  PeerIdentityCounters(stats::Store* store, stats::StatScope* scope, std::string prefix)
      : store_(store), scope_(scope), prefix_(std::move(prefix)) {}
  void onHandshake(const std::string& identity);

 private:
  stats::Counter make(const std::string& name);
  stats::Store* store_;
  stats::StatScope* scope_;  // cluster stats live in the cluster's scope
  std::string prefix_;
  std::mutex mu_;
  std::map<std::string, stats::Counter, std::less<>> counters_;
  std::optional<stats::Counter> other_;
};

// Envoy's TLS stats, one set per listener (listener.<addr>.ssl.*) and per cluster (cluster.<name>.ssl.*).
struct SslStats {
  stats::Counter handshake;
  stats::Counter connection_error;
  stats::Counter fail_verify_san;
  stats::Counter fail_verify_no_cert;
  stats::Counter fail_verify_error;
  stats::Counter no_certificate;
  stats::Counter session_reused;
  std::shared_ptr<PeerIdentityCounters> peers;  // null: not counted per identity
};
// Creates the set under `prefix` ("listener.127.0.0.1_15006." / "cluster.outbound.").
SslStats makeSslStats(stats::Store& store, const std::string& prefix);
SslStats makeSslStats(stats::StatScope& scope, const std::string& prefix);

// Per-connection choices the owner of a connection makes (the pool knows its protocol).
struct TransportSocketOptions {
  const SslStats* stats = nullptr;  // where handshakes and failures count (null: nowhere)
  // ALPN to offer when the context configures none (an HTTP/2 pool offers "h2", an HTTP/1 one
  // "http/1.1"), as Envoy does.
  std::string_view alpn_fallback;
  // ALPN to offer instead of whatever the context configures (wire form, from alpnOverrideWire()):
  // Istio's istio.alpn filter picks it per request by the upstream protocol.
  std::string_view alpn_override;
};

// ALPN lists chosen per request (Istio's istio.alpn) are interned once, at config time, so a pool key
// carries a small id rather than a list: 0 is "no override". Entries live for the process's life.
uint32_t internAlpnOverride(const std::vector<std::string>& protocols);
// The interned list in wire form (length-prefixed names); empty for 0 or an unknown id.
std::string alpnOverrideWire(uint32_t id);

// How a transport socket wants the connection to go on after it handled some I/O.
enum class PostIoAction { KeepOpen, Close };

// What a transport socket reports back to its connection.
class TransportSocketCallbacks {
 public:
  virtual ~TransportSocketCallbacks() = default;
  // The handshake finished: the connection raises Connected (client side) and delivers plaintext.
  virtual void onTransportReady() = 0;
  // The transport has ciphertext to send (a handshake message, an alert, a session ticket).
  virtual void onTransportWantsFlush() = 0;
};

// The layer between a connection's plaintext buffers and its socket (h2o's "TLS inside the socket"
// shape, which fits libuv's push model). The connection reads socket bytes into readBuffer(), then calls
// onRead() which turns them into plaintext in `plain`; before a socket write it calls encrypt() which
// moves plaintext into outBuffer() as ciphertext. A raw (plaintext) connection has no transport socket
// at all: the connection reads into and writes from its own buffers, so plaintext costs nothing.
class TransportSocket {
 public:
  virtual ~TransportSocket() = default;
  virtual void setCallbacks(TransportSocketCallbacks& callbacks) = 0;
  // "tls" (Envoy's transport protocol names; a raw connection is "raw_buffer").
  virtual std::string_view protocol() const = 0;
  // The TCP connection is up: a client starts its handshake (writes the ClientHello into outBuffer()).
  virtual void onConnected() = 0;
  // Where socket reads land (ciphertext).
  virtual common::Buffer& readBuffer() = 0;
  // Decrypts what readBuffer() holds into `plain`. `eof`: the peer closed its sending side.
  virtual PostIoAction onRead(common::Buffer& plain, bool eof) = 0;
  // Encrypts as much of `plain` as the transport can take now (all of it once the handshake is done),
  // draining it; `end_stream` sends close_notify after the data.
  virtual PostIoAction encrypt(common::Buffer& plain, bool end_stream) = 0;
  // Ciphertext waiting for the socket (the connection writes from here and drains what was sent).
  virtual common::Buffer& outBuffer() = 0;
  virtual bool handshakeComplete() const = 0;
  // Why the transport failed, for logs and access logs (Envoy's %UPSTREAM_TRANSPORT_FAILURE_REASON%).
  virtual std::string_view failureReason() const = 0;
  virtual const SslInfo* ssl() const = 0;
};
using TransportSocketPtr = std::unique_ptr<TransportSocket>;

// Makes transport sockets for one filter chain (server side) or one cluster (client side). Shared by
// the workers: create() is called on a worker thread and must not block. `hashKey()` goes into the
// upstream connection pool key, so connections with different TLS settings (SNI, SANs, ALPN) never share
// a pool.
class TransportSocketFactory {
 public:
  virtual ~TransportSocketFactory() = default;
  // Null when the factory cannot make a socket now (no certificate yet): the connection must be refused,
  // never carried in plaintext.
  virtual TransportSocketPtr create(const TransportSocketOptions& options) const = 0;
  virtual bool implementsSecureTransport() const = 0;
  virtual uint64_t hashKey() const = 0;
  // ALPN the factory offers (client) in order; used to decide an auto-protocol pool.
  virtual const std::vector<std::string>& alpnProtocols() const = 0;
  // Ready to make sockets (its certificates are loaded). A listener or cluster waits for this (warming).
  virtual bool ready() const = 0;
};
using TransportSocketFactorySharedPtr = std::shared_ptr<const TransportSocketFactory>;

}  // namespace strait::network
