#include "certs/tls_socket.h"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "proxy/common/log.h"

namespace strait::certs {

// The BIO between the SSL object and our buffers: reads drain `in_`, writes append to `out_`.
struct TlsBio {
  static int write(BIO* b, const char* data, int len) {
    auto* s = static_cast<TlsSocket*>(BIO_get_data(b));
    BIO_clear_retry_flags(b);
    if (len <= 0) return 0;
    s->out_.add(data, static_cast<size_t>(len));
    return len;
  }
  static int read(BIO* b, char* data, int len) {
    auto* s = static_cast<TlsSocket*>(BIO_get_data(b));
    BIO_clear_retry_flags(b);
    if (s->in_.empty()) {
      BIO_set_retry_read(b);
      return -1;
    }
    size_t n = std::min(static_cast<size_t>(len), s->in_.length());
    s->in_.copyOut(0, n, data);
    s->in_.drain(n);
    return static_cast<int>(n);
  }
  static long ctrl(BIO*, int cmd, long, void*) {
    switch (cmd) {
      case BIO_CTRL_FLUSH:
        return 1;
      default:
        return 0;
    }
  }
  static int create(BIO* b) {
    BIO_set_init(b, 1);
    return 1;
  }
  static int destroy(BIO*) { return 1; }
  static const BIO_METHOD* method() {
    static const BIO_METHOD* m = [] {
      BIO_METHOD* meth = BIO_meth_new(BIO_TYPE_SOURCE_SINK | BIO_get_new_index(), "strait_buffer");
      BIO_meth_set_write(meth, &TlsBio::write);
      BIO_meth_set_read(meth, &TlsBio::read);
      BIO_meth_set_ctrl(meth, &TlsBio::ctrl);
      BIO_meth_set_create(meth, &TlsBio::create);
      BIO_meth_set_destroy(meth, &TlsBio::destroy);
      return meth;
    }();
    return m;
  }
};

namespace {
thread_local char t_staging[16384];  // gathers small slices into one TLS record
}  // namespace

TlsSocket::TlsSocket(SslContextConstSharedPtr ctx, const network::TransportSocketOptions& options)
    : ctx_(std::move(ctx)), stats_(options.stats), client_(!ctx_->settings().server) {
  ssl_ = SSL_new(ctx_->ctx());
  SSL_set_ex_data(ssl_, sslSocketExIndex(), this);
  BIO* bio = BIO_new(TlsBio::method());
  BIO_set_data(bio, this);
  SSL_set_bio(ssl_, bio, bio);  // one BIO for both directions; SSL owns it
  if (client_) {
    SSL_set_connect_state(ssl_);
    const std::string& sni = ctx_->settings().sni;
    if (!sni.empty()) SSL_set_tlsext_host_name(ssl_, sni.c_str());
    if (!options.alpn_override.empty()) {
      SSL_set_alpn_protos(ssl_, reinterpret_cast<const unsigned char*>(options.alpn_override.data()),
                          static_cast<unsigned>(options.alpn_override.size()));
    } else if (ctx_->alpnWire().empty() && !options.alpn_fallback.empty()) {
      std::string wire;
      wire.push_back(static_cast<char>(options.alpn_fallback.size()));
      wire.append(options.alpn_fallback);
      SSL_set_alpn_protos(ssl_, reinterpret_cast<const unsigned char*>(wire.data()), static_cast<unsigned>(wire.size()));
    } else if (!ctx_->alpnWire().empty()) {
      SSL_set_alpn_protos(ssl_, reinterpret_cast<const unsigned char*>(ctx_->alpnWire().data()),
                          static_cast<unsigned>(ctx_->alpnWire().size()));
    }
    if (SSL_SESSION* s = ctx_->takeSession()) {
      SSL_set_session(ssl_, s);
      SSL_SESSION_free(s);
    }
  } else {
    SSL_set_accept_state(ssl_);
  }
}

TlsSocket::~TlsSocket() {
  if (ssl_ == nullptr) return;
#ifndef OPENSSL_IS_BORINGSSL
  // OpenSSL drops the session (and so the ticket this connection received) of a connection freed
  // without a close_notify exchange. A proxy closes healthy connections abruptly all the time (idle
  // timeouts, the peer's reset); only a failed one should lose its session.
  if (handshake_done_ && !failed_) SSL_set_shutdown(ssl_, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
#endif
  SSL_free(ssl_);
}

void TlsSocket::count(stats::Counter network::SslStats::*which) {
  if (stats_ != nullptr) stats::inc(stats_->*which);
}

void TlsSocket::onConnected() {
  // The client speaks first: the ClientHello lands in out_.
  doHandshake();
  if (!out_.empty() && callbacks_) callbacks_->onTransportWantsFlush();
}

network::PostIoAction TlsSocket::fail(const char* where, int ssl_error) {
  failed_ = true;
  unsigned long e = ERR_peek_error();
  char buf[256] = {0};
  if (e != 0) ERR_error_string_n(e, buf, sizeof(buf));
  ERR_clear_error();
  if (failure_.empty()) {
    failure_ = absl::StrCat("TLS_error:", where, ":", ssl_error, ":", buf[0] ? buf : "connection closed");
  }
  if (!handshake_done_) {
    // A server that demanded a certificate and got none.
    if (!client_ && ctx_->settings().require_client_certificate && !verify_failure_counted_) {
      X509* peer = SSL_get_peer_certificate(ssl_);
      if (peer == nullptr) {
        count(&network::SslStats::fail_verify_no_cert);
        verify_failure_counted_ = true;
      } else {
        X509_free(peer);
      }
    }
  }
  count(&network::SslStats::connection_error);
  LOG_DEBUG("TLS %s failed: %s", client_ ? "client" : "server", failure_.c_str());
  return network::PostIoAction::Close;
}

network::PostIoAction TlsSocket::doHandshake() {
  int rc = SSL_do_handshake(ssl_);
  if (rc == 1) {
    onHandshakeDone();
    return network::PostIoAction::KeepOpen;
  }
  int err = SSL_get_error(ssl_, rc);
  if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) return network::PostIoAction::KeepOpen;
  return fail("handshake", err);
}

void TlsSocket::onHandshakeDone() {
  handshake_done_ = true;
  count(&network::SslStats::handshake);
  session_reused_ = SSL_session_reused(ssl_) == 1;
  if (session_reused_) count(&network::SslStats::session_reused);
  const unsigned char* proto = nullptr;
  unsigned proto_len = 0;
  SSL_get0_alpn_selected(ssl_, &proto, &proto_len);
  if (proto != nullptr) alpn_.assign(reinterpret_cast<const char*>(proto), proto_len);
  if (const char* name = SSL_get_servername(ssl_, TLSEXT_NAMETYPE_host_name)) sni_ = name;
  version_ = SSL_get_version(ssl_);
  if (const SSL_CIPHER* c = SSL_get_current_cipher(ssl_)) {
    const char* std_name = SSL_CIPHER_standard_name(c);
    cipher_ = std_name ? std_name : SSL_CIPHER_get_name(c);
  }
  if (X509* peer = SSL_get_peer_certificate(ssl_)) {
    peer_presented_ = true;
    peer_validated_ = ctx_->hasValidation() && SSL_get_verify_result(ssl_) == X509_V_OK;
    peerSans(peer, &peer_uri_sans_, &peer_dns_sans_);
    if (stats_ != nullptr && stats_->peers && !peer_uri_sans_.empty() && peer_validated_) {
      stats_->peers->onHandshake(peer_uri_sans_.front());
    }
    if (BIGNUM* bn = ASN1_INTEGER_to_BN(X509_get_serialNumber(peer), nullptr)) {
      if (char* hex = BN_bn2hex(bn)) {
        peer_serial_ = hex;
        for (char& ch : peer_serial_) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
        OPENSSL_free(hex);
      }
      BN_free(bn);
    }
    X509_free(peer);
  } else if (!client_) {
    count(&network::SslStats::no_certificate);
  }
  if (callbacks_) callbacks_->onTransportReady();
}

namespace {

// What a memory BIO holds, as a string (the BIO is freed).
std::string drainBio(BIO* bio) {
  std::string out;
  if (bio == nullptr) return out;
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio, &data);
  if (len > 0 && data != nullptr) out.assign(data, static_cast<size_t>(len));
  BIO_free(bio);
  return out;
}

}  // namespace

// The peer certificate details below are read when asked (the HCM asks once per connection, for
// x-forwarded-client-cert), not at every handshake.
std::string TlsSocket::sha256PeerCertificateDigest() const {
  X509* peer = handshake_done_ ? SSL_get_peer_certificate(ssl_) : nullptr;
  if (peer == nullptr) return {};
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  std::string out;
  if (X509_digest(peer, EVP_sha256(), md, &len) == 1) {
    static constexpr char kHex[] = "0123456789abcdef";
    out.reserve(2 * len);
    for (unsigned int i = 0; i < len; ++i) {
      out.push_back(kHex[md[i] >> 4]);
      out.push_back(kHex[md[i] & 0xf]);
    }
  }
  X509_free(peer);
  return out;
}

std::string TlsSocket::subjectPeerCertificate() const {
  X509* peer = handshake_done_ ? SSL_get_peer_certificate(ssl_) : nullptr;
  if (peer == nullptr) return {};
  BIO* bio = BIO_new(BIO_s_mem());
  if (bio != nullptr) X509_NAME_print_ex(bio, X509_get_subject_name(peer), 0, XN_FLAG_RFC2253);
  X509_free(peer);
  return drainBio(bio);
}

std::string TlsSocket::pemEncodedPeerCertificate() const {
  X509* peer = handshake_done_ ? SSL_get_peer_certificate(ssl_) : nullptr;
  if (peer == nullptr) return {};
  BIO* bio = BIO_new(BIO_s_mem());
  if (bio != nullptr) PEM_write_bio_X509(bio, peer);
  X509_free(peer);
  return drainBio(bio);
}

std::string TlsSocket::pemEncodedPeerCertificateChain() const {
  X509* peer = handshake_done_ ? SSL_get_peer_certificate(ssl_) : nullptr;
  if (peer == nullptr) return {};
  BIO* bio = BIO_new(BIO_s_mem());
  if (bio != nullptr) {
    PEM_write_bio_X509(bio, peer);
    // A server's view of the chain leaves the leaf out, a client's starts with it (OpenSSL and
    // BoringSSL alike): the leaf is written once, first.
    if (STACK_OF(X509)* chain = SSL_get_peer_cert_chain(ssl_)) {
      for (size_t i = 0; i < static_cast<size_t>(sk_X509_num(chain)); ++i) {
        X509* c = sk_X509_value(chain, i);
        if (X509_cmp(c, peer) != 0) PEM_write_bio_X509(bio, c);
      }
    }
  }
  X509_free(peer);
  return drainBio(bio);
}

bool TlsSocket::verifyPeer(int ok, X509_STORE_CTX* store) {
  const auto& v = ctx_->validation();
  if (!v) return ok != 0;
  const int depth = X509_STORE_CTX_get_error_depth(store);
  if (!ok) {
    const int err = X509_STORE_CTX_get_error(store);
    if (v->accept_untrusted || (v->allow_expired && err == X509_V_ERR_CERT_HAS_EXPIRED)) {
      X509_STORE_CTX_set_error(store, X509_V_OK);
      ok = 1;
    } else {
      if (!verify_failure_counted_) {
        count(&network::SslStats::fail_verify_error);
        verify_failure_counted_ = true;
      }
      failure_ = absl::StrCat("TLS_error:verify:", X509_verify_cert_error_string(err), " (depth ", depth, ")");
      return false;
    }
  }
  if (depth == 0) {
    X509* leaf = X509_STORE_CTX_get_current_cert(store);
    if (leaf != nullptr && !sanMatches(leaf, v->san_matchers)) {
      if (!verify_failure_counted_) {
        count(&network::SslStats::fail_verify_san);
        verify_failure_counted_ = true;
      }
      failure_ = "TLS_error:verify:no subject alternative name matched";
      X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION);
      return false;
    }
  }
  return true;
}

network::PostIoAction TlsSocket::onRead(common::Buffer& plain, bool eof) {
  if (failed_) return network::PostIoAction::Close;
  if (!handshake_done_) {
    if (doHandshake() == network::PostIoAction::Close) return network::PostIoAction::Close;
    if (!out_.empty() && callbacks_) callbacks_->onTransportWantsFlush();
    if (!handshake_done_) return network::PostIoAction::KeepOpen;
  }
  // Application data: decrypt every whole record we have.
  for (;;) {
    size_t avail = 0;
    char* p = plain.reserve(&avail);
    int n = SSL_read(ssl_, p, static_cast<int>(avail));
    if (n > 0) {
      plain.commit(static_cast<size_t>(n));
      continue;
    }
    int err = SSL_get_error(ssl_, n);
    if (err == SSL_ERROR_WANT_READ) break;
    if (err == SSL_ERROR_ZERO_RETURN) break;  // close_notify: the connection sees EOF from the socket
    if (err == SSL_ERROR_SYSCALL && in_.empty()) break;
    return fail("read", err);
  }
  (void)eof;
  if (!out_.empty() && callbacks_) callbacks_->onTransportWantsFlush();  // e.g. a KeyUpdate answer
  return network::PostIoAction::KeepOpen;
}

network::PostIoAction TlsSocket::encrypt(common::Buffer& plain, bool end_stream) {
  if (failed_) return network::PostIoAction::Close;
  if (!handshake_done_) return network::PostIoAction::KeepOpen;
  while (!plain.empty()) {
    iovec iov[8];
    size_t n = plain.fillIovecs(iov, 8);
    const char* data;
    size_t len;
    if (n > 1 && iov[0].iov_len < 4096) {
      // Several small slices (headers, a short body): one record instead of one per slice.
      len = std::min(plain.length(), sizeof(t_staging));
      plain.copyOut(0, len, t_staging);
      data = t_staging;
    } else {
      data = static_cast<const char*>(iov[0].iov_base);
      len = iov[0].iov_len;
    }
    int rc = SSL_write(ssl_, data, static_cast<int>(len));
    if (rc <= 0) return fail("write", SSL_get_error(ssl_, rc));
    plain.drain(static_cast<size_t>(rc));
  }
  if (end_stream && !shutdown_sent_) {
    shutdown_sent_ = true;
    SSL_shutdown(ssl_);  // close_notify; we do not wait for the peer's
    ERR_clear_error();
  }
  return network::PostIoAction::KeepOpen;
}

}  // namespace strait::certs
