#pragma once

// x-forwarded-client-cert (XFCC): what the HTTP connection manager tells the upstream about the client
// certificates a request passed through, per the HCM's forward_client_cert_details and
// set_current_client_cert_details (Envoy's semantics).
//
// The header is a list of elements separated by ','; an element is a list of Key=Value pairs separated
// by ';'. A value holding ',', ';', '=' or '"' is double-quoted, a '"' inside written as \". Subject,
// Cert and Chain are always quoted. Keys, in the order this proxy writes them: By (a URI SAN of this
// proxy's own certificate, one pair per SAN), Hash (hex SHA-256 of the peer certificate's DER, always),
// Cert (the peer's PEM, URL-encoded), Chain (the PEM of the leaf and the certificates the peer sent,
// URL-encoded), Subject (RFC 2253), URI (each URI SAN of the peer), DNS (each DNS SAN of the peer).

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace envoy::extensions::filters::network::http_connection_manager::v3 {
class HttpConnectionManager;
}

namespace strait::network {
class SslInfo;
}

namespace strait::http {

struct RequestHeaders;

inline constexpr std::string_view kXfccHeader = "x-forwarded-client-cert";

// forward_client_cert_details (Envoy's enum values, in order).
enum class ForwardClientCert : uint8_t {
  Sanitize,           // the header never passes (default)
  ForwardOnly,        // passes unchanged on an mTLS connection, removed otherwise
  AppendForward,      // mTLS: this hop's element appended; otherwise removed
  SanitizeSet,        // mTLS: replaced by this hop's element; otherwise removed
  AlwaysForwardOnly,  // passes unchanged, whatever the connection
};

// The HCM's XFCC settings, translated once at config time.
struct XfccConfig {
  ForwardClientCert mode = ForwardClientCert::Sanitize;
  // set_current_client_cert_details: which details of the peer certificate this hop's element carries
  // (By and Hash are always there). Only read in AppendForward and SanitizeSet.
  bool subject = false;
  bool cert = false;
  bool chain = false;
  bool dns = false;
  bool uri = false;
  // Whether this hop ever builds an element (the per-connection cache is used only then).
  bool setsElement() const { return mode == ForwardClientCert::AppendForward || mode == ForwardClientCert::SanitizeSet; }
};

// Reads forward_client_cert_details / set_current_client_cert_details. `path` names the HCM in errors.
absl::StatusOr<XfccConfig> translateXfcc(
    const envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager& proto,
    const std::string& path);

// Appends `key=value` to `out` (with ';' first unless `out` is empty), quoting the value when `quote` or
// when it holds a separator.
void appendXfccPair(std::string& out, std::string_view key, std::string_view value, bool quote = false);

// Percent-encodes everything but RFC 3986 unreserved characters (ALPHA / DIGIT / '-' '.' '_' '~').
std::string urlEncode(std::string_view text);

// This hop's element for the connection whose TLS state is `ssl`: computed once per connection (the
// HCM caches it), never per request.
std::string buildXfccElement(const XfccConfig& config, const network::SslInfo& ssl);

// Applies `config` to a request that came over a connection with TLS state `ssl` (null: plaintext).
// mTLS means the peer presented a certificate. `element` is the connection's cache of this hop's
// element, built here on the first request that needs it. Repeated XFCC headers are merged (in order,
// joined with ',') before an element is appended. Without an XFCC header to handle, nothing is
// allocated.
void applyXfcc(RequestHeaders& headers, const XfccConfig& config, const network::SslInfo* ssl,
               std::optional<std::string>& element);

// A parsed header value: elements of key/value pairs, keys as written (compare them case-insensitively),
// values unquoted and unescaped (URL-encoded values stay encoded).
struct XfccPair {
  std::string key;
  std::string value;
};
using XfccElement = std::vector<XfccPair>;
// Nullopt when malformed: an unterminated quote, a pair without '=', an empty key, bytes after a
// closing quote other than a separator.
std::optional<std::vector<XfccElement>> parseXfcc(std::string_view value);

}  // namespace strait::http
