#include "proxy/server/server.h"

#include <malloc.h>
#include <signal.h>
#include <unistd.h>
#include <uv.h>

#include <cinttypes>
#include <cstdio>

#include "proxy/accesslog/log_file.h"
#include "proxy/common/buffer.h"
#include "proxy/common/log.h"
#include "proxy/config/bootstrap.h"
#include "proxy/config/retire.h"
#include "proxy/server/admin.h"
#include "proxy/server/dns_clusters.h"
#include "proxy/server/hot_restart.h"
#include "proxy/server/overload.h"
#include "proxy/server/sds_streams.h"
#include "proxy/server/status_server.h"
#include "proxy/server/xds_applier.h"
#include "proxy/tracing/span_exporter.h"
#include "certs/secret_manager.h"
#include "envoy/config/bootstrap/v3/bootstrap.pb.h"
#include "envoy/config/listener/v3/listener.pb.h"

#include <condition_variable>
#include "absl/strings/str_cat.h"

namespace strait::server {

Server::Server(Options options, config::SnapshotConstSharedPtr snapshot, std::unique_ptr<stats::Store> store)
    : options_(std::move(options)),
      store_(std::move(store)),
      snapshot_(std::move(snapshot)),
      dispatcher_(std::make_unique<event::Dispatcher>("main")),
      started_(std::chrono::steady_clock::now()) {
  stats::setThreadShard(&store_->shard(0));
  live_ = store_->gauge("server.live");
  uptime_ = store_->gauge("server.uptime");
  concurrency_ = store_->gauge("server.concurrency");
  // Envoy's name: the clusters in force (warm), static and dynamic.
  active_clusters_ = store_->gauge("cluster_manager.active_clusters");
  draining_ = store_->gauge("server.state");
  stats::set(*store_, concurrency_, options_.concurrency);
}

Server::~Server() {
  hot_restart_ready_timer_.reset();
  xds_warming_timer_.reset();
  hot_restart_.reset();  // its threads call into the workers and post to the main dispatcher
  dns_.reset();  // the resolver thread first: it posts to the main dispatcher
  for (auto* s : signals_) {
    uv_close(reinterpret_cast<uv_handle_t*>(s), [](uv_handle_t* h) { delete reinterpret_cast<uv_signal_t*>(h); });
  }
  xds_.reset();
  status_.reset();
  admin_.reset();
  drain_timer_.reset();
  health_tick_.reset();
  health_checks_.reset();  // checkers need the dispatcher
  workers_.clear();
  // Timers give their handle back to the dispatcher when they go (ASan found these two used it freed).
  trim_timer_.reset();
  overload_.reset();  // its refresh timer; after the workers, which read its state
  dispatcher_.reset();
  snapshot_.reset();  // before store_ (see the member order)
}

const char* Server::stateName() const {
  switch (state_) {
    case State::PreInitializing: return "PRE_INITIALIZING";
    case State::Live: return "LIVE";
    case State::Draining: return "DRAINING";
  }
  return "UNKNOWN";
}

bool Server::ready(std::string* body) const {
  if (!initialised(body)) return false;
  if (accept_held_) {
    *body = "PRE_INITIALIZING (hot restart: not accepting yet)\n";
    return false;
  }
  return true;
}

bool Server::initialised(std::string* body) const {
  if (state_ != State::Live) {
    *body = std::string(stateName()) + "\n";
    return false;
  }
  // A TLS context still waiting for its certificate (SDS warming) cannot serve mTLS yet.
  for (const auto& c : certs::SecretManager::get().liveContexts()) {
    if (!c->ready()) {
      *body = "PRE_INITIALIZING (waiting for certificates)\n";
      return false;
    }
  }
  *body = std::string(stateName()) + "\n";
  return true;
}

uint64_t Server::uptimeSeconds() const {
  auto d = std::chrono::steady_clock::now() - started_;
  uint64_t up = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::seconds>(d).count());
  stats::set(*store_, uptime_, static_cast<int64_t>(up));
  return up;
}

absl::Status Server::bindListener(const config::ListenerConstSharedPtr& l,
                                  std::vector<std::vector<WorkerSocket>>& per_worker, network::Address* bound) {
  // The first socket resolves port 0; every worker then binds its own socket to that exact address.
  // Hot restart: the parent's sockets for this address come first (see hot_restart.h).
  std::vector<int> inherited = inheritListenerSockets(*l);
  std::string err;
  int first = !inherited.empty() ? inherited[0] : network::bindReusePortSocket(l->address, &err);
  if (first < 0) return absl::UnavailableError(absl::StrCat("listener '", l->name, "': ", err));
  *bound = network::boundAddress(first);
  std::vector<int> fds{first};
  for (uint32_t w = 1; w < options_.concurrency; ++w) {
    int fd = w < inherited.size() ? inherited[w] : network::bindReusePortSocket(*bound, &err);
    if (fd < 0) {
      for (int f : fds) ::close(f);
      // The parent's sockets not used yet go too: a copy left open here would keep its reuseport
      // member (and the connections hashed to it) alive after the parent closes its own, with no one
      // accepting on it.
      for (size_t i = w; i < inherited.size(); ++i) ::close(inherited[i]);
      return absl::UnavailableError(absl::StrCat("listener '", l->name, "' (worker ", w, "): ", err));
    }
    fds.push_back(fd);
  }
  if (!l->stats_ready) {
    // Not yet seen by any worker: naming its stats after the bound port is still safe.
    config::createListenerStats(const_cast<config::Listener&>(*l), *bound, *store_);
  }
  for (uint32_t w = 0; w < options_.concurrency; ++w) per_worker[w].push_back(WorkerSocket{l, fds[w]});
  // A parent with more workers had more sockets: they are accepted on too (spread over the workers),
  // since closing one would reset the connections in its queue.
  for (size_t i = options_.concurrency; i < inherited.size(); ++i) {
    per_worker[i % options_.concurrency].push_back(WorkerSocket{l, inherited[i], true});
  }
  return absl::OkStatus();
}

// bind_to_port: false: no socket (workers keep the listener for hand-offs); listed with its configured
// address.
void Server::addUnboundListener(const config::ListenerConstSharedPtr& l, std::vector<BoundListener>& out) {
  if (!l->stats_ready) config::createListenerStats(const_cast<config::Listener&>(*l), l->address, *store_);
  out.push_back(BoundListener{l, l->address});
  LOG_DEBUG("listener '%s' on %s (not bound: takes connections handed off by original destination)",
            l->name.c_str(), l->address.asString().c_str());
}

bool Server::bindListeners(std::vector<std::vector<WorkerSocket>>& per_worker) {
  per_worker.assign(options_.concurrency, {});
  for (const auto& l : snapshot_->listeners) {
    if (!l->bind_to_port) {
      addUnboundListener(l, bound_);
      continue;
    }
    network::Address bound;
    auto st = bindListener(l, per_worker, &bound);
    if (!st.ok()) {
      LOG_CRITICAL("%s", std::string(st.message()).c_str());
      return false;
    }
    bound_.push_back(BoundListener{l, bound});
    LOG_INFO("listener '%s' on %s", l->name.c_str(), bound.asString().c_str());
  }
  return true;
}

// An accepted snapshot's clusters come into force: weights, EDS health and circuit-breaker limits of
// hosts and clusters kept from earlier versions (see ClusterRuntime::activate).
void Server::activateClusters(const config::SnapshotConstSharedPtr& snapshot, const config::Snapshot* previous) {
  // The versions in force, by their stable index: a pointer comparison per cluster, not a lookup by name.
  std::vector<const config::Cluster*> in_force;
  if (previous != nullptr) {
    for (const auto& c : previous->clusters) {
      if (c->index >= in_force.size()) in_force.resize(c->index + 1, nullptr);
      in_force[c->index] = c.get();
    }
  }
  for (const auto& c : snapshot->clusters) {
    // The very version that is in force already (buildSnapshot reused it): nothing to do.
    if (c->index < in_force.size() && in_force[c->index] == c.get()) continue;
    if (c->runtime && !c->isDns()) {
      c->runtime->activate(c->hosts, c->host_params, c->limits(), c->outlier ? &*c->outlier : nullptr, c->highLimits());
    }
  }
  // DNS clusters: activated against their newest resolution; new ones start resolving, gone ones stop.
  if (dns_) dns_->apply(*snapshot);
  // Active health checkers live on the main thread.
  if (health_checks_) {
    dispatcher_->post([this, snapshot] {
      if (health_checks_) health_checks_->update(*snapshot);
    });
  }
}

// References a worker hands back in one tick past which the heap is trimmed (removing clusters retires
// one reference per cluster and worker).
constexpr size_t kRetiredTrimThreshold = 256;

void Server::trimHeapSoon() {
  dispatcher_->post([this] {
    if (!trim_timer_) trim_timer_ = dispatcher_->createTimer([] { malloc_trim(0); });
    trim_timer_->enable(1000);
  });
}

void Server::requestClusterOnDemand(const std::string& name) {
  std::lock_guard<std::mutex> lock(odcds_mu_);
  if (!odcds_names_.insert(name).second) return;
  LOG_INFO("xds: asking for cluster '%s' on demand", name.c_str());
  if (odcds_applier_ != nullptr) odcds_applier_->setOnDemandClusters({odcds_names_.begin(), odcds_names_.end()});
}

void Server::onDemandClusterMissing(const std::string& name) {
  const uint32_t index = config::clusterIds().get(name);
  for (auto& w : workers_) w->markClusterMissing(index);
}

absl::Status Server::applySnapshot(config::SnapshotConstSharedPtr snapshot) {
  std::vector<std::vector<WorkerSocket>> per_worker(options_.concurrency);
  std::vector<BoundListener> bound;
  std::vector<BoundListener> current = boundListeners();
  std::vector<int> opened;
  for (const auto& l : snapshot->listeners) {
    if (!l->bind_to_port) {
      addUnboundListener(l, bound);
      continue;
    }
    const BoundListener* have = nullptr;
    for (const auto& b : current) {
      if (b.listener->name == l->name) have = &b;
    }
    // Same configured address: the socket stays (a port-0 listener keeps the port it got).
    if (have != nullptr && have->listener->bind_to_port && have->listener->address == l->address) {
      if (!l->stats_ready) config::createListenerStats(const_cast<config::Listener&>(*l), have->address, *store_);
      bound.push_back(BoundListener{l, have->address});
      continue;
    }
    network::Address addr;
    auto st = bindListener(l, per_worker, &addr);
    if (!st.ok()) {
      for (auto& v : per_worker)
        for (auto& s : v) ::close(s.fd);
      return st;
    }
    LOG_INFO("listener '%s' on %s", l->name.c_str(), addr.asString().c_str());
    bound.push_back(BoundListener{l, addr});
  }
  activateClusters(snapshot, this->snapshot().get());
  // Every worker takes the snapshot; the caller's ACK waits for the last one.
  std::mutex m;
  std::condition_variable cv;
  size_t pending = workers_.size();
  for (uint32_t w = 0; w < workers_.size(); ++w) {
    workers_[w]->applySnapshot(snapshot, std::move(per_worker[w]), uint64_t(options_.drain_time_s) * 1000, [&] {
      std::lock_guard<std::mutex> lock(m);
      if (--pending == 0) cv.notify_one();
    });
  }
  {
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, [&] { return pending == 0; });
  }
  stats::set(*store_, active_clusters_, static_cast<int64_t>(snapshot->clusters.size()));
  std::lock_guard<std::mutex> lock(mu_);
  snapshot_ = std::move(snapshot);
  bound_ = std::move(bound);
  if (sds_) sds_->refresh(*snapshot_);
  return absl::OkStatus();
}

void Server::onXdsWarming(uint64_t timeout_ms) {
  if (timeout_ms == 0) return;
  dispatcher_->post([this, timeout_ms] {
    if (xds_ready_ || state_ != State::PreInitializing) return;
    xds_warming_timer_ = dispatcher_->createTimer([this, timeout_ms] {
      if (xds_ready_) return;
      LOG_WARN("xds: initial clusters and listeners still warming after %" PRIu64 " ms: going on with what there is",
               timeout_ms);
      onXdsInitialized();
    });
    xds_warming_timer_->enable(timeout_ms);
  });
}

void Server::onXdsInitialized() {
  dispatcher_->post([this] {
    xds_ready_ = true;
    if (state_ == State::PreInitializing && workers_started_) {
      state_ = State::Live;
      stats::set(*store_, live_, 1);
      LOG_INFO("xDS initialized: live");
    }
  });
}

int Server::run() {
  signal(SIGPIPE, SIG_IGN);
  // Hot restart: the admin's and status ports' sockets come from the parent when it has them.
  if (hot_restart_) {
    LocalHttpServer::setInheritedSocketSource([this](const network::Address& a) { return inheritLocalSocket(a); });
  }
  // Admin first: a port clash there is as fatal as one on a listener, and nothing has started yet.
  if (snapshot_->admin_address) {
    admin_ = std::make_unique<AdminServer>(*this);
    std::string err;
    if (!admin_->bind(*snapshot_->admin_address, &err)) {
      LOG_CRITICAL("admin: %s", err.c_str());
      return 1;
    }
    LOG_INFO("admin on %s", admin_->address().asString().c_str());
    if (!options_.admin_address_path.empty()) {
      std::string tmp = options_.admin_address_path + ".tmp";
      FILE* f = std::fopen(tmp.c_str(), "w");
      if (f == nullptr || std::fprintf(f, "%s", admin_->address().asString().c_str()) < 0 || std::fclose(f) != 0 ||
          std::rename(tmp.c_str(), options_.admin_address_path.c_str()) != 0) {
        LOG_CRITICAL("cannot write --admin-address-path %s", options_.admin_address_path.c_str());
        return 1;
      }
    }
  }
  // Status ports next, for the same reason: a pod whose probe port cannot be bound must not start.
  if (!options_.status_ports.empty()) {
    status_ = std::make_unique<StatusServer>(*this, pod_env_ ? pod_env_ : std::make_shared<const PodEnv>());
    std::string err;
    if (!status_->bind(options_.status_ports, &err)) {
      LOG_CRITICAL("%s", err.c_str());
      return 1;
    }
  }
  LocalHttpServer::setInheritedSocketSource(nullptr);
  std::vector<std::vector<WorkerSocket>> per_worker;
  if (!bindListeners(per_worker)) {
    for (auto& v : per_worker)
      for (auto& s : v) ::close(s.fd);
    return 1;
  }
  health_checks_ = std::make_unique<ActiveHealthChecks>(*dispatcher_, *store_);
  // STRICT_DNS / LOGICAL_DNS resolution runs on its own thread; a changed host set refreshes the
  // active health checks here, on the main thread.
  dns_ = std::make_unique<DnsClusters>(*store_);
  dns_->setOnHostsChanged([this](const std::string&) {
    dispatcher_->post([this] {
      if (health_checks_) health_checks_->update(*snapshot());
    });
  });
  dns_->start();
  activateClusters(snapshot_, nullptr);
  stats::set(*store_, active_clusters_, static_cast<int64_t>(snapshot_->clusters.size()));
  for (uint32_t w = 0; w < options_.concurrency; ++w) {
    workers_.push_back(std::make_unique<Worker>(w, store_->shard(w + 1), snapshot_));
    if (snapshot_->ads && !snapshot_->ads->cds_wildcard) {
      workers_.back()->setClusterRequester([this](const std::string& name) { requestClusterOnDemand(name); });
    }
  }
  // A hot restart child accepts nothing before it is initialised (see Worker::holdAccepting); the
  // parent serves until then, on the same sockets.
  if (hot_restart_ && hot_restart_->hasParent()) {
    accept_held_ = true;
    for (auto& w : workers_) w->holdAccepting();
  }
  for (uint32_t w = 0; w < options_.concurrency; ++w) {
    workers_[w]->setDrainPolicy(uint64_t(options_.drain_time_s) * 1000, options_.drain_gradual);
    const std::string p = absl::StrCat("server.worker_", w, ".");
    workers_[w]->setLoopStats(store_->gauge(p + "loop_max_iteration_usec"), store_->counter(p + "loop_iterations_over_1ms"));
    workers_[w]->setConfigApplyStats(store_->gauge(p + "config_apply_max_usec"), store_->gauge(p + "config_apply_max_cpu_usec"));
    workers_[w]->start(std::move(per_worker[w]));
  }
  for (auto& w : workers_) w->waitListening();

  for (int signum : {SIGTERM, SIGINT}) {
    auto* s = new uv_signal_t;
    uv_signal_init(dispatcher_->loop(), s);
    s->data = this;
    uv_signal_start(
        s,
        [](uv_signal_t* h, int sig) {
          static_cast<Server*>(h->data)->startDrain(sig == SIGTERM ? "SIGTERM" : "SIGINT");
        },
        signum);
    signals_.push_back(s);
  }
  {
    // SIGUSR1: reopen the access log files (logrotate), as Envoy does.
    auto* s = new uv_signal_t;
    uv_signal_init(dispatcher_->loop(), s);
    uv_signal_start(
        s, [](uv_signal_t*, int) { accesslog::LogFiles::get().reopenAll(); }, SIGUSR1);
    signals_.push_back(s);
  }
  workers_started_ = true;
  // Passive health: outlier-detection intervals run here, on the main thread, every 200 ms at most.
  health_tick_ = dispatcher_->createTimer([this] {
    // What workers let go of (old snapshots, removed clusters) is released here, not on their loops;
    // a large release (clusters removed) gives the freed heap back to the system at once.
    if (config::releaseRetired() >= kRetiredTrimThreshold) malloc_trim(0);
    // Admin responses are built on this thread: after a large one (/stats, /config_dump), keep only
    // a few idle buffer blocks, not the 1 MiB a worker's pool may hold.
    common::trimBlockPool(8);
    upstream::tickClusterRuntimes(dispatcher_->nowMs());
    if (health_checks_) health_checks_->publishStats();
    health_tick_->enable(200);
  });
  health_tick_->enable(200);
  if (overload_config_) {
    overload_ = std::make_unique<OverloadManager>(overload_config_, *dispatcher_, *store_);
    overload_->start();
  }
  // SDS streams of their own (Istio's sds-grpc): opened for whatever the config's TLS contexts name.
  sds_ = std::make_unique<SdsStreams>(*store_, static_cast<const envoy::config::bootstrap::v3::Bootstrap&>(*snapshot_->bootstrap).node());
  sds_->refresh(*snapshot_);
  if (snapshot_->ads) {
    // Not ready until the first CDS and LDS are applied (or their initial fetch times out).
    xds_ready_ = false;
    xds_ = std::make_unique<XdsApplier>(*this, *store_, snapshot_, options_.reject_unknown_dynamic_fields);
    xds_->start();
    if (!snapshot_->ads->cds_wildcard) {
      std::lock_guard<std::mutex> lock(odcds_mu_);
      odcds_applier_ = xds_.get();
      // Names the workers asked for before the applier existed.
      if (!odcds_names_.empty()) odcds_applier_->setOnDemandClusters({odcds_names_.begin(), odcds_names_.end()});
    }
  }
  if (xds_ready_) {
    state_ = State::Live;
    stats::set(*store_, live_, 1);
  }
  LOG_INFO("strait %s: %u workers, %zu listeners, %zu clusters", xds_ready_ ? "live" : "waiting for xDS",
           options_.concurrency, bound_.size(), snapshot_->clusters.size());
  if (hot_restart_) startHotRestart();
  dispatcher_->run();
  if (xds_) xds_->stop();
  if (sds_) sds_->stop();
  if (dns_) dns_->stop();
  for (auto& w : workers_) w->join();
  if (hot_restart_) hot_restart_->handOverFinalStats();  // the counters are final now
  accesslog::LogFiles::get().shutdown();  // the workers handed their last lines over as they ended
  tracing::SpanExporter::get().shutdown();  // and their last spans
  LOG_INFO("strait exiting");
  return 0;
}

void Server::drainListeners(bool inbound_only, bool graceful) {
  LOG_INFO("/drain_listeners%s%s: telling connections, %s", inbound_only ? " (inbound only)" : "",
           graceful ? " (graceful)" : "", graceful ? "listeners stop when the drain time ends" : "listeners stop now");
  stats::set(*store_, draining_, 1);
  for (auto& w : workers_) w->drainListeners(inbound_only, graceful);
}

namespace {
// traffic_direction OUTBOUND: the application's own calls (Istio's virtualOutbound and its per-service
// outbound listeners).
bool isOutbound(const config::Listener& l) {
  if (!l.proto || l.proto->GetDescriptor() != envoy::config::listener::v3::Listener::descriptor()) return false;
  return static_cast<const envoy::config::listener::v3::Listener&>(*l.proto).traffic_direction() ==
         envoy::config::core::v3::OUTBOUND;
}
}  // namespace

void Server::startDrain(const char* why) {
  if (state_ == State::Draining) return;
  if (xds_) xds_->stop();
  LOG_INFO("%s: draining for up to %u s (at least %u s)", why, options_.drain_time_s, options_.min_drain_time_s);
  // Readiness (admin /ready, status /healthz/ready) is 503 from here on.
  state_ = State::Draining;
  stats::set(*store_, live_, 0);
  stats::set(*store_, draining_, 1);
  // Graceful, as Istio's agent drains a sidecar: listeners keep accepting for the drain time and tell
  // every connection, old and new, to go (GOAWAY, Connection: close). Kubernetes still sends traffic for
  // a few seconds after SIGTERM (endpoint removal propagates), and the application, told to stop at the
  // same moment, still makes outbound calls while it winds down: refusing them would fail requests that
  // nothing forced to fail. OUTBOUND listeners are the application's own calls: they are not told
  // before --min-drain-time-s has passed (and never with --exit-on-zero-active-connections, where the
  // application decides when its connections end). The process exits once the minimum has passed and
  // no connection is left, or when the drain time is over.
  // With no minimum (and Strait deciding when the application's connections go), every listener is
  // told at once, as before these options existed.
  outbound_told_ = options_.min_drain_time_s == 0 && !options_.exit_on_zero_active_connections;
  for (auto& w : workers_) {
    if (outbound_told_) {
      w->drainListeners(false, true);
    } else {
      w->drainListenersWhere([](const config::Listener& l) { return !isOutbound(l); }, true);
    }
  }
  const auto now = std::chrono::steady_clock::now();
  drain_deadline_ = now + std::chrono::seconds(options_.drain_time_s);
  drain_min_until_ = now + std::chrono::seconds(options_.min_drain_time_s);
  drain_timer_ = dispatcher_->createTimer([this] { onDrainTick(); });
  drain_timer_->enable(50);
}

void Server::onDrainTick() {
  const auto now = std::chrono::steady_clock::now();
  const bool min_passed = now >= drain_min_until_;
  if (min_passed && !outbound_told_ && !options_.exit_on_zero_active_connections) {
    outbound_told_ = true;
    for (auto& w : workers_) w->drainListenersWhere([](const config::Listener& l) { return isOutbound(l); }, true);
  }
  size_t active = 0;
  for (auto& w : workers_) active += w->activeSessions();
  // The listeners still accept during the drain, so "nothing open right now" may be the gap between a
  // client's old connection and its next one. Exit early only after a quiet second with none open.
  if (active != 0) quiet_since_.reset();
  else if (!quiet_since_) quiet_since_ = now;
  const bool quiet = quiet_since_ && now - *quiet_since_ >= std::chrono::seconds(1);
  if ((quiet && min_passed) || now >= drain_deadline_) {
    if (active) LOG_INFO("drain time over: closing %zu connections", active);
    finish();
    return;
  }
  drain_timer_->enable(50);
}

void Server::finish() {
  for (auto& w : workers_) w->shutdown();
  if (admin_) admin_->stop();
  if (status_) status_->stop();
  dispatcher_->exit();
}

}  // namespace strait::server
