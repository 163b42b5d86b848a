#pragma once

// Exponential backoff with full jitter: the n-th delay (from 0) is uniform in [0, min(max, base * 2^n)].

#include <algorithm>
#include <cstdint>
#include <random>

namespace strait::xds {

class JitteredBackoff {
 public:
  JitteredBackoff(uint64_t base_ms, uint64_t max_ms, uint64_t seed)
      : base_ms_(std::max<uint64_t>(base_ms, 1)), max_ms_(std::max(max_ms, base_ms_)), rng_(seed) {}

  // The ceiling of the next delay.
  uint64_t nextCeilingMs() const {
    uint64_t ceiling = base_ms_;
    for (uint32_t i = 0; i < attempt_ && ceiling < max_ms_; ++i) ceiling *= 2;
    return std::min(ceiling, max_ms_);
  }

  uint64_t nextDelayMs() {
    const uint64_t ceiling = nextCeilingMs();
    if (attempt_ < 64) ++attempt_;
    return std::uniform_int_distribution<uint64_t>(0, ceiling)(rng_);
  }

  void reset() { attempt_ = 0; }
  uint32_t attempt() const { return attempt_; }

 private:
  uint64_t base_ms_;
  uint64_t max_ms_;
  uint32_t attempt_ = 0;
  std::mt19937_64 rng_;
};

}  // namespace strait::xds
