#include "proxy/server/dns_clusters.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "proxy/common/log.h"

namespace strait::server {

DnsClusters::DnsClusters(stats::Store& store) : store_(store) {}

DnsClusters::~DnsClusters() { stop(); }

void DnsClusters::start() {
  if (started_) return;
  started_ = true;
  // The resolver thread counts into the shard the other background threads (xDS, SDS) share; the
  // stats it writes (cluster.<name>.update_*) are written by no other thread.
  resolver_.start([this] { stats::setThreadShard(&store_.shard(store_.shardCount() - 1)); });
}

void DnsClusters::stop() { resolver_.stop(); }

void DnsClusters::activateLocked(Entry& e, const std::vector<upstream::HostSharedPtr>& hosts,
                                 const std::vector<upstream::ClusterRuntime::HostParams>& params) {
  const config::Cluster& v = *e.version;
  e.runtime->activate(hosts, params, v.limits(), v.outlier ? &*v.outlier : nullptr, v.highLimits());
}

void DnsClusters::apply(const config::Snapshot& snapshot) {
  std::vector<std::pair<std::string, uint64_t>> to_start;
  std::vector<std::string> channel_keys;
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::set<std::string> seen;
    for (const auto& c : snapshot.clusters) {
      if (!c->isDns() || !c->dns || !c->runtime) continue;
      seen.insert(c->name);
      auto& slot = entries_[c->name];
      const bool fresh = !slot || slot->runtime != c->runtime;
      if (fresh) {
        // A new cluster, or one removed and back (a new runtime: its hosts are new objects).
        slot = std::make_unique<Entry>();
        slot->runtime = c->runtime;
        slot->scope = std::make_unique<stats::StatScope>(store_);
        const std::string p = absl::StrCat("cluster.", c->dns->stat_prefix, ".");
        slot->update_attempt = slot->scope->counter(p + "update_attempt");
        slot->update_success = slot->scope->counter(p + "update_success");
        slot->update_failure = slot->scope->counter(p + "update_failure");
        slot->update_empty = slot->scope->counter(p + "update_empty");
        slot->membership_change = slot->scope->counter(p + "membership_change");
      }
      Entry& e = *slot;
      e.version = c;
      const std::string key = c->dns->key();
      if (fresh || key != e.key) {
        e.key = key;
        e.config = c->dns;
        ++e.epoch;
        e.targets.assign(c->dns->targets.size(), Target(*c->dns));
        to_start.emplace_back(c->name, e.epoch);
        LOG_INFO("cluster '%s': resolving %zu name(s) (%s)", c->name.c_str(), c->dns->targets.size(),
                 c->dns->logical ? "LOGICAL_DNS" : "STRICT_DNS");
      }
      channel_keys.push_back(e.config->resolver.key());
      // This version comes into force against the hosts in force (those of the newest resolution).
      auto set = e.runtime->dns_hosts.current().first;
      if (set) {
        activateLocked(e, *set, e.params);
      } else {
        activateLocked(e, c->hosts, c->host_params);
      }
    }
    for (auto it = entries_.begin(); it != entries_.end();) {
      if (seen.count(it->first)) {
        ++it;
        continue;
      }
      // Gone, or no longer resolved by DNS: its hosts go (answers still in flight are dropped).
      LOG_INFO("cluster '%s': DNS resolution stopped", it->first.c_str());
      it->second->runtime->dns_hosts.reset();
      it = entries_.erase(it);
    }
  }
  resolver_.post([this, to_start = std::move(to_start), channel_keys = std::move(channel_keys)] {
    resolver_.keepChannels(channel_keys);
    for (const auto& [name, epoch] : to_start) {
      size_t n = 0;
      {
        std::lock_guard<std::mutex> lock(mu_);
        auto it = entries_.find(name);
        if (it == entries_.end() || it->second->epoch != epoch) continue;
        n = it->second->targets.size();
      }
      for (size_t i = 0; i < n; ++i) resolveTarget(name, epoch, i);
    }
  });
}

void DnsClusters::resolveTarget(const std::string& name, uint64_t epoch, size_t index) {
  upstream::DnsResolverSettings settings;
  std::string host;
  upstream::DnsLookupFamily family = upstream::DnsLookupFamily::Auto;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(name);
    if (it == entries_.end() || it->second->epoch != epoch || index >= it->second->targets.size()) return;
    Entry& e = *it->second;
    Target& t = e.targets[index];
    if (t.in_flight) return;
    t.in_flight = true;
    settings = e.config->resolver;
    host = e.config->targets[index].name;
    family = e.config->family;
    stats::inc(e.update_attempt);
  }
  LOG_DEBUG("cluster '%s': resolving %s", name.c_str(), host.c_str());
  // Outside the lock: the answer may come back before resolve() returns.
  resolver_.resolve(settings, host, family, [this, name, epoch, index](const upstream::DnsResolver::Result& r) {
    onResolved(name, epoch, index, r);
  });
}

void DnsClusters::onResolved(const std::string& name, uint64_t epoch, size_t index,
                             const upstream::DnsResolver::Result& result) {
  bool changed = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(name);
    if (it == entries_.end() || it->second->epoch != epoch || index >= it->second->targets.size()) return;
    Entry& e = *it->second;
    Target& t = e.targets[index];
    t.in_flight = false;
    const std::string& host = e.config->targets[index].name;
    uint64_t delay = 0;
    if (result.ok) {
      auto answer = upstream::selectAddresses(e.config->family, result.v4, result.v6);
      delay = t.schedule.onSuccess(answer);
      stats::inc(e.update_success);
      if (answer.empty()) stats::inc(e.update_empty);
      LOG_DEBUG("cluster '%s': %s has %zu address(es); next lookup in %lu ms", name.c_str(), host.c_str(),
                answer.size(), static_cast<unsigned long>(delay));
      t.last_good = std::move(answer);
      changed = republishLocked(e);
    } else {
      // The last good hosts stay.
      delay = t.schedule.onFailure();
      stats::inc(e.update_failure);
      LOG_WARN("cluster '%s': resolving %s failed (%s); keeping %s hosts, next lookup in %lu ms", name.c_str(),
               host.c_str(), result.error.c_str(), t.last_good ? "the last good" : "no",
               static_cast<unsigned long>(delay));
    }
    resolver_.schedule(delay, [this, name, epoch, index] { resolveTarget(name, epoch, index); });
  }
  if (changed && on_hosts_changed_) on_hosts_changed_(name);
}

bool DnsClusters::republishLocked(Entry& e) {
  std::vector<std::vector<upstream::DnsAnswer>> answers;
  answers.reserve(e.targets.size());
  for (const auto& t : e.targets) answers.push_back(t.last_good ? *t.last_good : std::vector<upstream::DnsAnswer>{});
  upstream::DnsHostSource source;
  source.find = [&](const std::string& key) { return e.runtime->findHost(key); };
  source.make = [&](const upstream::DnsTarget& t, const network::Address& addr, const std::string& key) {
    auto h = upstream::makeDnsHost(store_, e.config->cluster_name, t, addr);
    e.runtime->rememberHost(key, h);
    return h;
  };
  upstream::DnsHostSet set = upstream::buildDnsHostSet(*e.config, answers, source);
  auto current = e.runtime->dns_hosts.current().first;
  if (current && upstream::sameHosts(*current, set.hosts)) return false;
  // Weights, limits and outlier detection first, then the workers see the set.
  e.params = set.params;
  activateLocked(e, set.hosts, set.params);
  const size_t n = set.hosts.size();
  std::string list;
  for (const auto& h : set.hosts) absl::StrAppend(&list, list.empty() ? "" : " ", h->address.asString());
  e.runtime->dns_hosts.publish(std::make_shared<const std::vector<upstream::HostSharedPtr>>(std::move(set.hosts)));
  stats::set(store_, e.version->stats.membership_total, static_cast<int64_t>(n));
  stats::inc(e.membership_change);
  LOG_INFO("cluster '%s': %zu host(s) from DNS: %s", e.version->name.c_str(), n, list.c_str());
  return true;
}

}  // namespace strait::server
