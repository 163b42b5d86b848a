#include "proxy/server/active_health_checks.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "proxy/common/log.h"

namespace strait::server {

ActiveHealthChecks::~ActiveHealthChecks() = default;

void ActiveHealthChecks::update(const config::Snapshot& snapshot) {
  std::set<std::string> wanted;
  for (const auto& c : snapshot.clusters) {
    if (!c->health_check || !c->runtime) continue;
    wanted.insert(c->name);
    Entry& e = checks_[c->name];
    // A new runtime (the cluster was removed and came back) starts over: its hosts are new objects.
    if (e.runtime.lock() != c->runtime) {
      publishStats();
      e = Entry{};
      e.runtime = c->runtime;
    }
    if (!e.checker) {
      e.checker = std::make_unique<upstream::HealthChecker>(dispatcher_, *c->health_check,
                                                            &c->runtime->healthGeneration(), ++seed_);
      e.checker->setTransportSocketStats(&c->stats.ssl);
      // A passing active check returns a host that outlier detection ejected (Envoy's
      // successful_active_health_check_uneject_host, on by default).
      std::weak_ptr<upstream::ClusterRuntime> weak = c->runtime;
      e.checker->setCheckCompleteCallback([weak](const upstream::HostSharedPtr& host, upstream::HealthTransition, bool passed) {
        if (!passed) return;
        if (auto rt = weak.lock()) {
          if (auto* od = rt->outlierDetector()) od->onActiveHealthCheckSuccess(*host);
        }
      });
      e.config_hash = c->health_check_hash;
      e.scope = std::make_unique<stats::StatScope>(store_);
      const std::string p = absl::StrCat("cluster.", c->runtime->name(), ".health_check.");
      const upstream::HealthCheckStats& s = e.checker->stats();
      const std::pair<const char*, const std::atomic<uint64_t>*> counters[] = {
          {"attempt", &s.attempt}, {"success", &s.success}, {"failure", &s.failure},
          {"network_failure", &s.network_failure}, {"passive_failure", &s.passive_failure},
          {"verify_cluster", &s.verify_cluster}};
      for (const auto& [name, src] : counters) {
        e.published.push_back(Published{src, e.scope->counter(p + name), {}, false, 0});
      }
      e.published.push_back(Published{&s.healthy, {}, e.scope->gauge(p + "healthy"), true, 0});
      LOG_INFO("cluster '%s': active health checking of %zu hosts", c->name.c_str(), c->hosts.size());
    } else if (e.config_hash != c->health_check_hash) {
      e.checker->updateConfig(*c->health_check);
      e.config_hash = c->health_check_hash;
    }
    e.checker->setHosts(*config::hostsInForce(*c));  // a DNS cluster: its newest resolution
    if (!e.checker->started()) e.checker->start();
  }
  for (auto it = checks_.begin(); it != checks_.end();) {
    if (wanted.count(it->first)) {
      ++it;
      continue;
    }
    // Health checking was removed (or the cluster): the checker's destructor returns its hosts.
    LOG_INFO("cluster '%s': active health checking stopped", it->first.c_str());
    it = checks_.erase(it);
  }
}

void ActiveHealthChecks::publishStats() {
  for (auto& [name, e] : checks_) {
    for (auto& p : e.published) {
      const uint64_t v = p.source->load(std::memory_order_relaxed);
      if (v == p.last) continue;
      if (p.is_gauge) {
        stats::add(p.gauge, static_cast<int64_t>(v) - static_cast<int64_t>(p.last));
      } else {
        stats::inc(p.counter, static_cast<int64_t>(v - p.last));
      }
      p.last = v;
    }
  }
}

}  // namespace strait::server
