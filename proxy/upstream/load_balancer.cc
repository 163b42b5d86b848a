// Load balancing with Envoy's semantics: priority levels and their health (overprovisioning, spill-over
// of healthy then degraded load, panic mode), locality-weighted balancing, and the policies (round
// robin, least request, random, ring hash, Maglev, and our peak EWMA).
//
// One balancer belongs to one worker, so choosing takes no lock and the balancer's own state (rotation
// positions, schedulers, random generator) is plain memory. The only shared state it reads is the
// hosts' atomics. It keeps a `View` of the cluster derived from the hosts' health and weights, and
// rebuilds it when the cluster's health generation moves:
//
//   View::levels[]           one per priority present, in priority order
//     healthy/degraded/all   candidate lists (`all`: every non-draining host, used in panic)
//     healthy_load/degraded_load   percent of requests the level takes, per kind of host
//     panic                  too few available hosts: choose among `all`
//     *_localities           per-locality lists and a locality scheduler (locality-weighted only)
//     *_table                ring or Maglev table (hash policies only)
//   zone_*                   zone-aware routing's plan for priority 0 (with a LocalCluster): per-locality
//                            healthy lists (the local one first) and the share of requests kept local
//
// Choosing allocates nothing: every list, heap and table is sized when the view is built.
#include "proxy/upstream/load_balancer.h"

#include <algorithm>
#include <bit>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstring>
#include <string>
#include <unordered_map>
#include <utility>

namespace strait::upstream {

// ---------------------------------------------------------------------------------------------------
// xxHash64, from the published algorithm (Yann Collet's XXH64 specification).

namespace {

constexpr uint64_t kXxPrime1 = 0x9E3779B185EBCA87ULL;
constexpr uint64_t kXxPrime2 = 0xC2B2AE3D27D4EB4FULL;
constexpr uint64_t kXxPrime3 = 0x165667B19E3779F9ULL;
constexpr uint64_t kXxPrime4 = 0x85EBCA77C2B2AE63ULL;
constexpr uint64_t kXxPrime5 = 0x27D4EB2F165667C5ULL;

// The specification reads input words little-endian whatever the machine.
uint64_t readLe64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof(v));
  if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap64(v);
  return v;
}
uint32_t readLe32(const unsigned char* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof(v));
  if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap32(v);
  return v;
}

uint64_t xxRound(uint64_t acc, uint64_t lane) {
  acc += lane * kXxPrime2;
  acc = std::rotl(acc, 31);
  return acc * kXxPrime1;
}

uint64_t xxMergeRound(uint64_t acc, uint64_t lane) {
  acc ^= xxRound(0, lane);
  return acc * kXxPrime1 + kXxPrime4;
}

}  // namespace

uint64_t xxHash64(std::string_view data, uint64_t seed) {
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  const size_t len = data.size();
  const unsigned char* const end = p + len;
  uint64_t h;
  if (len >= 32) {
    // Four accumulators over 32-byte stripes.
    uint64_t v1 = seed + kXxPrime1 + kXxPrime2;
    uint64_t v2 = seed + kXxPrime2;
    uint64_t v3 = seed;
    uint64_t v4 = seed - kXxPrime1;
    const unsigned char* const last_stripe = end - 32;
    do {
      v1 = xxRound(v1, readLe64(p));
      v2 = xxRound(v2, readLe64(p + 8));
      v3 = xxRound(v3, readLe64(p + 16));
      v4 = xxRound(v4, readLe64(p + 24));
      p += 32;
    } while (p <= last_stripe);
    h = std::rotl(v1, 1) + std::rotl(v2, 7) + std::rotl(v3, 12) + std::rotl(v4, 18);
    h = xxMergeRound(h, v1);
    h = xxMergeRound(h, v2);
    h = xxMergeRound(h, v3);
    h = xxMergeRound(h, v4);
  } else {
    h = seed + kXxPrime5;
  }
  h += len;
  // The tail: 8-byte words, then at most one 4-byte word, then single bytes.
  while (end - p >= 8) {
    h ^= xxRound(0, readLe64(p));
    h = std::rotl(h, 27) * kXxPrime1 + kXxPrime4;
    p += 8;
  }
  if (end - p >= 4) {
    h ^= static_cast<uint64_t>(readLe32(p)) * kXxPrime1;
    h = std::rotl(h, 23) * kXxPrime2 + kXxPrime3;
    p += 4;
  }
  while (p < end) {
    h ^= static_cast<uint64_t>(*p) * kXxPrime5;
    h = std::rotl(h, 11) * kXxPrime1;
    ++p;
  }
  // Final avalanche.
  h ^= h >> 33;
  h *= kXxPrime2;
  h ^= h >> 29;
  h *= kXxPrime3;
  h ^= h >> 32;
  return h;
}

uint64_t hashKey(std::string_view value) { return xxHash64(value, 0); }

// ---------------------------------------------------------------------------------------------------
// Peak EWMA samples.

namespace {

// exp(-elapsed / decay): the weight the old average keeps after `elapsed` ns. A zero decay time means
// no memory at all.
double ewmaKeep(uint64_t elapsed_ns, uint64_t decay_ns) {
  if (decay_ns == 0) return elapsed_ns == 0 ? 1.0 : 0.0;
  return std::exp(-static_cast<double>(elapsed_ns) / static_cast<double>(decay_ns));
}

uint64_t steadyNowNs() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count());
}

}  // namespace

void recordLatency(Host& host, uint64_t latency_ns, bool error, uint64_t now_ns, const LbConfig& config) {
  // A failure is at least as bad as the penalty, and no better than the time it actually took.
  uint64_t sample = error ? std::max(latency_ns, config.ewma_error_penalty_ns) : latency_ns;
  sample = std::max<uint64_t>(sample, 1);  // 0 means "never measured"
  const uint64_t prev = host.passive().ewma_latency_ns.load(std::memory_order_relaxed);
  const uint64_t stamp = host.passive().ewma_stamp_ns.load(std::memory_order_relaxed);
  uint64_t next = sample;
  if (prev != 0 && sample < prev) {
    // Below the average: move toward the sample, the more the longer since the last update.
    const double keep = ewmaKeep(now_ns > stamp ? now_ns - stamp : 0, config.ewma_decay_ns);
    const double avg = static_cast<double>(prev) * keep + static_cast<double>(sample) * (1.0 - keep);
    next = std::max<uint64_t>(1, static_cast<uint64_t>(std::llround(avg)));
  }
  // Two relaxed stores, not one atomic update: a reader may briefly pair the new average with the old
  // stamp (or two workers may interleave), which only shifts the decay a little.
  host.passive().ewma_latency_ns.store(next, std::memory_order_relaxed);
  host.passive().ewma_stamp_ns.store(now_ns, std::memory_order_relaxed);
}

// ---------------------------------------------------------------------------------------------------
// The local cluster, as zone-aware routing sees it.

void LocalCluster::refresh(uint64_t version_id, const std::vector<HostSharedPtr>* hosts,
                           const std::atomic<uint64_t>* generation, double panic_threshold_percent) {
  if (hosts == nullptr) version_id = 0;
  const uint64_t gen = generation != nullptr ? generation->load(std::memory_order_acquire) : 0;
  if (version_id == version_id_ && gen == generation_) return;
  version_id_ = version_id;
  generation_ = gen;
  ++stamp_;
  healthy_.clear();
  healthy_total_ = 0;
  uint64_t total = 0;
  if (hosts != nullptr) {
    for (const HostSharedPtr& h : *hosts) {
      if (h->draining()) continue;
      ++total;
      if (!h->healthy()) continue;
      ++healthy_total_;
      static const Locality kNone;
      const Locality& l = h->locality ? *h->locality : kNone;
      auto it = std::find_if(healthy_.begin(), healthy_.end(), [&](const auto& e) { return e.first == l; });
      if (it == healthy_.end()) {
        healthy_.emplace_back(l, 1);
      } else {
        ++it->second;
      }
    }
  }
  const bool panic = total == 0 || 100.0 * static_cast<double>(healthy_total_) / static_cast<double>(total) <
                                       std::clamp(panic_threshold_percent, 0.0, 100.0);
  ok_ = !panic && healthyIn(locality_) > 0;
}

uint64_t LocalCluster::healthyIn(const Locality& l) const {
  for (const auto& [locality, n] : healthy_) {
    if (locality == l) return n;
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------------
// Building blocks.

namespace {

using u128 = unsigned __int128;

// splitmix64's output function: a cheap, good 64-bit mixer.
uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ULL;

// The worker's own random numbers (splitmix64: one add and a mix per draw, period 2^64).
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(mix64(seed ^ kGolden)) {}
  uint64_t next() { return mix64(state_ += kGolden); }
  // Uniform in [0, n), n >= 1, by multiply-shift (no division; bias below n / 2^32).
  uint32_t below(uint32_t n) { return static_cast<uint32_t>(((next() >> 32) * n) >> 32); }

 private:
  uint64_t state_;
};

// Smooth weighted round robin as a virtual-time scheduler (in the manner of WF2Q). Host i's k-th turn
// has start tag k/w_i and finish tag (k+1)/w_i; after p picks the virtual time is p/W, W the sum of the
// weights. A host is eligible once its start tag is at most the virtual time, and the eligible host
// with the earliest finish tag goes next (ties: the heavier host, then the lower index).
//  - Some host is always eligible: if every k_i/w_i exceeded p/W, the k_i would sum to more than p.
//  - Every W consecutive picks give each host exactly w_i turns: a pick among the first W happens at
//    virtual time below 1, so the host has had fewer than w_i turns before it; the turns sum to W. After
//    W picks the state is the initial one shifted by 1, so the schedule repeats with period W.
//  - Turns spread out: a host becomes eligible again only when the virtual time reaches its last finish
//    tag, so with 2:1:1 the heavy host alternates with the others instead of going twice in a row.
// Tags are compared exactly (cross-multiplied in 128 bits). A pick moves the hosts that became eligible
// from the waiting heap (by start tag) to the eligible heap (by finish tag) and puts the chosen host back
// into the waiting heap: O(log n) amortized, and no allocation, both heaps being reserved for all hosts.
// Heap entries carry the host's turns and weight, so comparisons touch no other memory.
class SmoothWeightedRoundRobin {
 public:
  void init(const std::vector<uint32_t>& weights, uint32_t pre_picks) {
    const auto n = static_cast<uint32_t>(weights.size());
    total_weight_ = 0;
    for (uint32_t w : weights) total_weight_ += w;
    picks_ = 0;
    waiting_.clear();
    eligible_.clear();
    waiting_.reserve(n);
    eligible_.reserve(n);
    for (uint32_t i = 0; i < n; ++i) waiting_.push_back({0, weights[i], i});
    std::make_heap(waiting_.begin(), waiting_.end(), LaterStart{});
    // Start each worker at its own phase of the (deterministic) schedule.
    for (uint32_t i = 0; i < pre_picks; ++i) pick();
  }

  uint32_t pick() {
    while (!waiting_.empty() && startReached(waiting_.front())) {
      std::pop_heap(waiting_.begin(), waiting_.end(), LaterStart{});
      eligible_.push_back(waiting_.back());
      waiting_.pop_back();
      std::push_heap(eligible_.begin(), eligible_.end(), LaterFinish{});
    }
    std::pop_heap(eligible_.begin(), eligible_.end(), LaterFinish{});
    Turn t = eligible_.back();
    eligible_.pop_back();
    ++t.turns;
    ++picks_;
    waiting_.push_back(t);
    std::push_heap(waiting_.begin(), waiting_.end(), LaterStart{});
    return t.index;
  }

 private:
  struct Turn {
    uint64_t turns;  // turns taken so far
    uint32_t weight;
    uint32_t index;  // the host
  };
  // Start tag <= virtual time: turns / w <= picks / W.
  bool startReached(const Turn& t) const { return u128(t.turns) * total_weight_ <= u128(picks_) * t.weight; }
  // Heap orders (std heaps keep the "largest" on top, so these say "a goes after b").
  struct LaterStart {
    bool operator()(const Turn& a, const Turn& b) const {
      const u128 sa = u128(a.turns) * b.weight, sb = u128(b.turns) * a.weight;
      return sa != sb ? sa > sb : a.index > b.index;
    }
  };
  struct LaterFinish {
    bool operator()(const Turn& a, const Turn& b) const {
      const u128 fa = u128(a.turns + 1) * b.weight, fb = u128(b.turns + 1) * a.weight;
      if (fa != fb) return fa > fb;
      if (a.weight != b.weight) return a.weight < b.weight;
      return a.index > b.index;
    }
  };

  uint64_t total_weight_ = 0;
  uint64_t picks_ = 0;
  std::vector<Turn> waiting_;
  std::vector<Turn> eligible_;
};

// Earliest deadline first over weights that may change from one turn to the next (least request's
// effective weight): an entry of weight w is due 1/w after its previous turn, and takes the weight it
// has at the time of its turn for the next one. O(log n) per pick; ties go to the entry queued first.
// Weights should be normalized to at most 1 so periods are >= 1 and deadlines keep their precision.
class EdfScheduler {
 public:
  void reset(size_t capacity) {
    heap_.clear();
    heap_.reserve(capacity);
    now_ = 0;
    seq_ = 0;
  }
  bool empty() const { return heap_.empty(); }
  // Entries of weight <= 0 are left out: they never get a turn.
  void add(uint32_t index, double weight) {
    if (!(weight > 0)) return;
    heap_.push_back({now_ + 1.0 / weight, seq_++, index});
    std::push_heap(heap_.begin(), heap_.end(), Later{});
  }
  template <class WeightOf>
  uint32_t pick(WeightOf&& weight_of) {
    std::pop_heap(heap_.begin(), heap_.end(), Later{});
    const Entry e = heap_.back();
    heap_.pop_back();
    now_ = e.deadline;
    if (now_ > kRebaseAt) rebase();
    // Never drop the entry on a pick: a vanishing weight becomes a very long period instead.
    add(e.index, std::max(weight_of(e.index), 1e-12));
    return e.index;
  }

 private:
  struct Entry {
    double deadline;
    uint64_t seq;
    uint32_t index;
  };
  struct Later {
    bool operator()(const Entry& a, const Entry& b) const {
      return a.deadline != b.deadline ? a.deadline > b.deadline : a.seq > b.seq;
    }
  };
  // Shifting every deadline by the same amount keeps the order and the heap; it keeps the clock small
  // enough that adding a period of 1 still changes it.
  static constexpr double kRebaseAt = 1e12;
  void rebase() {
    for (Entry& e : heap_) e.deadline -= now_;
    now_ = 0;
  }

  std::vector<Entry> heap_;
  double now_ = 0;
  uint64_t seq_ = 0;
};

// One set of candidates a policy chooses among, with that policy's state for it.
struct HostList {
  std::vector<const Host*> hosts;
  std::vector<uint32_t> weights;  // load_balancing_weight when the view was built
  uint32_t max_weight = 0;
  bool equal_weights = true;
  uint32_t rr_next = 0;          // round robin over equal weights: the next index
  SmoothWeightedRoundRobin wrr;  // round robin over unequal weights
  EdfScheduler edf;              // least request over unequal weights

  void add(const Host* h, uint32_t w) {
    if (!hosts.empty() && w != weights.front()) equal_weights = false;
    hosts.push_back(h);
    weights.push_back(w);
    max_weight = std::max(max_weight, w);
  }
  uint32_t size() const { return static_cast<uint32_t>(hosts.size()); }
  // Empties the list but keeps its memory for the next build. The schedulers are set up again before
  // the list is used.
  void clear() {
    hosts.clear();
    weights.clear();
    max_weight = 0;
    equal_weights = true;
    rr_next = 0;
  }
};

// The localities of one level for one kind of host (healthy or degraded), for locality-weighted
// balancing: a locality is picked first, then the policy picks among its hosts of that kind.
struct LocalityGroup {
  std::vector<HostList> lists;  // one per locality with at least one host of the kind
  EdfScheduler picker;          // by locality weight x availability (constant until the next rebuild)
  std::vector<double> weights;  // the picker's weight of each entry of `lists`
};

// A host and its share of a hash table (the shares of one table sum to 1).
struct WeightedHost {
  const Host* host;
  uint32_t key_index;  // into Balancer's per-host hash keys
  double weight;
};

bool isPrime(uint64_t n) {
  if (n < 2) return false;
  for (uint64_t d = 2; d * d <= n; ++d) {
    if (n % d == 0) return false;
  }
  return true;
}

// Working memory of table builds, kept by the balancer so that rebuilds reuse it.
struct TableScratch {
  struct Point {
    uint64_t hash;
    uint32_t host;  // index into the hosts being placed
  };
  struct Walk {
    uint64_t pos, skip;  // the next slot of the host's permutation, and its step
    double target;       // the round*weight at which the host has its next turn
  };
  std::vector<WeightedHost> hosts;
  std::vector<uint64_t> counts;
  std::vector<Point> points;
  std::vector<Walk> walks;
  std::string name;
};

// A consistent-hashing table, ring or Maglev, mapping a 64-bit hash to a host. Its memory is kept from
// one build to the next (a 65537-slot Maglev table is 512 KiB: allocating it afresh costs page faults).
class HashTable {
 public:
  void clear() {
    hashes_.clear();
    hosts_.clear();
  }

  // Ketama-style ring: every host gets points in proportion to its share, each at the hash of
  // "<key>_<n>", n = 0, 1, ... (Envoy's point names); a hash maps to the first point at or after it,
  // wrapping around.
  //
  // Point counts differ from Envoy's in one respect. Envoy scales the ring so it holds about
  // ring_min_size points whatever the host count, so adding a 5th host to 4 takes every old host from
  // 256 points to 205, and the keys on the dropped points move too (about 30% of keys instead of 20%).
  // Here the lightest host gets a power-of-two number of points (the smallest that makes the ring at
  // least ring_min_size) and the others proportionally more, so the counts only change when the host
  // count crosses a power of two: adding a host usually moves just the keys the new host takes. The
  // ring then holds between ring_min_size and twice that, capped at ring_max_size (every host keeps at
  // least one point).
  void buildRing(TableScratch& scratch, const std::vector<std::string>& keys, const LbConfig& config) {
    maglev_ = false;
    clear();
    const std::vector<WeightedHost>& hosts = scratch.hosts;
    if (hosts.empty()) return;
    double min_share = 1.0;
    for (const WeightedHost& h : hosts) min_share = std::min(min_share, h.weight);
    const double min_size = static_cast<double>(std::max<uint64_t>(config.ring_min_size, 1));
    const double max_size = static_cast<double>(std::max<uint64_t>(config.ring_max_size, 1));
    const uint64_t lightest = std::bit_ceil(static_cast<uint64_t>(std::max(1.0, std::ceil(min_size * min_share))));
    std::vector<uint64_t>& counts = scratch.counts;
    counts.resize(hosts.size());
    double total = 0;
    for (size_t i = 0; i < hosts.size(); ++i) {
      counts[i] = std::max<uint64_t>(1, std::llround(static_cast<double>(lightest) * hosts[i].weight / min_share));
      total += static_cast<double>(counts[i]);
    }
    if (total > max_size) {
      // Too big: plain proportional counts at the maximum size.
      total = 0;
      for (size_t i = 0; i < hosts.size(); ++i) {
        counts[i] = std::max<uint64_t>(1, std::llround(max_size * hosts[i].weight));
        total += static_cast<double>(counts[i]);
      }
    }
    std::vector<TableScratch::Point>& points = scratch.points;
    points.clear();
    points.reserve(static_cast<size_t>(total));
    std::string& name = scratch.name;
    for (uint32_t i = 0; i < hosts.size(); ++i) {
      name.assign(keys[hosts[i].key_index]);
      name.push_back('_');
      const size_t prefix = name.size();
      for (uint64_t n = 0; n < counts[i]; ++n) {
        char digits[24];
        const auto res = std::to_chars(digits, digits + sizeof(digits), n);
        name.resize(prefix);
        name.append(digits, res.ptr);
        points.push_back({hashKey(name), i});
      }
    }
    // Equal hashes are ordered by host key, so every worker (and any host order) builds the same ring.
    std::sort(points.begin(), points.end(), [&](const TableScratch::Point& a, const TableScratch::Point& b) {
      if (a.hash != b.hash) return a.hash < b.hash;
      return keys[hosts[a.host].key_index] < keys[hosts[b.host].key_index];
    });
    hashes_.reserve(points.size());
    hosts_.reserve(points.size());
    for (const TableScratch::Point& p : points) {
      hashes_.push_back(p.hash);
      hosts_.push_back(hosts[p.host].host);
    }
  }

  // Maglev (Eisenbud et al., NSDI 2016) with weights: each host walks its own permutation of the table
  // slots (offset + n * skip mod M, M prime, so every slot comes up) and claims the first free one on
  // its turn. Unweighted, every host has one turn per round; weighted, a host of weight w has one every
  // max_weight / w rounds, so the slots split in proportion to the weights.
  void buildMaglev(TableScratch& scratch, const std::vector<std::string>& keys,
                   const std::vector<uint64_t>& offset_hash, const std::vector<uint64_t>& skip_hash,
                   uint64_t table_size) {
    maglev_ = true;
    clear();
    std::vector<WeightedHost>& hosts = scratch.hosts;
    if (hosts.empty()) return;
    const uint64_t m = table_size;
    // Turns go in host-key order, so the table does not depend on the order the hosts were listed in.
    std::sort(hosts.begin(), hosts.end(),
              [&](const WeightedHost& a, const WeightedHost& b) { return keys[a.key_index] < keys[b.key_index]; });
    std::vector<TableScratch::Walk>& walks = scratch.walks;
    walks.resize(hosts.size());
    double max_weight = 0;
    for (size_t i = 0; i < hosts.size(); ++i) {
      walks[i] = {offset_hash[hosts[i].key_index] % m, skip_hash[hosts[i].key_index] % (m - 1) + 1, 0.0};
      max_weight = std::max(max_weight, hosts[i].weight);
    }
    hosts_.assign(m, nullptr);
    uint64_t filled = 0;
    for (uint64_t round = 1; filled < m; ++round) {
      for (size_t i = 0; i < hosts.size() && filled < m; ++i) {
        TableScratch::Walk& w = walks[i];
        if (static_cast<double>(round) * hosts[i].weight < w.target) continue;
        w.target += max_weight;
        // The permutation is offset + n * skip (mod m) for n = 0, 1, ...: step through it.
        auto advance = [&] {
          w.pos += w.skip;
          if (w.pos >= m) w.pos -= m;
        };
        while (hosts_[w.pos] != nullptr) advance();
        hosts_[w.pos] = hosts[i].host;
        advance();
        ++filled;
      }
    }
  }

  // null when the table is empty.
  const Host* lookup(uint64_t hash) const {
    if (hosts_.empty()) return nullptr;
    if (maglev_) return hosts_[hash % hosts_.size()];
    // Ring: lower bound over the hashes alone (dense, cache-friendly), branch-free: the loop always
    // halves, and the compiler turns the select into a conditional move, so random keys cost no
    // mispredictions.
    const uint64_t* base = hashes_.data();
    size_t n = hashes_.size();
    while (n > 1) {
      const size_t half = n / 2;
      base = base[half] < hash ? base + half : base;
      n -= half;
    }
    const size_t i = static_cast<size_t>(base - hashes_.data()) + (*base < hash ? 1 : 0);
    return hosts_[i == hashes_.size() ? 0 : i];
  }

 private:
  bool maglev_ = false;
  std::vector<uint64_t> hashes_;    // ring: the points' hashes, ascending
  std::vector<const Host*> hosts_;  // ring: each point's host; Maglev: the lookup table
};

// A level's hosts of one locality while the view is built.
struct LocalityBucket {
  const Locality* locality;
  uint32_t weight;  // the locality's load_balancing_weight (from its first host)
  HostList healthy, degraded, all;
};

struct Level {
  uint32_t priority = 0;
  HostList healthy, degraded, all;
  uint32_t healthy_load = 0;   // percent of requests to this level's healthy hosts
  uint32_t degraded_load = 0;  // ... and to its degraded ones
  bool panic = false;
  LocalityGroup healthy_localities, degraded_localities;
  HashTable healthy_table, degraded_table, all_table;  // hash policies; empty: not asked for

  // Ready for a new build, keeping the lists' memory: a rebuild over thousands of hosts then neither
  // regrows vectors nor faults pages in again.
  void reset(uint32_t new_priority, size_t hosts_hint) {
    priority = new_priority;
    for (HostList* l : {&healthy, &degraded, &all}) l->clear();
    all.hosts.reserve(hosts_hint);
    all.weights.reserve(hosts_hint);
    healthy.hosts.reserve(hosts_hint);
    healthy.weights.reserve(hosts_hint);
    healthy_load = degraded_load = 0;
    panic = false;
    healthy_localities = {};
    degraded_localities = {};
    healthy_table.clear();
    degraded_table.clear();
    all_table.clear();
  }
};

enum class Source { Healthy, Degraded };

// Envoy's priority load: first the healthy load, level by level in proportion to each level's healthy
// availability (normalized so the levels' availability sums to at most 100), then what is left the same
// way over degraded availability; rounding leftovers go to the first level with availability. Panic: a
// level is in panic when the levels together are not fully available and its own healthy+degraded share
// is below the threshold; when every level is, the load is split by host count instead.
void computeLoads(std::vector<Level>& levels, const LbConfig& config) {
  const size_t n = levels.size();
  if (n == 0) return;
  const uint64_t factor = config.overprovisioning_factor;
  std::vector<uint32_t> health(n, 0), degraded(n, 0);
  uint32_t availability = 0;
  for (size_t i = 0; i < n; ++i) {
    const uint64_t total = levels[i].all.size();
    if (total == 0) continue;
    health[i] = static_cast<uint32_t>(std::min<uint64_t>(100, factor * levels[i].healthy.size() / total));
    degraded[i] = static_cast<uint32_t>(std::min<uint64_t>(100, factor * levels[i].degraded.size() / total));
    availability += health[i] + degraded[i];
  }
  const uint32_t normalized = std::min<uint32_t>(100, availability);
  const double threshold = std::clamp(config.panic_threshold_percent, 0.0, 100.0);
  const bool panic_enabled = threshold > 0;

  if (normalized > 0) {
    // Hands out up to `load` percent over `avail`; returns what is left and the first level with any.
    auto distribute = [&](const std::vector<uint32_t>& avail, uint32_t load, auto member,
                          int& first) -> uint32_t {
      for (size_t i = 0; i < n; ++i) {
        if (first < 0 && avail[i] > 0) first = static_cast<int>(i);
        const uint32_t share = std::min(load, avail[i] * 100 / normalized);
        levels[i].*member = share;
        load -= share;
      }
      return load;
    };
    int first_healthy = -1, first_degraded = -1;
    uint32_t left = distribute(health, 100, &Level::healthy_load, first_healthy);
    left = distribute(degraded, left, &Level::degraded_load, first_degraded);
    if (left > 0) {
      if (first_healthy >= 0) {
        levels[first_healthy].healthy_load += left;
      } else {
        levels[first_degraded].degraded_load += left;
      }
    }
  } else if (!panic_enabled) {
    // Nothing available and no panic: the load must still sum to 100; P0's empty healthy list then
    // makes the choice fail.
    levels[0].healthy_load = 100;
    return;
  }

  if (!panic_enabled || normalized == 100) return;
  bool all_panic = true;
  for (size_t i = 0; i < n; ++i) {
    const double total = static_cast<double>(levels[i].all.size());
    const double available_percent =
        total == 0 ? 0.0 : 100.0 * static_cast<double>(levels[i].healthy.size() + levels[i].degraded.size()) / total;
    levels[i].panic = available_percent < threshold;
    all_panic = all_panic && levels[i].panic;
  }
  if (!all_panic) return;
  // Every level in panic: split by (non-draining) host count, leftovers to the first non-empty level.
  uint64_t hosts = 0;
  for (const Level& l : levels) hosts += l.all.size();
  uint32_t left = 100;
  int first = -1;
  for (size_t i = 0; i < n; ++i) {
    levels[i].healthy_load = hosts == 0 ? 0 : static_cast<uint32_t>(100 * levels[i].all.size() / hosts);
    levels[i].degraded_load = 0;
    left -= levels[i].healthy_load;
    if (first < 0 && levels[i].all.size() > 0) first = static_cast<int>(i);
  }
  levels[first < 0 ? 0 : first].healthy_load += left;
}

// ---------------------------------------------------------------------------------------------------
// The balancer.

constexpr uint32_t kMaxChoices = 64;  // least request's choice_count is capped here

class Balancer final : public LoadBalancer {
 public:
  Balancer(const LbConfig& config, std::vector<HostSharedPtr> hosts, const std::atomic<uint64_t>* generation,
           uint64_t seed, uint32_t rotation_offset, const LocalCluster* local, const ZoneStats* zone_stats)
      : config_(config), hosts_(std::move(hosts)), generation_(generation), rng_(seed), rotation_offset_(rotation_offset) {
    hashing_ = config_.policy == LbConfig::Policy::RingHash || config_.policy == LbConfig::Policy::Maglev;
    // Zone-aware routing: not with hash policies or locality weights (Envoy does one or the other).
    if (!hashing_ && !config_.locality_weighted) local_ = local;
    if (zone_stats != nullptr) zone_stats_ = *zone_stats;
    if (config_.policy == LbConfig::Policy::Maglev) {
      // The permutation walk only covers every slot when the size is prime.
      maglev_size_ = std::max<uint64_t>(config_.maglev_table_size, 2);
      while (!isPrime(maglev_size_)) ++maglev_size_;
    }
    if (hashing_) {
      // Hosts never change for this balancer's lifetime: hash their keys once.
      keys_.reserve(hosts_.size());
      for (const HostSharedPtr& h : hosts_) {
        key_index_.emplace(h.get(), static_cast<uint32_t>(keys_.size()));
        keys_.push_back(config_.use_hostname_for_hashing && !h->hostname().empty() ? h->hostname()
                                                                               : h->address.asString());
      }
      if (config_.policy == LbConfig::Policy::Maglev) {
        for (const std::string& k : keys_) {
          offset_hash_.push_back(xxHash64(k, 0));
          skip_hash_.push_back(xxHash64(k, 1));
        }
      }
    }
    rebuild();
  }

  const Host* chooseHost(const LbContext& context) override {
    if ((generation_ != nullptr && generation_->load(std::memory_order_acquire) != built_generation_) ||
        (local_ != nullptr && local_->stamp() != built_local_stamp_)) {
      rebuild();
    }
    // retry_host_predicate previous_hosts: re-pick while the pick is one to avoid, then take the last.
    const uint32_t attempts = context.avoid_count > 0 ? 1 + context.host_selection_retry_max_attempts : 1;
    const Host* host = nullptr;
    for (uint32_t attempt = 0; attempt < attempts; ++attempt) {
      host = chooseOnce(context, attempt);
      if (host == nullptr || !context.shouldAvoid(host)) return host;
    }
    return host;
  }

 private:
  void rebuild();
  void addHost(Level& level, std::vector<LocalityBucket>& buckets,
               std::unordered_map<const Locality*, uint32_t>& bucket_of, const Host& h) const;
  void buildLocalityGroup(LocalityGroup& group, std::vector<LocalityBucket>& buckets, bool healthy);
  void buildTable(HashTable& table, const HostList& list, const std::vector<LocalityBucket>& buckets,
                  HostList LocalityBucket::*member);
  void initPolicyState(HostList& list);
  void planZones(std::vector<LocalityBucket>* p0_buckets);
  HostList* zoneList();
  void countZone(stats::Counter ZoneStats::*c) {
    if (zone_stats_) stats::inc((*zone_stats_).*c);
  }
  const Host* chooseOnce(const LbContext& context, uint32_t attempt);
  const Host* pick(HostList& list, const LbContext& context);
  template <class Score>
  const Host* pickFewest(HostList& list, uint32_t choices, Score&& score);

  const LbConfig config_;
  const std::vector<HostSharedPtr> hosts_;  // keeps the hosts alive; views point into them
  const std::atomic<uint64_t>* const generation_;
  uint64_t built_generation_ = 0;
  Rng rng_;
  uint32_t rotation_offset_;
  bool hashing_ = false;
  uint64_t maglev_size_ = 0;
  std::vector<std::string> keys_;     // hash policies: each host's hashed key (address or hostname)
  std::vector<uint64_t> offset_hash_;  // Maglev: xxHash64(key, 0) and xxHash64(key, 1) per host
  std::vector<uint64_t> skip_hash_;
  std::unordered_map<const Host*, uint32_t> key_index_;  // host -> index into keys_ (hash policies)
  std::vector<Level> levels_;
  std::vector<std::pair<uint32_t, uint32_t>> order_;  // rebuild's scratch: (priority, host index)
  TableScratch scratch_;                              // hash table builds' scratch
  // Zone-aware routing (null: off for this balancer).
  const LocalCluster* local_ = nullptr;
  std::optional<ZoneStats> zone_stats_;
  uint64_t built_local_stamp_ = 0;
  enum class ZoneMode { Off, AllDirect, Residual };
  ZoneMode zone_mode_ = ZoneMode::Off;
  std::vector<HostList> zone_lists_;      // priority 0's healthy hosts per locality, the local one first
  uint32_t zone_local_share_ = 0;         // Residual: basis points of choices kept in the local locality
  std::vector<uint64_t> zone_residual_;   // Residual: cumulative residual capacity, per zone_lists_ entry
};

// Files one host of the level being built under its lists (and its locality's, when locality-weighted).
void Balancer::addHost(Level& level, std::vector<LocalityBucket>& buckets,
                       std::unordered_map<const Locality*, uint32_t>& bucket_of, const Host& h) const {
  static const Locality kNoLocality;
  // Draining hosts take no new request at all, not even in panic, and weigh in no level's health.
  if (h.draining()) return;
  // Locality-weighted: a locality without weight takes no traffic (Envoy leaves its hosts out).
  const uint32_t locality_weight = h.locality_weight.load(std::memory_order_relaxed);
  if (config_.locality_weighted && locality_weight == 0) return;
  const uint32_t w = std::max<uint32_t>(1, h.weight.load(std::memory_order_relaxed));
  // Each predicate reloads the flags; a change in between bumps the generation, so it is rebuilt again.
  const bool healthy = h.healthy();
  const bool degraded = !healthy && h.degraded();
  level.all.add(&h, w);
  if (healthy) level.healthy.add(&h, w);
  if (degraded) level.degraded.add(&h, w);
  if (!config_.locality_weighted && local_ == nullptr) return;
  // Hosts of one locality normally share one Locality object; equal ones that do not are merged.
  const Locality* loc = h.locality ? h.locality.get() : &kNoLocality;
  auto [it, inserted] = bucket_of.try_emplace(loc, 0);
  if (inserted) {
    uint32_t b = 0;
    while (b < buckets.size() && !(*buckets[b].locality == *loc)) ++b;
    if (b == buckets.size()) buckets.push_back(LocalityBucket{loc, locality_weight, {}, {}, {}});
    it->second = b;
  }
  LocalityBucket& bucket = buckets[it->second];
  bucket.all.add(&h, w);
  if (healthy) bucket.healthy.add(&h, w);
  if (degraded) bucket.degraded.add(&h, w);
}

void Balancer::rebuild() {
  // Read the generation before the hosts: a change made while building bumps it again, and the next
  // choice rebuilds once more.
  built_generation_ = generation_ != nullptr ? generation_->load(std::memory_order_acquire) : 0;

  // Hosts by priority, keeping the listed order within a level (the keys are copied out first so the
  // sort does not chase host pointers).
  order_.resize(hosts_.size());
  for (uint32_t i = 0; i < order_.size(); ++i) order_[i] = {hosts_[i]->priority, i};
  std::sort(order_.begin(), order_.end());

  std::vector<std::vector<LocalityBucket>> buckets_per_level;
  std::unordered_map<const Locality*, uint32_t> bucket_of;  // per level: locality object -> bucket
  size_t used = 0;  // levels_[0, used) are this build's; Level objects are reused across builds
  for (size_t run = 0, run_end = 0; run < order_.size(); run = run_end) {
    // One run of equal priorities is one level.
    const uint32_t priority = order_[run].first;
    while (run_end < order_.size() && order_[run_end].first == priority) ++run_end;
    if (used == levels_.size()) levels_.emplace_back();
    Level& level = levels_[used++];
    level.reset(priority, run_end - run);
    buckets_per_level.emplace_back();
    bucket_of.clear();
    for (size_t k = run; k < run_end; ++k) {
      addHost(level, buckets_per_level.back(), bucket_of, *hosts_[order_[k].second]);
    }
    // A level with nothing left to offer (all draining or weightless) is no level: it would only ever
    // count as empty, which changes no other level's load.
    if (level.all.hosts.empty()) {
      --used;
      buckets_per_level.pop_back();
    }
  }
  levels_.resize(used);

  computeLoads(levels_, config_);
  planZones(buckets_per_level.empty() ? nullptr : &buckets_per_level[0]);

  for (size_t i = 0; i < levels_.size(); ++i) {
    Level& level = levels_[i];
    std::vector<LocalityBucket>& buckets = buckets_per_level[i];
    if (hashing_) {
      // Tables only for the kinds of host this level will be asked for.
      if (level.panic) {
        buildTable(level.all_table, level.all, buckets, &LocalityBucket::all);
      } else {
        if (level.healthy_load > 0) buildTable(level.healthy_table, level.healthy, buckets, &LocalityBucket::healthy);
        if (level.degraded_load > 0) {
          buildTable(level.degraded_table, level.degraded, buckets, &LocalityBucket::degraded);
        }
      }
      continue;
    }
    // Scheduler state only for the lists choices can reach (a weighted round robin or least request
    // over 10,000 hosts costs milliseconds to set up).
    if (level.panic) {
      initPolicyState(level.all);
      continue;
    }
    if (config_.locality_weighted) {
      if (level.healthy_load > 0) buildLocalityGroup(level.healthy_localities, buckets, true);
      if (level.degraded_load > 0) buildLocalityGroup(level.degraded_localities, buckets, false);
    }
    // The level-wide lists serve when there is no locality to pick.
    if (level.healthy_load > 0 && level.healthy_localities.picker.empty()) initPolicyState(level.healthy);
    if (level.degraded_load > 0 && level.degraded_localities.picker.empty()) initPolicyState(level.degraded);
  }
}

// Envoy's effective locality weight: the locality's weight x its availability, availability being the
// share of its (non-draining) hosts of the kind, scaled by the overprovisioning factor and capped at 1.
void Balancer::buildLocalityGroup(LocalityGroup& group, std::vector<LocalityBucket>& buckets, bool healthy) {
  const double factor = static_cast<double>(config_.overprovisioning_factor) / 100.0;
  double max_weight = 0;
  for (LocalityBucket& b : buckets) {
    HostList& list = healthy ? b.healthy : b.degraded;
    if (list.hosts.empty()) continue;
    const double share = static_cast<double>(list.size()) / static_cast<double>(b.all.size());
    const double weight = static_cast<double>(b.weight) * std::min(1.0, factor * share);
    if (!(weight > 0)) continue;
    initPolicyState(list);
    group.lists.push_back(std::move(list));
    group.weights.push_back(weight);
    max_weight = std::max(max_weight, weight);
  }
  group.picker.reset(group.lists.size());
  for (uint32_t i = 0; i < group.lists.size(); ++i) group.picker.add(i, group.weights[i] / max_weight);
  for (uint32_t i = 0; i < group.weights.size(); ++i) group.weights[i] /= max_weight;
  // Each worker starts at its own point of the locality schedule.
  if (!group.lists.empty()) {
    const uint32_t skip = rng_.below(static_cast<uint32_t>(group.lists.size()));
    for (uint32_t i = 0; i < skip; ++i) group.picker.pick([&](uint32_t l) { return group.weights[l]; });
  }
}

// A ring or Maglev table over `list`, each host weighted by its share. Locality-weighted (Envoy's
// normalization): a host's share is its locality's share of the locality weights times its own share of
// its locality's host weights, over the localities with hosts of this kind.
void Balancer::buildTable(HashTable& table, const HostList& list, const std::vector<LocalityBucket>& buckets,
                          HostList LocalityBucket::*member) {
  std::vector<WeightedHost>& weighted = scratch_.hosts;
  weighted.clear();
  weighted.reserve(list.size());
  if (config_.locality_weighted) {
    double locality_sum = 0;
    for (const LocalityBucket& b : buckets) {
      if (!(b.*member).hosts.empty()) locality_sum += b.weight;
    }
    for (const LocalityBucket& b : buckets) {
      const HostList& l = b.*member;
      if (l.hosts.empty()) continue;
      double host_sum = 0;
      for (uint32_t w : l.weights) host_sum += w;
      for (uint32_t i = 0; i < l.size(); ++i) {
        const double share = (b.weight / locality_sum) * (l.weights[i] / host_sum);
        weighted.push_back({l.hosts[i], key_index_.at(l.hosts[i]), share});
      }
    }
  } else {
    double sum = 0;
    for (uint32_t w : list.weights) sum += w;
    for (uint32_t i = 0; i < list.size(); ++i) {
      weighted.push_back({list.hosts[i], key_index_.at(list.hosts[i]), list.weights[i] / sum});
    }
  }
  if (config_.policy == LbConfig::Policy::RingHash) {
    table.buildRing(scratch_, keys_, config_);
  } else {
    table.buildMaglev(scratch_, keys_, offset_hash_, skip_hash_, maglev_size_);
  }
}

// Zone-aware routing's plan for priority 0, from this cluster's healthy hosts per locality and the local
// cluster's (shares in basis points). Left off (ZoneMode::Off) whenever a condition for it fails.
void Balancer::planZones(std::vector<LocalityBucket>* p0_buckets) {
  zone_mode_ = ZoneMode::Off;
  zone_lists_.clear();
  zone_residual_.clear();
  if (local_ == nullptr) return;
  built_local_stamp_ = local_->stamp();
  if (p0_buckets == nullptr || levels_.empty() || levels_[0].priority != 0) return;
  const Level& p0 = levels_[0];
  std::vector<LocalityBucket>& buckets = *p0_buckets;
  // One locality (or none of this cluster's hosts in ours): there is nothing to prefer.
  size_t local_bucket = buckets.size();
  for (size_t i = 0; i < buckets.size(); ++i) {
    if (*buckets[i].locality == local_->locality()) local_bucket = i;
  }
  if (buckets.size() < 2 || local_bucket == buckets.size() || buckets[local_bucket].healthy.hosts.empty()) return;
  if (!local_->ok()) {
    countZone(&ZoneStats::local_cluster_not_ok);
    return;
  }
  if (p0.healthy.size() < config_.zone_min_cluster_size) {
    countZone(&ZoneStats::cluster_too_small);
    return;
  }
  if (p0.panic) return;
  // Shares of the healthy hosts, this cluster's (upstream) and the local cluster's, per locality.
  const uint64_t upstream_total = p0.healthy.size();
  const uint64_t local_total = local_->healthyTotal();
  auto upstreamShare = [&](const LocalityBucket& b) { return 10000 * b.healthy.size() / upstream_total; };
  auto localShare = [&](const LocalityBucket& b) { return 10000 * local_->healthyIn(*b.locality) / local_total; };
  const uint64_t upstream_local = upstreamShare(buckets[local_bucket]);
  const uint64_t local_local = localShare(buckets[local_bucket]);
  zone_lists_.push_back(std::move(buckets[local_bucket].healthy));
  zone_residual_.push_back(0);
  uint64_t residual = 0;
  for (size_t i = 0; i < buckets.size(); ++i) {
    if (i == local_bucket || buckets[i].healthy.hosts.empty()) continue;
    // Residual capacity: how much more of this cluster than of the local cluster the locality holds.
    const uint64_t up = upstreamShare(buckets[i]), lo = localShare(buckets[i]);
    residual += up > lo ? up - lo : 0;
    zone_lists_.push_back(std::move(buckets[i].healthy));
    zone_residual_.push_back(residual);
  }
  for (HostList& l : zone_lists_) initPolicyState(l);
  if (upstream_local >= local_local || residual == 0) {
    zone_mode_ = ZoneMode::AllDirect;
  } else {
    zone_mode_ = ZoneMode::Residual;
    zone_local_share_ = static_cast<uint32_t>(10000 * upstream_local / local_local);
  }
}

// The locality list a priority-0 healthy choice uses under zone-aware routing, or null (no preference).
HostList* Balancer::zoneList() {
  if (config_.zone_routing_enabled_percent < 100.0 &&
      static_cast<double>(rng_.below(10000)) >= config_.zone_routing_enabled_percent * 100.0) {
    return nullptr;
  }
  if (zone_mode_ == ZoneMode::AllDirect) {
    countZone(&ZoneStats::routing_all_directly);
    return &zone_lists_[0];
  }
  if (rng_.below(10000) < zone_local_share_) {
    countZone(&ZoneStats::routing_sampled);
    return &zone_lists_[0];
  }
  countZone(&ZoneStats::routing_cross_zone);
  const uint64_t r = rng_.below(static_cast<uint32_t>(zone_residual_.back()));
  size_t i = 1;
  while (zone_residual_[i] <= r) ++i;  // ends: the last entry is the total, above r
  return &zone_lists_[i];
}

void Balancer::initPolicyState(HostList& list) {
  if (list.hosts.empty()) return;
  const uint32_t n = list.size();
  switch (config_.policy) {
    case LbConfig::Policy::RoundRobin:
      // Equal weights: plain rotation, so workers do not move in lockstep, from the worker's own offset
      // when it gave one (worker i starts at host i: a few connections spread over the workers still
      // reach every host evenly), else from a random start.
      if (list.equal_weights) {
        list.rr_next = rotation_offset_ != kRandomRotation ? rotation_offset_ % n : rng_.below(n);
      } else {
        list.wrr.init(list.weights, rng_.below(n));
      }
      break;
    case LbConfig::Policy::LeastRequest:
      if (!list.equal_weights) {
        // Normalized to the heaviest host; active requests come in from the first turn on.
        auto weight_of = [&](uint32_t j) { return static_cast<double>(list.weights[j]) / list.max_weight; };
        list.edf.reset(n);
        for (uint32_t i = 0; i < n; ++i) list.edf.add(i, weight_of(i));
        const uint32_t skip = rng_.below(n);
        for (uint32_t i = 0; i < skip; ++i) list.edf.pick(weight_of);
      }
      break;
    default:
      break;
  }
}

const Host* Balancer::chooseOnce(const LbContext& context, uint32_t attempt) {
  if (levels_.empty()) return nullptr;
  // Hash policies pick the level from the key as well, so a key sticks to its level too.
  uint64_t hash = 0;
  if (hashing_) hash = context.hash_key ? *context.hash_key : rng_.next();
  const uint32_t percent =
      static_cast<uint32_t>((hashing_ && context.hash_key ? hash : rng_.next()) % 100);

  Level* level = nullptr;
  Source source = Source::Healthy;
  uint32_t sum = 0;
  for (Level& l : levels_) {
    sum += l.healthy_load;
    if (percent < sum) {
      level = &l;
      break;
    }
  }
  if (level == nullptr) {
    source = Source::Degraded;
    for (Level& l : levels_) {
      sum += l.degraded_load;
      if (percent < sum) {
        level = &l;
        break;
      }
    }
  }
  if (level == nullptr) return nullptr;  // unreachable: the loads sum to 100
  // zone_aware_lb_config.fail_traffic_on_panic: a level in panic takes no request at all.
  if (level->panic && config_.zone_fail_traffic_on_panic) return nullptr;

  if (hashing_) {
    const HashTable& table = level->panic                ? level->all_table
                             : source == Source::Healthy ? level->healthy_table
                                                         : level->degraded_table;
    // A re-pick for previous_hosts looks up a different, but still key-determined, point.
    return table.lookup(attempt == 0 ? hash : mix64(hash + attempt * kGolden));
  }

  HostList* list = nullptr;
  if (level->panic) {
    list = &level->all;
  } else if (zone_mode_ != ZoneMode::Off && level == &levels_[0] && source == Source::Healthy &&
             (list = zoneList()) != nullptr) {
    // Zone-aware routing chose the locality.
  } else {
    list = source == Source::Healthy ? &level->healthy : &level->degraded;
    LocalityGroup& group = source == Source::Healthy ? level->healthy_localities : level->degraded_localities;
    if (config_.locality_weighted && !group.picker.empty()) {
      list = &group.lists[group.picker.pick([&](uint32_t l) { return group.weights[l]; })];
    }
  }
  if (list->hosts.empty()) return nullptr;
  return pick(*list, context);
}

// Samples `choices` distinct hosts uniformly and returns the one with the lowest score (the first
// sampled on a tie, which is itself uniform). With choices >= n every host is scored, from a random start.
template <class Score>
const Host* Balancer::pickFewest(HostList& list, uint32_t choices, Score&& score) {
  const uint32_t n = list.size();
  if (choices >= n) {
    const uint32_t start = rng_.below(n);
    const Host* best = nullptr;
    double best_score = 0;
    for (uint32_t k = 0; k < n; ++k) {
      const Host* h = list.hosts[(start + k) % n];
      const double s = score(*h);
      if (best == nullptr || s < best_score) best = h, best_score = s;
    }
    return best;
  }
  // The j-th draw is uniform over the n - j hosts not drawn yet: draw r, then step it past the drawn
  // indices at or below it (kept sorted).
  uint32_t drawn[kMaxChoices];
  const Host* best = nullptr;
  double best_score = 0;
  for (uint32_t j = 0; j < choices; ++j) {
    uint32_t r = rng_.below(n - j);
    uint32_t pos = 0;
    while (pos < j && drawn[pos] <= r) ++r, ++pos;
    for (uint32_t k = j; k > pos; --k) drawn[k] = drawn[k - 1];
    drawn[pos] = r;
    const Host* h = list.hosts[r];
    const double s = score(*h);
    if (best == nullptr || s < best_score) best = h, best_score = s;
  }
  return best;
}

const Host* Balancer::pick(HostList& list, const LbContext& context) {
  const uint32_t n = list.size();
  if (n == 1) return list.hosts[0];
  switch (config_.policy) {
    case LbConfig::Policy::RoundRobin:
      if (list.equal_weights) {
        const uint32_t i = list.rr_next;
        list.rr_next = i + 1 == n ? 0 : i + 1;
        return list.hosts[i];
      }
      return list.hosts[list.wrr.pick()];

    case LbConfig::Policy::LeastRequest: {
      if (list.equal_weights) {
        const uint32_t choices = std::clamp<uint32_t>(config_.choice_count, 1, kMaxChoices);
        return pickFewest(list, choices, [](const Host& h) {
          return static_cast<double>(h.active_requests.load(std::memory_order_relaxed));
        });
      }
      // Unequal weights: EDF where a host's next period uses weight / (active + 1)^bias at its turn.
      const double bias = config_.active_request_bias;
      const uint32_t i = list.edf.pick([&](uint32_t j) {
        const double w = static_cast<double>(list.weights[j]) / list.max_weight;
        const double active = static_cast<double>(list.hosts[j]->active_requests.load(std::memory_order_relaxed));
        if (bias == 0.0) return w;
        if (bias == 1.0) return w / (active + 1);
        return w / std::pow(active + 1, bias);
      });
      return list.hosts[i];
    }

    case LbConfig::Policy::Random:
      // As Envoy's RANDOM: uniform, weights ignored.
      return list.hosts[rng_.below(n)];

    case LbConfig::Policy::PeakEwma: {
      // Cost = latency average decayed toward 0 since its last sample, x (active + 1). An unmeasured
      // host costs 0 so it gets probed. The clock is read at most once, and only when needed.
      uint64_t now = context.now_ns;
      return pickFewest(list, 2, [&](const Host& h) {
        const uint64_t ewma = h.passive().ewma_latency_ns.load(std::memory_order_relaxed);
        if (ewma == 0) return 0.0;
        if (now == 0) now = steadyNowNs();
        const uint64_t stamp = h.passive().ewma_stamp_ns.load(std::memory_order_relaxed);
        const double keep = ewmaKeep(now > stamp ? now - stamp : 0, config_.ewma_decay_ns);
        const double decayed = static_cast<double>(ewma) * keep;
        return decayed * (static_cast<double>(h.active_requests.load(std::memory_order_relaxed)) + 1);
      });
    }

    case LbConfig::Policy::RingHash:
    case LbConfig::Policy::Maglev:
      break;  // handled by the tables
  }
  return nullptr;
}

}  // namespace

LoadBalancerPtr createLoadBalancer(const LbConfig& config, std::vector<HostSharedPtr> hosts,
                                   const std::atomic<uint64_t>* health_generation, uint64_t seed,
                                   uint32_t rotation_offset, const LocalCluster* local, const ZoneStats* zone_stats) {
  return std::make_unique<Balancer>(config, std::move(hosts), health_generation, seed, rotation_offset, local,
                                    zone_stats);
}

}  // namespace strait::upstream
