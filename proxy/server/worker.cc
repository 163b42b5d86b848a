#include "proxy/server/worker.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <chrono>
#include <ctime>
#include <utility>

#include "certs/client_hello.h"
#include "proxy/accesslog/access_log.h"
#include "proxy/common/log.h"
#include "proxy/common/response_flags.h"
#include "proxy/config/retire.h"
#include "proxy/common/overload_state.h"
#include "proxy/network/connection.h"
#include "proxy/server/hot_restart.h"
#include "proxy/server/protocol_sniff.h"

namespace strait::server {

namespace {
uint64_t threadCpuNs() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000u + static_cast<uint64_t>(ts.tv_nsec);
}
}  // namespace

// Envoy's tls_inspector and http_inspector as one listener filter: peeks at the first bytes (leaving them
// in the connection's read buffer) until it can tell TLS, HTTP/2 (prior knowledge), HTTP/1 or something
// else, then hands the connection to the matching filter chain. A server-first protocol sends nothing:
// the listener_filters_timeout then decides (continue_on_listener_filters_timeout picks the default).
class ProtocolSniffer : public network::ConnectionCallbacks {
 public:
  ProtocolSniffer(Worker& worker, config::ListenerConstSharedPtr listener, network::ConnectionPtr conn, bool tls,
                  bool http)
      : worker_(worker), listener_(std::move(listener)), conn_(std::move(conn)), tls_(tls), http_(http) {}

  void start() {
    conn_->setCallbacks(this);
    if (listener_->listener_filters_timeout_ms > 0) {
      timer_ = worker_.dispatcher().createTimer([this] { onTimeout(); });
      timer_->enable(listener_->listener_filters_timeout_ms);
    }
    conn_->startReading();
  }
  void forceClose() {
    if (conn_) conn_->close(network::CloseType::NoFlush);
  }
  const config::ListenerConstSharedPtr& listener() const { return listener_; }

  void onData(network::Connection&, common::Buffer& data, bool end_stream) override {
    if (done_) return;
    char head[64];
    size_t n = std::min<size_t>(data.length(), sizeof(head));
    data.copyOut(0, n, head);
    std::string_view v(head, n);
    Verdict tls = tls_ ? inspectTls(data, end_stream) : Verdict::No;
    if (tls == Verdict::Yes) {
      stats::inc(listener_->stats.tls_found);
      return finish("tls", "");
    }
    if (done_) return;  // closed (a ClientHello too large)
    Verdict h2 = http_ ? sniff::inspectH2(v) : Verdict::No;
    Verdict h1 = http_ ? sniff::inspectH1(v) : Verdict::No;
    if (h2 == Verdict::Yes) {
      stats::inc(listener_->stats.http2_found);
      return finish("raw_buffer", "h2c");
    }
    if (h1 == Verdict::Yes) {
      const bool http10 = sniff::isHttp10(data);
      stats::inc(http10 ? listener_->stats.http10_found : listener_->stats.http11_found);
      return finish("raw_buffer", http10 ? "http/1.0" : "http/1.1");
    }
    bool undecided = h2 == Verdict::NeedMore || h1 == Verdict::NeedMore;
    if (tls == Verdict::NeedMore && !end_stream) return;  // a ClientHello may take several reads
    if (undecided && !end_stream && n < sizeof(head)) return;
    if (tls_) stats::inc(listener_->stats.tls_not_found);
    if (http_) stats::inc(listener_->stats.http_not_found);
    finish("raw_buffer", "");
  }

  void onEvent(network::Connection&, network::ConnectionEvent e) override {
    if (done_) return;
    if (e == network::ConnectionEvent::RemoteClose || e == network::ConnectionEvent::LocalClose) {
      done_ = true;
      timer_.reset();
      worker_.sniffDone(*this, nullptr, "", "");
    }
  }

  std::list<std::unique_ptr<ProtocolSniffer>>::iterator position;

 private:
  using Verdict = sniff::Verdict;

  // Envoy's tls_inspector: a whole ClientHello gives the server name and the offered ALPN list that
  // filter chains match on. The bytes stay in the connection's buffer for the TLS handshake.
  Verdict inspectTls(const common::Buffer& data, bool end_stream) {
    if (data.empty()) return Verdict::NeedMore;
    // A few records' overhead above the largest hello the parser accepts.
    constexpr size_t kPeekLimit = certs::kMaxClientHelloBytes + 1024;
    peek_.resize(std::min(data.length(), kPeekLimit));
    data.copyOut(0, peek_.size(), peek_.data());
    certs::ClientHelloInfo info;
    switch (certs::parseClientHello(peek_, &info)) {
      case certs::ClientHelloResult::Done:
        server_name_ = std::move(info.server_name);
        alpn_ = std::move(info.alpn);
        peek_.clear();
        peek_.shrink_to_fit();
        return Verdict::Yes;
      case certs::ClientHelloResult::NeedMore:
        if (data.length() >= kPeekLimit) {
          stats::inc(listener_->stats.tls_client_hello_too_large);
          done_ = true;
          timer_.reset();
          conn_->close(network::CloseType::NoFlush);
          return Verdict::No;
        }
        return end_stream ? Verdict::No : Verdict::NeedMore;
      case certs::ClientHelloResult::NotTls:
      case certs::ClientHelloResult::Malformed:
        break;
    }
    return Verdict::No;
  }
  void onTimeout() {
    if (done_) return;
    stats::inc(listener_->stats.downstream_pre_cx_timeout);
    if (!listener_->continue_on_listener_filters_timeout) {
      conn_->close(network::CloseType::NoFlush);
      return;
    }
    finish("raw_buffer", "");
  }

  void finish(std::string_view transport, std::string_view application) {
    done_ = true;
    timer_.reset();
    conn_->stopReading();
    conn_->setCallbacks(nullptr);
    worker_.sniffDone(*this, std::move(conn_), transport, application);
  }

 public:
  std::string server_name_;
  std::vector<std::string> alpn_;

 private:
  std::string peek_;
  Worker& worker_;
  config::ListenerConstSharedPtr listener_;
  network::ConnectionPtr conn_;
  event::TimerPtr timer_;
  bool tls_;
  bool http_;
  bool done_ = false;
};

// Holds an accepted connection while its TLS handshake runs (bounded by the filter chain's
// transport_socket_connect_timeout), so no network filter sees a connection whose peer is unknown and
// nothing is forwarded for a handshake that fails.
class HandshakeWaiter : public network::ConnectionCallbacks {
 public:
  HandshakeWaiter(Worker& worker, config::ListenerConstSharedPtr listener, const config::FilterChain& chain,
                  network::ConnectionPtr conn)
      : worker_(worker), listener_(std::move(listener)), chain_(chain), conn_(std::move(conn)) {}

  void start() {
    conn_->setCallbacks(this);
    if (chain_.transport_socket_connect_timeout_ms > 0) {
      timer_ = worker_.dispatcher().createTimer([this] {
        if (done_) return;
        stats::inc(listener_->stats.downstream_cx_transport_socket_connect_timeout);
        LOG_DEBUG("[C%lu] TLS handshake timed out", conn_->id());
        conn_->close(network::CloseType::NoFlush);
      });
      timer_->enable(common::scaledTimeoutMs(common::OverloadState::kTransportSocketConnect,
                                             chain_.transport_socket_connect_timeout_ms));
    }
    conn_->startReading();  // a peeked ClientHello is processed here
  }
  void forceClose() {
    if (conn_) conn_->close(network::CloseType::NoFlush);
  }
  const config::ListenerConstSharedPtr& listener() const { return listener_; }
  const config::FilterChain& chain() const { return chain_; }

  void onData(network::Connection&, common::Buffer&, bool) override {}
  void onEvent(network::Connection&, network::ConnectionEvent e) override {
    if (done_) return;
    if (e == network::ConnectionEvent::Connected) {
      done_ = true;
      timer_.reset();
      conn_->stopReading();
      conn_->setCallbacks(nullptr);
      worker_.handshakeDone(*this, std::move(conn_));
      return;
    }
    if (e == network::ConnectionEvent::RemoteClose || e == network::ConnectionEvent::LocalClose) {
      done_ = true;
      timer_.reset();
      worker_.handshakeDone(*this, nullptr);
    }
  }

  std::list<std::unique_ptr<HandshakeWaiter>>::iterator position;

 private:
  Worker& worker_;
  config::ListenerConstSharedPtr listener_;
  const config::FilterChain& chain_;  // lives in listener_
  network::ConnectionPtr conn_;
  event::TimerPtr timer_;
  bool done_ = false;
};

Worker::Worker(uint32_t index, stats::Shard& shard, config::SnapshotConstSharedPtr snapshot)
    : index_(index),
      shard_(shard),
      snapshot_(std::move(snapshot)),
      dispatcher_(std::make_unique<event::Dispatcher>("worker_" + std::to_string(index))),
      pools_(std::make_unique<upstream::HttpPoolManager>(*dispatcher_)),
      rng_(std::random_device{}() + index) {
  indexSnapshot();
}

void Worker::indexSnapshot() {
  // Clusters are looked up in the snapshot itself (Snapshot::clusterByIndex, indexed by the builder on
  // the main thread): taking 10,000 clusters costs the worker no copy and no atomic reference count per
  // cluster. Only this worker's own state per cluster is visited: balancers of clusters the snapshot no
  // longer has go now (their hosts with them); a changed version's balancer is rebuilt on its next use.
  // lb_indices_ lists the slots holding a balancer, so this walk is as long as the clusters this worker
  // actually sent traffic to, not the mesh.
  size_t kept = 0;
  for (uint32_t i : lb_indices_) {
    if (!lbs_[i].lb) continue;  // already cleared (local cluster change below)
    if (!snapshot_->clusterByIndex(i)) {
      lbs_[i] = ClusterLb{};
      continue;
    }
    lb_indices_[kept++] = i;
  }
  lb_indices_.resize(kept);
  // Zone-aware routing's local cluster view; balancers built on an older view go first.
  const bool zone_aware = !snapshot_->local_cluster_name.empty() && !snapshot_->node_locality.zone.empty();
  if (!zone_aware || !local_cluster_ || !(local_cluster_->locality() == snapshot_->node_locality)) {
    if (local_cluster_) {
      lbs_.clear();
      lb_indices_.clear();
    }
    local_cluster_ = zone_aware ? std::make_unique<upstream::LocalCluster>(snapshot_->node_locality) : nullptr;
  }
  auto local = snapshot_->clusters_by_name.find(snapshot_->local_cluster_name);
  local_cluster_index_ = local != snapshot_->clusters_by_name.end() ? local->second->index : UINT32_MAX;
  // Pools of clusters and hosts this config no longer has drain and go.
  if (pools_) pools_->onConfig(*snapshot_);
  routes_by_id_.clear();
  for (const auto& [id, t] : snapshot_->route_tables_by_id) {
    if (id >= routes_by_id_.size()) routes_by_id_.resize(id + 1);
    routes_by_id_[id] = t;
  }
}

Worker::~Worker() { join(); }

void Worker::setLoopStats(stats::Gauge max_us, stats::Counter over_1ms) {
  loop_max_us_ = max_us;
  loop_over_1ms_ = over_1ms;
  dispatcher_->setLoopObserver([this](uint64_t busy_us) {
    if (busy_us > loop_max_seen_) {
      stats::add(loop_max_us_, static_cast<int64_t>(busy_us - loop_max_seen_));  // only this worker writes it
      loop_max_seen_ = busy_us;
    }
    if (busy_us > 1000) stats::inc(loop_over_1ms_);
  });
}

void Worker::setConfigApplyStats(stats::Gauge max_wall_us, stats::Gauge max_cpu_us) {
  apply_max_wall_us_ = max_wall_us;
  apply_max_cpu_us_ = max_cpu_us;
}

void Worker::start(std::vector<WorkerSocket> sockets) {
  // The loop was made on this thread but is only ever run and touched by the worker thread from here on.
  thread_ = std::thread([this, sockets = std::move(sockets)]() mutable {
    stats::setThreadShard(&shard_);
    for (auto& s : sockets) openListener(s);
    addUnboundListeners(*snapshot_);
    indexListeners();
    LOG_DEBUG("worker %u started with %zu listeners", index_, listeners_.size());
    listening_.set_value();
    dispatcher_->run();
    by_address_.clear();
    listeners_.clear();
    // Whatever is still open after the drain is closed now.
    std::vector<config::ActiveSession*> left(sessions_.begin(), sessions_.end());
    for (auto* s : left) s->forceClose();
    std::vector<ProtocolSniffer*> sniffing;
    for (auto& s : sniffers_) sniffing.push_back(s.get());
    for (auto* s : sniffing) s->forceClose();
    std::vector<HandshakeWaiter*> shaking;
    for (auto& h : handshakes_) shaking.push_back(h.get());
    for (auto* h : shaking) h->forceClose();
    drain_timer_.reset();
    drain_tick_.reset();
    listener_drain_timer_.reset();
    pools_.reset();
    dispatcher_.reset();
    LOG_DEBUG("worker %u stopped", index_);
  });
}

void Worker::openListener(const WorkerSocket& s) {
  if (s.extra) {
    auto it = listeners_.find(s.listener->name);
    if (it == listeners_.end() || !it->second->tcp) {
      ::close(s.fd);
      return;
    }
    ActiveListener* raw = it->second.get();
    auto tcp = std::make_unique<network::TcpListener>(*dispatcher_, s.fd, 1024, [this, raw](network::ConnectionPtr c) {
      onAccept(raw->config, std::move(c));
    }, !hold_accept_);
    if (tcp->ok()) raw->extra.push_back(std::move(tcp));
    return;
  }
  auto active = std::make_unique<ActiveListener>();
  ActiveListener* raw = active.get();
  raw->config = s.listener;
  raw->tcp = std::make_unique<network::TcpListener>(*dispatcher_, s.fd, 1024, [this, raw](network::ConnectionPtr c) {
    // The listener's current config: an xDS update may have replaced it since the socket opened.
    onAccept(raw->config, std::move(c));
  }, !hold_accept_);
  if (!raw->tcp->ok()) {
    LOG_ERROR("worker %u: listener %s: %s", index_, s.listener->name.c_str(), raw->tcp->error().c_str());
    return;
  }
  listeners_[s.listener->name] = std::move(active);
}

void Worker::acceptQueued(ActiveListener& l) {
  size_t n = 0;
  if (l.tcp) n += l.tcp->acceptPending();
  for (auto& e : l.extra) n += e->acceptPending();
  if (n > 0) LOG_DEBUG("worker %u: listener '%s': %zu queued connections taken before its socket closed", index_,
                       l.config->name.c_str(), n);
}

void Worker::addUnboundListeners(const config::Snapshot& snapshot) {
  for (const auto& l : snapshot.listeners) {
    if (l->bind_to_port || listeners_.count(l->name)) continue;
    auto active = std::make_unique<ActiveListener>();
    active->config = l;
    listeners_[l->name] = std::move(active);
  }
}

void Worker::indexListeners() {
  by_address_.clear();
  for (auto& [name, active] : listeners_) {
    // A port-0 listener's real port is only known to its socket; it cannot be an original destination.
    if (active->config->address.port() != 0) by_address_.add(active->config->address, active.get());
  }
}

void Worker::startAccepting() {
  dispatcher_->post([this] {
    hold_accept_ = false;
    for (auto& [name, active] : listeners_) {
      std::vector<network::TcpListener*> all;
      if (active->tcp) all.push_back(active->tcp.get());
      for (auto& e : active->extra) all.push_back(e.get());
      for (auto* t : all) {
        if (!t->listen()) LOG_ERROR("worker %u: listener %s: %s", index_, name.c_str(), t->error().c_str());
      }
    }
  });
}

void Worker::stopListening() {
  dispatcher_->post([this] {
    by_address_.clear();
    listeners_.clear();
    std::vector<config::ActiveSession*> all(sessions_.begin(), sessions_.end());
    drainSessions(all);
  });
}

std::vector<int> Worker::duplicateListenFds(const std::string& name) {
  return collectFdsOn(*dispatcher_, [this, name] {
    std::vector<int> fds;
    auto it = listeners_.find(name);
    if (it == listeners_.end() || !it->second->tcp || draining_listeners_.count(name)) return fds;
    auto dup = [&fds](const network::TcpListener& t) {
      int fd = t.fd() < 0 ? -1 : ::fcntl(t.fd(), F_DUPFD_CLOEXEC, 0);
      if (fd >= 0) fds.push_back(fd);
    };
    dup(*it->second->tcp);
    for (const auto& e : it->second->extra) dup(*e);
    return fds;
  }, std::chrono::seconds(2));
}

void Worker::setDrainPolicy(uint64_t drain_ms, bool gradual) {
  drain_ms_ = drain_ms;
  gradual_ = gradual;
}

// Tells sessions that a drain began: all at once (immediate), or spread over the first 80% of the drain
// time (gradual, Envoy's default) so clients do not all reconnect in the same instant.
void Worker::drainSessions(const std::vector<config::ActiveSession*>& sessions) {
  const uint64_t now = dispatcher_->nowMs();
  const uint64_t window = gradual_ ? drain_ms_ * 8 / 10 : 0;
  bool pending = false;
  for (auto* s : sessions) {
    if (s->drain_started) continue;
    if (window == 0) {
      s->drain_started = true;
      s->startDrain();
      continue;
    }
    drain_at_[s] = now + rng_() % window;
    pending = true;
  }
  if (pending) {
    if (!drain_tick_) drain_tick_ = dispatcher_->createTimer([this] { onDrainTick(); });
    if (!drain_tick_->enabled()) drain_tick_->enable(20);
  }
}

void Worker::onDrainTick() {
  const uint64_t now = dispatcher_->nowMs();
  std::vector<config::ActiveSession*> due;
  for (auto it = drain_at_.begin(); it != drain_at_.end();) {
    if (it->second <= now) {
      due.push_back(it->first);
      it = drain_at_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto* s : due) {
    if (s->drain_started) continue;
    s->drain_started = true;
    s->startDrain();
  }
  if (!drain_at_.empty()) drain_tick_->enable(20);
}

void Worker::drainListeners(bool inbound_only, bool graceful) {
  drainListenersWhere([inbound_only](const config::Listener& l) { return !inbound_only || l.inbound; }, graceful);
}

void Worker::drainListenersWhere(std::function<bool(const config::Listener&)> which, bool graceful) {
  dispatcher_->post([this, which = std::move(which), graceful] {
    std::set<std::string> names;
    for (auto& [name, active] : listeners_) {
      if (which(*active->config)) names.insert(name);
    }
    // Stopping now: what the kernel queued is taken first (and drained below with the rest).
    if (!graceful) {
      for (const auto& n : names) acceptQueued(*listeners_.at(n));
    }
    std::vector<config::ActiveSession*> affected;
    for (auto* s : sessions_) {
      if (names.count(s->listener()->name)) affected.push_back(s);
    }
    LOG_INFO("worker %u: draining %zu listeners (%s), %zu connections", index_, names.size(),
             graceful ? "graceful" : "now", affected.size());
    drainSessions(affected);
    if (!graceful) {
      for (const auto& n : names) listeners_.erase(n);
      indexListeners();
      return;
    }
    // Graceful: the listeners keep accepting (new connections are told at once) until the drain time
    // ends, then stop.
    for (const auto& n : names) draining_listeners_.insert(n);
    listener_drain_timer_ = dispatcher_->createTimer([this] {
      for (const auto& n : draining_listeners_) {
        // Taken, not reset: told at once (addSession) like the rest accepted while draining.
        if (auto it = listeners_.find(n); it != listeners_.end()) acceptQueued(*it->second);
        listeners_.erase(n);
      }
      draining_listeners_.clear();
      indexListeners();
    });
    listener_drain_timer_->enable(drain_ms_);
  });
}

void Worker::applySnapshot(config::SnapshotConstSharedPtr snapshot, std::vector<WorkerSocket> sockets,
                           uint64_t drain_ms, std::function<void()> done) {
  dispatcher_->post([this, snapshot = std::move(snapshot), sockets = std::move(sockets), drain_ms,
                     done = std::move(done)]() mutable {
    // What taking a config costs this worker's loop: wall time and this thread's CPU time (a loop
    // iteration's figure, server.worker_<i>.loop_max_iteration_usec, counts time the thread was
    // runnable but preempted too).
    const auto wall0 = std::chrono::steady_clock::now();
    const uint64_t cpu0 = threadCpuNs();
    std::map<std::string, config::ListenerConstSharedPtr> wanted;
    for (const auto& l : snapshot->listeners) wanted[l->name] = l;
    bool drain = false;
    // Removed listeners stop accepting; their connections drain.
    for (auto it = listeners_.begin(); it != listeners_.end();) {
      if (!wanted.count(it->first)) {
        LOG_INFO("worker %u: listener '%s' removed", index_, it->first.c_str());
        acceptQueued(*it->second);
        stale_listeners_.insert(it->first);
        drain = true;
        it = listeners_.erase(it);
      } else {
        ++it;
      }
    }
    // Listeners that need a new socket (new, or moved to another address, or bound now). The
    // connections of the version they replace drain like those of a changed listener.
    for (auto& s : sockets) {
      if (s.extra) {
        openListener(s);
        continue;
      }
      if (auto it = listeners_.find(s.listener->name); it != listeners_.end()) {
        acceptQueued(*it->second);
        stale_listeners_.insert(s.listener->name);
        drain = true;
      }
      listeners_.erase(s.listener->name);
      openListener(s);
    }
    // Listeners that do not bind: a socket they had closes; their connections drain like others.
    for (const auto& [name, l] : wanted) {
      if (l->bind_to_port) continue;
      auto it = listeners_.find(name);
      if (it != listeners_.end() && it->second->tcp) {
        acceptQueued(*it->second);
        stale_listeners_.insert(name);
        drain = true;
        listeners_.erase(it);
      }
    }
    addUnboundListeners(*snapshot);
    // The rest keep their socket and take the new config for new connections. A changed listener's
    // connections drain, except those of filter chains the new version still has (Envoy's per filter
    // chain update); an unchanged listener's keep going.
    for (auto& [name, active] : listeners_) {
      auto it = wanted.find(name);
      if (it == wanted.end()) continue;
      if (active->config->proto_hash != it->second->proto_hash) {
        stale_listeners_.insert(name);
        drain = true;
      }
      active->config = it->second;
    }
    config::retire({std::exchange(snapshot_, std::move(snapshot))});  // released on the main thread
    indexSnapshot();
    indexListeners();
    if (drain) {
      std::vector<config::ActiveSession*> told;
      for (auto* s : sessions_) {
        if (stale_listeners_.count(s->listener()->name) && !keptByCurrentConfig(*s)) told.push_back(s);
      }
      drainSessions(told);
      // After the drain time, connections still on a config that is gone are closed.
      drain_timer_ = dispatcher_->createTimer([this] { closeStaleSessions(); });
      drain_timer_->enable(drain_ms);
    }
    const uint64_t wall_us = static_cast<uint64_t>(
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - wall0).count());
    const uint64_t cpu_us = (threadCpuNs() - cpu0) / 1000;
    // Only this worker writes its gauges: raise each to the new maximum by the difference.
    if (wall_us > apply_max_wall_seen_) {
      stats::add(apply_max_wall_us_, static_cast<int64_t>(wall_us - apply_max_wall_seen_));
      apply_max_wall_seen_ = wall_us;
    }
    if (cpu_us > apply_max_cpu_seen_) {
      stats::add(apply_max_cpu_us_, static_cast<int64_t>(cpu_us - apply_max_cpu_seen_));
      apply_max_cpu_seen_ = cpu_us;
    }
    LOG_DEBUG("worker %u: config of %zu clusters taken in %" PRIu64 " us (%" PRIu64 " us of CPU)", index_,
              snapshot_->clusters.size(), wall_us, cpu_us);
    done();
    // Streams waiting for a cluster on demand look again now the config may have it.
    if (!cluster_waiters_.empty()) notifyClusterWaiters();
  });
}

const config::ClusterConstSharedPtr& Worker::clusterByName(std::string_view name) {
  static const config::ClusterConstSharedPtr kNone;
  const config::ClusterConstSharedPtr* c = snapshot_->clusters_by_name.get(name);
  return c != nullptr ? *c : kNone;
}

bool Worker::requestCluster(uint32_t index, const std::string& name) {
  if (!cluster_requester_) return false;
  if (requested_clusters_.insert(index).second) cluster_requester_(name);
  return true;
}

void Worker::cancelClusterWait(config::ClusterWaiter& waiter) {
  auto it = std::find(cluster_waiters_.begin(), cluster_waiters_.end(), &waiter);
  if (it == cluster_waiters_.end()) return;
  *it = cluster_waiters_.back();
  cluster_waiters_.pop_back();
}

void Worker::notifyClusterWaiters() {
  // A waiter that goes on may end streams (its own, or its connection's others), which unregister
  // themselves: call only those still registered. One registered meanwhile at a freed one's address
  // gets a call it did not need, which the contract allows.
  const std::vector<config::ClusterWaiter*> waiting = cluster_waiters_;
  for (auto* w : waiting) {
    if (std::find(cluster_waiters_.begin(), cluster_waiters_.end(), w) != cluster_waiters_.end()) {
      w->onClusterDiscoveryUpdate();
    }
  }
}

void Worker::markClusterMissing(uint32_t index) {
  dispatcher_->post([this, index] {
    missing_clusters_.insert(index);
    if (!cluster_waiters_.empty()) notifyClusterWaiters();
  });
}

bool Worker::keptByCurrentConfig(const config::ActiveSession& s) const {
  const auto& l = s.listener();
  auto it = listeners_.find(l->name);
  if (it == listeners_.end()) return false;
  if (it->second->config->proto_hash == l->proto_hash) return true;
  for (const auto& fc : it->second->config->filter_chains) {
    if (fc.hash == s.chain_hash) return true;
  }
  return it->second->config->default_filter_chain && it->second->config->default_filter_chain->hash == s.chain_hash;
}

void Worker::closeStaleSessions() {
  std::vector<config::ActiveSession*> stale;
  for (auto* s : sessions_) {
    if (stale_listeners_.count(s->listener()->name) && !keptByCurrentConfig(*s)) stale.push_back(s);
  }
  if (!stale.empty()) LOG_INFO("worker %u: drain over, closing %zu connections of old listeners", index_, stale.size());
  for (auto* s : stale) s->forceClose();
  stale_listeners_.clear();
}

void Worker::shutdown() {
  dispatcher_->post([this] { dispatcher_->exit(); });
}

void Worker::join() {
  if (thread_.joinable()) thread_.join();
}

void Worker::sniffDone(ProtocolSniffer& s, network::ConnectionPtr conn, std::string_view transport,
                       std::string_view application) {
  struct Holder : event::DeferredDeletable {
    std::unique_ptr<ProtocolSniffer> s;
    network::ConnectionPtr conn;
  };
  auto h = std::make_unique<Holder>();
  h->s = std::move(*s.position);
  sniffers_.erase(s.position);
  auto listener = h->s->listener();
  if (conn) {
    dispatchToChain(listener, std::move(conn), transport, application, h->s->server_name_, &h->s->alpn_);
  } else {
    stats::inc(listener->stats.downstream_cx_destroy);
  }
  dispatcher_->deferredDelete(std::move(h));
}

void Worker::onAccept(const config::ListenerConstSharedPtr& accepting, network::ConnectionPtr conn) {
  const config::ListenerConstSharedPtr* receiver = &accepting;
  if (accepting->restore_original_dst && conn->restoreOriginalDestination() && accepting->use_original_dst) {
    // Envoy's use_original_dst hand-off: the listener on the original destination (exact address, else
    // the wildcard one on its port) takes the connection as if it had accepted it, with the original
    // destination as its local address: its own stats, limits, listener filters and chains. It is not
    // handed on again. Without one, this listener keeps it (Istio: PassthroughCluster / BlackHole).
    if (ActiveListener* const* to = by_address_.find(conn->localAddress()); to != nullptr && (*to)->config != accepting) {
      LOG_TRACE("[C%lu] %s hands %s to listener %s", conn->id(), accepting->name.c_str(),
                conn->localAddress().asString().c_str(), (*to)->config->name.c_str());
      receiver = &(*to)->config;
    }
  }
  const config::ListenerConstSharedPtr& listener = *receiver;
  stats::inc(listener->stats.downstream_cx_total);
  if (common::overloadState().stop_connections.load(std::memory_order_relaxed)) {
    // The overload manager's stop_accepting_connections.
    stats::inc(listener->stats.downstream_cx_overload_reject);
    stats::inc(listener->stats.downstream_cx_destroy);
    conn->close(network::CloseType::NoFlush);
    dispatcher_->deferredDelete(std::move(conn));
    return;
  }
  if (listener->max_connections != 0) {
    // The listener's connection limit holds across workers: one shared count, taken here and given
    // back when the connection object goes (Connection::countIn), at whatever stage it ends.
    if (listener->open_connections->fetch_add(1, std::memory_order_relaxed) >=
        static_cast<int64_t>(listener->max_connections)) {
      listener->open_connections->fetch_sub(1, std::memory_order_relaxed);
      stats::inc(listener->stats.downstream_cx_overflow);
      stats::inc(listener->stats.downstream_cx_destroy);
      conn->close(network::CloseType::NoFlush);
      dispatcher_->deferredDelete(std::move(conn));
      return;
    }
    conn->countIn(listener->open_connections);
  }
  if (listener->global_connections) {
    // Every listener's connections together, counted always (the overload manager's
    // global_downstream_max_connections monitor reads the count); the monitor's ceiling, else the runtime
    // key overload.global_downstream_max_connections, refuses the one over it.
    int64_t limit = common::overloadState().max_downstream_connections.load(std::memory_order_relaxed);
    if (limit == 0) limit = static_cast<int64_t>(listener->global_max_connections);
    if (listener->global_connections->fetch_add(1, std::memory_order_relaxed) >= limit && limit != 0) {
      listener->global_connections->fetch_sub(1, std::memory_order_relaxed);
      stats::inc(listener->stats.downstream_global_cx_overflow);
      stats::inc(listener->stats.downstream_cx_destroy);
      conn->close(network::CloseType::NoFlush);  // its listener slot goes back with the object
      dispatcher_->deferredDelete(std::move(conn));
      return;
    }
    conn->countIn(listener->global_connections);
  }
  const uint32_t port = conn->localAddress().port();
  const bool tls = listener->tls_inspector.activeFor(port);
  const bool http = listener->http_inspector.activeFor(port);
  if (tls || http) {
    auto s = std::make_unique<ProtocolSniffer>(*this, listener, std::move(conn), tls, http);
    ProtocolSniffer* raw = s.get();
    sniffers_.push_back(std::move(s));
    raw->position = std::prev(sniffers_.end());
    raw->start();
    return;
  }
  dispatchToChain(listener, std::move(conn), "", "", "", nullptr);
}

void Worker::dispatchToChain(const config::ListenerConstSharedPtr& listener, network::ConnectionPtr conn,
                             std::string_view transport, std::string_view application, std::string_view server_name,
                             const std::vector<std::string>* alpn) {
  const config::FilterChain* chain =
      listener->match(conn->localAddress(), conn->remoteAddress(), transport, application, server_name, alpn);
  if (chain == nullptr || !chain->terminal) {
    stats::inc(listener->stats.no_filter_chain_match);
    stats::inc(listener->stats.downstream_cx_destroy);
    LOG_DEBUG("[C%lu] listener %s: no filter chain for %s", conn->id(), listener->name.c_str(),
              conn->localAddress().asString().c_str());
    if (!listener->access_logs.empty()) {
      accesslog::LogContext c;  // the listener's access_log: a line per connection no chain takes
      c.start_time = std::chrono::system_clock::now();
      c.start = c.end = std::chrono::steady_clock::now();
      c.response_flags = common::kNoRouteFound;
      c.downstream = conn.get();
      accesslog::logAll(listener->access_logs, c, *dispatcher_);
    }
    conn->close(network::CloseType::NoFlush);
    dispatcher_->deferredDelete(std::move(conn));
    return;
  }
  if (chain->transport_socket) {
    network::TransportSocketOptions options;
    options.stats = &listener->stats.ssl;
    auto ts = chain->transport_socket->create(options);
    if (!ts) {
      // No certificate yet (SDS warming): refuse rather than answer without TLS.
      stats::inc(listener->stats.downstream_cx_no_certificate);
      stats::inc(listener->stats.downstream_cx_destroy);
      LOG_DEBUG("[C%lu] listener %s: TLS chain has no certificate yet", conn->id(), listener->name.c_str());
      conn->close(network::CloseType::NoFlush);
      dispatcher_->deferredDelete(std::move(conn));
      return;
    }
    conn->setTransportSocket(std::move(ts));
    auto w = std::make_unique<HandshakeWaiter>(*this, listener, *chain, std::move(conn));
    HandshakeWaiter* raw = w.get();
    handshakes_.push_back(std::move(w));
    raw->position = std::prev(handshakes_.end());
    raw->start();
    return;
  }
  startChain(listener, *chain, std::move(conn));
}

// The connection's transport is up: read filters decide, then the terminal filter takes it.
void Worker::startChain(const config::ListenerConstSharedPtr& listener, const config::FilterChain& chain,
                        network::ConnectionPtr conn) {
  for (const auto& f : chain.read_filters) {
    if (!f->admit(*conn)) {
      LOG_DEBUG("[C%lu] listener %s: closed by a network filter", conn->id(), listener->name.c_str());
      stats::inc(listener->stats.downstream_cx_destroy);
      conn->close(network::CloseType::NoFlush);
      dispatcher_->deferredDelete(std::move(conn));
      return;
    }
  }
  stats::inc(listener->stats.downstream_cx_active);
  LOG_TRACE("[C%lu] accepted on %s from %s", conn->id(), listener->name.c_str(), conn->remoteAddress().asString().c_str());
  chain.terminal->onAccept(*this, std::move(conn), listener, chain.hash);
}

void Worker::handshakeDone(HandshakeWaiter& w, network::ConnectionPtr conn) {
  struct Holder : event::DeferredDeletable {
    std::unique_ptr<HandshakeWaiter> w;
  };
  auto h = std::make_unique<Holder>();
  h->w = std::move(*w.position);
  handshakes_.erase(w.position);
  if (conn) {
    startChain(h->w->listener(), h->w->chain(), std::move(conn));
  } else {
    stats::inc(h->w->listener()->stats.downstream_cx_destroy);
  }
  dispatcher_->deferredDelete(std::move(h));
}

std::optional<config::HostChoice> Worker::chooseHost(const config::Cluster& cluster, const network::Connection& downstream,
                                                    const upstream::LbContext* context) {
  if (cluster.type == config::Cluster::Type::OriginalDst) {
    // Without a recovered original destination the "destination" is this listener: connecting there
    // would loop through the proxy forever, so there is no host.
    if (!downstream.localAddressRestored()) return std::nullopt;
    return config::HostChoice{downstream.localAddress(), nullptr};
  }
  // The newest version of the cluster (EDS moves hosts under connections that pinned an older one).
  const config::ClusterConstSharedPtr& newest = snapshot_->clusterByIndex(cluster.index);
  const config::Cluster& current = newest ? *newest : cluster;
  // A DNS cluster's resolver publishes new host sets between versions (runtime->dns_hosts): a moved
  // generation rebuilds the balancer as a new version does.
  const uint64_t dns_generation = current.isDns() && current.runtime ? current.runtime->dns_hosts.generation() : 0;
  if (current.hosts.empty() && dns_generation == 0) return std::nullopt;
  if (local_cluster_) {
    // The local cluster's current version and health (two loads unless they changed).
    const config::Cluster* lc = snapshot_->clusterByIndex(local_cluster_index_).get();
    local_cluster_->refresh(lc ? lc->version_id : 0, lc ? &lc->hosts : nullptr,
                            lc && lc->runtime ? &lc->runtime->healthGeneration() : nullptr,
                            lc ? lc->lb.panic_threshold_percent : 0);
  }
  if (current.index >= lbs_.size()) lbs_.resize(current.index + 1);
  ClusterLb& slot = lbs_[current.index];
  if (slot.version_id != current.version_id || slot.dns_generation != dns_generation || !slot.lb) {
    upstream::ResolvedHosts::SetConstSharedPtr resolved;
    if (dns_generation != 0) resolved = current.runtime->dns_hosts.current().first;
    const std::vector<upstream::HostSharedPtr>& hosts = resolved ? *resolved : current.hosts;
    if (hosts.empty()) return std::nullopt;
    // DNS moved hosts within a version: pools of addresses that went drain (requests on them finish).
    if (slot.lb && slot.version_id == current.version_id) dispatcher_->post([this] { pools_->onConfig(*snapshot_); });
    slot.dns_generation = dns_generation;
    if (!slot.lb) lb_indices_.push_back(current.index);  // listed once: only while it had no balancer
    // Once per cluster version per worker: the balancer copies the host list and keeps its own state.
    slot.lb = upstream::createLoadBalancer(current.lb, hosts,
                                           current.runtime ? &current.runtime->healthGeneration() : nullptr, rng_(),
                                           index_, local_cluster_.get(), &current.stats.lb_zone);
    slot.version_id = current.version_id;
  }
  static const upstream::LbContext kNoContext;
  const upstream::Host* h = slot.lb->chooseHost(context != nullptr ? *context : kNoContext);
  if (h == nullptr) return std::nullopt;
  return config::HostChoice{h->address, h};
}

void Worker::addSession(std::unique_ptr<config::ActiveSession> session) {
  config::ActiveSession* raw = session.release();
  sessions_.push_front(raw);
  raw->list_position = sessions_.begin();
  active_sessions_.fetch_add(1, std::memory_order_relaxed);
  // Accepted on a listener that is draining gracefully: told at once, served meanwhile.
  if (!draining_listeners_.empty() && draining_listeners_.count(raw->listener()->name)) {
    raw->drain_started = true;
    dispatcher_->post([this, raw] {
      for (auto* s : sessions_) {
        if (s == raw) {
          s->startDrain();
          break;
        }
      }
    });
  }
}

void Worker::removeSession(config::ActiveSession& session) {
  drain_at_.erase(&session);
  sessions_.erase(session.list_position);
  active_sessions_.fetch_sub(1, std::memory_order_relaxed);
  stats::dec(session.listener()->stats.downstream_cx_active);
  stats::inc(session.listener()->stats.downstream_cx_destroy);
  dispatcher_->deferredDelete(config::ActiveSessionPtr(&session));
}

}  // namespace strait::server
