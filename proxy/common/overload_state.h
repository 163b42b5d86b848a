#pragma once

#include <atomic>

namespace strait::common {

// What the overload manager (proxy/server/overload.h) decided, read by workers once per new connection
// or request (relaxed loads: a decision a moment late is fine).
struct OverloadState {
  std::atomic<bool> stop_requests{false};
  std::atomic<bool> stop_connections{false};
};

inline OverloadState& overloadState() {
  static OverloadState state;
  return state;
}

}  // namespace strait::common
