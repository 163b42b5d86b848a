#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "proxy/upstream/host.h"

namespace strait::upstream {

// The host set a DNS cluster's resolver publishes between config versions (one per cluster name, in
// its ClusterRuntime). The resolver thread publishes a whole new set; each worker compares the
// generation on every choice (one acquire load) and takes the set (a mutex, once per change) only when
// it moved, so a DNS change reaches the balancers without a new config snapshot.
class ResolvedHosts {
 public:
  using Set = std::vector<HostSharedPtr>;
  using SetConstSharedPtr = std::shared_ptr<const Set>;

  // Moves on every publish() and reset(); 0 until the first.
  uint64_t generation() const { return generation_.load(std::memory_order_acquire); }
  // The newest set (null: nothing resolved yet) and its generation.
  std::pair<SetConstSharedPtr, uint64_t> current() const {
    std::lock_guard<std::mutex> lock(mu_);
    return {set_, generation_.load(std::memory_order_relaxed)};
  }
  void publish(SetConstSharedPtr set) {
    std::lock_guard<std::mutex> lock(mu_);
    set_ = std::move(set);
    generation_.fetch_add(1, std::memory_order_release);
  }
  // The cluster is no longer resolved (removed, or no longer a DNS cluster): its hosts are let go.
  void reset() { publish(nullptr); }

 private:
  mutable std::mutex mu_;
  SetConstSharedPtr set_;
  std::atomic<uint64_t> generation_{0};
};

}  // namespace strait::upstream
