#pragma once

// STRICT_DNS and LOGICAL_DNS clusters: their translated settings and the parts of resolution that need
// no network (which addresses a lookup family keeps, when the next query goes out, which Host objects a
// resolution yields). The resolver itself is dns_resolver.h; the server drives both (server/dns_clusters).

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "proxy/network/address.h"
#include "proxy/network/transport_socket.h"
#include "proxy/stats/stats.h"
#include "proxy/upstream/cluster_runtime.h"
#include "proxy/upstream/host.h"

namespace strait::upstream {

// Cluster.dns_lookup_family (Envoy's numbering).
enum class DnsLookupFamily { Auto = 0, V4Only = 1, V6Only = 2, V4Preferred = 3, All = 4 };

// Where queries go. Clusters with equal settings share one resolver channel.
struct DnsResolverSettings {
  std::vector<network::Address> servers;  // empty: the name servers of /etc/resolv.conf
  bool use_tcp = false;
  bool no_search_domain = false;  // resolv.conf's search domains are not appended
  std::string key() const;
};

// One hostname endpoint of a DNS cluster.
struct DnsTarget {
  std::string name;  // what is resolved (the endpoint's socket_address.address)
  uint32_t port = 0;
  uint32_t priority = 0;
  std::shared_ptr<const Locality> locality;
  uint32_t weight = 1;
  uint32_t locality_weight = 0;
  std::string hostname;  // Host::hostname: endpoint.hostname if given, else `name`
  network::TransportSocketFactorySharedPtr socket;  // transport_socket_matches choice, else the cluster's
};

// A STRICT_DNS / LOGICAL_DNS cluster's resolution settings (immutable, shared by its Cluster version).
struct DnsClusterConfig {
  bool logical = false;  // LOGICAL_DNS: one host, the first address of the single endpoint
  std::vector<DnsTarget> targets;
  uint64_t refresh_ms = 5000;       // dns_refresh_rate
  bool respect_ttl = false;         // respect_dns_ttl: the records' TTL replaces refresh_ms
  uint64_t failure_base_ms = 0;     // dns_failure_refresh_rate.base_interval (0: refresh_ms, no back-off)
  uint64_t failure_max_ms = 0;      // .max_interval (default 10 x base)
  DnsLookupFamily family = DnsLookupFamily::Auto;
  DnsResolverSettings resolver;
  std::string cluster_name;  // host stat names: cluster.<name>.host.<address>.
  std::string stat_prefix;   // cluster.<stat_prefix>.update_attempt ... (alt_stat_name or name)
  // What resolution depends on (targets, family, resolver, timing): a version with another key starts
  // resolving over; one with the same key carries on where the last left off.
  std::string key() const;
};
using DnsClusterConfigConstSharedPtr = std::shared_ptr<const DnsClusterConfig>;

// One address of an answer (port 0) with its record's TTL in seconds.
struct DnsAnswer {
  network::Address address;
  uint32_t ttl_s = 0;
};

// What a lookup family keeps of an answer, in order: AUTO the IPv6 addresses if there are any, else the
// IPv4 ones; V4_PREFERRED the reverse; V4_ONLY / V6_ONLY one family; ALL IPv4 then IPv6.
std::vector<DnsAnswer> selectAddresses(DnsLookupFamily family, const std::vector<DnsAnswer>& v4,
                                       const std::vector<DnsAnswer>& v6);

// When one target is resolved next. After a success: the refresh rate, or with respect_dns_ttl the
// answer's smallest TTL (the refresh rate when the answer has no TTL: empty, or TTL 0). After
// failures: base_interval doubled per consecutive failure up to max_interval (without a
// dns_failure_refresh_rate, the refresh rate every time); a success starts the back-off over.
class DnsRefreshSchedule {
 public:
  DnsRefreshSchedule(uint64_t refresh_ms, bool respect_ttl, uint64_t failure_base_ms, uint64_t failure_max_ms);
  explicit DnsRefreshSchedule(const DnsClusterConfig& c)
      : DnsRefreshSchedule(c.refresh_ms, c.respect_ttl, c.failure_base_ms, c.failure_max_ms) {}
  // Delay until the next query, in ms.
  uint64_t onSuccess(const std::vector<DnsAnswer>& answer);
  uint64_t onFailure();
  uint32_t consecutiveFailures() const { return failures_; }

 private:
  uint64_t refresh_ms_;
  bool respect_ttl_;
  uint64_t failure_base_ms_;
  uint64_t failure_max_ms_;
  uint32_t failures_ = 0;
};

// The hosts a resolution yields and what each should be (weight, locality weight) once published.
struct DnsHostSet {
  std::vector<HostSharedPtr> hosts;
  std::vector<ClusterRuntime::HostParams> params;
};
// How hosts are found and made: `find` returns the live Host with this identity key (null if none),
// `make` builds a new one for an address of a target (port set) and remembers it under the key.
struct DnsHostSource {
  std::function<HostSharedPtr(const std::string& key)> find;
  std::function<HostSharedPtr(const DnsTarget& target, const network::Address& address, const std::string& key)> make;
};
// The host set of `answers` (the newest good answer of each target, same order as config.targets; an
// empty one contributes nothing): STRICT_DNS every address of every target (with the target's port),
// each once; LOGICAL_DNS the first address of the first target. An address that stays keeps its Host
// object (identity: hostKey of address, transport, priority, locality, hostname), and so its health,
// outlier and load state.
DnsHostSet buildDnsHostSet(const DnsClusterConfig& config, const std::vector<std::vector<DnsAnswer>>& answers,
                           const DnsHostSource& source);
// Same members in the same order (by object): publishing it again would change nothing.
bool sameHosts(const std::vector<HostSharedPtr>& a, const std::vector<HostSharedPtr>& b);

// A new Host for a resolved address of `target` in cluster `cluster_name`, with its per-host stats.
HostSharedPtr makeDnsHost(stats::Store& store, const std::string& cluster_name, const DnsTarget& target,
                          const network::Address& address);

}  // namespace strait::upstream
