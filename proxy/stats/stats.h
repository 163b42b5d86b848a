#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
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

// A per-object stat kept in the object itself, outside the store (Envoy's "primitive" stats): a shared
// atomic with no name, no slot and no per-thread copy. For stats that only the admin reads off the
// object (upstream::Host's, shown in /clusters), where a named, sharded stat per object would cost far
// more than the object. Written with the same inc()/dec()/add() as store stats.
struct PrimitiveCounter {
  mutable std::atomic<uint64_t> v{0};
  int64_t value() const { return static_cast<int64_t>(v.load(std::memory_order_relaxed)); }
};
struct PrimitiveGauge {
  mutable std::atomic<int64_t> v{0};
  int64_t value() const { return v.load(std::memory_order_relaxed); }
};

// One thread's values: a flat array of plain integers over address space reserved once (kMaxSlots
// slots, 32 MiB of virtual memory) and materialised by the kernel page by page on first write. A thread
// that never writes a stat pays nothing for it (reads of untouched pages see zeros without making them
// resident), so per-worker shards cost memory in proportion to the stats each worker actually moves,
// and pages whose stats are all released are handed back (Store::release).
class Shard {
 public:
  static constexpr uint32_t kMaxSlots = 1u << 22;
  static constexpr uint32_t kSlotsPerPage = 4096 / sizeof(int64_t);
  Shard();
  ~Shard();
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;
  std::atomic<int64_t>& slot(uint32_t index) { return slots_[index]; }
  int64_t read(uint32_t index) const { return slots_[index].load(std::memory_order_relaxed); }
  // Store only: zero `n` slots without touching pages that already read zero; give pages back.
  void clear(uint32_t index, uint32_t n);
  void discardPages(uint32_t first_page, uint32_t pages);

 private:
  std::atomic<int64_t>* slots_ = nullptr;
};

// Interned strings with reference counts, by id (stat name prefixes and leaves). Not thread-safe: the
// Store's lock guards it.
class SymbolTable {
 public:
  static constexpr uint32_t kNone = UINT32_MAX;
  uint32_t intern(std::string_view text);  // takes a reference
  uint32_t find(std::string_view text) const;  // kNone if absent; takes no reference
  void release(uint32_t id);
  const std::string& text(uint32_t id) const { return syms_[id].text; }
  size_t size() const { return live_; }
  size_t bytes() const;  // heap it holds (for the memory figures)

 private:
  struct Sym {
    std::string text;
    uint32_t refs = 0;
  };
  std::vector<Sym> syms_;
  std::vector<uint32_t> free_;  // ids of released symbols (may hold stale ids past the end; checked)
  size_t live_ = 0;
  // Open addressing over (hash, id), linear probing, backward-shift deletion.
  struct Slot {
    uint32_t hash;
    uint32_t id;
  };
  std::vector<Slot> index_;
  size_t index_size_ = 0;
  void indexInsert(uint32_t hash, uint32_t id);
  void indexErase(uint32_t hash, uint32_t id);
  void indexResize(size_t capacity);
};

class StatScope;

// The shape of a set of stats that many objects each have under their own prefix: a cluster's traffic
// stats ("cluster.<name>." + upstream_rq_total, upstream_cx_active, ...). The store holds one entry per
// object for the whole set (a "block"), with its slots contiguous, instead of one named entry per stat:
// at 10,000 clusters that is one entry and one index slot per cluster instead of ~40 of each. Names
// are the same as if each stat had been made alone (/stats, lookups by name and hot restart see no
// difference). A layout is built once, lives for the process, and is shared by every object using it.
class StatBlock {
 public:
  // Adds a stat; returns its offset in the block's slots (a handle is the block's first slot plus it).
  uint32_t counter(std::string leaf) { return add(std::move(leaf), StatType::Counter, 1); }
  uint32_t gauge(std::string leaf) { return add(std::move(leaf), StatType::Gauge, 1); }
  uint32_t histogram(std::string leaf);
  uint32_t slots() const { return slots_; }
  size_t size() const { return leaves_.size(); }

 private:
  friend class Store;
  struct Leaf {
    std::string name;  // after "<prefix>.", without dots
    StatType type;
    uint32_t offset;
  };
  uint32_t add(std::string leaf, StatType type, uint32_t slots);
  const Leaf* find(std::string_view leaf) const;
  std::vector<Leaf> leaves_;
  std::map<std::string, uint32_t, std::less<>> by_name_;  // leaf name -> position in leaves_
  uint32_t slots_ = 0;
};

// All stats of the process. Stats are created at config time; on the data path a thread only touches
// its own shard through the handles it was given.
// Names are held compactly, as Envoy does with its symbol table: each stat is a 20-byte entry naming
// an interned prefix (everything up to the last dot: "cluster.foo") and an interned leaf
// ("upstream_rq_total"), so a cluster's ~60 stats share one copy of its prefix, and the leaves are
// shared by every cluster. Full names are only spelled out when the admin asks.
class Store {
 public:
  explicit Store(uint32_t shards);
  ~Store();
  // `hidden` stats are summed on request (value()) but not listed in snapshot(). Stats made here live as
  // long as the process; those of resources that come and go (xDS clusters) are made through a StatScope.
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
  // Only the stats whose name `keep` accepts (a stats_matcher, a /stats?filter=): the others are
  // looked at by name and never copied out. At 10,000 clusters the full snapshot is half a million
  // values, some 60 MB for as long as a scrape takes, where an inclusion list keeps a few hundred.
  std::vector<Value> snapshot(const std::function<bool(std::string_view name)>& keep) const;
  int64_t value(const std::string& name) const;
  int64_t value(Counter c) const { return sum(c.index); }
  int64_t value(Gauge g) const { return sum(g.index); }
  // Per-object stats kept outside the store (upstream::Host's): read directly.
  static int64_t value(const PrimitiveCounter& c) { return c.value(); }
  static int64_t value(const PrimitiveGauge& g) { return g.value(); }
  // Named stats, and slots in use (for tests and the memory figures).
  size_t statCount() const;
  size_t entryCount() const;  // store entries: one per stat made alone, one per block
  uint32_t slotsInUse() const;
  uint32_t slotHighWater() const;  // slots ever handed out (the shards' size)
  // Heap held for names and bookkeeping (not the shards), for the memory figures.
  size_t metadataBytes() const;

 private:
  friend class StatScope;
  struct Entry {
    uint32_t prefix;  // SymbolTable ids
    uint32_t leaf;
    uint32_t slot;  // first slot
    uint32_t refs;  // StatScopes holding it
    StatType type;
    uint8_t slots;
    uint8_t flags;  // kHidden | kPermanent | kLive
  };
  static constexpr uint8_t kHidden = 1, kPermanent = 2, kLive = 4, kLeadingDot = 8;  // kLeadingDot: ".x"
  // kBlock: the entry is a StatBlock's stats; `leaf` is kBlockLeaf + its layout id (not a symbol).
  static constexpr uint8_t kBlock = 16;
  static constexpr uint32_t kBlockLeaf = 0x80000000u;
  std::vector<const StatBlock*> layouts_;  // by layout id; each lives for the process
  size_t live_stats_ = 0;                  // named stats, a block counting as its size
  // Returns the entry id; `slot_out` gets its first slot.
  uint32_t create(const std::string& name, StatType type, bool hidden, uint32_t slots, bool scoped, uint32_t* slot_out);
  // A block of `layout`'s stats under `prefix` (no trailing dot), referenced by a scope. Returns the
  // entry id; `slot_out` gets its first slot.
  uint32_t createBlock(std::string_view prefix, const StatBlock& layout, uint32_t* slot_out);
  // The block entry and leaf that hold the stat named (prefix, leaf); kNoEntry/null when none does.
  uint32_t findInBlock(uint32_t prefix, std::string_view leaf, const StatBlock::Leaf** out) const;
  uint32_t layoutId(const StatBlock& layout);
  // Stores a new live entry (a free id or a new one) and indexes it; returns its id.
  uint32_t addEntry(const Entry& e);
  // Drops a scope's references; the last one removes the name and recycles the slots (zeroed).
  void release(const std::vector<uint32_t>& entry_ids);
  uint32_t findEntry(uint32_t prefix, uint32_t leaf) const;
  static uint32_t entryHash(uint32_t prefix, uint32_t leaf);
  std::string nameOf(const Entry& e) const;
  uint32_t allocSlots(uint32_t slots);
  void freeSlots(uint32_t first, uint32_t slots);
  int64_t sum(uint32_t index) const;

  mutable std::mutex lock_;  // guards registration and the names (never the data path)
  SymbolTable symbols_;
  std::vector<Entry> entries_;
  std::vector<uint32_t> free_entries_;  // may hold stale ids (past the end, or live again): checked
  size_t live_entries_ = 0;
  // Entry ids by (prefix, leaf): open addressing over (hash, id).
  struct IndexSlot {
    uint32_t hash;
    uint32_t id;
  };
  std::vector<IndexSlot> index_;
  size_t index_size_ = 0;
  void indexInsert(uint32_t hash, uint32_t id);
  void indexErase(uint32_t hash, uint32_t id);
  void indexResize(size_t capacity);

  // Slots are handed out by shard page (4 KiB, 512 slots); a page holds stats of one size only (1 slot,
  // or a histogram's run), with a bitmap of its units. A page whose stats are all released is given
  // back by every shard and reused whole; the top of the slot space shrinks as its pages empty.
  struct Page {
    uint8_t slots = 0;  // stat size on this page; 0: unassigned
    uint16_t used = 0;  // units taken
    uint64_t bits[Shard::kSlotsPerPage / 64] = {};
  };
  std::vector<Page> pages_;
  std::map<uint32_t, std::vector<uint32_t>> partial_;  // by stat size: pages with room (may be stale)
  std::vector<uint32_t> free_pages_;                   // unassigned pages below the top (may be stale)
  uint32_t slots_in_use_ = 0;
  std::vector<std::unique_ptr<Shard>> shards_;
};

// The stats of one resource that config updates add and remove (a cluster). Each stat it makes is
// referenced until the scope is destroyed; a stat no scope (and no permanent maker) references any more
// leaves /stats and its slots are reused. A resource updated under the same name gets the same slots
// (the new scope takes its references before the old one lets go), so its counts carry on.
// Everything holding the scope's handles must hold the scope's owner: after it goes, the slots may
// belong to another stat.
class StatScope {
 public:
  explicit StatScope(Store& store) : store_(store) {}
  ~StatScope() { store_.release(held_); }
  StatScope(const StatScope&) = delete;
  StatScope& operator=(const StatScope&) = delete;
  Counter counter(const std::string& name, bool hidden = false) {
    return Counter{make(name, StatType::Counter, hidden, 1)};
  }
  Gauge gauge(const std::string& name, bool hidden = false) { return Gauge{make(name, StatType::Gauge, hidden, 1)}; }
  Histogram histogram(const std::string& name);
  // The stats of `layout` under `prefix` ("cluster.foo", no trailing dot); returns the first slot:
  // a stat's handle is that plus its offset in the layout.
  uint32_t block(std::string_view prefix, const StatBlock& layout) {
    uint32_t slot = 0;
    held_.push_back(store_.createBlock(prefix, layout, &slot));
    return slot;
  }
  Store& store() { return store_; }

 private:
  uint32_t make(const std::string& name, StatType type, bool hidden, uint32_t slots) {
    uint32_t slot = 0;
    held_.push_back(store_.create(name, type, hidden, slots, true, &slot));
    return slot;
  }
  Store& store_;
  std::vector<uint32_t> held_;  // entry ids
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
inline void inc(const PrimitiveCounter& c, int64_t by = 1) {
  c.v.fetch_add(static_cast<uint64_t>(by), std::memory_order_relaxed);
}
inline void add(const PrimitiveGauge& g, int64_t by) { g.v.fetch_add(by, std::memory_order_relaxed); }
inline void inc(const PrimitiveGauge& g) { add(g, 1); }
inline void dec(const PrimitiveGauge& g) { add(g, -1); }
// A gauge set from one thread only (the main thread), e.g. uptime.
void set(Store& store, Gauge g, int64_t value);

// "P50(ms) P90 P99" style summary line for /stats, from bucket counts (upper bucket bounds).
std::string histogramSummary(const Store::Value& v);

// Prometheus text exposition of a store snapshot: Envoy's default tag extraction and the bootstrap's
// stats_tags (`rules`; tag_extraction.h), one "# HELP" (the stat name behind the family) and "# TYPE"
// per family.
struct TagRules;
std::string renderPrometheus(const std::vector<Store::Value>& values, const TagRules* rules = nullptr);

}  // namespace strait::stats
