#include "proxy/http/xfcc.h"

#include "absl/strings/str_cat.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb.h"
#include "proxy/http/header_map.h"
#include "proxy/network/transport_socket.h"

namespace strait::http {

namespace hcm_v3 = envoy::extensions::filters::network::http_connection_manager::v3;

absl::StatusOr<XfccConfig> translateXfcc(const hcm_v3::HttpConnectionManager& proto, const std::string& path) {
  XfccConfig c;
  switch (proto.forward_client_cert_details()) {
    case hcm_v3::HttpConnectionManager::SANITIZE: c.mode = ForwardClientCert::Sanitize; break;
    case hcm_v3::HttpConnectionManager::FORWARD_ONLY: c.mode = ForwardClientCert::ForwardOnly; break;
    case hcm_v3::HttpConnectionManager::APPEND_FORWARD: c.mode = ForwardClientCert::AppendForward; break;
    case hcm_v3::HttpConnectionManager::SANITIZE_SET: c.mode = ForwardClientCert::SanitizeSet; break;
    case hcm_v3::HttpConnectionManager::ALWAYS_FORWARD_ONLY: c.mode = ForwardClientCert::AlwaysForwardOnly; break;
    default:
      // An enum value from a newer API (xDS keeps unknown enum numbers): honouring less than asked
      // could leak or drop identities, so it is refused.
      return absl::InvalidArgumentError(absl::StrCat(path, ".forward_client_cert_details: unknown value ",
                                                     static_cast<int>(proto.forward_client_cert_details())));
  }
  if (proto.has_set_current_client_cert_details()) {
    const auto& d = proto.set_current_client_cert_details();
    c.subject = d.has_subject() && d.subject().value();
    c.cert = d.cert();
    c.chain = d.chain();
    c.dns = d.dns();
    c.uri = d.uri();
  }
  return c;
}

namespace {

bool needsQuotes(std::string_view v) {
  for (char ch : v) {
    if (ch == ',' || ch == ';' || ch == '=' || ch == '"') return true;
  }
  return false;
}

bool isXfccName(std::string_view name) {
  return name.size() == kXfccHeader.size() && headerNameEquals(name, kXfccHeader);
}

}  // namespace

void appendXfccPair(std::string& out, std::string_view key, std::string_view value, bool quote) {
  if (!out.empty()) out.push_back(';');
  out.append(key).push_back('=');
  if (!quote && !needsQuotes(value)) {
    out.append(value);
    return;
  }
  out.push_back('"');
  for (char ch : value) {
    if (ch == '"') out.push_back('\\');
    out.push_back(ch);
  }
  out.push_back('"');
}

std::string urlEncode(std::string_view text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(text.size() + text.size() / 4);
  for (char ch : text) {
    const auto b = static_cast<unsigned char>(ch);
    if ((b >= 'A' && b <= 'Z') || (b >= 'a' && b <= 'z') || (b >= '0' && b <= '9') || b == '-' || b == '.' ||
        b == '_' || b == '~') {
      out.push_back(ch);
    } else {
      out.push_back('%');
      out.push_back(kHex[b >> 4]);
      out.push_back(kHex[b & 0xf]);
    }
  }
  return out;
}

std::string buildXfccElement(const XfccConfig& config, const network::SslInfo& ssl) {
  std::string out;
  for (const auto& by : ssl.uriSanLocalCertificate()) appendXfccPair(out, "By", by);
  appendXfccPair(out, "Hash", ssl.sha256PeerCertificateDigest());
  if (config.cert) {
    const std::string pem = ssl.pemEncodedPeerCertificate();
    if (!pem.empty()) appendXfccPair(out, "Cert", urlEncode(pem), true);
  }
  if (config.chain) {
    const std::string pem = ssl.pemEncodedPeerCertificateChain();
    if (!pem.empty()) appendXfccPair(out, "Chain", urlEncode(pem), true);
  }
  if (config.subject) appendXfccPair(out, "Subject", ssl.subjectPeerCertificate(), true);
  if (config.uri) {
    for (const auto& uri : ssl.uriSanPeerCertificate()) appendXfccPair(out, "URI", uri);
  }
  if (config.dns) {
    for (const auto& dns : ssl.dnsSansPeerCertificate()) appendXfccPair(out, "DNS", dns);
  }
  return out;
}

void applyXfcc(RequestHeaders& headers, const XfccConfig& config, const network::SslInfo* ssl,
               std::optional<std::string>& element) {
  if (config.mode == ForwardClientCert::AlwaysForwardOnly) return;
  const bool mtls = ssl != nullptr && ssl->peerCertificatePresented();
  auto& entries = headers.entries();
  if (config.mode == ForwardClientCert::Sanitize || !mtls) {
    // The usual case (default mode, or plaintext): one length comparison per header.
    bool present = false;
    for (const auto& e : entries) present = present || isXfccName(e.name);
    if (present) std::erase_if(entries, [](const HeaderMap::Entry& e) { return isXfccName(e.name); });
    return;
  }
  if (config.mode == ForwardClientCert::ForwardOnly) return;
  if (!element) element = buildXfccElement(config, *ssl);
  if (config.mode == ForwardClientCert::SanitizeSet) {
    headers.set(kXfccHeader, *element);
    return;
  }
  // AppendForward: the elements earlier hops wrote, in order, then ours.
  HeaderMap::Entry* first = nullptr;
  bool merged = false;
  for (auto& e : entries) {
    if (!isXfccName(e.name)) continue;
    if (first == nullptr) {
      first = &e;
      continue;
    }
    if (!e.value.empty()) {
      if (!first->value.empty()) first->value.push_back(',');
      first->value.append(e.value);
    }
    e.name.clear();
    merged = true;
  }
  if (merged) std::erase_if(entries, [](const HeaderMap::Entry& e) { return e.name.empty(); });
  if (first == nullptr) {
    headers.add(kXfccHeader, *element);
    return;
  }
  // `first` may have moved in the erase above: find it again (it is the first XFCC entry).
  for (auto& e : entries) {
    if (!isXfccName(e.name)) continue;
    if (!e.value.empty()) e.value.push_back(',');
    e.value.append(*element);
    break;
  }
}

std::optional<std::vector<XfccElement>> parseXfcc(std::string_view v) {
  std::vector<XfccElement> out;
  out.emplace_back();
  size_t i = 0;
  const size_t n = v.size();
  auto skipSpace = [&] {
    while (i < n && (v[i] == ' ' || v[i] == '\t')) ++i;
  };
  while (true) {
    skipSpace();
    const size_t key_start = i;
    while (i < n && v[i] != '=' && v[i] != ';' && v[i] != ',') ++i;
    if (i >= n || v[i] != '=') return std::nullopt;  // a pair without '='
    std::string_view key = v.substr(key_start, i - key_start);
    while (!key.empty() && (key.back() == ' ' || key.back() == '\t')) key.remove_suffix(1);
    if (key.empty()) return std::nullopt;
    ++i;  // '='
    XfccPair pair{std::string(key), {}};
    if (i < n && v[i] == '"') {
      ++i;
      bool closed = false;
      while (i < n) {
        if (v[i] == '\\' && i + 1 < n && v[i + 1] == '"') {
          pair.value.push_back('"');
          i += 2;
        } else if (v[i] == '"') {
          ++i;
          closed = true;
          break;
        } else {
          pair.value.push_back(v[i++]);
        }
      }
      if (!closed) return std::nullopt;
      skipSpace();
      if (i < n && v[i] != ';' && v[i] != ',') return std::nullopt;
    } else {
      const size_t start = i;
      while (i < n && v[i] != ';' && v[i] != ',') ++i;
      std::string_view value = v.substr(start, i - start);
      while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
      pair.value.assign(value);
    }
    out.back().push_back(std::move(pair));
    if (i >= n) break;
    if (v[i] == ',') out.emplace_back();
    ++i;
  }
  return out;
}

}  // namespace strait::http
