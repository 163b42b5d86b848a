#pragma once

// A token bucket for request rate limiting, with time passed in (so tests need no clock).

#include <algorithm>
#include <chrono>
#include <cstdint>

namespace strait::xds {

class TokenBucket {
 public:
  using Clock = std::chrono::steady_clock;

  // `burst` tokens at most (the bucket starts full), refilled at `per_second`. burst 0: unlimited.
  TokenBucket(uint32_t burst, double per_second, Clock::time_point now)
      : burst_(burst), per_second_(per_second > 0 ? per_second : 0), tokens_(burst), last_(now) {}

  bool unlimited() const { return burst_ == 0; }

  // Takes one token if there is one.
  bool tryConsume(Clock::time_point now) {
    if (unlimited()) return true;
    refill(now);
    if (tokens_ >= 1.0) {
      tokens_ -= 1.0;
      return true;
    }
    return false;
  }

  // When the next token will be there (now if one is).
  Clock::time_point nextTokenAt(Clock::time_point now) {
    if (unlimited()) return now;
    refill(now);
    if (tokens_ >= 1.0) return now;
    if (per_second_ <= 0) return Clock::time_point::max();
    const double seconds = (1.0 - tokens_) / per_second_;
    // Round up so a wake-up at that time finds the token.
    return now + std::chrono::ceil<Clock::duration>(std::chrono::duration<double>(seconds));
  }

 private:
  void refill(Clock::time_point now) {
    if (now <= last_) return;
    const double elapsed = std::chrono::duration<double>(now - last_).count();
    tokens_ = std::min<double>(burst_, tokens_ + elapsed * per_second_);
    last_ = now;
  }

  uint32_t burst_;
  double per_second_;
  double tokens_;
  Clock::time_point last_;
};

}  // namespace strait::xds
