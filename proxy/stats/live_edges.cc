#include "proxy/stats/live_edges.h"

#include <time.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>
#include <mutex>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/struct.pb.h"
#include "proxy/common/response_flags.h"
#include "proxy/network/connection.h"
#include "proxy/network/transport_socket.h"
#include "proxy/stats/istio_metrics.h"

namespace strait::stats::live {

namespace {

template <typename T>
void bump(std::atomic<T>& a, uint64_t by) {
  a.store(static_cast<T>(a.load(std::memory_order_relaxed) + by), std::memory_order_relaxed);
}

std::atomic<bool> g_enabled{true};

struct ErrorRecord {
  std::atomic<uint64_t> unix_ms{0};
  std::atomic<uint32_t> slot{0}, code{0}, flags{0};
};

// One worker's rings (made on first use per slot) and its recent errors.
struct WorkerTable {
  std::atomic<Ring*> rings[kSlots] = {};
  ErrorRecord errors[kRecentErrors];
  std::atomic<uint32_t> next_error{0};
  uint64_t generation = 0;
};

struct EdgeKey {
  Direction direction;
  Kind kind;
  std::string peer, identity;
  bool operator==(const EdgeKey&) const = default;
  template <typename H>
  friend H AbslHashValue(H h, const EdgeKey& k) {
    return H::combine(std::move(h), static_cast<uint8_t>(k.direction), static_cast<uint8_t>(k.kind), k.peer,
                      k.identity);
  }
};

// Process-wide: the edges' names and the workers' tables. `mu` is taken on rare paths only.
struct Tables {
  std::mutex mu;
  std::atomic<uint64_t> generation{1};  // resetForTest() bumps it: caches of slots are stale
  absl::flat_hash_map<EdgeKey, uint16_t> slots;
  std::vector<Edge> edges;  // by slot: names only
  std::vector<std::unique_ptr<WorkerTable>> workers;  // never freed: workers live as long as the process
  // Rings are never freed either (a reader may hold one); a reset only zeroes them.
};

Tables& tables() {
  static auto* instance = [] {
    auto* t = new Tables;
    Edge in, out;
    in.slot = kOverflowInbound;
    in.direction = Direction::Inbound;
    in.overflow = true;
    in.peer = "overflow";
    out.slot = kOverflowOutbound;
    out.direction = Direction::Outbound;
    out.overflow = true;
    out.peer = "overflow";
    t->edges = {in, out};
    return t;
  }();
  return *instance;
}

thread_local WorkerTable* tl_table = nullptr;

WorkerTable& workerTable() {
  if (tl_table == nullptr) {
    Tables& t = tables();
    auto w = std::make_unique<WorkerTable>();
    tl_table = w.get();
    std::lock_guard<std::mutex> lock(t.mu);
    t.workers.push_back(std::move(w));
  }
  return *tl_table;
}

Ring& ringFor(uint16_t slot) {
  WorkerTable& w = workerTable();
  if (slot >= kSlots) slot = kOverflowInbound;
  Ring* r = w.rings[slot].load(std::memory_order_relaxed);
  if (r == nullptr) {  // first use of this edge on this worker
    r = new Ring();
    w.rings[slot].store(r, std::memory_order_release);
  }
  return *r;
}

uint64_t unixMs() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count());
}

void noteError(uint16_t slot, uint32_t code, uint32_t flags) {
  WorkerTable& w = workerTable();
  const uint32_t i = w.next_error.load(std::memory_order_relaxed);
  w.next_error.store(i + 1, std::memory_order_relaxed);
  ErrorRecord& e = w.errors[i % kRecentErrors];
  e.slot.store(slot, std::memory_order_relaxed);
  e.code.store(code, std::memory_order_relaxed);
  e.flags.store(flags, std::memory_order_relaxed);
  e.unix_ms.store(unixMs(), std::memory_order_relaxed);
}

// Per-worker direct-mapped caches of slots (a miss costs one slotFor()).
struct ClusterSlot {
  uint32_t cluster = 0, principal = 0;
  uint64_t generation = 0;  // 0: empty
  uint64_t istio_generation = 0;  // principal ids are stats::istio's
  uint16_t slot = kNoSlot;
};
constexpr size_t kCache = 64;
thread_local ClusterSlot tl_cluster[kCache];
struct ConnPrincipal {
  uint64_t key = 0;  // connection id + 1; 0: empty
  uint64_t istio_generation = 0;
  uint32_t principal = 0;
};
thread_local ConnPrincipal tl_upstream[kCache];

}  // namespace

uint32_t latencyBucket(uint64_t us) {
  uint32_t b = 0;
  while (b < kLatencyBuckets - 1 && us > kLatencyBoundsUs[b]) ++b;
  return b;
}

double percentileUs(const std::array<uint64_t, kLatencyBuckets>& hist, double q) {
  uint64_t total = 0;
  for (uint64_t n : hist) total += n;
  if (total == 0) return 0;
  const auto rank = static_cast<uint64_t>(std::max(1.0, std::ceil(q * static_cast<double>(total))));
  uint64_t seen = 0;
  for (uint32_t b = 0; b < kLatencyBuckets; ++b) {
    if (hist[b] == 0) continue;
    if (seen + hist[b] < rank) {
      seen += hist[b];
      continue;
    }
    const double lo = b == 0 ? 0.0 : kLatencyBoundsUs[b - 1];
    if (b == kLatencyBuckets - 1) return lo;
    const double hi = kLatencyBoundsUs[b];
    return lo + (hi - lo) * static_cast<double>(rank - seen) / static_cast<double>(hist[b]);
  }
  return 0;
}

Bucket& Ring::at(uint64_t now_ms) {
  const uint64_t s = now_ms / 1000 + 1;  // +1: second 0 reads as "never used"
  Bucket& b = buckets_[s % kWindowSeconds];
  if (b.second.load(std::memory_order_relaxed) != s) {
    // A second this bucket last held a window ago (or never): start it over.
    b.requests.store(0, std::memory_order_relaxed);
    b.errors.store(0, std::memory_order_relaxed);
    b.connections.store(0, std::memory_order_relaxed);
    b.bytes_in.store(0, std::memory_order_relaxed);
    b.bytes_out.store(0, std::memory_order_relaxed);
    for (auto& l : b.latency) l.store(0, std::memory_order_relaxed);
    b.second.store(s, std::memory_order_relaxed);
  }
  return b;
}

void Ring::addRequest(uint64_t now_ms, uint64_t latency_us, bool error) {
  Bucket& b = at(now_ms);
  bump(b.requests, 1);
  if (error) bump(b.errors, 1);
  bump(b.latency[latencyBucket(latency_us)], 1);
}

void Ring::addConnection(uint64_t now_ms, bool error) {
  Bucket& b = at(now_ms);
  bump(b.connections, 1);
  if (error) bump(b.errors, 1);
}

void Ring::addBytes(uint64_t now_ms, uint64_t in, uint64_t out) {
  Bucket& b = at(now_ms);
  if (in) bump(b.bytes_in, in);
  if (out) bump(b.bytes_out, out);
}

void Ring::clear() {
  for (Bucket& b : buckets_) b.second.store(0, std::memory_order_relaxed);
}

void Ring::sumInto(uint64_t now_s, EdgeFigures& out) const {
  const uint64_t s = now_s + 1;
  for (const Bucket& b : buckets_) {
    const uint64_t bs = b.second.load(std::memory_order_relaxed);
    if (bs == 0 || bs > s || bs + kWindowSeconds <= s) continue;
    out.requests += b.requests.load(std::memory_order_relaxed);
    out.errors += b.errors.load(std::memory_order_relaxed);
    out.connections += b.connections.load(std::memory_order_relaxed);
    out.bytes_in += b.bytes_in.load(std::memory_order_relaxed);
    out.bytes_out += b.bytes_out.load(std::memory_order_relaxed);
    for (uint32_t i = 0; i < kLatencyBuckets; ++i) out.latency[i] += b.latency[i].load(std::memory_order_relaxed);
  }
}

absl::Status configureFromNode(const google::protobuf::Struct& md) {
  auto it = md.fields().find("STRAIT_LIVE_GRAPH");
  if (it == md.fields().end()) return absl::OkStatus();
  const auto& v = it->second;
  if (v.kind_case() == google::protobuf::Value::kBoolValue) {
    setEnabled(v.bool_value());
  } else if (v.kind_case() == google::protobuf::Value::kStringValue &&
             (v.string_value() == "true" || v.string_value() == "false")) {
    setEnabled(v.string_value() == "true");
  } else {
    return absl::InvalidArgumentError("node.metadata.STRAIT_LIVE_GRAPH: must be true or false");
  }
  return absl::OkStatus();
}

void setEnabled(bool on) { g_enabled.store(on, std::memory_order_relaxed); }
bool enabled() { return g_enabled.load(std::memory_order_relaxed); }

uint16_t slotFor(Direction d, Kind k, std::string_view peer, std::string_view identity) {
  Tables& t = tables();
  EdgeKey key{d, k, std::string(peer), std::string(identity)};
  std::lock_guard<std::mutex> lock(t.mu);
  auto it = t.slots.find(key);
  if (it != t.slots.end()) return it->second;
  if (t.edges.size() >= kSlots) return d == Direction::Inbound ? kOverflowInbound : kOverflowOutbound;
  Edge e;
  e.slot = static_cast<uint16_t>(t.edges.size());
  e.direction = d;
  e.kind = k;
  e.peer = key.peer;
  e.identity = key.identity;
  t.edges.push_back(e);
  t.slots.emplace(std::move(key), e.slot);
  return e.slot;
}

std::string_view peerPrincipal(const network::Connection& conn) {
  const network::SslInfo* ssl = conn.ssl();
  if (ssl == nullptr) return {};
  const auto& sans = ssl->uriSanPeerCertificate();
  return sans.empty() ? std::string_view() : std::string_view(sans.front());
}

std::string callerOf(const network::Connection& downstream) {
  const network::SslInfo* ssl = downstream.ssl();
  if (ssl != nullptr && ssl->peerCertificateValidated()) {
    const std::string_view p = peerPrincipal(downstream);
    if (!p.empty()) return std::string(p);
  }
  return downstream.remoteAddress().ip();
}

uint32_t upstreamPrincipal(const network::Connection& upstream) {
  if (upstream.ssl() == nullptr) return istio::kUnknown;
  ConnPrincipal& c = tl_upstream[upstream.id() % kCache];
  const uint64_t igen = istio::generation();  // ids made before a configure() are stale
  if (c.key == upstream.id() + 1 && c.istio_generation == igen) return c.principal;
  c.key = upstream.id() + 1;
  c.istio_generation = igen;
  c.principal = istio::internCached(peerPrincipal(upstream));
  return c.principal;
}

uint16_t inboundHttpSlot(const network::Connection& downstream, CachedSlot& cache) {
  const uint64_t gen = tables().generation.load(std::memory_order_relaxed) + 1;
  if (cache.generation == gen) return cache.slot;
  cache.generation = gen;
  cache.slot = slotFor(Direction::Inbound, Kind::Http, callerOf(downstream), "");
  return cache.slot;
}

uint16_t outboundHttpSlot(uint32_t cluster_index, std::string_view cluster_name, uint32_t principal) {
  ClusterSlot& c = tl_cluster[(cluster_index * 31u + principal) % kCache];
  const uint64_t gen = tables().generation.load(std::memory_order_relaxed);
  const uint64_t igen = istio::generation();
  if (c.generation == gen && c.istio_generation == igen && c.cluster == cluster_index && c.principal == principal) {
    return c.slot;
  }
  c.cluster = cluster_index;
  c.principal = principal;
  c.generation = gen;
  c.istio_generation = igen;
  c.slot = slotFor(Direction::Outbound, Kind::Http, cluster_name,
                   principal == istio::kUnknown ? std::string() : istio::idString(principal));
  return c.slot;
}

void recordRequest(uint16_t slot, uint64_t now_ms, uint64_t latency_us, uint32_t code, uint32_t flags) {
  if (slot == kNoSlot) return;
  // An error: a 5xx, no response at all, or a response cut short by a reset either way.
  constexpr uint32_t kResets = common::kUpstreamRemoteReset | common::kUpstreamConnectionTermination |
                               common::kLocalReset | common::kDownstreamConnectionTermination |
                               common::kDownstreamRemoteReset;
  const bool error = code >= 500 || code == 0 || (flags & kResets) != 0;
  ringFor(slot).addRequest(now_ms, latency_us, error);
  if (error) noteError(slot, code, flags);
}

void recordConnection(uint16_t slot, uint64_t now_ms, bool error, uint32_t flags) {
  if (slot == kNoSlot) return;
  ringFor(slot).addConnection(now_ms, error);
  if (error) noteError(slot, 0, flags);
}

void recordBytes(uint16_t slot, uint64_t now_ms, uint64_t in, uint64_t out) {
  if (slot == kNoSlot || (in == 0 && out == 0)) return;
  ringFor(slot).addBytes(now_ms, in, out);
}

uint64_t nowMs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000 + static_cast<uint64_t>(ts.tv_nsec) / 1000000;
}

Snapshot snapshot() {
  Tables& t = tables();
  Snapshot out;
  out.unix_ms = unixMs();
  const uint64_t now_s = nowMs() / 1000;
  std::lock_guard<std::mutex> lock(t.mu);  // the workers take it only to add a table or an edge
  out.all_edges = t.edges;
  for (Edge& e : out.all_edges) {
    for (const auto& w : t.workers) {
      if (const Ring* r = w->rings[e.slot].load(std::memory_order_acquire)) r->sumInto(now_s, e.figures);
    }
    const EdgeFigures& f = e.figures;
    if (f.requests || f.errors || f.connections || f.bytes_in || f.bytes_out) out.edges.push_back(e);
  }
  const uint64_t horizon = out.unix_ms - kWindowSeconds * 1000;
  for (const auto& w : t.workers) {
    for (const ErrorRecord& r : w->errors) {
      const uint64_t at = r.unix_ms.load(std::memory_order_relaxed);
      if (at == 0 || at < horizon) continue;
      out.errors.push_back(ErrorEvent{at, static_cast<uint16_t>(r.slot.load(std::memory_order_relaxed)),
                                      r.code.load(std::memory_order_relaxed), r.flags.load(std::memory_order_relaxed)});
    }
  }
  std::sort(out.errors.begin(), out.errors.end(), [](const ErrorEvent& a, const ErrorEvent& b) { return a.unix_ms > b.unix_ms; });
  if (out.errors.size() > kRecentErrors) out.errors.resize(kRecentErrors);
  return out;
}

void resetForTest() {
  Tables& t = tables();
  std::lock_guard<std::mutex> lock(t.mu);
  t.slots.clear();
  t.edges.resize(kFirstSlot);
  for (const auto& w : t.workers) {
    for (auto& r : w->rings) {
      if (Ring* ring = r.load(std::memory_order_relaxed)) ring->clear();
    }
    for (auto& e : w->errors) e.unix_ms.store(0, std::memory_order_relaxed);
  }
  t.generation.fetch_add(1, std::memory_order_relaxed);
}

}  // namespace strait::stats::live
