#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "absl/status/statusor.h"
#include "proxy/event/dispatcher.h"
#include "proxy/network/address.h"
#include "proxy/server/hot_restart_message.h"
#include "proxy/stats/stats.h"

namespace strait::server {

// Envoy's hot restart shape (--restart-epoch, --base-id): the process of epoch N listens on the
// abstract unix socket "strait_hot_restart_<base>_<N>" for the process of epoch N+1; a process of
// epoch N > 0 connects to the one of epoch N-1 (its parent) and
//   - takes the parent's listening sockets by address (SCM_RIGHTS) instead of binding anew: the very
//     sockets, so a connection in an accept queue is accepted by whichever process gets to it first and
//     none is reset when the parent closes its copies; the admin's and status ports' sockets too (the
//     parent stops accepting on those when it hands them over, and resumes if the child goes away
//     before it is ready);
//   - starts its counters from the parent's, and follows them until the parent exits;
//   - once ready, tells the parent to drain: the parent stops accepting, tells its connections to go
//     (GOAWAY, Connection: close) and exits when none is left or after --parent-shutdown-time-s.
// One thread per process serves the next epoch; the child side is request/reply under a mutex on the
// calling thread (main at start, the xDS thread for listeners LDS brings), plus one thread that follows
// the parent's counters during its drain. Abstract unix sockets belong to the network namespace: both
// processes must share it (as two containers of a pod do).
// Runs `fn` on `dispatcher`'s thread and waits up to `timeout` for the descriptors it returns (for the
// hot restart thread, which asks the workers and the main thread for their sockets). If the wait gives
// up first, the descriptors are closed when they come.
std::vector<int> collectFdsOn(event::Dispatcher& dispatcher, std::function<std::vector<int>()> fn,
                              std::chrono::milliseconds timeout);

class HotRestart {
 public:
  using SocketKind = hot_restart::SocketKind;
  struct ParentCallbacks {
    // Duplicates of this process's listening sockets for `configured` (as the child's config has it;
    // with port 0, the socket of that listener `name`, or of the admin). Called on the hot restart
    // thread; the caller sends and closes them.
    std::function<std::vector<int>(SocketKind kind, const network::Address& configured, const std::string& name)>
        sockets;
    // The child is ready: stop accepting, drain, exit.
    std::function<void()> drain;
    // The child went away before asking for the drain: serve again what it was handed (admin).
    std::function<void()> child_gone;
  };

  // Listens on this epoch's socket and, for epoch > 0, connects to the parent's. Fails if another
  // process holds this base id and epoch. A child that finds no parent logs it and starts alone.
  static absl::StatusOr<std::unique_ptr<HotRestart>> create(uint32_t base_id, uint32_t epoch);
  ~HotRestart();
  HotRestart(const HotRestart&) = delete;
  HotRestart& operator=(const HotRestart&) = delete;
  // The abstract socket name (without the leading NUL).
  static std::string socketName(uint32_t base_id, uint32_t epoch);

  // --- serving the next epoch ---
  void startServing(ParentCallbacks callbacks, stats::Store& store);
  // Every worker has stopped, so the counters are final: if a child asked this process to drain, wait
  // (up to 2 s) until it has fetched them.
  void handOverFinalStats();

  // --- as the child of epoch - 1 ---
  bool hasParent() const;
  uint32_t epoch() const { return epoch_; }
  // The parent's sockets for `configured` (see ParentCallbacks::sockets); empty: bind anew. Any thread.
  std::vector<int> takeParentSockets(SocketKind kind, const network::Address& configured, const std::string& name);
  // Fetches the parent's counters and adds to this process's counters of the same names what they
  // grew by since the last time (main thread: shard 0). Gauges (active connections) are not carried.
  void syncParentStats(stats::Store& store);
  // This process is ready: tells the parent to drain, then follows its counters until it exits.
  // `post` runs the additions on the main thread.
  void startParentDrain(std::function<void(std::function<void()>)> post, stats::Store& store);

  // The parent's counters and how much of each was added here (main thread only). Only counters this
  // process has are added to (its config names them); the scope's references keep their slots theirs
  // while this holds them. Dropped when the parent is gone.
  struct CounterMerge {
    struct Seen {
      uint64_t applied = 0;
      bool resolved = false;
      stats::Counter counter;
    };
    std::unique_ptr<stats::StatScope> scope;
    std::unordered_map<std::string, Seen> seen;
    std::unordered_set<std::string> names;  // this process's counters, as last listed
    std::chrono::steady_clock::time_point names_at;
    // `final_counts`: the parent's last counts; names not matched yet are looked up again at once (a
    // counter an xDS update brought to this process less than 2 s ago would otherwise miss them).
    void apply(stats::Store& store, const std::vector<std::pair<std::string, uint64_t>>& counters,
               bool final_counts = false);
  };

 private:
  explicit HotRestart(uint32_t epoch) : epoch_(epoch) {}
  void serveLoop();
  void handleChildMessage(const hot_restart::Message& m, std::vector<int>& fds);
  void closeChild(const char* why);
  bool sendToChild(const hot_restart::Message& m, const std::vector<int>& fds = {});
  // Child side, under parent_mu_: one request and its replies (until one without kMore). On any error
  // the parent connection is closed and further requests do nothing.
  bool exchange(const hot_restart::Message& request, hot_restart::Type reply,
                const std::function<void(hot_restart::Message&, std::vector<int>&)>& on_reply);
  void closeParentLocked(bool parent_exited, const std::string& why);
  bool fetchParentCounters(std::vector<std::pair<std::string, uint64_t>>& out, bool* final_flag);

  const uint32_t epoch_;
  // Serving the next epoch.
  int listen_fd_ = -1;
  int wake_fd_ = -1;  // eventfd: stop
  int child_fd_ = -1;
  bool child_drained_ = false;  // the child asked for the drain (serving thread)
  ParentCallbacks callbacks_;
  stats::Store* store_ = nullptr;
  std::thread serve_thread_;
  std::mutex final_mu_;
  std::condition_variable final_cv_;
  bool final_ready_ = false;    // counters final: Stats replies carry kFinal
  bool final_taken_ = false;    // the child has them (or went away)
  bool drain_requested_ = false;  // guarded by final_mu_ (read by handOverFinalStats)
  bool child_connected_ = false;  // guarded by final_mu_
  bool stopping_ = false;
  // As a child.
  mutable std::mutex parent_mu_;
  int parent_fd_ = -1;
  std::shared_ptr<CounterMerge> merge_ = std::make_shared<CounterMerge>();
  std::thread follow_thread_;
  std::mutex follow_mu_;
  std::condition_variable follow_cv_;
  bool follow_stop_ = false;
};

}  // namespace strait::server
