#pragma once

#include <atomic>
#include <cstdint>
#include <memory>

namespace strait::common {

// What the overload manager (proxy/server/overload.h) decided, read by workers once per new connection,
// request or timer arm. Every field is an atomic read relaxed: a decision a refresh interval late is
// fine, and the hot path pays a plain load (no lock, no lookup).
struct OverloadState {
  static_assert(std::atomic<double>::is_always_lock_free, "scales are read lock-free by workers");

  // Scales 0..1 of the actions (0: inactive, 1: saturated). stop_accepting_requests and
  // disable_http_keepalive apply to that share of new requests (Envoy: a Bernoulli draw);
  // stop_accepting_connections applies when saturated.
  std::atomic<double> stop_requests{0.0};
  std::atomic<bool> stop_connections{false};
  std::atomic<double> disable_keepalive{0.0};

  // reduce_timeouts: the action's scale and, per timer, its floor (Envoy's ScaledRangeTimer: an armed
  // timer runs for min + (configured - min) * (1 - scale)). The floors are set once at start-up.
  enum Timer { kConnectionIdle = 0, kStreamIdle = 1, kTransportSocketConnect = 2, kTimerCount = 3 };
  struct TimerFloor {
    std::atomic<bool> scaled{false};     // the action names this timer
    std::atomic<uint64_t> min_ms{0};     // min_timeout (absolute)
    std::atomic<double> min_scale{-1.0};  // min_scale as a fraction; < 0: min_ms applies
  };
  std::atomic<double> timer_scale{0.0};
  TimerFloor timers[kTimerCount];

  // envoy.resource_monitors.global_downstream_max_connections: the open connections of every listener
  // that does not set ignore_global_conn_limit (a connection gives its count back when it goes, see
  // network::Connection::countIn), and the ceiling (0: no monitor). Shared with the runtime key
  // overload.global_downstream_max_connections, which the monitor's ceiling overrides.
  std::shared_ptr<std::atomic<int64_t>> downstream_connections = std::make_shared<std::atomic<int64_t>>(0);
  std::atomic<int64_t> max_downstream_connections{0};
};

inline OverloadState& overloadState() {
  static OverloadState state;
  return state;
}

// A timer's duration under reduce_timeouts: `configured_ms` unless the action is active and names it.
inline uint64_t scaledTimeoutMs(OverloadState::Timer t, uint64_t configured_ms) {
  OverloadState& s = overloadState();
  const double scale = s.timer_scale.load(std::memory_order_relaxed);
  if (scale <= 0.0 || configured_ms == 0) return configured_ms;
  const OverloadState::TimerFloor& f = s.timers[t];
  if (!f.scaled.load(std::memory_order_relaxed)) return configured_ms;
  const double frac = f.min_scale.load(std::memory_order_relaxed);
  uint64_t min = frac >= 0.0 ? static_cast<uint64_t>(static_cast<double>(configured_ms) * frac)
                             : f.min_ms.load(std::memory_order_relaxed);
  if (min > configured_ms) min = configured_ms;
  const double s1 = scale >= 1.0 ? 1.0 : scale;
  return min + static_cast<uint64_t>(static_cast<double>(configured_ms - min) * (1.0 - s1));
}

// How long a timer that reduce_timeouts names may sleep before it looks at the scale again (a scale that
// rises while it sleeps shortens it too): its floor, at least 1 s, at most its configured time. A timer
// the action does not name sleeps its whole time.
inline uint64_t scaledRecheckMs(OverloadState::Timer t, uint64_t configured_ms) {
  const OverloadState::TimerFloor& f = overloadState().timers[t];
  if (!f.scaled.load(std::memory_order_relaxed)) return configured_ms;
  const double frac = f.min_scale.load(std::memory_order_relaxed);
  uint64_t floor = frac >= 0.0 ? static_cast<uint64_t>(static_cast<double>(configured_ms) * frac)
                               : f.min_ms.load(std::memory_order_relaxed);
  if (floor < 1000) floor = 1000;
  return floor < configured_ms ? floor : configured_ms;
}

// Whether an action with this scale applies to one more request: always when saturated, never when
// inactive, else a draw from the calling thread's own generator (splitmix64; no shared state).
inline bool overloadDraw(double scale) {
  if (scale <= 0.0) return false;
  if (scale >= 1.0) return true;
  thread_local uint64_t x = reinterpret_cast<uintptr_t>(&x) ^ 0x9e3779b97f4a7c15ULL;
  uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * (1.0 / 9007199254740992.0) < scale;
}

}  // namespace strait::common
