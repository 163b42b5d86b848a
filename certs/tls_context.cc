#include "certs/tls_context.h"

#include <arpa/inet.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "absl/strings/str_cat.h"
#include "certs/tls_socket.h"

namespace strait::certs {

namespace {

// TLS 1.2 suites when the config names none: forward-secret AEADs only.
constexpr const char* kDefaultCiphers =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:"
    "ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384";
constexpr const char* kDefaultCurves = "X25519:P-256";

std::string lastSslError() {
  unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "unknown error";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  return buf;
}

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;

BioPtr memBio(std::string_view pem) { return BioPtr(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()))); }

std::vector<X509Ptr> readCertificates(std::string_view pem) {
  std::vector<X509Ptr> out;
  BioPtr bio = memBio(pem);
  while (X509* x = PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr)) out.emplace_back(x);
  ERR_clear_error();  // the end of the input reads as an error
  return out;
}

std::time_t asn1ToTime(const ASN1_TIME* t) {
  int days = 0, secs = 0;
  if (ASN1_TIME_diff(&days, &secs, nullptr, t) != 1) return 0;
  return std::time(nullptr) + static_cast<std::time_t>(days) * 86400 + secs;
}

int verifyCallback(int ok, X509_STORE_CTX* store) {
  SSL* ssl = static_cast<SSL*>(X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()));
  auto* socket = ssl ? static_cast<TlsSocket*>(SSL_get_ex_data(ssl, sslSocketExIndex())) : nullptr;
  if (socket == nullptr) return ok;
  return socket->verifyPeer(ok, store) ? 1 : 0;
}

int alpnSelect(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in, unsigned int inlen,
               void* arg) {
  const auto* self = static_cast<const SslContext*>(arg);
  const std::string& wire = self->alpnWire();
  unsigned char* selected = nullptr;
  unsigned char selected_len = 0;
  // Server preference order; no overlap: go on without ALPN (the codec then detects the protocol).
  if (SSL_select_next_proto(&selected, &selected_len, reinterpret_cast<const unsigned char*>(wire.data()),
                            static_cast<unsigned>(wire.size()), in, inlen) != OPENSSL_NPN_NEGOTIATED) {
    return SSL_TLSEXT_ERR_NOACK;
  }
  *out = selected;
  *outlen = selected_len;
  return SSL_TLSEXT_ERR_OK;
}

int newSessionCallback(SSL* ssl, SSL_SESSION* session) {
  auto* socket = static_cast<TlsSocket*>(SSL_get_ex_data(ssl, sslSocketExIndex()));
  if (socket == nullptr) return 0;
  socket->context().storeSession(session);
  return 1;  // we keep the reference
}

}  // namespace

int sslSocketExIndex() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

std::optional<CertificateDetails> certificateDetails(std::string_view pem, const std::string& source) {
  auto certs = readCertificates(pem);
  if (certs.empty()) return std::nullopt;
  X509* x = certs.front().get();
  CertificateDetails d;
  d.path = source;
  if (BIGNUM* bn = ASN1_INTEGER_to_BN(X509_get_serialNumber(x), nullptr)) {
    if (char* hex = BN_bn2hex(bn)) {
      d.serial_number = hex;
      for (char& c : d.serial_number) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      OPENSSL_free(hex);
    }
    BN_free(bn);
  }
  peerSans(x, &d.uri_sans, &d.dns_sans);
  d.valid_from = asn1ToTime(X509_get0_notBefore(x));
  d.expiration_time = asn1ToTime(X509_get0_notAfter(x));
  return d;
}

void peerSans(X509* x, std::vector<std::string>* uri, std::vector<std::string>* dns) {
  auto* names = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(x, NID_subject_alt_name, nullptr, nullptr));
  if (names == nullptr) return;
  for (size_t i = 0; i < static_cast<size_t>(sk_GENERAL_NAME_num(names)); ++i) {
    const GENERAL_NAME* g = sk_GENERAL_NAME_value(names, i);
    if (g->type == GEN_URI && uri != nullptr) {
      const ASN1_STRING* s = g->d.uniformResourceIdentifier;
      uri->emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)), ASN1_STRING_length(s));
    } else if (g->type == GEN_DNS && dns != nullptr) {
      const ASN1_STRING* s = g->d.dNSName;
      dns->emplace_back(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)), ASN1_STRING_length(s));
    }
  }
  GENERAL_NAMES_free(names);
}

bool sanMatches(X509* x, const std::vector<SanMatcher>& matchers) {
  if (matchers.empty()) return true;
  auto* names = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(x, NID_subject_alt_name, nullptr, nullptr));
  if (names == nullptr) return false;
  bool found = false;
  for (size_t i = 0; !found && i < static_cast<size_t>(sk_GENERAL_NAME_num(names)); ++i) {
    const GENERAL_NAME* g = sk_GENERAL_NAME_value(names, i);
    SanMatcher::Type type;
    std::string value;
    switch (g->type) {
      case GEN_URI:
      case GEN_DNS:
      case GEN_EMAIL: {
        const ASN1_STRING* s = g->type == GEN_URI ? g->d.uniformResourceIdentifier
                               : g->type == GEN_DNS ? g->d.dNSName
                                                    : g->d.rfc822Name;
        type = g->type == GEN_URI ? SanMatcher::Type::Uri : g->type == GEN_DNS ? SanMatcher::Type::Dns : SanMatcher::Type::Email;
        value.assign(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)), ASN1_STRING_length(s));
        break;
      }
      case GEN_IPADD: {
        const ASN1_OCTET_STRING* s = g->d.iPAddress;
        char buf[INET6_ADDRSTRLEN] = {0};
        int len = ASN1_STRING_length(s);
        if (len == 4) inet_ntop(AF_INET, ASN1_STRING_get0_data(s), buf, sizeof(buf));
        else if (len == 16) inet_ntop(AF_INET6, ASN1_STRING_get0_data(s), buf, sizeof(buf));
        else continue;
        type = SanMatcher::Type::Ip;
        value = buf;
        break;
      }
      default:
        continue;
    }
    for (const auto& m : matchers) {
      if ((m.type == SanMatcher::Type::Any || m.type == type) && m.match(value)) {
        found = true;
        break;
      }
    }
  }
  GENERAL_NAMES_free(names);
  return found;
}

absl::Status checkCertificatePair(const CertificatePair& pair) {
  auto certs = readCertificates(pair.chain_pem);
  if (certs.empty()) return absl::InvalidArgumentError(absl::StrCat(pair.source, ": no PEM certificate in the chain"));
  BioPtr kb = memBio(pair.key_pem);
  EVP_PKEY* key = PEM_read_bio_PrivateKey(kb.get(), nullptr, nullptr, nullptr);
  if (key == nullptr) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat(pair.source, ": no PEM private key"));
  }
  int match = X509_check_private_key(certs.front().get(), key);
  EVP_PKEY_free(key);
  ERR_clear_error();
  if (match != 1) return absl::InvalidArgumentError(absl::StrCat(pair.source, ": the private key does not match the certificate"));
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const SslContext>> SslContext::create(const TlsSettings& settings,
                                                                     const std::vector<CertificatePair>& certs,
                                                                     const std::optional<ValidationSettings>& validation) {
  std::shared_ptr<SslContext> self(new SslContext());
  self->settings_ = settings;
  self->validation_ = validation;
  SSL_CTX* ctx = SSL_CTX_new(TLS_method());
  if (ctx == nullptr) return absl::InternalError("SSL_CTX_new: " + lastSslError());
  self->ctx_ = ctx;
  const int min_v = settings.min_version != 0 ? settings.min_version : TLS1_2_VERSION;
  const int max_v = settings.max_version != 0 ? settings.max_version : TLS1_3_VERSION;
  if (SSL_CTX_set_min_proto_version(ctx, static_cast<uint16_t>(min_v)) != 1 ||
      SSL_CTX_set_max_proto_version(ctx, static_cast<uint16_t>(max_v)) != 1) {
    return absl::InvalidArgumentError("tls_params: unsupported protocol version range");
  }
  uint64_t opts = SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE;
#ifdef SSL_OP_NO_RENEGOTIATION
  opts |= SSL_OP_NO_RENEGOTIATION;  // BoringSSL never renegotiates unless asked to
#endif
  SSL_CTX_set_options(ctx, opts);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  const std::string& ciphers = settings.cipher_suites.empty() ? std::string(kDefaultCiphers) : settings.cipher_suites;
  if (SSL_CTX_set_cipher_list(ctx, ciphers.c_str()) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("tls_params.cipher_suites: '", ciphers, "' names no usable suite"));
  }
  const std::string& curves = settings.ecdh_curves.empty() ? std::string(kDefaultCurves) : settings.ecdh_curves;
  if (SSL_CTX_set1_curves_list(ctx, curves.c_str()) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("tls_params.ecdh_curves: '", curves, "' is not a usable curve list"));
  }
  for (const auto& pair : certs) {
    auto chain = readCertificates(pair.chain_pem);
    if (chain.empty()) return absl::InvalidArgumentError(absl::StrCat(pair.source, ": no PEM certificate"));
    if (SSL_CTX_use_certificate(ctx, chain.front().get()) != 1) {
      return absl::InvalidArgumentError(absl::StrCat(pair.source, ": certificate not usable: ", lastSslError()));
    }
    for (size_t i = 1; i < chain.size(); ++i) {
      if (SSL_CTX_add1_chain_cert(ctx, chain[i].get()) != 1) {
        return absl::InvalidArgumentError(absl::StrCat(pair.source, ": chain certificate not usable: ", lastSslError()));
      }
    }
    BioPtr kb = memBio(pair.key_pem);
    EVP_PKEY* key = PEM_read_bio_PrivateKey(kb.get(), nullptr, nullptr, nullptr);
    if (key == nullptr) return absl::InvalidArgumentError(absl::StrCat(pair.source, ": no PEM private key"));
    int rc = SSL_CTX_use_PrivateKey(ctx, key);
    EVP_PKEY_free(key);
    if (rc != 1 || SSL_CTX_check_private_key(ctx) != 1) {
      ERR_clear_error();
      return absl::InvalidArgumentError(absl::StrCat(pair.source, ": the private key does not match the certificate"));
    }
    auto d = certificateDetails(pair.chain_pem, pair.source);
    if (d) {
      for (const auto& u : d->uri_sans) self->local_uri_sans_.push_back(u);
      self->cert_details_.push_back(std::move(*d));
    }
  }
  int verify_mode = SSL_VERIFY_NONE;
  if (validation) {
    auto cas = readCertificates(validation->ca_pem);
    if (cas.empty() && !validation->accept_untrusted) {
      return absl::InvalidArgumentError(absl::StrCat(validation->ca_source, ": trusted_ca holds no PEM certificate"));
    }
    X509_STORE* store = SSL_CTX_get_cert_store(ctx);
    for (auto& ca : cas) X509_STORE_add_cert(store, ca.get());
    ERR_clear_error();  // a duplicate CA reads as an error
    self->ca_details_ = certificateDetails(validation->ca_pem, validation->ca_source);
    verify_mode = SSL_VERIFY_PEER;
    if (settings.server && settings.require_client_certificate) verify_mode |= SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
  } else if (settings.server && settings.require_client_certificate) {
    return absl::InvalidArgumentError("require_client_certificate needs a validation context (trusted_ca)");
  }
  SSL_CTX_set_verify(ctx, verify_mode, verify_mode == SSL_VERIFY_NONE ? nullptr : &verifyCallback);
  for (const auto& p : settings.alpn) {
    if (p.empty() || p.size() > 255) return absl::InvalidArgumentError(absl::StrCat("alpn_protocols: '", p, "' is not a valid protocol name"));
    self->alpn_wire_.push_back(static_cast<char>(p.size()));
    self->alpn_wire_.append(p);
  }
  if (settings.server) {
    // Stateless resumption (tickets) only: no session cache shared between workers.
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    // Resuming a session that was verified needs a session id context (tickets carry it).
    static const unsigned char kSessionContext[] = "strait";
    SSL_CTX_set_session_id_context(ctx, kSessionContext, sizeof(kSessionContext) - 1);
#ifndef OPENSSL_IS_BORINGSSL
    SSL_CTX_set_num_tickets(ctx, 1);
#endif
    if (!self->alpn_wire_.empty()) SSL_CTX_set_alpn_select_cb(ctx, &alpnSelect, self.get());
  } else {
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, &newSessionCallback);
  }
  return std::shared_ptr<const SslContext>(std::move(self));
}

SslContext::~SslContext() {
  if (session_ != nullptr) SSL_SESSION_free(session_);
  if (ctx_ != nullptr) SSL_CTX_free(ctx_);
}

SSL_SESSION* SslContext::takeSession() const {
  std::lock_guard<std::mutex> lock(session_mu_);
  if (session_ == nullptr) return nullptr;
  SSL_SESSION_up_ref(session_);
  return session_;
}

void SslContext::storeSession(SSL_SESSION* session) const {
  SSL_SESSION* old;
  {
    std::lock_guard<std::mutex> lock(session_mu_);
    old = session_;
    session_ = session;
  }
  if (old != nullptr) SSL_SESSION_free(old);
}

}  // namespace strait::certs
