#pragma once

#include <atomic>
#include <chrono>
#include <mutex>

#include "absl/status/status.h"
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "proxy/config/snapshot.h"
#include "proxy/event/dispatcher.h"
#include "proxy/server/active_health_checks.h"
#include "proxy/server/hot_restart_message.h"
#include "proxy/server/options.h"
#include "proxy/server/pod_env.h"
#include "proxy/server/worker.h"
#include "proxy/stats/stats.h"

typedef struct uv_signal_s uv_signal_t;

namespace strait::server {

class AdminServer;
class StatusServer;
class HotRestart;
class LocalHttpServer;

struct BoundListener {
  config::ListenerConstSharedPtr listener;
  network::Address address;  // as bound (port 0 resolved)
};

// The main thread: owns the config, the workers, the admin server and the process's lifecycle.
class Server {
 public:
  enum class State { PreInitializing, Live, Draining };

  Server(Options options, config::SnapshotConstSharedPtr snapshot, std::unique_ptr<stats::Store> store);
  ~Server();
  // Binds, starts the workers and runs until drained. Returns the process exit code.
  int run();

  // For the admin (main thread only).
  const Options& options() const { return options_; }
  config::SnapshotConstSharedPtr snapshot() const {
    std::lock_guard<std::mutex> lock(mu_);
    return snapshot_;
  }
  stats::Store& store() { return *store_; }
  State state() const { return state_.load(); }
  const char* stateName() const;
  // The admin's /ready and the status port's /healthz/ready: live (initial config applied, listeners
  // accepting), not draining, and no TLS context waiting for its certificate. `body` says which.
  bool ready(std::string* body) const;
  uint64_t uptimeSeconds() const;
  std::vector<BoundListener> boundListeners() const {
    std::lock_guard<std::mutex> lock(mu_);
    return bound_;
  }
  // From the xDS thread: binds what new listeners need, hands `snapshot` to every worker and returns
  // once all of them have it (so the ACK that follows is true). An error (a port that cannot be bound)
  // leaves everything as it was.
  // `previous`: the snapshot in force (its cluster versions are active already), or null.
  // Hands freed heap back to the kernel (malloc_trim) a second from now, on the main thread: by then
  // the connections and admin requests that still held the previous config have usually let it go
  // (trimming at once would keep what they free afterwards resident). Any thread.
  void trimHeapSoon();
  void activateClusters(const config::SnapshotConstSharedPtr& snapshot, const config::Snapshot* previous);
  absl::Status applySnapshot(config::SnapshotConstSharedPtr snapshot);
  // From the xDS thread: the first CDS and LDS are applied (or their initial fetch timed out) and what
  // they brought has warmed (or the warming wait below ended).
  void onXdsInitialized();
  // From the xDS thread: the first CDS and LDS are applied but some of their clusters and listeners
  // still wait for their endpoints or route configuration; go live anyway after `timeout_ms` (Envoy's
  // initial_fetch_timeout bounds the warming of each initial resource too; 0: wait as long as it takes).
  void onXdsWarming(uint64_t timeout_ms);
  // On-demand cluster discovery. From a worker: subscribe the cluster `name` over CDS (once; it stays
  // subscribed). Workers call it only when the bootstrap has ADS and no cds_config.
  void requestClusterOnDemand(const std::string& name);
  // From the xDS thread: the control plane says the cluster `name` does not exist; every worker stops
  // waiting for it.
  void onDemandClusterMissing(const std::string& name);
  // The xDS client's view, for /config_dump (may be null).
  class XdsApplier* xds() const { return xds_.get(); }
  event::Dispatcher& dispatcher() { return *dispatcher_; }
  // Stop accepting, let connections finish for up to --drain-time-s, then exit 0.
  void startDrain(const char* why);
  // The bootstrap's overload_manager (null: none), started with the workers.
  void setOverload(std::shared_ptr<const struct OverloadConfig> config) { overload_config_ = std::move(config); }
  // What the pod's environment asks of the status ports (probes, metrics to merge). Before run().
  void setPodEnv(std::shared_ptr<const PodEnv> env) { pod_env_ = std::move(env); }
  // /drain_listeners: see Worker::drainListeners. The process stays up.
  void drainListeners(bool inbound_only, bool graceful);
  // --restart-epoch / --base-id (see hot_restart.h). Before run().
  void setHotRestart(std::unique_ptr<HotRestart> hot_restart);

 private:
  bool bindListeners(std::vector<std::vector<WorkerSocket>>& per_worker);
  void addUnboundListener(const config::ListenerConstSharedPtr& l, std::vector<BoundListener>& out);
  absl::Status bindListener(const config::ListenerConstSharedPtr& l, std::vector<std::vector<WorkerSocket>>& per_worker,
                            network::Address* bound);
  void onDrainTick();
  void finish();
  // Hot restart, as the parent: the sockets the next process asks for (hot restart thread), and the
  // drain it asks for once ready (main thread): stop accepting at once, tell every connection, exit
  // when none is left or --parent-shutdown-time-s after.
  std::vector<int> socketsForChild(hot_restart::SocketKind kind, const network::Address& configured, const std::string& name);
  std::vector<int> releaseLocalSocket(const network::Address& configured);
  // As the child: the parent's sockets for a listener / for the admin or a status port (-1: none).
  std::vector<int> inheritListenerSockets(const config::Listener& l);
  int inheritLocalSocket(const network::Address& configured);
  void startHotRestartDrain();
  void startHotRestart();
  // ready() without the hot restart child's accept hold: what the child waits for before it accepts.
  bool initialised(std::string* body) const;

  Options options_;
  // Declared before everything that holds config: clusters release their stats into the store when they
  // are destroyed, so it must go last.
  std::unique_ptr<stats::Store> store_;
  mutable std::mutex mu_;  // guards snapshot_ and bound_ (admin on main, xDS thread writes)
  config::SnapshotConstSharedPtr snapshot_;
  std::unique_ptr<class XdsApplier> xds_;
  // On-demand cluster names asked for so far, and the applier to give them to once it exists (workers
  // may ask before it does). Guarded by odcds_mu_.
  std::mutex odcds_mu_;
  std::set<std::string> odcds_names_;
  class XdsApplier* odcds_applier_ = nullptr;
  std::unique_ptr<class SdsStreams> sds_;
  std::shared_ptr<const struct OverloadConfig> overload_config_;
  std::unique_ptr<class OverloadManager> overload_;
  std::unique_ptr<event::Dispatcher> dispatcher_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::unique_ptr<AdminServer> admin_;
  std::shared_ptr<const PodEnv> pod_env_;
  std::unique_ptr<StatusServer> status_;  // --status-port
  std::vector<BoundListener> bound_;
  std::unique_ptr<HotRestart> hot_restart_;
  // Admin / status sockets handed to the next process, with the duplicate this one keeps to resume on
  // if that process goes away before it is ready (main thread).
  struct HeldSocket {
    LocalHttpServer* http;
    network::Address bound;
    int fd;
  };
  std::vector<HeldSocket> held_local_;
  event::TimerPtr hot_restart_ready_timer_;  // as the child: tells the parent to drain once ready()
  // As the child: the workers hold their sockets without accepting until initialised() (main thread).
  bool accept_held_ = false;
  event::TimerPtr xds_warming_timer_;  // onXdsWarming() (main thread)
  std::vector<uv_signal_t*> signals_;
  event::TimerPtr drain_timer_;
  std::optional<std::chrono::steady_clock::time_point> quiet_since_;  // drain: no session open since
  event::TimerPtr health_tick_;  // outlier detection intervals and their stats (main thread)
  event::TimerPtr trim_timer_;   // trimHeapSoon() (main thread)
  std::unique_ptr<ActiveHealthChecks> health_checks_;  // main thread
  std::unique_ptr<class DnsClusters> dns_;  // STRICT_DNS / LOGICAL_DNS resolution (its own thread)
  std::chrono::steady_clock::time_point started_;
  std::chrono::steady_clock::time_point drain_deadline_;
  std::chrono::steady_clock::time_point drain_min_until_;  // --min-drain-time-s after the drain began
  bool outbound_told_ = false;  // OUTBOUND listeners' connections told to go (after the minimum)
  std::atomic<State> state_{State::PreInitializing};
  bool xds_ready_ = true;
  bool workers_started_ = false;
  stats::Gauge live_;
  stats::Gauge uptime_;
  stats::Gauge concurrency_;
  stats::Gauge active_clusters_;
  stats::Gauge draining_;
};

}  // namespace strait::server
