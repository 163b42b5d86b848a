#pragma once

#include <memory>
#include <string>
#include <vector>

#include "certs/tls_context.h"
#include "proxy/network/transport_socket.h"

typedef struct ssl_st SSL;
typedef struct bio_st BIO;
typedef struct x509_store_ctx_st X509_STORE_CTX;

namespace strait::certs {

// A TLS transport socket over OpenSSL (BoringSSL-compatible calls only). The SSL object reads and
// writes through a BIO of our own that takes ciphertext straight from the connection's read buffer
// and appends ciphertext to our out buffer: no memory BIO copies in between.
class TlsSocket : public network::TransportSocket, public network::SslInfo {
 public:
  // `ctx` stays alive as long as this socket (a rotation only affects sockets made after it).
  TlsSocket(SslContextConstSharedPtr ctx, const network::TransportSocketOptions& options);
  ~TlsSocket() override;

  // TransportSocket
  void setCallbacks(network::TransportSocketCallbacks& callbacks) override { callbacks_ = &callbacks; }
  std::string_view protocol() const override { return "tls"; }
  void onConnected() override;
  common::Buffer& readBuffer() override { return in_; }
  network::PostIoAction onRead(common::Buffer& plain, bool eof) override;
  network::PostIoAction encrypt(common::Buffer& plain, bool end_stream) override;
  common::Buffer& outBuffer() override { return out_; }
  bool handshakeComplete() const override { return handshake_done_; }
  std::string_view failureReason() const override { return failure_; }
  const network::SslInfo* ssl() const override { return handshake_done_ ? this : nullptr; }

  // SslInfo
  bool peerCertificatePresented() const override { return peer_presented_; }
  bool peerCertificateValidated() const override { return peer_validated_; }
  const std::vector<std::string>& uriSanPeerCertificate() const override { return peer_uri_sans_; }
  const std::vector<std::string>& dnsSansPeerCertificate() const override { return peer_dns_sans_; }
  const std::vector<std::string>& uriSanLocalCertificate() const override { return ctx_->localUriSans(); }
  const std::string& serialNumberPeerCertificate() const override { return peer_serial_; }
  std::string sha256PeerCertificateDigest() const override;
  std::string subjectPeerCertificate() const override;
  std::string pemEncodedPeerCertificate() const override;
  std::string pemEncodedPeerCertificateChain() const override;
  std::string_view sni() const override { return sni_; }
  std::string_view alpn() const override { return alpn_; }
  std::string_view tlsVersion() const override { return version_; }
  std::string_view cipherSuite() const override { return cipher_; }
  bool sessionReused() const override { return session_reused_; }

  // From the verify callback: the chain check's verdict `ok` for the certificate at the store's depth;
  // adds our rules (SAN matchers, expired/untrusted allowances) and counts failures.
  bool verifyPeer(int ok, X509_STORE_CTX* store);
  const SslContext& context() const { return *ctx_; }

 private:
  network::PostIoAction doHandshake();
  network::PostIoAction fail(const char* where, int ssl_error);
  void onHandshakeDone();
  void count(stats::Counter network::SslStats::*which);

  SslContextConstSharedPtr ctx_;
  const network::SslStats* stats_;
  network::TransportSocketCallbacks* callbacks_ = nullptr;
  SSL* ssl_ = nullptr;
  common::Buffer in_;
  common::Buffer out_;
  bool client_;
  bool handshake_done_ = false;
  bool shutdown_sent_ = false;
  bool failed_ = false;
  bool verify_failure_counted_ = false;
  bool peer_presented_ = false;
  bool peer_validated_ = false;
  bool session_reused_ = false;
  std::string failure_;
  std::string sni_;
  std::string alpn_;
  std::string version_;
  std::string cipher_;
  std::string peer_serial_;
  std::vector<std::string> peer_uri_sans_;
  std::vector<std::string> peer_dns_sans_;
  friend struct TlsBio;
};

}  // namespace strait::certs
