// STRICT_DNS / LOGICAL_DNS: the parts that need no network (address selection by lookup family,
// refresh scheduling with TTLs and back-off, host sets that keep the identity of addresses that stay).
#include <catch2/catch.hpp>

#include <map>

#include "proxy/upstream/dns_cluster.h"

using namespace strait;
using upstream::DnsAnswer;
using upstream::DnsLookupFamily;

namespace {

DnsAnswer v4(const char* ip, uint32_t ttl = 30) { return DnsAnswer{*network::Address::parse(ip, 0), ttl}; }
DnsAnswer v6(const char* ip, uint32_t ttl = 30) { return DnsAnswer{*network::Address::parse(ip, 0), ttl}; }

std::vector<std::string> ips(const std::vector<DnsAnswer>& list) {
  std::vector<std::string> out;
  for (const auto& a : list) out.push_back(a.address.ip());
  return out;
}

// A host source over a plain map (what ClusterRuntime's findHost/rememberHost do), counting makes.
struct FakeSource {
  std::map<std::string, upstream::HostSharedPtr> live;
  int made = 0;
  upstream::DnsHostSource source() {
    upstream::DnsHostSource s;
    s.find = [this](const std::string& key) {
      auto it = live.find(key);
      return it == live.end() ? nullptr : it->second;
    };
    s.make = [this](const upstream::DnsTarget& t, const network::Address& a, const std::string& key) {
      auto h = std::make_shared<upstream::Host>();
      h->address = a;
      h->setHostname(t.hostname);
      h->priority = t.priority;
      live[key] = h;
      ++made;
      return h;
    };
    return s;
  }
};

upstream::DnsTarget target(const std::string& name, uint32_t port, uint32_t weight = 1) {
  upstream::DnsTarget t;
  t.name = name;
  t.hostname = name;
  t.port = port;
  t.weight = weight;
  t.locality = std::make_shared<const upstream::Locality>();
  return t;
}

}  // namespace

TEST_CASE("DNS: each lookup family keeps its addresses in order", "[dns]") {
  const std::vector<DnsAnswer> four{v4("10.0.0.1"), v4("10.0.0.2")};
  const std::vector<DnsAnswer> six{v6("fd00::1")};
  using V = std::vector<std::string>;
  CHECK(ips(upstream::selectAddresses(DnsLookupFamily::V4Only, four, six)) == V{"10.0.0.1", "10.0.0.2"});
  CHECK(ips(upstream::selectAddresses(DnsLookupFamily::V6Only, four, six)) == V{"fd00::1"});
  CHECK(ips(upstream::selectAddresses(DnsLookupFamily::V6Only, four, {})).empty());
  // AUTO prefers IPv6 and falls back to IPv4; V4_PREFERRED the other way round.
  CHECK(ips(upstream::selectAddresses(DnsLookupFamily::Auto, four, six)) == V{"fd00::1"});
  CHECK(ips(upstream::selectAddresses(DnsLookupFamily::Auto, four, {})) == V{"10.0.0.1", "10.0.0.2"});
  CHECK(ips(upstream::selectAddresses(DnsLookupFamily::V4Preferred, four, six)) == V{"10.0.0.1", "10.0.0.2"});
  CHECK(ips(upstream::selectAddresses(DnsLookupFamily::V4Preferred, {}, six)) == V{"fd00::1"});
  CHECK(ips(upstream::selectAddresses(DnsLookupFamily::All, four, six)) == V{"10.0.0.1", "10.0.0.2", "fd00::1"});
}

TEST_CASE("DNS: the refresh rate applies unless respect_dns_ttl, then the smallest TTL does", "[dns]") {
  upstream::DnsRefreshSchedule plain(5000, false, 0, 0);
  CHECK(plain.onSuccess({v4("10.0.0.1", 300)}) == 5000);
  upstream::DnsRefreshSchedule ttl(5000, true, 0, 0);
  CHECK(ttl.onSuccess({v4("10.0.0.1", 300), v4("10.0.0.2", 7)}) == 7000);
  // No TTL to go by (an empty answer, or TTL 0): the refresh rate.
  CHECK(ttl.onSuccess({}) == 5000);
  CHECK(ttl.onSuccess({v4("10.0.0.1", 0)}) == 5000);
  CHECK(ttl.onSuccess({v4("10.0.0.1", 0), v4("10.0.0.2", 60)}) == 60000);
}

TEST_CASE("DNS: failures back off from base_interval to max_interval; a success starts over", "[dns]") {
  upstream::DnsRefreshSchedule s(5000, false, 1000, 6000);
  CHECK(s.onFailure() == 1000);
  CHECK(s.onFailure() == 2000);
  CHECK(s.onFailure() == 4000);
  CHECK(s.onFailure() == 6000);  // capped
  CHECK(s.onFailure() == 6000);
  CHECK(s.consecutiveFailures() == 5);
  CHECK(s.onSuccess({v4("10.0.0.1")}) == 5000);
  CHECK(s.consecutiveFailures() == 0);
  CHECK(s.onFailure() == 1000);
  // Without dns_failure_refresh_rate a failure retries at the refresh rate.
  upstream::DnsRefreshSchedule none(3000, false, 0, 0);
  CHECK(none.onFailure() == 3000);
  CHECK(none.onFailure() == 3000);
  // max_interval defaults to 10 x base_interval; many failures never overflow.
  upstream::DnsRefreshSchedule dflt(5000, false, 500, 0);
  uint64_t last = 0;
  for (int i = 0; i < 100; ++i) last = dflt.onFailure();
  CHECK(last == 5000);
}

TEST_CASE("DNS: a re-resolution keeps the Host of an address that stays and drops the others", "[dns]") {
  upstream::DnsClusterConfig cfg;
  cfg.targets = {target("svc.test", 8080, 3)};
  FakeSource src;
  auto first = upstream::buildDnsHostSet(cfg, {{v4("127.0.0.2"), v4("127.0.0.3")}}, src.source());
  REQUIRE(first.hosts.size() == 2);
  CHECK(src.made == 2);
  CHECK(first.hosts[0]->address.asString() == "127.0.0.2:8080");  // the endpoint's port
  CHECK(first.hosts[1]->address.asString() == "127.0.0.3:8080");
  CHECK(first.hosts[0]->hostname() == "svc.test");
  REQUIRE(first.params.size() == 2);
  CHECK(first.params[0].weight == 3);
  // Health state on the host that stays must survive: it is the same object.
  first.hosts[1]->health_flags.store(upstream::kFailedOutlierCheck);
  auto second = upstream::buildDnsHostSet(cfg, {{v4("127.0.0.3"), v4("127.0.0.4")}}, src.source());
  REQUIRE(second.hosts.size() == 2);
  CHECK(second.hosts[0] == first.hosts[1]);
  CHECK(second.hosts[0]->healthFlags() == upstream::kFailedOutlierCheck);
  CHECK(second.hosts[1]->address.asString() == "127.0.0.4:8080");
  CHECK(src.made == 3);  // only 127.0.0.4 is new
  CHECK_FALSE(upstream::sameHosts(first.hosts, second.hosts));
  auto third = upstream::buildDnsHostSet(cfg, {{v4("127.0.0.3"), v4("127.0.0.4")}}, src.source());
  CHECK(upstream::sameHosts(second.hosts, third.hosts));
  CHECK(src.made == 3);
}

TEST_CASE("DNS: STRICT_DNS takes every address of every target once; LOGICAL_DNS the first", "[dns]") {
  upstream::DnsClusterConfig strict;
  strict.targets = {target("a.test", 80), target("b.test", 81), target("c.test", 82)};
  FakeSource src;
  // a and b both give 10.0.0.1 (different ports: different hosts); a lists an address twice; c has no
  // answer yet (it contributes nothing).
  auto set = upstream::buildDnsHostSet(strict, {{v4("10.0.0.1"), v4("10.0.0.1"), v6("fd00::5")}, {v4("10.0.0.1")}, {}},
                                       src.source());
  std::vector<std::string> got;
  for (const auto& h : set.hosts) got.push_back(h->address.asString());
  CHECK(got == std::vector<std::string>{"10.0.0.1:80", "[fd00::5]:80", "10.0.0.1:81"});
  CHECK(upstream::buildDnsHostSet(strict, {{}, {}, {}}, src.source()).hosts.empty());

  upstream::DnsClusterConfig logical;
  logical.logical = true;
  logical.targets = {target("l.test", 9000)};
  FakeSource lsrc;
  auto one = upstream::buildDnsHostSet(logical, {{v4("10.1.0.7"), v4("10.1.0.8")}}, lsrc.source());
  REQUIRE(one.hosts.size() == 1);
  CHECK(one.hosts[0]->address.asString() == "10.1.0.7:9000");
  // The answer's first address moved: the one host is now the new address.
  auto moved = upstream::buildDnsHostSet(logical, {{v4("10.1.0.8"), v4("10.1.0.7")}}, lsrc.source());
  REQUIRE(moved.hosts.size() == 1);
  CHECK(moved.hosts[0]->address.asString() == "10.1.0.8:9000");
}

TEST_CASE("DNS: a published set moves the generation; reset lets the hosts go", "[dns]") {
  upstream::ResolvedHosts r;
  CHECK(r.generation() == 0);
  CHECK(r.current().first == nullptr);
  auto h = std::make_shared<upstream::Host>();
  r.publish(std::make_shared<const upstream::ResolvedHosts::Set>(upstream::ResolvedHosts::Set{h}));
  const uint64_t g1 = r.generation();
  CHECK(g1 != 0);
  auto [set, g] = r.current();
  REQUIRE(set != nullptr);
  CHECK(g == g1);
  CHECK(set->front() == h);
  r.reset();
  CHECK(r.generation() != g1);
  CHECK(r.current().first == nullptr);
}

TEST_CASE("DNS: the config key changes with what resolution depends on", "[dns]") {
  upstream::DnsClusterConfig a;
  a.targets = {target("svc.test", 80)};
  upstream::DnsClusterConfig b = a;
  CHECK(a.key() == b.key());
  b.targets[0].port = 81;
  CHECK(a.key() != b.key());
  b = a;
  b.resolver.servers.push_back(*network::Address::parse("127.0.0.1", 5353));
  CHECK(a.key() != b.key());
  b = a;
  b.family = DnsLookupFamily::V4Only;
  CHECK(a.key() != b.key());
  b = a;
  b.refresh_ms = 1000;
  CHECK(a.key() != b.key());
}
