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
enum class StatType : uint8_t { Counter, Gauge };

struct Counter {
  uint32_t index = 0;
};
struct Gauge {
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
  std::string name;
  StatType type;
  bool hidden;
};

// All stats of the process. Stats are created at config time (main thread); on the data path a thread
// only touches its own shard through the handles it was given.
class Store {
 public:
  explicit Store(uint32_t shards);
  // `hidden` stats are summed on request (value()) but not listed in snapshot(): per-host counters that
  // /clusters shows, as Envoy keeps them out of /stats.
  Counter counter(const std::string& name, bool hidden = false);
  Gauge gauge(const std::string& name, bool hidden = false);
  uint32_t shardCount() const { return static_cast<uint32_t>(shards_.size()); }
  Shard& shard(uint32_t i) { return *shards_[i]; }

  struct Value {
    std::string name;
    StatType type;
    int64_t value;
  };
  // Every stat with its value summed over shards, sorted by name.
  std::vector<Value> snapshot() const;
  int64_t value(const std::string& name) const;
  int64_t value(Counter c) const { return sum(c.index); }
  int64_t value(Gauge g) const { return sum(g.index); }

 private:
  uint32_t create(const std::string& name, StatType type, bool hidden);
  int64_t sum(uint32_t index) const;
  mutable std::mutex lock_;  // guards registration and the name list (never the data path)
  std::map<std::string, uint32_t> by_name_;
  std::vector<StatInfo> infos_;
  std::vector<std::unique_ptr<Shard>> shards_;
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
inline void dec(Gauge g) { add(g, -1); }
// A gauge set from one thread only (the main thread), e.g. uptime.
void set(Store& store, Gauge g, int64_t value);

// Prometheus text exposition of a store snapshot, with Envoy's tag extraction for the common prefixes
// (cluster.<name>., listener.<addr>., http.<prefix>., tcp.<prefix>.).
std::string renderPrometheus(const std::vector<Store::Value>& values);

}  // namespace strait::stats
