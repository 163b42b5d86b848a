#pragma once

#include <atomic>
#include <future>
#include <functional>
#include <list>
#include <map>
#include <set>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "proxy/config/snapshot.h"
#include "proxy/event/dispatcher.h"
#include "proxy/network/listener.h"
#include "proxy/stats/stats.h"
#include "proxy/upstream/http_pool.h"

namespace strait::server {

class ProtocolSniffer;
class HandshakeWaiter;

// One bound socket per (worker, listener): the worker listens on it with SO_REUSEPORT.
struct WorkerSocket {
  config::ListenerConstSharedPtr listener;
  int fd;
  // Hot restart from a parent with more workers: one more of the parent's sockets for a listener this
  // worker opens just before, accepted on beside it (closing it would reset what its queue holds).
  bool extra = false;
};

// A worker thread: one event loop, its own listening sockets, connections and stat shard.
class Worker : public config::WorkerContext {
 public:
  Worker(uint32_t index, stats::Shard& shard, config::SnapshotConstSharedPtr snapshot);
  ~Worker() override;

  // Starts the thread; it listens on `sockets` (taking ownership of the fds).
  void start(std::vector<WorkerSocket> sockets);
  // server.worker_<i>.loop_max_iteration_usec (the longest loop iteration's working time so far) and
  // server.worker_<i>.loop_iterations_over_1ms: what config updates and everything else cost the
  // requests on this worker (wall time: a thread preempted by another counts too). Before start().
  void setLoopStats(stats::Gauge max_us, stats::Counter over_1ms);
  // server.worker_<i>.config_apply_max_usec / config_apply_max_cpu_usec: the longest time taking a new
  // config held this worker's loop, in wall time and in this thread's CPU time (what the xDS thread's
  // work costs the worker itself, apart from preemption by other threads on a busy machine). Before start().
  void setConfigApplyStats(stats::Gauge max_wall_us, stats::Gauge max_cpu_us);
  // Before start(): open listening sockets (those xDS brings later too) without accepting on them until
  // startAccepting(). A hot restart child does this until it is ready, as Envoy's child starts no worker
  // before its initialisation is done: its config may still lack what its routes need (a cluster's
  // endpoints), and the parent accepts meanwhile on the very sockets the child took from it.
  void holdAccepting() { hold_accept_ = true; }
  // Thread-safe: accept on every listening socket from now on (see holdAccepting).
  void startAccepting();
  // Thread-safe: stop accepting (drain begins); every connection is told (GOAWAY / Connection: close).
  void stopListening();
  // Thread-safe: /drain_listeners. Tells the connections of every listener (or only the INBOUND ones);
  // graceful: the listeners accept (and tell) new connections until the drain time ends, then stop;
  // otherwise they stop now.
  void drainListeners(bool inbound_only, bool graceful);
  // The same for the listeners `which` selects (called on the worker's thread; SIGTERM in a pod drains
  // all but the OUTBOUND ones first).
  void drainListenersWhere(std::function<bool(const config::Listener&)> which, bool graceful);
  // Before start(): the drain time and whether clients are told all at once or spread over it.
  void setDrainPolicy(uint64_t drain_ms, bool gradual);
  // Thread-safe: close every remaining connection and end the thread; join() waits for it.
  void shutdown();
  void join();
  // Blocks until the worker's listeners accept connections (so /ready never says LIVE too early).
  void waitListening() { listening_.get_future().wait(); }
  size_t activeSessions() const { return active_sessions_.load(std::memory_order_relaxed); }
  // Thread-safe, blocking (up to 2 s): duplicates (close-on-exec) of this worker's listening sockets of
  // the listener `name`, for hot restart; none for a listener that is draining or not bound.
  std::vector<int> duplicateListenFds(const std::string& name);
  // Thread-safe: switch to `snapshot` (an xDS update). `sockets` are for listeners that are new or moved;
  // `done` runs on the worker once it has the snapshot.
  void applySnapshot(config::SnapshotConstSharedPtr snapshot, std::vector<WorkerSocket> sockets, uint64_t drain_ms,
                     std::function<void()> done);

  // WorkerContext
  event::Dispatcher& dispatcher() override { return *dispatcher_; }
  std::optional<config::HostChoice> chooseHost(const config::Cluster& cluster, const network::Connection& downstream,
                                               const upstream::LbContext* context) override;
  void addSession(std::unique_ptr<config::ActiveSession> session) override;
  void removeSession(config::ActiveSession& session) override;
  uint64_t random() override { return rng_(); }
  upstream::HttpPoolManager& httpPools() override { return *pools_; }
  std::shared_ptr<const void> routeTable(uint32_t id) override {
    return id < routes_by_id_.size() ? routes_by_id_[id] : nullptr;
  }
  const config::ClusterConstSharedPtr& cluster(uint32_t index) override {
    return snapshot_->clusterByIndex(index);
  }
  const config::ClusterConstSharedPtr& clusterByName(std::string_view name) override;
  bool requestCluster(uint32_t index, const std::string& name) override;
  void addClusterWaiter(config::ClusterWaiter& waiter) override { cluster_waiters_.push_back(&waiter); }
  void cancelClusterWait(config::ClusterWaiter& waiter) override;
  bool clusterKnownMissing(uint32_t index) const override {
    return !missing_clusters_.empty() && missing_clusters_.count(index) != 0 && !snapshot_->clusterByIndex(index);
  }

  // On-demand cluster discovery: how this worker asks the control plane for a cluster by name (set
  // before start(), only when the process can discover clusters on demand; called on the worker's
  // thread, so it must be thread-safe). Unset: requestCluster() says it cannot.
  using ClusterRequester = std::function<void(const std::string& name)>;
  void setClusterRequester(ClusterRequester requester) { cluster_requester_ = std::move(requester); }
  // Thread-safe: the control plane said the cluster with this clusterIds() index does not exist; the
  // streams waiting for it go on (to cluster_not_found), and later ones do not wait.
  void markClusterMissing(uint32_t index);

 private:
  friend class ProtocolSniffer;
  friend class HandshakeWaiter;
  // `listener`: the one whose socket accepted the connection. A use_original_dst listener hands it
  // on to the listener on its original destination (by_address_) before doing anything with it.
  void onAccept(const config::ListenerConstSharedPtr& listener, network::ConnectionPtr conn);
  // Hands a connection to the filter chain that fits what detection found.
  void dispatchToChain(const config::ListenerConstSharedPtr& listener, network::ConnectionPtr conn,
                       std::string_view transport, std::string_view application, std::string_view server_name,
                       const std::vector<std::string>* alpn);
  void startChain(const config::ListenerConstSharedPtr& listener, const config::FilterChain& chain,
                  network::ConnectionPtr conn);
  void handshakeDone(HandshakeWaiter& w, network::ConnectionPtr conn);
  void sniffDone(ProtocolSniffer& s, network::ConnectionPtr conn, std::string_view transport,
                 std::string_view application);

  uint32_t index_;
  stats::Shard& shard_;
  config::SnapshotConstSharedPtr snapshot_;
  std::unique_ptr<event::Dispatcher> dispatcher_;
  std::unique_ptr<upstream::HttpPoolManager> pools_;
  struct ActiveListener {
    std::unique_ptr<network::TcpListener> tcp;  // null: bind_to_port false (reached by hand-off only)
    std::vector<std::unique_ptr<network::TcpListener>> extra;  // WorkerSocket::extra
    config::ListenerConstSharedPtr config;  // current; replaced by xDS updates
  };
  void openListener(const WorkerSocket& s);
  // Before a listener's socket closes (removed, or replaced by one on another address): takes the
  // connections queued on it (TcpListener::acceptPending), which then drain with the listener's others.
  void acceptQueued(ActiveListener& l);
  // Listeners of `snapshot` with bind_to_port false that this worker does not have yet (no socket).
  void addUnboundListeners(const config::Snapshot& snapshot);
  // Rebuilds by_address_ from listeners_; called after every change of listeners_.
  void indexListeners();
  // use_original_dst hand-off: this worker's listeners, bound or not, by configured address.
  config::ListenerAddressMap<ActiveListener*> by_address_;
  void closeStaleSessions();
  bool keptByCurrentConfig(const config::ActiveSession& s) const;
  void drainSessions(const std::vector<config::ActiveSession*>& sessions);
  void onDrainTick();
  uint64_t drain_ms_ = 5000;
  bool gradual_ = false;
  std::map<config::ActiveSession*, uint64_t> drain_at_;  // gradual: when each is told
  event::TimerPtr drain_tick_;
  std::set<std::string> draining_listeners_;  // graceful /drain_listeners: still accepting
  event::TimerPtr listener_drain_timer_;
  std::map<std::string, std::unique_ptr<ActiveListener>> listeners_;
  std::set<std::string> stale_listeners_;
  bool hold_accept_ = false;  // see holdAccepting(); worker thread once started
  event::TimerPtr drain_timer_;
  std::list<config::ActiveSession*> sessions_;
  std::list<std::unique_ptr<ProtocolSniffer>> sniffers_;
  std::list<std::unique_ptr<HandshakeWaiter>> handshakes_;
  // Zone-aware routing: this worker's view of the local cluster (null: off), refreshed before each
  // choice; declared before lbs_, whose balancers point at it.
  std::unique_ptr<upstream::LocalCluster> local_cluster_;
  uint32_t local_cluster_index_ = UINT32_MAX;
  // This worker's load balancer per cluster index, for the cluster version it was built from (by
  // version id: a freed version's address may be reused by a new one). Rebuilt when the version changes.
  struct ClusterLb {
    uint64_t version_id = 0;
    uint64_t dns_generation = 0;  // DNS clusters: runtime->dns_hosts generation the balancer was built from
    upstream::LoadBalancerPtr lb;
  };
  std::vector<ClusterLb> lbs_;
  std::vector<uint32_t> lb_indices_;  // the slots of lbs_ that hold a balancer (each once)
  // The newest config's clusters (snapshot_->clusterByIndex) and RDS tables by stable index:
  // connections accepted earlier pin their listener's config, but hosts (EDS) and routes (RDS) are
  // looked up in the newest, per request.
  stats::Gauge loop_max_us_;
  stats::Counter loop_over_1ms_;
  uint64_t loop_max_seen_ = 0;
  stats::Gauge apply_max_wall_us_;
  stats::Gauge apply_max_cpu_us_;
  uint64_t apply_max_wall_seen_ = 0;
  uint64_t apply_max_cpu_seen_ = 0;
  // On-demand cluster discovery (worker thread): the streams waiting, the clusters this worker asked
  // for (each name goes to the requester once), and those the control plane said do not exist.
  ClusterRequester cluster_requester_;
  std::vector<config::ClusterWaiter*> cluster_waiters_;
  std::set<uint32_t> requested_clusters_;
  std::set<uint32_t> missing_clusters_;
  void notifyClusterWaiters();
  std::vector<std::shared_ptr<const void>> routes_by_id_;
  void indexSnapshot();
  std::atomic<size_t> active_sessions_{0};
  std::mt19937_64 rng_;
  std::thread thread_;
  std::promise<void> listening_;
};

}  // namespace strait::server
