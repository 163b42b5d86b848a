#include <google/protobuf/any.pb.h>
#include <google/protobuf/unknown_field_set.h>
#include <google/protobuf/util/json_util.h>

#include <catch2/catch.hpp>

#include "tests/unit/support/filter_fakes.h"
#include "tests/unit/support/yaml.h"
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "envoy/config/rbac/v3/rbac.pb.h"
#include "envoy/config/route/v3/route.pb.h"
#include "envoy/extensions/filters/http/rbac/v3/rbac.pb.h"
#include "envoy/extensions/filters/network/rbac/v3/rbac.pb.h"
#include "filters/common/rbac/engine.h"
#include "filters/common/rbac/engine_config.h"
#include "filters/http/rbac.h"
#include "filters/network/rbac.h"
#include "proxy/config/bootstrap.h"
#include "proxy/event/dispatcher.h"
#include "proxy/http/conn_manager.h"
#include "proxy/http/route_table.h"
#include "proxy/network/connection.h"

using namespace strait;
namespace rbac = strait::filters::rbac;
namespace rbac_v3 = envoy::config::rbac::v3;

namespace {

// One store for the whole file (the thread's shard must outlive every test that counts).
stats::Store& testStore() {
  static auto* store = new stats::Store(1);
  stats::setThreadShard(&store->shard(0));
  return *store;
}

using strait::testing::parseYaml;

absl::StatusOr<rbac::EngineConstSharedPtr> translate(const std::string& yaml, bool http = true) {
  rbac::TranslateOptions o;
  o.http = http;
  return rbac::translateEngine(parseYaml<rbac_v3::RBAC>(yaml), "rules", o);
}

rbac::EngineConstSharedPtr engine(const std::string& yaml, bool http = true) {
  auto e = translate(yaml, http);
  INFO(e.status().ToString());
  REQUIRE(e.ok());
  return *e;
}

std::string error(const std::string& yaml, bool http = true) {
  auto e = translate(yaml, http);
  REQUIRE_FALSE(e.ok());
  return std::string(e.status().message());
}

// The downstream a decision is made for.
struct Peer {
  network::Address remote = *network::Address::parse("10.1.2.3", 40000);
  network::Address local = *network::Address::parse("10.0.0.1", 8080);
  bool authenticated = false;
  std::vector<std::string> uri_sans;
  std::vector<std::string> dns_sans;
  std::string sni;
  bool http = true;
  http::RequestHeaders headers;

  Peer() {
    headers.method = "GET";
    headers.path = "/api/v1/items?x=1";
    headers.authority = "svc.local";
    headers.scheme = "http";
    headers.add("x-user", "alice");
  }
  rbac::Context context() const {
    rbac::Context c;
    c.remote = &remote;
    c.direct_remote = &remote;
    c.local = &local;
    c.authenticated = authenticated;
    c.uri_sans = uri_sans;
    c.dns_sans = dns_sans;
    c.requested_server_name = sni;
    c.headers = http ? &headers : nullptr;
    return c;
  }
};

Peer mtlsPeer(std::vector<std::string> uris, std::vector<std::string> dns = {}) {
  Peer p;
  p.authenticated = true;
  p.uri_sans = std::move(uris);
  p.dns_sans = std::move(dns);
  return p;
}

// Whether an ALLOW policy with this one principal (and any permission) admits the peer.
bool principal(const std::string& yaml, const Peer& peer) {
  auto e = engine("action: ALLOW\npolicies:\n  p:\n    permissions: [{any: true}]\n    principals: [" + yaml + "]\n");
  return e->evaluate(peer.context()).allowed;
}

// Whether an ALLOW policy with this one permission (and any principal) admits the peer.
bool permission(const std::string& yaml, const Peer& peer) {
  auto e = engine("action: ALLOW\npolicies:\n  p:\n    permissions: [" + yaml + "]\n    principals: [{any: true}]\n");
  return e->evaluate(peer.context()).allowed;
}

}  // namespace

TEST_CASE("RBAC: principals on identity", "[rbac]") {
  const Peer frontend = mtlsPeer({"spiffe://cluster.local/ns/default/sa/frontend"}, {"frontend.default.svc"});
  const Peer plaintext;
  const std::string exact = "{authenticated: {principal_name: {exact: 'spiffe://cluster.local/ns/default/sa/frontend'}}}";
  CHECK(principal(exact, frontend));
  CHECK_FALSE(principal(exact, plaintext));
  CHECK_FALSE(principal(exact, mtlsPeer({"spiffe://cluster.local/ns/default/sa/backend"})));
  CHECK(principal("{authenticated: {principal_name: {prefix: 'spiffe://cluster.local/ns/default/'}}}", frontend));
  CHECK(principal("{authenticated: {principal_name: {suffix: '/sa/frontend'}}}", frontend));
  CHECK(principal("{authenticated: {principal_name: {contains: '/ns/default/'}}}", frontend));
  CHECK(principal("{authenticated: {principal_name: {exact: 'SPIFFE://cluster.local/ns/default/sa/frontend', "
                  "ignore_case: true}}}",
                  frontend));
  CHECK(principal("{authenticated: {principal_name: {safe_regex: {regex: 'spiffe://cluster\\.local/ns/[^/]+/sa/front.*'}}}}",
                  frontend));
  // safe_regex is a full match.
  CHECK_FALSE(principal("{authenticated: {principal_name: {safe_regex: {regex: 'front'}}}}", frontend));
  // Every URI SAN is tried, then the DNS SANs.
  CHECK(principal(exact, mtlsPeer({"spiffe://other", "spiffe://cluster.local/ns/default/sa/frontend"})));
  CHECK(principal("{authenticated: {principal_name: {exact: frontend.default.svc}}}", frontend));
  CHECK(principal("{authenticated: {principal_name: {exact: db.internal}}}", mtlsPeer({}, {"db.internal"})));
  // No principal_name: any authenticated peer; an unauthenticated one never matches, even '.*'.
  CHECK(principal("{authenticated: {}}", frontend));
  CHECK(principal("{authenticated: {}}", mtlsPeer({})));
  CHECK_FALSE(principal("{authenticated: {}}", plaintext));
  CHECK_FALSE(principal("{authenticated: {principal_name: {safe_regex: {regex: '.*'}}}}", plaintext));
  CHECK_FALSE(principal("{authenticated: {principal_name: {exact: ''}}}", plaintext));
}

TEST_CASE("RBAC: principals on addresses, headers and paths", "[rbac]") {
  Peer p;  // 10.1.2.3
  CHECK(principal("{any: true}", p));
  CHECK(principal("{remote_ip: {address_prefix: 10.1.0.0, prefix_len: 16}}", p));
  CHECK_FALSE(principal("{remote_ip: {address_prefix: 10.2.0.0, prefix_len: 16}}", p));
  CHECK(principal("{direct_remote_ip: {address_prefix: 10.1.2.3, prefix_len: 32}}", p));
  CHECK_FALSE(principal("{direct_remote_ip: {address_prefix: 10.1.2.4, prefix_len: 32}}", p));
  CHECK(principal("{source_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}", p));
  // Envoy: an unset prefix_len is 0, every address of the family.
  CHECK(principal("{remote_ip: {address_prefix: 192.168.0.1}}", p));
  // Families never mix.
  CHECK_FALSE(principal("{remote_ip: {address_prefix: '::', prefix_len: 0}}", p));
  Peer v6;
  v6.remote = *network::Address::parse("2001:db8::7", 1234);
  CHECK(principal("{remote_ip: {address_prefix: '2001:db8::', prefix_len: 32}}", v6));
  CHECK_FALSE(principal("{remote_ip: {address_prefix: '2001:db9::', prefix_len: 32}}", v6));

  CHECK(principal("{header: {name: x-user, string_match: {exact: alice}}}", p));
  CHECK_FALSE(principal("{header: {name: x-user, string_match: {exact: bob}}}", p));
  CHECK(principal("{header: {name: X-User, present_match: true}}", p));
  CHECK(principal("{url_path: {path: {prefix: /api/}}}", p));

  CHECK(principal("{not_id: {remote_ip: {address_prefix: 10.2.0.0, prefix_len: 16}}}", p));
  CHECK_FALSE(principal("{not_id: {any: true}}", p));
  CHECK(principal("{and_ids: {ids: [{any: true}, {remote_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}]}}", p));
  CHECK_FALSE(principal("{and_ids: {ids: [{any: true}, {remote_ip: {address_prefix: 11.0.0.0, prefix_len: 8}}]}}", p));
  CHECK(principal("{or_ids: {ids: [{not_id: {any: true}}, {remote_ip: {address_prefix: 10.0.0.0, prefix_len: 8}}]}}", p));
  CHECK_FALSE(principal("{or_ids: {ids: [{not_id: {any: true}}, {authenticated: {}}]}}", p));
}

TEST_CASE("RBAC: permissions", "[rbac]") {
  Peer p;  // to 10.0.0.1:8080, GET /api/v1/items?x=1
  CHECK(permission("{any: true}", p));
  CHECK(permission("{destination_port: 8080}", p));
  CHECK_FALSE(permission("{destination_port: 8081}", p));
  CHECK(permission("{destination_port_range: {start: 8000, end: 8081}}", p));
  CHECK_FALSE(permission("{destination_port_range: {start: 8000, end: 8080}}", p));  // half-open
  CHECK(permission("{destination_ip: {address_prefix: 10.0.0.0, prefix_len: 24}}", p));
  CHECK_FALSE(permission("{destination_ip: {address_prefix: 10.0.1.0, prefix_len: 24}}", p));
  CHECK(permission("{header: {name: ':method', string_match: {exact: GET}}}", p));
  CHECK_FALSE(permission("{header: {name: ':method', string_match: {exact: POST}}}", p));
  CHECK(permission("{header: {name: ':authority', string_match: {suffix: .local}}}", p));
  CHECK(permission("{header: {name: x-user, string_match: {exact: alice}}}", p));
  // :path has the query; url_path does not.
  CHECK_FALSE(permission("{header: {name: ':path', string_match: {exact: /api/v1/items}}}", p));
  CHECK(permission("{url_path: {path: {exact: /api/v1/items}}}", p));
  CHECK(permission("{url_path: {path: {safe_regex: {regex: '/api/v[0-9]+/.*'}}}}", p));
  CHECK_FALSE(permission("{url_path: {path: {prefix: /admin}}}", p));

  Peer tls = mtlsPeer({"spiffe://a"});
  tls.sni = "api.example.com";
  CHECK(permission("{requested_server_name: {exact: api.example.com}}", tls));
  CHECK_FALSE(permission("{requested_server_name: {exact: api.example.com}}", p));
  CHECK(permission("{requested_server_name: {suffix: .example.com}}", tls));

  CHECK(permission("{not_rule: {destination_port: 9090}}", p));
  CHECK_FALSE(permission("{not_rule: {any: true}}", p));
  CHECK(permission("{and_rules: {rules: [{header: {name: ':method', string_match: {exact: GET}}}, "
                   "{url_path: {path: {prefix: /api/}}}, {or_rules: {rules: [{destination_port: 80}, "
                   "{destination_port: 8080}]}}]}}",
                   p));
  CHECK_FALSE(permission("{and_rules: {rules: [{any: true}, {destination_port: 80}]}}", p));
  CHECK_FALSE(permission("{or_rules: {rules: [{destination_port: 80}, {destination_port: 443}]}}", p));

  // Without a request (the network filter), url_path never matches and headers are absent.
  Peer tcp;
  tcp.http = false;
  CHECK_FALSE(permission("{url_path: {path: {prefix: /}}}", tcp));
  CHECK(permission("{destination_port: 8080}", tcp));
}

TEST_CASE("RBAC: ALLOW, DENY and LOG actions", "[rbac]") {
  const Peer alice;  // x-user: alice, from 10.1.2.3
  const std::string policies = R"(
policies:
  "z-any-get":
    permissions: [{header: {name: ':method', string_match: {exact: GET}}}]
    principals: [{any: true}]
  "a admins":
    permissions: [{any: true}]
    principals: [{header: {name: x-user, string_match: {exact: alice}}}]
  "m-nobody":
    permissions: [{any: true}]
    principals: [{not_id: {any: true}}]
)";
  auto allow = engine("action: ALLOW" + policies);
  auto d = allow->evaluate(alice.context());
  CHECK(d.allowed);
  REQUIRE(d.policy != nullptr);
  CHECK(d.policy->name == "a admins");  // policies are tried in name order

  auto deny = engine("action: DENY" + policies);
  d = deny->evaluate(alice.context());
  CHECK_FALSE(d.allowed);
  CHECK(rbac::Engine::deniedDetails(d) == "rbac_access_denied_matched_policy[a_admins]");

  auto log = engine("action: LOG" + policies);
  CHECK(log->evaluate(alice.context()).allowed);

  Peer bob;
  bob.headers = http::RequestHeaders();
  bob.headers.method = "POST";
  bob.headers.path = "/";
  bob.headers.add("x-user", "bob");
  d = allow->evaluate(bob.context());
  CHECK_FALSE(d.allowed);
  CHECK(d.policy == nullptr);
  CHECK(rbac::Engine::deniedDetails(d) == "rbac_access_denied_matched_policy[none]");
  CHECK(deny->evaluate(bob.context()).allowed);
  CHECK(log->evaluate(bob.context()).allowed);

  // No policies: ALLOW refuses everything, DENY refuses nothing.
  CHECK_FALSE(engine("action: ALLOW")->evaluate(alice.context()).allowed);
  CHECK(engine("action: DENY")->evaluate(alice.context()).allowed);
}

TEST_CASE("RBAC: translation errors name the field", "[rbac]") {
  const std::string head = "policies:\n  p:\n    principals: [{any: true}]\n    permissions: ";
  CHECK_THAT(error(head + "[{url_path: {path: {safe_regex: {regex: '(unclosed'}}}}]"),
             Catch::StartsWith("rules.policies[\"p\"].permissions[0].url_path.path.safe_regex.regex: invalid regex"));
  CHECK_THAT(error("policies:\n  p:\n    permissions: [{any: true}]\n    principals: [{or_ids: {ids: [{any: true}, "
                   "{authenticated: {principal_name: {safe_regex: {regex: '[a-'}}}}]}}]"),
             Catch::StartsWith("rules.policies[\"p\"].principals[0].or_ids.ids[1].authenticated.principal_name."
                               "safe_regex.regex: invalid regex"));
  CHECK_THAT(error(head + "[{and_rules: {rules: [{any: true}, {header: {name: x, safe_regex_match: {regex: '*'}}}]}}]"),
             Catch::StartsWith("rules.policies[\"p\"].permissions[0].and_rules.rules[1].header.safe_regex_match.regex: "
                               "invalid regex"));
  CHECK(error(head + "[{any: false}]") == "rules.policies[\"p\"].permissions[0].any: must be true");
  CHECK(error(head + "[]") == "rules.policies[\"p\"].permissions: must not be empty");
  CHECK(error("policies:\n  p:\n    permissions: [{any: true}]") == "rules.policies[\"p\"].principals: must not be empty");
  CHECK(error(head + "[{or_rules: {rules: []}}]") == "rules.policies[\"p\"].permissions[0].or_rules.rules: must not be empty");
  CHECK(error(head + "[{destination_port: 70000}]") ==
        "rules.policies[\"p\"].permissions[0].destination_port: 70000 is not a valid port");
  CHECK(error(head + "[{destination_port_range: {start: 90, end: 80}}]") ==
        "rules.policies[\"p\"].permissions[0].destination_port_range: start must be below end");
  CHECK(error(head + "[{destination_ip: {address_prefix: not-an-ip, prefix_len: 8}}]") ==
        "rules.policies[\"p\"].permissions[0].destination_ip.address_prefix: 'not-an-ip' is not an IP address");
  CHECK(error(head + "[{destination_ip: {address_prefix: 10.0.0.0, prefix_len: 33}}]") ==
        "rules.policies[\"p\"].permissions[0].destination_ip.prefix_len: 33 is longer than 32");
  CHECK(error(head + "[{url_path: {path: {prefix: ''}}}]") ==
        "rules.policies[\"p\"].permissions[0].url_path.path.prefix: must not be empty");
  CHECK(error(head + "[{}]") == "rules.policies[\"p\"].permissions[0]: one of and_rules, or_rules, any, header, url_path, "
                               "destination_ip, destination_port, destination_port_range, not_rule, "
                               "requested_server_name is required");
  // The network filter has no request headers.
  CHECK(error(head + "[{header: {name: ':method', string_match: {exact: GET}}}]", false) ==
        "rules.policies[\"p\"].permissions[0].header: header rules need an HTTP request (use the HTTP RBAC filter)");

  // Rules of Envoy's API that Strait does not have arrive as unknown fields (xDS): refused, never ignored.
  rbac_v3::RBAC proto;
  auto& policy = (*proto.mutable_policies())["meta"];
  policy.add_principals()->set_any(true);
  auto* perm = policy.add_permissions();
  perm->GetReflection()->MutableUnknownFields(perm)->AddLengthDelimited(7, "");
  auto e = rbac::translateEngine(proto, "rules", {});
  REQUIRE_FALSE(e.ok());
  CHECK(e.status().message() ==
        "rules.policies[\"meta\"].permissions[0]: field 7 (metadata) of Envoy's API is not supported by Strait");
  policy.mutable_permissions(0)->Clear();
  policy.mutable_permissions(0)->set_any(true);
  policy.GetReflection()->MutableUnknownFields(&policy)->AddLengthDelimited(3, "");
  e = rbac::translateEngine(proto, "rules", {});
  REQUIRE_FALSE(e.ok());
  CHECK(e.status().message() == "rules.policies[\"meta\"]: field 3 (condition) of Envoy's API is not supported by Strait");
}

namespace {

google::protobuf::Any anyFromYaml(const std::string& yaml) { return parseYaml<google::protobuf::Any>(yaml); }

// A TLS peer for a connection, without TLS: what the transport socket would report after a handshake.
struct FakeSsl : network::SslInfo {
  bool presented = true;
  bool validated = true;
  std::vector<std::string> uris{"spiffe://cluster.local/ns/default/sa/frontend"};
  std::vector<std::string> dns;
  std::vector<std::string> local_uris;
  std::string serial;
  bool peerCertificatePresented() const override { return presented; }
  bool peerCertificateValidated() const override { return validated; }
  const std::vector<std::string>& uriSanPeerCertificate() const override { return uris; }
  const std::vector<std::string>& dnsSansPeerCertificate() const override { return dns; }
  const std::vector<std::string>& uriSanLocalCertificate() const override { return local_uris; }
  const std::string& serialNumberPeerCertificate() const override { return serial; }
  std::string_view sni() const override { return "backend.example.com"; }
  std::string_view alpn() const override { return ""; }
  std::string_view tlsVersion() const override { return "TLSv1.3"; }
  std::string_view cipherSuite() const override { return "TLS_AES_128_GCM_SHA256"; }
  bool sessionReused() const override { return false; }
};

struct FakeTransport : network::TransportSocket {
  explicit FakeTransport(const FakeSsl* ssl) : ssl_(ssl) {}
  void setCallbacks(network::TransportSocketCallbacks&) override {}
  std::string_view protocol() const override { return "tls"; }
  void onConnected() override {}
  common::Buffer& readBuffer() override { return in_; }
  network::PostIoAction onRead(common::Buffer&, bool) override { return network::PostIoAction::KeepOpen; }
  network::PostIoAction encrypt(common::Buffer&, bool) override { return network::PostIoAction::KeepOpen; }
  common::Buffer& outBuffer() override { return out_; }
  bool handshakeComplete() const override { return true; }
  std::string_view failureReason() const override { return ""; }
  const network::SslInfo* ssl() const override { return ssl_; }
  const FakeSsl* ssl_;
  common::Buffer in_, out_;
};

}  // namespace

TEST_CASE("RBAC: the context of a connection", "[rbac]") {
  event::Dispatcher d("test");
  network::Connection plain(d, *network::Address::parse("127.0.0.1", 5555));
  rbac::Context c = rbac::connectionContext(plain);
  REQUIRE(c.remote != nullptr);
  CHECK(c.remote->asString() == "127.0.0.1:5555");
  CHECK(c.direct_remote == c.remote);
  CHECK_FALSE(c.authenticated);
  CHECK(c.requested_server_name.empty());

  FakeSsl ssl;
  network::Connection tls(d, *network::Address::parse("127.0.0.1", 5556));
  tls.setTransportSocket(std::make_unique<FakeTransport>(&ssl));
  c = rbac::connectionContext(tls);
  CHECK(c.authenticated);
  REQUIRE(c.uri_sans.size() == 1);
  CHECK(c.uri_sans[0] == "spiffe://cluster.local/ns/default/sa/frontend");
  CHECK(c.requested_server_name == "backend.example.com");
  // A certificate that did not validate is no identity.
  ssl.validated = false;
  c = rbac::connectionContext(tls);
  CHECK_FALSE(c.authenticated);
  CHECK(c.uri_sans.empty());
}

TEST_CASE("RBAC: network filter", "[rbac]") {
  auto& store = testStore();
  config::ClusterMap clusters;
  config::TranslationContext ctx{store, clusters};
  auto filter = filters::network::createNetworkRbac(anyFromYaml(R"(
"@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
stat_prefix: "tcp."
shadow_rules_stat_prefix: "istio_dry_run_"
rules:
  action: ALLOW
  policies:
    "ns[default]-frontend":
      permissions: [{any: true}]
      principals: [{authenticated: {principal_name: {exact: "spiffe://cluster.local/ns/default/sa/frontend"}}}]
shadow_rules:
  action: DENY
  policies:
    loopback:
      permissions: [{any: true}]
      principals: [{remote_ip: {address_prefix: 127.0.0.1, prefix_len: 32}}]
)"),
                                                    "filter", ctx);
  INFO(filter.status().ToString());
  REQUIRE(filter.ok());

  event::Dispatcher d("test");
  // An outgoing connection not yet connected: no local address (port 0) and plaintext.
  network::Connection plain(d, *network::Address::parse("127.0.0.1", 5555));
  const int64_t allowed0 = store.value("tcp.rbac.allowed"), denied0 = store.value("tcp.rbac.denied");
  const int64_t shadow_denied0 = store.value("tcp.rbac.istio_dry_run_shadow_denied");
  CHECK_FALSE((*filter)->admit(plain));
  CHECK(store.value("tcp.rbac.denied") == denied0 + 1);
  CHECK(store.value("tcp.rbac.istio_dry_run_shadow_denied") == shadow_denied0 + 1);

  FakeSsl ssl;
  network::Connection tls(d, *network::Address::parse("127.0.0.1", 5556));
  tls.setTransportSocket(std::make_unique<FakeTransport>(&ssl));
  CHECK((*filter)->admit(tls));
  CHECK(store.value("tcp.rbac.allowed") == allowed0 + 1);
  ssl.uris = {"spiffe://cluster.local/ns/default/sa/other"};
  CHECK_FALSE((*filter)->admit(tls));
  CHECK(store.value("tcp.rbac.denied") == denied0 + 2);
  CHECK(store.value("tcp.rbac.istio_dry_run_shadow_allowed") == 0);

  // No rules: nothing is enforced or counted.
  auto open = filters::network::createNetworkRbac(
      anyFromYaml("{'@type': type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC, stat_prefix: open.}"),
      "filter", ctx);
  REQUIRE(open.ok());
  CHECK((*open)->admit(plain));
  CHECK(store.value("open.rbac.allowed") == 0);

  auto bad = filters::network::createNetworkRbac(
      anyFromYaml("{'@type': type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC, stat_prefix: x.,"
                  " rules: {policies: {p: {permissions: [{header: {name: ':path'}}], principals: [{any: true}]}}}}"),
      "filter", ctx);
  REQUIRE_FALSE(bad.ok());
  CHECK_THAT(std::string(bad.status().message()),
             Catch::StartsWith("filter.rules.policies[\"p\"].permissions[0].header: header rules need an HTTP request"));
  auto no_prefix = filters::network::createNetworkRbac(
      anyFromYaml("{'@type': type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC}"), "filter", ctx);
  REQUIRE_FALSE(no_prefix.ok());
  CHECK(no_prefix.status().message() == "filter.stat_prefix: is required");
}

namespace {

using Builder = strait::testing::FakeFilterChain;
using Callbacks = strait::testing::FakeDecoderCallbacks;

// Runs one request through the filter; returns the local reply's status (0: the request went on).
uint32_t run(const http::HttpFilterFactory& factory, network::Connection& conn, const std::string& method,
             const std::string& path, const http::RouteEntry* route, std::string* details = nullptr) {
  Builder b;
  factory.createFilters(b);
  REQUIRE(b.decoders.size() == 1);
  Callbacks cb;
  cb.conn = &conn;
  cb.route_entry = route;
  cb.headers.method = method;
  cb.headers.path = path;
  cb.headers.authority = "svc";
  b.decoders[0]->setDecoderFilterCallbacks(cb);
  const auto s = b.decoders[0]->decodeHeaders(cb.headers, true);
  CHECK((s == http::FilterHeadersStatus::Continue) == (cb.status == 0));
  if (cb.status != 0) CHECK(cb.body == "RBAC: access denied");
  if (details != nullptr) *details = cb.details;
  b.decoders[0]->onDestroy();
  return cb.status;
}

const char* kHttpRbac = R"(
"@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC
rules:
  action: DENY
  policies:
    "no admin":
      permissions: [{url_path: {path: {prefix: /admin}}}]
      principals: [{any: true}]
shadow_rules:
  action: ALLOW
  policies:
    reads:
      permissions: [{header: {name: ':method', string_match: {exact: GET}}}]
      principals: [{any: true}]
)";

}  // namespace

TEST_CASE("RBAC: HTTP filter", "[rbac]") {
  auto& store = testStore();
  config::ClusterMap clusters;
  const std::string hcm_prefix = "rbac_test";
  http::HttpFilterContext ctx{store, clusters, hcm_prefix, "envoy.filters.http.rbac"};
  auto factory = filters::http::createHttpRbac(anyFromYaml(kHttpRbac), "http_filters[0].typed_config", ctx);
  INFO(factory.status().ToString());
  REQUIRE(factory.ok());

  event::Dispatcher d("test");
  network::Connection conn(d, *network::Address::parse("127.0.0.1", 5555));
  std::string details;
  CHECK(run(**factory, conn, "GET", "/items?admin=1", nullptr, &details) == 0);
  CHECK(run(**factory, conn, "POST", "/admin/users", nullptr, &details) == 403);
  CHECK(details == "rbac_access_denied_matched_policy[no_admin]");
  CHECK(store.value("http.rbac_test.rbac.allowed") == 1);
  CHECK(store.value("http.rbac_test.rbac.denied") == 1);
  CHECK(store.value("http.rbac_test.rbac.shadow_allowed") == 1);
  CHECK(store.value("http.rbac_test.rbac.shadow_denied") == 1);

  auto bad = filters::http::createHttpRbac(
      anyFromYaml("{'@type': type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC, shadow_rules: {policies: "
                  "{p: {permissions: [{url_path: {path: {safe_regex: {regex: '+'}}}}], principals: [{any: true}]}}}}"),
      "http_filters[0].typed_config", ctx);
  REQUIRE_FALSE(bad.ok());
  CHECK_THAT(std::string(bad.status().message()),
             Catch::StartsWith("http_filters[0].typed_config.shadow_rules.policies[\"p\"].permissions[0].url_path.path."
                               "safe_regex.regex: invalid regex"));
}

TEST_CASE("RBAC: per-route override", "[rbac]") {
  auto& store = testStore();
  filters::http::registerHttpRbac();  // the RBACPerRoute parser
  auto rc = parseYaml<envoy::config::route::v3::RouteConfiguration>(R"(
name: local
virtual_hosts:
- name: svc
  domains: ["*"]
  typed_per_filter_config:
    envoy.filters.http.rbac:
      "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute
      rbac:
        rules:
          action: ALLOW
          policies:
            gets:
              permissions: [{header: {name: ':method', string_match: {exact: GET}}}]
              principals: [{any: true}]
    other.filter:
      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  routes:
  - match: {prefix: /public}
    direct_response: {status: 200}
    typed_per_filter_config:
      envoy.filters.http.rbac:
        "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute
  - match: {prefix: /locked}
    direct_response: {status: 200}
    typed_per_filter_config:
      envoy.filters.http.rbac:
        "@type": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute
        rbac: {rules: {action: DENY, policies: {all: {permissions: [{any: true}], principals: [{any: true}]}}}}
  - match: {prefix: /}
    direct_response: {status: 200}
)");
  auto table = http::RouteTable::create(rc, "route_config", {}, {});
  INFO(table.status().ToString());
  REQUIRE(table.ok());
  auto routeFor = [&](const std::string& path) {
    http::RequestHeaders h;
    h.method = "GET";
    h.path = path;
    h.authority = "svc";
    const http::RouteEntry* e = (*table)->route(h);
    REQUIRE(e != nullptr);
    return e;
  };
  const http::RouteEntry* pub = routeFor("/public/x");
  const http::RouteEntry* locked = routeFor("/locked/x");
  const http::RouteEntry* rest = routeFor("/other");
  // Only types with a parser are kept; the route's entry wins over the virtual host's.
  CHECK(pub->per_filter_configs.size() == 1);
  CHECK(pub->perFilterConfig("envoy.filters.http.rbac") != nullptr);
  CHECK(pub->perFilterConfig("other.filter") == nullptr);
  CHECK(rest->perFilterConfig("envoy.filters.http.rbac") != nullptr);

  config::ClusterMap clusters;
  const std::string hcm_prefix = "per_route";
  http::HttpFilterContext ctx{store, clusters, hcm_prefix, "envoy.filters.http.rbac"};
  // The filter itself refuses everything.
  auto factory = filters::http::createHttpRbac(
      anyFromYaml("{'@type': type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC, rules: {}}"), "f", ctx);
  REQUIRE(factory.ok());
  event::Dispatcher d("test");
  network::Connection conn(d, *network::Address::parse("127.0.0.1", 5555));
  CHECK(run(**factory, conn, "GET", "/x", nullptr) == 403);       // no route config: the filter's rules
  CHECK(run(**factory, conn, "POST", "/public/x", pub) == 0);     // RBACPerRoute without rbac: not checked
  CHECK(run(**factory, conn, "GET", "/locked/x", locked) == 403);  // the route's rules
  CHECK(run(**factory, conn, "GET", "/other", rest) == 0);         // the virtual host's rules
  CHECK(run(**factory, conn, "POST", "/other", rest) == 403);
  CHECK(store.value("http.per_route.rbac.denied") == 3);
  CHECK(store.value("http.per_route.rbac.allowed") == 1);

  // A filter under another name does not see these overrides.
  http::HttpFilterContext other_ctx{store, clusters, hcm_prefix, "rbac-2"};
  auto other = filters::http::createHttpRbac(
      anyFromYaml("{'@type': type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC, rules: {}}"), "f", other_ctx);
  REQUIRE(other.ok());
  CHECK(run(**other, conn, "POST", "/public/x", pub) == 403);

  // Errors in a per-route config name the route and the map entry.
  auto* bad = rc.mutable_virtual_hosts(0)->mutable_routes(1);
  envoy::extensions::filters::http::rbac::v3::RBACPerRoute per_route;
  auto& p = (*per_route.mutable_rbac()->mutable_rules()->mutable_policies())["p"];
  p.add_principals()->set_any(true);
  p.add_permissions()->mutable_url_path()->mutable_path()->mutable_safe_regex()->set_regex("(");
  (*bad->mutable_typed_per_filter_config())["envoy.filters.http.rbac"].PackFrom(per_route);
  auto t2 = http::RouteTable::create(rc, "route_config", {}, {});
  REQUIRE_FALSE(t2.ok());
  CHECK_THAT(std::string(t2.status().message()),
             Catch::StartsWith("route_config.virtual_hosts[0].routes[1].typed_per_filter_config[\"envoy.filters.http.rbac\"]"
                               ".rbac.rules.policies[\"p\"].permissions[0].url_path.path.safe_regex.regex: invalid regex"));
}
