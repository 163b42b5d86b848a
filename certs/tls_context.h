#pragma once

#include <atomic>
#include <cstdint>
#include <ctime>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_session_st SSL_SESSION;
typedef struct x509_st X509;

namespace strait::certs {

// Everything below is written to the part of OpenSSL's API that BoringSSL shares.

// One check on a subject alternative name of the peer's leaf certificate (match_typed_subject_alt_names).
struct SanMatcher {
  enum class Type { Any, Email, Dns, Uri, Ip };
  Type type = Type::Uri;
  std::function<bool(std::string_view)> match;
  std::string description;  // for logs: "URI exact spiffe://cluster.local/ns/a/sa/b"
};

// A certificate chain and its key, as PEM text (from inline data, files or SDS).
struct CertificatePair {
  std::string chain_pem;
  std::string key_pem;
  std::string source;  // where it came from, for /certs ("/etc/certs/cert-chain.pem", "sds:default")
};

// How the peer is verified: the trust anchors and the rules on top.
struct ValidationSettings {
  std::string ca_pem;
  std::string ca_source;
  std::vector<SanMatcher> san_matchers;
  bool accept_untrusted = false;  // trust_chain_verification: ACCEPT_UNTRUSTED
  bool allow_expired = false;     // allow_expired_certificate
};

// The static part of a TLS context (from DownstreamTlsContext / UpstreamTlsContext).
struct TlsSettings {
  bool server = false;
  std::vector<std::string> alpn;  // server: preference order; client: offered
  int min_version = 0;            // TLS1_2_VERSION by default (set in the .cc)
  int max_version = 0;            // TLS1_3_VERSION
  std::string cipher_suites;      // TLS 1.2 suites, ':'-joined; empty: our default
  std::string ecdh_curves;        // empty: X25519:P-256
  bool require_client_certificate = false;
  std::string sni;                // client: the server name to send
};

// Facts about one certificate, for /certs and the expiry gauges.
struct CertificateDetails {
  std::string path;  // source
  std::string serial_number;
  std::vector<std::string> uri_sans;
  std::vector<std::string> dns_sans;
  std::time_t valid_from = 0;
  std::time_t expiration_time = 0;
};
// Reads the details of the first certificate in `pem`.
std::optional<CertificateDetails> certificateDetails(std::string_view pem, const std::string& source);

// The URI and DNS subject alternative names of `x`.
void peerSans(X509* x, std::vector<std::string>* uri, std::vector<std::string>* dns);
// True if some SAN of `x` satisfies some matcher (or there are no matchers).
bool sanMatches(X509* x, const std::vector<SanMatcher>& matchers);

// Checks that `pair` parses and that its key belongs to its leaf certificate (a rotation that caught
// one file of the pair half-written fails here, and the old pair stays).
absl::Status checkCertificatePair(const CertificatePair& pair);

// An SSL_CTX built from settings and the current secrets. Immutable once built; a rotation builds a new
// one. Shared by every worker: SSL objects are made from it on worker threads (thread-safe in OpenSSL).
class SslContext {
 public:
  static absl::StatusOr<std::shared_ptr<const SslContext>> create(const TlsSettings& settings,
                                                                  const std::vector<CertificatePair>& certs,
                                                                  const std::optional<ValidationSettings>& validation);
  ~SslContext();
  SslContext(const SslContext&) = delete;
  SslContext& operator=(const SslContext&) = delete;

  SSL_CTX* ctx() const { return ctx_; }
  const TlsSettings& settings() const { return settings_; }
  bool hasValidation() const { return validation_.has_value(); }
  const std::optional<ValidationSettings>& validation() const { return validation_; }
  const std::vector<CertificateDetails>& certDetails() const { return cert_details_; }
  const std::optional<CertificateDetails>& caDetails() const { return ca_details_; }
  const std::vector<std::string>& localUriSans() const { return local_uri_sans_; }
  const std::string& alpnWire() const { return alpn_wire_; }

  // Client session resumption: the newest session ticket this context received, if any.
  SSL_SESSION* takeSession() const;  // a new reference, or null
  void storeSession(SSL_SESSION* session) const;  // takes the reference

 private:
  SslContext() = default;
  SSL_CTX* ctx_ = nullptr;
  TlsSettings settings_;
  std::optional<ValidationSettings> validation_;
  std::vector<CertificateDetails> cert_details_;
  std::optional<CertificateDetails> ca_details_;
  std::vector<std::string> local_uri_sans_;
  std::string alpn_wire_;  // the ALPN list in wire form (length-prefixed)
  mutable std::mutex session_mu_;
  mutable SSL_SESSION* session_ = nullptr;
};
using SslContextConstSharedPtr = std::shared_ptr<const SslContext>;

// The index under which an SSL object carries its TlsSocket (for the verify callback).
int sslSocketExIndex();

}  // namespace strait::certs
