// Request header sanitizing (conn_manager.h): the trusted client address from x-forwarded-for,
// internal addresses, and what sanitizeRequestHeaders leaves of a request.

#include <catch2/catch.hpp>
#include <string>
#include <utility>
#include <vector>

#include "envoy/config/route/v3/route.pb.h"
#include "proxy/http/conn_manager.h"
#include "proxy/http/route_table.h"

using namespace strait;
using http::HcmConfig;
using http::RequestHeaders;

namespace {

network::Address ip(const char* s) {
  auto a = network::Address::parse(s, 0);
  REQUIRE(a.has_value());
  return *a;
}

std::string ipOf(const http::XffAddress& x) { return x.address ? x.address->ip() : "-"; }

RequestHeaders request(std::vector<std::pair<std::string, std::string>> headers) {
  // Move-assigned temporaries: GCC 12 at -O3 reports a bogus -Wrestrict for operator=(const char*) here.
  RequestHeaders h;
  h.method = std::string("GET");
  h.path = std::string("/");
  h.authority = std::string("example.test");
  h.scheme = std::string("http");
  for (auto& [n, v] : headers) h.add(n, v);
  return h;
}

std::vector<std::string> all(const RequestHeaders& h, std::string_view name) {
  std::vector<std::string> out;
  for (const auto& e : h.entries()) {
    if (http::headerNameEquals(e.name, name)) out.push_back(e.value);
  }
  return out;
}

using Values = std::vector<std::string>;

const char* const kExternalOnly[] = {
    "x-envoy-retriable-status-codes", "x-envoy-retriable-header-names", "x-envoy-retry-on",
    "x-envoy-retry-grpc-on", "x-envoy-max-retries", "x-envoy-upstream-alt-stat-name",
    "x-envoy-upstream-rq-timeout-ms", "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response", "x-envoy-expected-rq-timeout-ms", "x-envoy-force-trace",
    "x-envoy-ip-tags", "x-envoy-original-url", "x-envoy-hedge-on-per-try-timeout",
};
const char* const kEdgeOnly[] = {"x-envoy-decorator-operation", "x-envoy-downstream-service-cluster",
                                 "x-envoy-downstream-service-node"};

http::RouteTableConstSharedPtr tableWithInternalOnly(std::vector<std::string> names) {
  envoy::config::route::v3::RouteConfiguration rc;
  rc.set_name("r");
  for (auto& n : names) rc.add_internal_only_headers(n);
  auto t = http::RouteTable::create(rc, "route_config", {}, {});
  REQUIRE(t.ok());
  return *t;
}

}  // namespace

TEST_CASE("XFF: the address N entries from the right, and whether it is alone") {
  using http::lastAddressFromXff;
  auto r = lastAddressFromXff("192.0.2.10", 0);
  CHECK(ipOf(r) == "192.0.2.10");
  CHECK(r.single);

  r = lastAddressFromXff("203.0.113.128, 203.0.113.10,203.0.113.1", 0);
  CHECK(ipOf(r) == "203.0.113.1");
  CHECK_FALSE(r.single);
  r = lastAddressFromXff("203.0.113.128, 203.0.113.10,203.0.113.1", 1);
  CHECK(ipOf(r) == "203.0.113.10");
  CHECK_FALSE(r.single);
  r = lastAddressFromXff("203.0.113.128, 203.0.113.10,203.0.113.1", 2);
  CHECK(ipOf(r) == "203.0.113.128");
  CHECK(r.single);
  r = lastAddressFromXff("203.0.113.128, 203.0.113.10,203.0.113.1", 3);  // fewer entries than hops
  CHECK_FALSE(r.address.has_value());
  CHECK_FALSE(r.single);

  CHECK(ipOf(lastAddressFromXff("  2001:db8::1 \t", 0)) == "2001:db8::1");  // OWS around entries
  CHECK(ipOf(lastAddressFromXff("a, fd00::7", 0)) == "fd00::7");
  for (const char* bad : {"", "unknown", "1.2.3.4,", "[::1]", "1.2.3.4:80", "1.2.3", "10.0.0.1 10.0.0.2",
                          "300.1.1.1"}) {
    INFO(bad);
    auto b = lastAddressFromXff(bad, 0);
    CHECK_FALSE(b.address.has_value());
    CHECK_FALSE(b.single);
  }
}

TEST_CASE("Internal addresses: Envoy's defaults, or the configured ranges") {
  http::InternalAddressConfig def;
  for (const char* in : {"10.0.0.1", "10.255.255.255", "172.16.0.1", "172.31.255.255", "192.168.1.1", "127.0.0.1",
                         "::1", "fd00::1", "fdff:ffff::1"}) {
    INFO(in);
    CHECK(def.isInternal(ip(in)));
  }
  for (const char* out : {"11.0.0.1", "172.15.0.1", "172.32.0.1", "192.169.0.1", "127.0.0.2", "8.8.8.8",
                          "fc00::1", "2001:db8::1", "::2", "::ffff:10.0.0.1"}) {
    INFO(out);
    CHECK_FALSE(def.isInternal(ip(out)));
  }

  http::InternalAddressConfig cfg;
  cfg.cidr_ranges.push_back(config::CidrRange{ip("100.64.0.0"), 10});
  cfg.cidr_ranges.push_back(config::CidrRange{ip("2001:db8::"), 32});
  CHECK(cfg.isInternal(ip("100.127.1.1")));
  CHECK(cfg.isInternal(ip("2001:db8:1::5")));
  CHECK_FALSE(cfg.isInternal(ip("127.0.0.1")));  // configured ranges replace the defaults
  CHECK_FALSE(cfg.isInternal(ip("10.0.0.1")));

  http::InternalAddressConfig unix_only;
  unix_only.unix_sockets = true;  // no ranges: the IP defaults still apply
  CHECK(unix_only.isInternal(ip("127.0.0.1")));
}

TEST_CASE("Sanitizing: without use_remote_address, one internal XFF address makes a request internal") {
  HcmConfig cfg;
  const auto peer = ip("127.0.0.1");

  SECTION("no XFF: external (the peer is not looked at)") {
    auto h = request({{"X-Envoy-Internal", "true"}, {"x-envoy-retry-on", "5xx"}, {"x-envoy-decorator-operation", "op"},
                      {"x-envoy-upstream-rq-timeout-ms", "1"}, {"x-envoy-custom", "c"}});
    auto v = http::sanitizeRequestHeaders(h, cfg, nullptr, peer, false);
    CHECK_FALSE(v.internal);
    CHECK_FALSE(v.edge);
    CHECK(all(h, "x-envoy-internal").empty());
    CHECK(all(h, "x-envoy-retry-on").empty());
    CHECK(all(h, "x-envoy-upstream-rq-timeout-ms").empty());
    CHECK(all(h, "x-envoy-decorator-operation") == Values{"op"});  // edge only
    CHECK(all(h, "x-envoy-custom") == Values{"c"});
    CHECK(all(h, "x-envoy-external-address").empty());
    CHECK(all(h, "x-forwarded-for").empty());
    CHECK(all(h, "x-forwarded-proto") == Values{"http"});
  }
  SECTION("every external-only x-envoy header goes, in any case") {
    std::vector<std::pair<std::string, std::string>> hs;
    for (const char* n : kExternalOnly) hs.emplace_back(n, "1");
    hs.emplace_back("X-ENVOY-MAX-RETRIES", "3");
    auto h = request(hs);
    http::sanitizeRequestHeaders(h, cfg, nullptr, peer, false);
    for (const char* n : kExternalOnly) {
      INFO(n);
      CHECK(all(h, n).empty());
    }
    CHECK(h.size() == 1);  // x-forwarded-proto
  }
  SECTION("a single internal XFF address: internal, marked, x-envoy headers kept") {
    auto h = request({{"x-forwarded-for", " 10.1.2.3 "}, {"x-envoy-internal", "no"}, {"x-envoy-retry-on", "5xx"}});
    auto v = http::sanitizeRequestHeaders(h, cfg, nullptr, peer, false);
    CHECK(v.internal);
    CHECK(all(h, "x-envoy-internal") == Values{"true"});
    CHECK(all(h, "x-envoy-retry-on") == Values{"5xx"});
    CHECK(all(h, "x-forwarded-for") == Values{" 10.1.2.3 "});  // not appended to
  }
  SECTION("two addresses, an external one, or garbage: external") {
    for (const char* xff : {"10.0.0.1,10.0.0.2", "203.0.113.9", "unknown"}) {
      INFO(xff);
      auto h = request({{"x-forwarded-for", xff}, {"x-envoy-retry-on", "5xx"}});
      auto v = http::sanitizeRequestHeaders(h, cfg, nullptr, peer, false);
      CHECK_FALSE(v.internal);
      CHECK(all(h, "x-envoy-retry-on").empty());
    }
  }
  SECTION("xff_num_trusted_hops skips the trusted proxies' entries") {
    cfg.xff_num_trusted_hops = 1;
    auto h = request({{"x-forwarded-for", "192.168.0.7, 203.0.113.1"}});
    CHECK(http::sanitizeRequestHeaders(h, cfg, nullptr, peer, false).internal);
    h = request({{"x-forwarded-for", "10.0.0.9, 192.168.0.7, 203.0.113.1"}});
    CHECK_FALSE(http::sanitizeRequestHeaders(h, cfg, nullptr, peer, false).internal);
  }
  SECTION("x-forwarded-proto is kept when present, else the connection's scheme") {
    auto h = request({{"x-forwarded-proto", "https"}});
    http::sanitizeRequestHeaders(h, cfg, nullptr, peer, false);
    CHECK(all(h, "x-forwarded-proto") == Values{"https"});
    h = request({});
    http::sanitizeRequestHeaders(h, cfg, nullptr, peer, true);
    CHECK(all(h, "x-forwarded-proto") == Values{"https"});
  }
}

TEST_CASE("Sanitizing: with use_remote_address the peer decides, and external requests are edge requests") {
  HcmConfig cfg;
  cfg.use_remote_address = true;

  SECTION("internal peer, no XFF: internal") {
    auto h = request({{"x-envoy-retry-on", "5xx"}, {"x-envoy-internal", "false"}, {"x-forwarded-proto", "https"},
                      {"x-request-id", "abc"}});
    auto v = http::sanitizeRequestHeaders(h, cfg, nullptr, ip("127.0.0.1"), false);
    CHECK(v.internal);
    CHECK_FALSE(v.edge);
    CHECK(v.has_request_id);
    CHECK(all(h, "x-envoy-internal") == Values{"true"});
    CHECK(all(h, "x-envoy-retry-on") == Values{"5xx"});
    CHECK(all(h, "x-forwarded-for") == Values{"127.0.0.1"});
    CHECK(all(h, "x-forwarded-proto") == Values{"http"});  // no trusted hops: overwritten
  }
  SECTION("external peer: edge; edge-only headers go, x-envoy-external-address is ours") {
    std::vector<std::pair<std::string, std::string>> hs = {{"x-envoy-external-address", "10.0.0.1"},
                                                           {"x-envoy-internal", "true"}};
    for (const char* n : kEdgeOnly) hs.emplace_back(n, "x");
    for (const char* n : kExternalOnly) hs.emplace_back(n, "x");
    hs.emplace_back("x-keep", "1");
    auto h = request(hs);
    auto v = http::sanitizeRequestHeaders(h, cfg, nullptr, ip("198.51.100.4"), false);
    CHECK_FALSE(v.internal);
    CHECK(v.edge);
    CHECK_FALSE(v.has_request_id);
    for (const char* n : kEdgeOnly) CHECK(all(h, n).empty());
    for (const char* n : kExternalOnly) CHECK(all(h, n).empty());
    CHECK(all(h, "x-envoy-internal").empty());
    CHECK(all(h, "x-envoy-external-address") == Values{"198.51.100.4"});
    CHECK(all(h, "x-forwarded-for") == Values{"198.51.100.4"});
    CHECK(all(h, "x-keep") == Values{"1"});
  }
  SECTION("a client XFF makes any peer external; the peer is appended") {
    auto h = request({{"x-forwarded-for", "10.0.0.1"}});
    auto v = http::sanitizeRequestHeaders(h, cfg, nullptr, ip("10.0.0.2"), false);
    CHECK_FALSE(v.internal);
    CHECK(v.edge);
    CHECK(all(h, "x-forwarded-for") == Values{"10.0.0.1,10.0.0.2"});
    CHECK(all(h, "x-envoy-external-address") == Values{"10.0.0.2"});
  }
  SECTION("xff_num_trusted_hops: the trusted client comes from XFF; the hop's x-forwarded-proto stands") {
    cfg.xff_num_trusted_hops = 2;
    auto h = request({{"x-forwarded-for", "203.0.113.5, 10.0.0.3"}, {"x-forwarded-proto", "https"}});
    http::sanitizeRequestHeaders(h, cfg, nullptr, ip("10.0.0.4"), false);
    CHECK(all(h, "x-envoy-external-address") == Values{"203.0.113.5"});
    CHECK(all(h, "x-forwarded-for") == Values{"203.0.113.5, 10.0.0.3,10.0.0.4"});
    CHECK(all(h, "x-forwarded-proto") == Values{"https"});
    h = request({{"x-forwarded-for", "10.0.0.3"}});  // too short: the peer is the trusted client
    http::sanitizeRequestHeaders(h, cfg, nullptr, ip("10.0.0.4"), false);
    CHECK(all(h, "x-envoy-external-address") == Values{"10.0.0.4"});
  }
  SECTION("skip_xff_append") {
    cfg.skip_xff_append = true;
    auto h = request({{"x-forwarded-for", "203.0.113.5"}});
    http::sanitizeRequestHeaders(h, cfg, nullptr, ip("10.0.0.4"), true);
    CHECK(all(h, "x-forwarded-for") == Values{"203.0.113.5"});
    CHECK(all(h, "x-forwarded-proto") == Values{"https"});
  }
  SECTION("configured internal ranges") {
    cfg.internal_addresses.cidr_ranges.push_back(config::CidrRange{ip("10.0.0.0"), 8});
    auto h = request({});
    CHECK_FALSE(http::sanitizeRequestHeaders(h, cfg, nullptr, ip("127.0.0.1"), false).internal);
    h = request({});
    CHECK(http::sanitizeRequestHeaders(h, cfg, nullptr, ip("10.9.8.7"), false).internal);
  }
}

TEST_CASE("Sanitizing: repeated x-forwarded-for headers are one list, in order") {
  HcmConfig cfg;
  cfg.use_remote_address = true;
  cfg.xff_num_trusted_hops = 1;
  auto h = request({{"X-Forwarded-For", "198.51.100.1"}, {"a", "1"}, {"x-forwarded-for", "198.51.100.2, 203.0.113.3"},
                    {"x-forwarded-for", "203.0.113.4"}, {"b", "2"}});
  http::sanitizeRequestHeaders(h, cfg, nullptr, ip("10.0.0.1"), false);
  CHECK(all(h, "x-forwarded-for") == Values{"198.51.100.1,198.51.100.2, 203.0.113.3,203.0.113.4,10.0.0.1"});
  CHECK(all(h, "x-envoy-external-address") == Values{"203.0.113.4"});
  REQUIRE(h.entries().size() == 5);  // XFF (where the first was), a, b, x-forwarded-proto, external address
  CHECK(h.entries()[0].name == "X-Forwarded-For");
  CHECK(h.entries()[1].name == "a");
  CHECK(h.entries()[2].name == "b");

  HcmConfig plain;
  h = request({{"x-forwarded-for", "10.0.0.1"}, {"x-forwarded-for", "10.0.0.2"},
               {"x-forwarded-proto", "https"}, {"x-forwarded-proto", "http"}});
  auto v = http::sanitizeRequestHeaders(h, plain, nullptr, ip("127.0.0.1"), false);
  CHECK(all(h, "x-forwarded-for") == Values{"10.0.0.1,10.0.0.2"});
  CHECK(all(h, "x-forwarded-proto") == Values{"https,http"});
  CHECK_FALSE(v.internal);  // two addresses
}

TEST_CASE("Sanitizing: internal_only_headers leave external requests only") {
  auto table = tableWithInternalOnly({"x-internal-secret", "X-Tenant-Admin", "x-a-header-name-of-more-than-sixty-three-characters-for-the-mask"});
  CHECK(table->isInternalOnlyHeader("X-INTERNAL-SECRET"));
  CHECK(table->isInternalOnlyHeader("x-tenant-admin"));
  CHECK(table->isInternalOnlyHeader("x-a-header-name-of-more-than-sixty-three-characters-for-the-mask"));
  CHECK_FALSE(table->isInternalOnlyHeader("x-internal-secre"));
  CHECK_FALSE(table->isInternalOnlyHeader("x-internal-secrex"));
  CHECK_FALSE(table->isInternalOnlyHeader("x-a-header-name-of-more-than-sixty-three-characters-for-the-masq"));

  const std::vector<std::pair<std::string, std::string>> sent = {
      {"X-Internal-Secret", "1"}, {"x-tenant-admin", "2"}, {"x-tenant-admin", "3"}, {"x-other", "4"}};
  HcmConfig cfg;  // no XFF: external
  auto h = request(sent);
  http::sanitizeRequestHeaders(h, cfg, table.get(), ip("127.0.0.1"), false);
  CHECK(all(h, "x-internal-secret").empty());
  CHECK(all(h, "x-tenant-admin").empty());
  CHECK(all(h, "x-other") == Values{"4"});

  cfg.use_remote_address = true;  // loopback peer: internal
  h = request(sent);
  http::sanitizeRequestHeaders(h, cfg, table.get(), ip("127.0.0.1"), false);
  CHECK(all(h, "x-internal-secret") == Values{"1"});
  CHECK(all(h, "x-tenant-admin") == Values{"2", "3"});
}

TEST_CASE("Sanitizing: Expect: 100-continue is taken out and reported; x-request-id presence") {
  HcmConfig cfg;
  auto h = request({{"Expect", "100-Continue"}, {"x-request-id", ""}});
  auto v = http::sanitizeRequestHeaders(h, cfg, nullptr, ip("127.0.0.1"), false);
  CHECK(v.expect_continue);
  CHECK_FALSE(v.has_request_id);  // empty does not count
  CHECK(all(h, "expect").empty());
  h = request({{"x-request-id", "r"}, {"x-envoy-retry-on", "5xx"}});
  v = http::sanitizeRequestHeaders(h, cfg, nullptr, ip("127.0.0.1"), false);
  CHECK_FALSE(v.expect_continue);
  CHECK(v.has_request_id);
}
