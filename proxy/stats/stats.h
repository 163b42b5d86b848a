#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace strait::stats {

// A stat is a slot index. Each thread writes its own shard of plain integers (a relaxed load+store,
// no lock, no shared cache line between workers); the admin sums the shards when scraped.
enum class StatType : uint8_t { Counter, Gauge, Histogram };

struct Counter {
  uint32_t index = 0;
};
struct Gauge {
  uint32_t index = 0;
};
// A histogram of durations in milliseconds with fixed bucket bounds (Envoy's defaults). It occupies
// kHistogramBuckets + 2 consecutive slots: one count per bucket (the last is +Inf), then the sum in
// microseconds. Recording is two relaxed adds on the thread's own shard.
inline constexpr double kHistogramBounds[] = {0.5,   1,    5,     10,    25,     50,     100,     250,    500,    1000,
                                              2500,  5000, 10000, 30000, 60000,  300000, 600000,  1800000, 3600000};
inline constexpr uint32_t kHistogramBuckets = sizeof(kHistogramBounds) / sizeof(kHistogramBounds[0]) + 1;
struct Histogram {
  uint32_t index = 0;
};

class Shard {
 public:
  static constexpr uint32_t kChunk = 1024;
  static constexpr uint32_t kMaxChunks = 4096;
  Shard();
  ~Shard();
  std::atomic<int64_t>& slot(uint32_t index) {
    return chunks_[index / kChunk].load(std::memory_order_acquire)[index % kChunk];
  }
  int64_t read(uint32_t index) const;
  void ensureChunk(uint32_t chunk);

 private:
  std::unique_ptr<std::atomic<std::atomic<int64_t>*>[]> chunks_;
};

struct StatInfo {
  const std::string* name;  // the key in Store::by_name_ (one copy of each name)
  StatType type;
  bool hidden;
  uint32_t slots;
  uint32_t refs;    // StatScopes holding it
  bool permanent;   // also made outside any scope: never released
};

class StatScope;

// All stats of the process. Stats are created at config time (main thread); on the data path a thread
// only touches its own shard through the handles it was given.
class Store {
 public:
  explicit Store(uint32_t shards);
  // `hidden` stats are summed on request (value()) but not listed in snapshot(): per-host counters that
  // /clusters shows, as Envoy keeps them out of /stats. Stats made here live as long as the process;
  // those of resources that come and go (xDS clusters and their hosts) are made through a StatScope.
  Counter counter(const std::string& name, bool hidden = false);
  Gauge gauge(const std::string& name, bool hidden = false);
  Histogram histogram(const std::string& name);
  uint32_t shardCount() const { return static_cast<uint32_t>(shards_.size()); }
  Shard& shard(uint32_t i) { return *shards_[i]; }

  struct Value {
    std::string name;
    StatType type;
    int64_t value;                 // counters and gauges; for histograms, the sample count
    std::vector<int64_t> buckets;  // histograms: per-bucket counts (not cumulative), last is +Inf
    int64_t sum_us = 0;            // histograms: sum of samples in microseconds
  };
  // Every stat with its value summed over shards, sorted by name.
  std::vector<Value> snapshot() const;
  int64_t value(const std::string& name) const;
  int64_t value(Counter c) const { return sum(c.index); }
  int64_t value(Gauge g) const { return sum(g.index); }
  // Named stats, and slots in use (for tests and the memory figures).
  size_t statCount() const;
  uint32_t slotsInUse() const;
  uint32_t slotHighWater() const;  // slots ever handed out (the shards' size)

 private:
  friend class StatScope;
  uint32_t create(const std::string& name, StatType type, bool hidden, uint32_t slots, bool scoped);
  // Drops a scope's reference; the last one removes the name and recycles the slots (zeroed).
  void release(const std::vector<uint32_t>& indices);
  int64_t sum(uint32_t index) const;
  mutable std::mutex lock_;  // guards registration and the name list (never the data path)
  std::map<std::string, uint32_t> by_name_;
  std::map<uint32_t, StatInfo> infos_;  // by first slot
  uint32_t next_slot_ = 0;
  uint32_t slots_in_use_ = 0;
  std::map<uint32_t, std::vector<uint32_t>> free_slots_;  // recycled first slots, by slot count
  std::vector<std::unique_ptr<Shard>> shards_;
};

// The stats of one resource that config updates add and remove (a cluster with its hosts). Each stat it
// makes is referenced until the scope is destroyed; a stat no scope (and no permanent maker) references
// any more leaves /stats and its slots are reused. A resource updated under the same name gets the same
// slots (the new scope takes its references before the old one lets go), so its counts carry on.
// Everything holding the scope's handles must hold the scope's owner: after it goes, the slots may
// belong to another stat.
class StatScope {
 public:
  explicit StatScope(Store& store) : store_(store) {}
  ~StatScope() { store_.release(held_); }
  StatScope(const StatScope&) = delete;
  StatScope& operator=(const StatScope&) = delete;
  Counter counter(const std::string& name, bool hidden = false) {
    return Counter{hold(store_.create(name, StatType::Counter, hidden, 1, true))};
  }
  Gauge gauge(const std::string& name, bool hidden = false) {
    return Gauge{hold(store_.create(name, StatType::Gauge, hidden, 1, true))};
  }
  Histogram histogram(const std::string& name);
  Store& store() { return store_; }

 private:
  uint32_t hold(uint32_t index) {
    held_.push_back(index);
    return index;
  }
  Store& store_;
  std::vector<uint32_t> held_;
};

// The shard the current thread writes to; set once by each thread at start.
void setThreadShard(Shard* shard);
Shard* threadShard();

inline void inc(Counter c, int64_t by = 1) {
  auto& s = threadShard()->slot(c.index);
  s.store(s.load(std::memory_order_relaxed) + by, std::memory_order_relaxed);
}
inline void add(Gauge g, int64_t by) {
  auto& s = threadShard()->slot(g.index);
  s.store(s.load(std::memory_order_relaxed) + by, std::memory_order_relaxed);
}
inline void inc(Gauge g) { add(g, 1); }
inline void record(Histogram h, uint64_t micros) {
  uint32_t b = 0;
  const double ms = static_cast<double>(micros) / 1000.0;
  while (b < kHistogramBuckets - 1 && ms > kHistogramBounds[b]) ++b;
  Shard* shard = threadShard();
  auto& c = shard->slot(h.index + b);
  c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  auto& s = shard->slot(h.index + kHistogramBuckets);
  s.store(s.load(std::memory_order_relaxed) + static_cast<int64_t>(micros), std::memory_order_relaxed);
}
inline void dec(Gauge g) { add(g, -1); }
// A gauge set from one thread only (the main thread), e.g. uptime.
void set(Store& store, Gauge g, int64_t value);

// "P50(ms) P90 P99" style summary line for /stats, from bucket counts (upper bucket bounds).
std::string histogramSummary(const Store::Value& v);

// Prometheus text exposition of a store snapshot, with Envoy's tag extraction for the common prefixes
// (cluster.<name>., listener.<addr>., http.<prefix>., tcp.<prefix>.).
std::string renderPrometheus(const std::vector<Store::Value>& values);

}  // namespace strait::stats
