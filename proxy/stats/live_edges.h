#pragma once

// The live service map's figures (the admin's /graph and its page; proxy/server/live_graph.h): for each
// edge of this pod's traffic, requests, errors, latency percentiles and (TCP) bytes and connections
// over the last minute.
//
//   edges         by identity. Inbound: caller -> this workload, the caller being the downstream's
//                 SPIFFE URI SAN when the connection is mutual TLS, else its remote IP. Outbound: this
//                 workload -> callee, the callee being the cluster name plus the upstream TLS peer's
//                 URI SAN when there is one. At most kMaxEdges; past that an edge goes to the overflow
//                 edge of its direction ("overflow").
//   rare paths    an edge's slot is found once per downstream connection (inbound) or per cluster and
//                 upstream identity (outbound), under one process-wide lock, and cached per worker in
//                 small direct-mapped tables; the per-request cost is an integer compare.
//   per request   this worker's ring for the slot (made on its first use on that worker), the bucket of
//                 the current second, relaxed adds. No lock, no allocation, no name.
//   on demand     snapshot(): the main thread sums every worker's buckets of the last kWindowSeconds.
//                 A bucket a worker is reusing for a new second while it is read may be seen half
//                 reset: a figure for people, not for billing.
//
// Switched off (node metadata STRAIT_LIVE_GRAPH: "false"), every record call is one relaxed load.

#include <array>
#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"

namespace google::protobuf {
class Struct;
}
namespace strait::network {
class Connection;
}

namespace strait::stats::live {

inline constexpr uint32_t kWindowSeconds = 60;
inline constexpr uint32_t kMaxEdges = 128;            // besides the two overflow edges
inline constexpr uint16_t kOverflowInbound = 0;       // slot of the inbound overflow edge
inline constexpr uint16_t kOverflowOutbound = 1;      // slot of the outbound overflow edge
inline constexpr uint16_t kFirstSlot = 2;
inline constexpr uint16_t kSlots = kMaxEdges + kFirstSlot;
inline constexpr uint16_t kNoSlot = 0xffff;

// Latency buckets: upper bounds in microseconds; the last bucket is everything above the last bound.
inline constexpr uint32_t kLatencyBoundsUs[] = {250,    500,    1000,    2500,    5000,    10000,   25000,
                                                50000,  100000, 250000,  500000,  1000000, 2500000, 10000000};
inline constexpr uint32_t kLatencyBuckets = sizeof(kLatencyBoundsUs) / sizeof(kLatencyBoundsUs[0]) + 1;

enum class Direction : uint8_t { Inbound = 0, Outbound = 1 };
enum class Kind : uint8_t { Http = 0, Tcp = 1 };

// The bucket a latency falls in.
uint32_t latencyBucket(uint64_t us);
// The q-quantile (0 < q <= 1) of a histogram over kLatencyBuckets, in microseconds: the bucket holding
// the rank ceil(q * count), interpolated linearly inside it (the first bucket starts at 0; the last,
// unbounded one answers its lower bound). 0 for an empty histogram.
double percentileUs(const std::array<uint64_t, kLatencyBuckets>& hist, double q);

// One second of one edge on one worker. Written by that worker only (relaxed load + store).
struct Bucket {
  std::atomic<uint64_t> second{0};  // monotonic second this bucket holds (0: never used)
  std::atomic<uint32_t> requests{0}, errors{0}, connections{0};
  std::atomic<uint64_t> bytes_in{0}, bytes_out{0};
  std::atomic<uint32_t> latency[kLatencyBuckets] = {};
};

// One edge's figures over the window, summed over the workers.
struct EdgeFigures {
  uint64_t requests = 0, errors = 0, connections = 0, bytes_in = 0, bytes_out = 0;
  std::array<uint64_t, kLatencyBuckets> latency{};
};

// A ring of kWindowSeconds buckets, as one worker keeps it for one edge. add*() are the writer's;
// sumInto() the reader's. Public for the unit tests.
class Ring {
 public:
  void addRequest(uint64_t now_ms, uint64_t latency_us, bool error);
  void addConnection(uint64_t now_ms, bool error);
  void addBytes(uint64_t now_ms, uint64_t in, uint64_t out);
  // Adds the buckets of the seconds (now_s - kWindowSeconds, now_s] to `out`.
  void sumInto(uint64_t now_s, EdgeFigures& out) const;
  void clear();

 private:
  Bucket& at(uint64_t now_ms);
  Bucket buckets_[kWindowSeconds];
};

struct Edge {
  uint16_t slot = 0;
  Direction direction = Direction::Inbound;
  Kind kind = Kind::Http;
  bool overflow = false;
  std::string peer;      // caller identity / IP (inbound) or cluster name (outbound)
  std::string identity;  // outbound: the upstream's SPIFFE id, when its connection is TLS
  EdgeFigures figures;
};

// A recent failed request or connection (the page's "recent errors").
struct ErrorEvent {
  uint64_t unix_ms = 0;
  uint16_t slot = 0;
  uint32_t code = 0;   // HTTP status (0: no response)
  uint32_t flags = 0;  // common::ResponseFlag bits
};

struct Snapshot {
  uint64_t unix_ms = 0;
  std::vector<Edge> edges;          // edges with any figure in the window, by slot
  std::vector<ErrorEvent> errors;   // newest first, at most kRecentErrors
  std::vector<Edge> all_edges;      // every edge known (for names of the errors' slots)
};
inline constexpr uint32_t kRecentErrors = 20;

// On unless node metadata STRAIT_LIVE_GRAPH is "false" (or false). Main thread, before the workers.
absl::Status configureFromNode(const google::protobuf::Struct& node_metadata);
void setEnabled(bool on);
bool enabled();

// Slots (rare paths: a lock the first time a key is seen process-wide).
uint16_t slotFor(Direction d, Kind k, std::string_view peer, std::string_view identity);
// The caller of a downstream connection: its validated peer certificate's first URI SAN, else its
// remote IP.
std::string callerOf(const network::Connection& downstream);
// The first URI SAN of a TLS connection's peer certificate ("" for plaintext / none).
std::string_view peerPrincipal(const network::Connection& conn);

// The stats::istio string id of an upstream connection's peer URI SAN (StreamInfo::upstream_principal),
// cached per worker by connection id: the router asks per request, the string is hashed once per
// connection.
uint32_t upstreamPrincipal(const network::Connection& upstream);

// HTTP edges, per stream at its end (the connection manager). Inbound: the slot is kept by the
// downstream connection itself (`cache`, one per connection), so any number of connections resolve
// their caller once each; outbound: cached per thread by (cluster index, upstream principal id).
struct CachedSlot {
  uint64_t generation = 0;  // the edge tables' generation + 1 it was resolved in; 0: not yet
  uint16_t slot = kNoSlot;
};
uint16_t inboundHttpSlot(const network::Connection& downstream, CachedSlot& cache);
// `principal`: stats::istio string id of the upstream's URI SAN (StreamInfo::upstream_principal).
uint16_t outboundHttpSlot(uint32_t cluster_index, std::string_view cluster_name, uint32_t principal);

// Recording on the calling thread's table. A request is an error when it got a 5xx, no response
// (code 0) or was reset (common::ResponseFlag reset bits); a connection when the caller says so.
void recordRequest(uint16_t slot, uint64_t now_ms, uint64_t latency_us, uint32_t code, uint32_t flags);
void recordConnection(uint16_t slot, uint64_t now_ms, bool error, uint32_t flags);
void recordBytes(uint16_t slot, uint64_t now_ms, uint64_t in, uint64_t out);

// Monotonic milliseconds, the clock the buckets use (CLOCK_MONOTONIC, as libuv's loop time).
uint64_t nowMs();

// Summed over every worker (any thread; the admin calls it on the main thread).
Snapshot snapshot();
// Tests: forget every edge and figure.
void resetForTest();

}  // namespace strait::stats::live
