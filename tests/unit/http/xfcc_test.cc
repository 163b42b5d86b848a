// x-forwarded-client-cert (proxy/http/xfcc.h): the element this hop builds, what each
// forward_client_cert_details mode does to a request's header, the parser, and the config translation.

#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb.h"
#include "proxy/http/header_map.h"
#include "proxy/http/xfcc.h"
#include "proxy/network/transport_socket.h"
#include "tests/unit/support/yaml.h"

using namespace strait;
using http::ForwardClientCert;
using http::XfccConfig;

namespace {

constexpr const char* kPeerUri = "spiffe://cluster.local/ns/default/sa/client";
constexpr const char* kOwnUri = "spiffe://cluster.local/ns/default/sa/server";

// The peer as a TLS socket reports it after a handshake; counts the expensive calls.
struct PeerCert : network::SslInfo {
  bool presented = true;
  std::vector<std::string> peer_uris{kPeerUri};
  std::vector<std::string> peer_dns{"client.test", "alt.client.test"};
  std::vector<std::string> own_uris{kOwnUri};
  std::string none;
  mutable int digests = 0;
  bool peerCertificatePresented() const override { return presented; }
  bool peerCertificateValidated() const override { return presented; }
  const std::vector<std::string>& uriSanPeerCertificate() const override { return peer_uris; }
  const std::vector<std::string>& dnsSansPeerCertificate() const override { return peer_dns; }
  const std::vector<std::string>& uriSanLocalCertificate() const override { return own_uris; }
  const std::string& serialNumberPeerCertificate() const override { return none; }
  std::string_view sni() const override { return {}; }
  std::string_view alpn() const override { return {}; }
  std::string_view tlsVersion() const override { return {}; }
  std::string_view cipherSuite() const override { return {}; }
  bool sessionReused() const override { return false; }
  std::string sha256PeerCertificateDigest() const override {
    ++digests;
    return "00ff";
  }
  std::string subjectPeerCertificate() const override { return "CN=client,O=Mesh \"Inc\",C=US"; }
  std::string pemEncodedPeerCertificate() const override { return "-----BEGIN CERTIFICATE-----\nAB+/=\n"; }
  std::string pemEncodedPeerCertificateChain() const override { return "leaf\nca\n"; }
};

XfccConfig mode(ForwardClientCert m) {
  XfccConfig c;
  c.mode = m;
  return c;
}

std::vector<std::string> xfccValues(const http::RequestHeaders& h) {
  std::vector<std::string> out;
  for (const auto& e : h.entries()) {
    if (http::headerNameEquals(e.name, http::kXfccHeader)) out.push_back(e.value);
  }
  return out;
}

http::RequestHeaders withXfcc(std::vector<std::string> values) {
  http::RequestHeaders h;
  h.add("x-other", "1");
  for (const auto& v : values) h.add("X-Forwarded-Client-Cert", v);
  h.add("x-last", "2");
  return h;
}

}  // namespace

TEST_CASE("Xfcc: the element carries By and Hash, then the configured details in Envoy's order") {
  PeerCert peer;
  XfccConfig c = mode(ForwardClientCert::AppendForward);
  CHECK(http::buildXfccElement(c, peer) == std::string("By=") + kOwnUri + ";Hash=00ff");
  c.uri = true;
  CHECK(http::buildXfccElement(c, peer) == std::string("By=") + kOwnUri + ";Hash=00ff;URI=" + kPeerUri);
  c.subject = c.dns = c.cert = c.chain = true;
  CHECK(http::buildXfccElement(c, peer) ==
        std::string("By=") + kOwnUri +
            ";Hash=00ff;Cert=\"-----BEGIN%20CERTIFICATE-----%0AAB%2B%2F%3D%0A\";Chain=\"leaf%0Aca%0A\""
            ";Subject=\"CN=client,O=Mesh \\\"Inc\\\",C=US\";URI=" + kPeerUri + ";DNS=client.test;DNS=alt.client.test");
  // Without a certificate of its own (or one without URI SANs) this proxy writes no By.
  peer.own_uris.clear();
  c = mode(ForwardClientCert::SanitizeSet);
  CHECK(http::buildXfccElement(c, peer) == "Hash=00ff");
}

TEST_CASE("Xfcc: values with separators are quoted, quotes escaped") {
  std::string out;
  http::appendXfccPair(out, "URI", "spiffe://td/a");
  http::appendXfccPair(out, "URI", "spiffe://td/a?x=1");
  http::appendXfccPair(out, "DNS", "a,b");
  http::appendXfccPair(out, "By", "say \"hi\"");
  CHECK(out == "URI=spiffe://td/a;URI=\"spiffe://td/a?x=1\";DNS=\"a,b\";By=\"say \\\"hi\\\"\"");
  CHECK(http::urlEncode("a-b_c.d~e f/+=%\n") == "a-b_c.d~e%20f%2F%2B%3D%25%0A");
}

TEST_CASE("Xfcc: the parser reads what the builder writes, and refuses malformed values") {
  PeerCert peer;
  XfccConfig c = mode(ForwardClientCert::AppendForward);
  c.subject = c.uri = c.dns = c.cert = true;
  const std::string header = "By=spiffe://up;Hash=abc;URI=\"a;b\"," + http::buildXfccElement(c, peer);
  auto parsed = http::parseXfcc(header);
  REQUIRE(parsed.has_value());
  REQUIRE(parsed->size() == 2);
  const auto& first = (*parsed)[0];
  REQUIRE(first.size() == 3);
  CHECK(first[0].key == "By");
  CHECK(first[0].value == "spiffe://up");
  CHECK(first[2].value == "a;b");
  const auto& ours = (*parsed)[1];
  std::vector<std::string> keys;
  for (const auto& p : ours) keys.push_back(p.key);
  CHECK(keys == std::vector<std::string>{"By", "Hash", "Cert", "Subject", "URI", "DNS", "DNS"});
  CHECK(ours[3].value == "CN=client,O=Mesh \"Inc\",C=US");
  CHECK(ours[2].value == "-----BEGIN%20CERTIFICATE-----%0AAB%2B%2F%3D%0A");
  CHECK(ours[6].value == "alt.client.test");

  CHECK_FALSE(http::parseXfcc("").has_value());
  CHECK_FALSE(http::parseXfcc("By").has_value());
  CHECK_FALSE(http::parseXfcc("=x").has_value());
  CHECK_FALSE(http::parseXfcc("Subject=\"open").has_value());
  CHECK_FALSE(http::parseXfcc("Subject=\"a\"b").has_value());
  CHECK_FALSE(http::parseXfcc("Hash=1;").has_value());
}

TEST_CASE("Xfcc: each mode's effect with and without mTLS") {
  PeerCert peer;
  PeerCert no_cert;
  no_cert.presented = false;
  const std::string ours = std::string("By=") + kOwnUri + ";Hash=00ff";

  SECTION("SANITIZE removes every copy, mTLS or not") {
    for (const network::SslInfo* ssl : {static_cast<const network::SslInfo*>(&peer), static_cast<const network::SslInfo*>(nullptr)}) {
      auto h = withXfcc({"Hash=1", "Hash=2"});
      std::optional<std::string> cache;
      http::applyXfcc(h, mode(ForwardClientCert::Sanitize), ssl, cache);
      CHECK(xfccValues(h).empty());
      CHECK(h.size() == 2);
      CHECK_FALSE(cache.has_value());
    }
  }
  SECTION("FORWARD_ONLY passes it unchanged only over mTLS") {
    auto h = withXfcc({"Hash=1"});
    std::optional<std::string> cache;
    http::applyXfcc(h, mode(ForwardClientCert::ForwardOnly), &peer, cache);
    CHECK(xfccValues(h) == std::vector<std::string>{"Hash=1"});
    http::applyXfcc(h, mode(ForwardClientCert::ForwardOnly), &no_cert, cache);
    CHECK(xfccValues(h).empty());
    auto plain = withXfcc({"Hash=1"});
    http::applyXfcc(plain, mode(ForwardClientCert::ForwardOnly), nullptr, cache);
    CHECK(xfccValues(plain).empty());
  }
  SECTION("ALWAYS_FORWARD_ONLY passes it unchanged, even in plaintext") {
    auto h = withXfcc({"Hash=1", "Hash=2"});
    std::optional<std::string> cache;
    http::applyXfcc(h, mode(ForwardClientCert::AlwaysForwardOnly), nullptr, cache);
    CHECK(xfccValues(h) == std::vector<std::string>{"Hash=1", "Hash=2"});
  }
  SECTION("APPEND_FORWARD appends to the merged header, adds one when absent, removes it without mTLS") {
    auto h = withXfcc({"Hash=1", "Hash=2"});
    std::optional<std::string> cache;
    http::applyXfcc(h, mode(ForwardClientCert::AppendForward), &peer, cache);
    CHECK(xfccValues(h) == std::vector<std::string>{"Hash=1,Hash=2," + ours});
    CHECK(h.entries().front().name == "x-other");
    CHECK(h.entries().back().name == "x-last");
    auto fresh = withXfcc({});
    http::applyXfcc(fresh, mode(ForwardClientCert::AppendForward), &peer, cache);
    CHECK(xfccValues(fresh) == std::vector<std::string>{ours});
    auto plain = withXfcc({"Hash=1"});
    http::applyXfcc(plain, mode(ForwardClientCert::AppendForward), nullptr, cache);
    CHECK(xfccValues(plain).empty());
    auto unsigned_peer = withXfcc({"Hash=1"});
    http::applyXfcc(unsigned_peer, mode(ForwardClientCert::AppendForward), &no_cert, cache);
    CHECK(xfccValues(unsigned_peer).empty());
  }
  SECTION("SANITIZE_SET replaces every copy with this hop's element over mTLS") {
    auto h = withXfcc({"Hash=1", "Hash=2"});
    std::optional<std::string> cache;
    http::applyXfcc(h, mode(ForwardClientCert::SanitizeSet), &peer, cache);
    CHECK(xfccValues(h) == std::vector<std::string>{ours});
    auto plain = withXfcc({"Hash=1"});
    http::applyXfcc(plain, mode(ForwardClientCert::SanitizeSet), nullptr, cache);
    CHECK(xfccValues(plain).empty());
  }
  SECTION("the element is built once per connection, not per request") {
    std::optional<std::string> cache;
    for (int i = 0; i < 5; ++i) {
      auto h = withXfcc({});
      http::applyXfcc(h, mode(ForwardClientCert::SanitizeSet), &peer, cache);
      CHECK(xfccValues(h) == std::vector<std::string>{ours});
    }
    CHECK(peer.digests == 1);
  }
}

TEST_CASE("Xfcc: translation of forward_client_cert_details and set_current_client_cert_details") {
  using Hcm = envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
  auto c = http::translateXfcc(Hcm{}, "hcm");
  REQUIRE(c.ok());
  CHECK(c->mode == ForwardClientCert::Sanitize);
  CHECK_FALSE(c->setsElement());

  auto istio = testing::parseYaml<Hcm>(
      "forward_client_cert_details: APPEND_FORWARD\n"
      "set_current_client_cert_details: {subject: true, uri: true, dns: true}\n");
  c = http::translateXfcc(istio, "hcm");
  REQUIRE(c.ok());
  CHECK(c->mode == ForwardClientCert::AppendForward);
  CHECK((c->subject && c->uri && c->dns && !c->cert && !c->chain));

  auto other = testing::parseYaml<Hcm>(
      "forward_client_cert_details: ALWAYS_FORWARD_ONLY\n"
      "set_current_client_cert_details: {subject: false, cert: true, chain: true}\n");
  c = http::translateXfcc(other, "hcm");
  REQUIRE(c.ok());
  CHECK(c->mode == ForwardClientCert::AlwaysForwardOnly);
  CHECK((!c->subject && c->cert && c->chain));

  // A number this API does not know (as xDS may carry) is refused, naming the field.
  Hcm unknown;
  unknown.set_forward_client_cert_details(static_cast<Hcm::ForwardClientCertDetails>(9));
  c = http::translateXfcc(unknown, "listeners[0].hcm");
  REQUIRE_FALSE(c.ok());
  CHECK(std::string(c.status().message()) == "listeners[0].hcm.forward_client_cert_details: unknown value 9");
}
