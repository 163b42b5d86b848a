#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "proxy/upstream/dns_cluster.h"

namespace strait::upstream {

// DNS resolution on a thread of its own: c-ares channels (one per distinct DnsResolverSettings), their
// sockets and timeouts, and a timer list, all driven by one poll() loop. Nothing here ever runs on a
// worker or the main thread; other threads only post() work to it.
class DnsResolver {
 public:
  struct Result {
    bool ok = false;      // false: the lookup failed (SERVFAIL, timeout, refused...): keep what you had
    std::string error;    // c-ares's description when !ok
    std::vector<DnsAnswer> v4, v6;  // ok with both empty: the name has no address (NXDOMAIN, NODATA)
  };
  using Callback = std::function<void(Result)>;

  DnsResolver();
  ~DnsResolver();  // stop()s
  // Starts the thread; `on_start` runs first on it (e.g. to pick a stats shard).
  void start(std::function<void()> on_start);
  // Stops and joins the thread: pending lookups end (their callbacks are not called), timers are dropped.
  void stop();

  // Any thread: runs `fn` on the resolver thread.
  void post(std::function<void()> fn);
  // Resolver thread: runs `fn` after `delay_ms`. Returns an id for cancel().
  uint64_t schedule(uint64_t delay_ms, std::function<void()> fn);
  void cancel(uint64_t id);
  // Resolver thread: looks `name` up through the channel of `settings` (V4_ONLY: A; V6_ONLY: AAAA;
  // otherwise both). `cb` runs later on the resolver thread.
  void resolve(const DnsResolverSettings& settings, const std::string& name, DnsLookupFamily family, Callback cb);
  // Resolver thread: channels whose settings no cluster uses any more are closed.
  void keepChannels(const std::vector<std::string>& keys);
  // Steady-clock milliseconds.
  static uint64_t nowMs();

  // Implementation (dns_resolver.cc): a c-ares channel with its sockets, and one lookup in flight.
  struct Channel;
  struct Lookup;

 private:
  void run();
  Channel* channel(const DnsResolverSettings& settings, std::string* error);
  void wake();

  std::mutex mu_;  // guards posted_ and stopping_
  std::vector<std::function<void()>> posted_;
  bool stopping_ = false;
  int wake_fd_ = -1;  // eventfd
  std::thread thread_;
  std::function<void()> on_start_;
  // Resolver thread only.
  std::map<std::string, std::unique_ptr<Channel>> channels_;
  std::multimap<uint64_t, std::pair<uint64_t, std::function<void()>>> timers_;  // due ms -> (id, fn)
  std::map<uint64_t, uint64_t> timer_due_;  // id -> due ms
  uint64_t next_timer_id_ = 1;
};

}  // namespace strait::upstream
