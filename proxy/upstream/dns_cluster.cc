#include "proxy/upstream/dns_cluster.h"

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"

namespace strait::upstream {

std::string DnsResolverSettings::key() const {
  std::string k = absl::StrCat(use_tcp ? "tcp" : "udp", no_search_domain ? ",nosearch" : ",search");
  for (const auto& s : servers) absl::StrAppend(&k, ",", s.asString());
  return k;
}

std::string DnsClusterConfig::key() const {
  std::string k = absl::StrCat(logical ? "logical" : "strict", "|", static_cast<int>(family), "|", refresh_ms, "|",
                               respect_ttl ? 1 : 0, "|", failure_base_ms, "|", failure_max_ms, "|", resolver.key());
  for (const auto& t : targets) {
    absl::StrAppend(&k, "|", t.name, ":", t.port, "/", t.priority, "/", t.weight, "/", t.locality_weight, "/",
                    t.hostname, "/", t.socket ? t.socket->hashKey() : 0);
    if (t.locality) absl::StrAppend(&k, "/", t.locality->region, "/", t.locality->zone, "/", t.locality->sub_zone);
  }
  return k;
}

std::vector<DnsAnswer> selectAddresses(DnsLookupFamily family, const std::vector<DnsAnswer>& v4,
                                       const std::vector<DnsAnswer>& v6) {
  switch (family) {
    case DnsLookupFamily::V4Only: return v4;
    case DnsLookupFamily::V6Only: return v6;
    case DnsLookupFamily::Auto: return v6.empty() ? v4 : v6;
    case DnsLookupFamily::V4Preferred: return v4.empty() ? v6 : v4;
    case DnsLookupFamily::All: {
      std::vector<DnsAnswer> out = v4;
      out.insert(out.end(), v6.begin(), v6.end());
      return out;
    }
  }
  return {};
}

DnsRefreshSchedule::DnsRefreshSchedule(uint64_t refresh_ms, bool respect_ttl, uint64_t failure_base_ms,
                                       uint64_t failure_max_ms)
    : refresh_ms_(std::max<uint64_t>(refresh_ms, 1)),
      respect_ttl_(respect_ttl),
      failure_base_ms_(failure_base_ms),
      failure_max_ms_(failure_max_ms != 0 ? std::max(failure_max_ms, failure_base_ms) : failure_base_ms * 10) {}

uint64_t DnsRefreshSchedule::onSuccess(const std::vector<DnsAnswer>& answer) {
  failures_ = 0;
  if (!respect_ttl_) return refresh_ms_;
  uint32_t ttl = 0;
  for (const auto& a : answer) {
    if (a.ttl_s != 0 && (ttl == 0 || a.ttl_s < ttl)) ttl = a.ttl_s;
  }
  return ttl == 0 ? refresh_ms_ : uint64_t(ttl) * 1000;
}

uint64_t DnsRefreshSchedule::onFailure() {
  const uint32_t n = failures_;
  if (failures_ < 64) ++failures_;
  if (failure_base_ms_ == 0) return refresh_ms_;
  // base x 2^n, capped (the shift stops before it could overflow).
  uint64_t delay = failure_base_ms_;
  for (uint32_t i = 0; i < n && delay < failure_max_ms_; ++i) delay *= 2;
  return std::min(delay, failure_max_ms_);
}

DnsHostSet buildDnsHostSet(const DnsClusterConfig& config, const std::vector<std::vector<DnsAnswer>>& answers,
                           const DnsHostSource& source) {
  DnsHostSet out;
  std::set<std::string> seen;
  static const Locality kNoLocality;
  for (size_t i = 0; i < config.targets.size() && i < answers.size(); ++i) {
    const DnsTarget& t = config.targets[i];
    for (const auto& a : answers[i]) {
      network::Address addr = a.address;
      addr.setPort(t.port);
      const std::string key = hostKey(addr, t.socket ? t.socket->hashKey() : 0, t.priority,
                                      t.locality ? *t.locality : kNoLocality, t.hostname);
      if (!seen.insert(key).second) continue;  // the same address twice: one host
      HostSharedPtr h = source.find ? source.find(key) : nullptr;
      if (!h) h = source.make(t, addr, key);
      out.hosts.push_back(std::move(h));
      ClusterRuntime::HostParams p;
      p.weight = t.weight;
      p.locality_weight = t.locality_weight;
      out.params.push_back(p);
      if (config.logical) return out;  // LOGICAL_DNS: the first address only
    }
  }
  return out;
}

bool sameHosts(const std::vector<HostSharedPtr>& a, const std::vector<HostSharedPtr>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i] != b[i]) return false;
  }
  return true;
}

HostSharedPtr makeDnsHost(stats::Store& store, const std::string& cluster_name, const DnsTarget& target,
                          const network::Address& address) {
  auto h = std::make_shared<Host>();
  h->address = address;
  h->setHostname(target.hostname);
  h->transport_socket = target.socket;
  h->priority = target.priority;
  h->locality = target.locality ? target.locality : std::make_shared<const Locality>();
  (void)store;  // per-host stats live in the Host (host.h)
  (void)cluster_name;
  // Not visible to any worker yet: its first values can be set now.
  h->weight.store(std::max<uint32_t>(target.weight, 1), std::memory_order_relaxed);
  h->locality_weight.store(target.locality_weight, std::memory_order_relaxed);
  return h;
}

}  // namespace strait::upstream
