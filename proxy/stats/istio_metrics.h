#pragma once

// Istio's standard metrics (istio_requests_total, istio_request_duration_milliseconds,
// istio_request_bytes, istio_response_bytes, istio_tcp_*), labelled by who called whom, rendered at
// the end of /stats/prometheus.
//
//   config time   setLocalNode(): this pod's workload from the bootstrap's node metadata
//   per connection / per peer header (rare paths): strings become ids (intern(), peer(), service()),
//                 under one process-wide lock, cached per worker so a worker asks once per value
//   per request   a SeriesKey of small integers (ids, code, flags) -> this worker's series (a hash
//                 map of integers, no lock, no allocation once the series exists) -> relaxed adds
//   scrape        render(): the series of every worker summed by key (each worker's list is read under
//                 that worker's lock, which the worker takes only when it adds a series)
//
// Cardinality: at most maxSeries() distinct label sets per family (HTTP, TCP) across the process; the
// rest is folded into one overflow series per reporter whose labels read "overflow", and counted in
// the stat istio.series_overflow (events folded; made when the metrics are turned on). A worker caches at most 4 x maxSeries() keys; beyond
// that a key new to it goes to the overflow series as well.

#include <atomic>
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"

namespace google::protobuf {
class Struct;
}
namespace strait::stats {
class Store;
}

namespace strait::stats::istio {

inline constexpr uint32_t kUnknown = 0;        // string / peer / service id of "unknown"
inline constexpr uint32_t kOverflowId = 1;     // string id of "overflow" (a table that is full)
inline constexpr uint32_t kDefaultMaxSeries = 1000;

enum class Reporter : uint8_t { Source = 0, Destination = 1 };
enum class Protocol : uint8_t { Http = 0, Grpc = 1, Tcp = 2 };
enum class Security : uint8_t { Unknown = 0, MutualTls = 1, None = 2 };

// A workload as Istio's labels name it (string ids).
struct Peer {
  uint32_t workload = kUnknown, ns = kUnknown, app = kUnknown, version = kUnknown, cluster = kUnknown;
  bool operator==(const Peer&) const = default;
  template <typename H>
  friend H AbslHashValue(H h, const Peer& p) {
    return H::combine(std::move(h), p.workload, p.ns, p.app, p.version, p.cluster);
  }
};
struct PeerStrings {
  std::string workload, ns, app, version, cluster;
};

// One label set, as integers. Render turns the ids back into strings.
struct SeriesKey {
  Reporter reporter = Reporter::Source;
  Protocol protocol = Protocol::Http;
  Security security = Security::Unknown;
  uint8_t overflow = 0;
  uint16_t response_code = 0;
  int16_t grpc_status = -1;  // -1: not gRPC / none
  uint32_t flags = 0;        // common::ResponseFlag bits
  uint32_t src_peer = kUnknown, dst_peer = kUnknown;  // peer ids
  uint32_t src_principal = kUnknown, dst_principal = kUnknown;  // string ids
  uint32_t service = kUnknown;  // service id
  bool operator==(const SeriesKey&) const = default;
  template <typename H>
  friend H AbslHashValue(H h, const SeriesKey& k) {
    return H::combine(std::move(h), static_cast<uint8_t>(k.reporter), static_cast<uint8_t>(k.protocol),
                      static_cast<uint8_t>(k.security), k.overflow, k.response_code, k.grpc_status, k.flags, k.src_peer,
                      k.dst_peer, k.src_principal, k.dst_principal, k.service);
  }
};

// Bucket bounds: durations in milliseconds (Istio's default buckets, which are Envoy's) and sizes in
// bytes (powers of ten, Istio's).
inline constexpr double kDurationBounds[] = {0.5,  1,    5,     10,    25,     50,     100,     250,     500,    1000,
                                             2500, 5000, 10000, 30000, 60000,  300000, 600000,  1800000, 3600000};
inline constexpr double kSizeBounds[] = {1, 10, 100, 1000, 10000, 100000, 1000000, 10000000, 100000000, 1000000000};
inline constexpr uint32_t kDurationBuckets = sizeof(kDurationBounds) / sizeof(kDurationBounds[0]) + 1;
inline constexpr uint32_t kSizeBuckets = sizeof(kSizeBounds) / sizeof(kSizeBounds[0]) + 1;

// One worker's values for one label set. Written by that worker only (relaxed load + store), read by
// the scrape.
struct Series {
  // HTTP
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> duration[kDurationBuckets] = {};
  std::atomic<uint64_t> duration_sum_us{0};
  std::atomic<uint64_t> request_bytes[kSizeBuckets] = {};
  std::atomic<uint64_t> request_bytes_sum{0};
  std::atomic<uint64_t> response_bytes[kSizeBuckets] = {};
  std::atomic<uint64_t> response_bytes_sum{0};
  // TCP
  std::atomic<uint64_t> tcp_opened{0}, tcp_closed{0}, tcp_sent{0}, tcp_received{0};
  bool overflow = false;
};

// Activation: Istio's telemetry filters (istio.stats, istio.metadata_exchange, HTTP and network) record
// and exchange only while this is on; off, they stay the inert stand-ins they were (counted in
// http.<prefix>.inert.<kind>.requests_total / istio_inert.<kind>.cx_total). configure() sets it from the
// node metadata key STRAIT_ISTIO_METRICS ("true"; env STRAIT_META_STRAIT_ISTIO_METRICS=true). Read with
// one relaxed load per stream or connection, so it may be set after the filters were translated.
// Istio's TCP metadata exchange (filters/network/metadata_exchange.h) is a wire protocol a peer speaks
// once the ALPN says so: it runs either way, and only decodes the peer while this is on.
bool enabled();
// Bumped by every configure(): per-thread caches of ids made before it are stale.
uint64_t generation();

// This pod's workload, from node metadata (NAME, NAMESPACE, WORKLOAD_NAME, LABELS.app / version /
// service.istio.io/canonical-name / -revision, CLUSTER_ID). Main thread, before the workers start;
// `store` gets istio.series_overflow. max_series 0: kDefaultMaxSeries. Also resets the tables (tests).
// `node_id` goes in x-envoy-peer-metadata-id. `enable` turns the filters on (see enabled()).
void configure(const google::protobuf::Struct& node_metadata, const std::string& node_id, Store* store,
               uint32_t max_series, bool enable);
// configure() from a bootstrap node's metadata: STRAIT_ISTIO_METRICS turns it on,
// STRAIT_ISTIO_METRICS_MAX_SERIES (a positive number, or its text) sets the cap. Main thread, at start.
// A malformed setting is an error naming node.metadata.<key>.
absl::Status configureFromNode(const google::protobuf::Struct& node_metadata, const std::string& node_id, Store* store);
uint32_t maxSeries();
// The workload a node metadata Struct names (also a peer's, from x-envoy-peer-metadata).
PeerStrings peerFromMetadata(const google::protobuf::Struct& md);
uint32_t localPeer();
const std::string& localNamespace();
// The node metadata to send a peer in x-envoy-peer-metadata (base64 of the Struct's encoding) and
// x-envoy-peer-metadata-id (the node id), made once at configure().
const std::string& localPeerMetadataHeader();
const std::string& localPeerIdHeader();
// The peer id of an x-envoy-peer-metadata value (base64 of a google.protobuf.Struct); kUnknown when it
// does not decode. Cached per worker by value.
uint32_t peerFromHeaderCached(std::string_view value);
// A peer known only by its namespace (from its SPIFFE id), cached per worker.
uint32_t peerForNamespaceCached(std::string_view ns);
// A peer id cached per worker under `key`, bytes a peer sent that name its workload; `make` decodes
// them on a miss (it may call peer()). Kinds of key must not collide: the x-envoy-peer-metadata values
// above are base64 text, namespace keys start with "ns:", and Istio's TCP metadata exchange
// (filters/network/metadata_exchange.h) keys by its serialized Any, whose first byte is 0x0a.
uint32_t peerCached(std::string_view key, uint32_t (*make)(std::string_view key));

// Ids for strings, workloads and services (rare paths: once per connection, peer or host; a worker
// caches them). Past the tables' bounds the answer is kOverflowId, which sends a key to the overflow
// series.
uint32_t intern(std::string_view s);
// The string an intern() id stands for ("unknown" for an id it never gave). Rare paths (locks).
std::string idString(uint32_t id);
uint32_t peer(const PeerStrings& p);
// destination_service from an Istio cluster name (outbound|port|subset|fqdn) or, when it is not one,
// from `fallback_host` (the request's authority, its port dropped): name and namespace from
// <name>.<namespace>.svc..., else the host and this pod's namespace.
uint32_t serviceForHost(std::string_view host);
// The fqdn of an Istio cluster name, or empty.
std::string_view istioClusterHost(std::string_view cluster_name);
// The workload namespace a SPIFFE id names (spiffe://<trust domain>/ns/<ns>/sa/<sa>), or empty.
std::string_view spiffeNamespace(std::string_view principal);

// Per-worker cached versions of the above (no lock after the first call for a value on a thread).
uint32_t internCached(std::string_view s);
uint32_t serviceCached(std::string_view host);

// Recording, on the calling thread's table.
Series& series(const SeriesKey& key);
void recordHttp(const SeriesKey& key, uint64_t duration_us, uint64_t request_bytes, uint64_t response_bytes);
void recordTcpOpen(const SeriesKey& key);
void recordTcpClose(const SeriesKey& key, uint64_t sent, uint64_t received);

// The families in Prometheus text (# HELP, # TYPE, samples), summed over the workers; empty when no
// series exists.
std::string renderPrometheus();

// Process-wide switch set when a configuration has Istio's stats filter (HTTP or network); tcp_proxy
// sessions whose connection passed an istio.stats network filter record TCP metrics.
void markTcpStats(uint64_t connection_id);
bool takeTcpStats(uint64_t connection_id);

}  // namespace strait::stats::istio
