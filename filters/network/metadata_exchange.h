#pragma once

// Istio's TCP metadata exchange ("istio-peer-exchange"): how two sidecars tell each other which workload
// they serve on a mesh TCP connection, so istio_tcp_* metrics carry the peer's workload labels
// (filters/network/istio_tcp_stats.h). HTTP exchanges the same facts in headers (filters/http/istio_stats.h).
//
// Where it runs: on a tcp_proxy connection whose TLS negotiated the filter's `protocol` as ALPN.
//   inbound   istio.metadata_exchange network filter on the listener's filter chain: the downstream peer
//             (the caller) is learnt; the chain's read filter hands the connection's exchange to the
//             tcp_proxy session that takes it (takeDownstreamPeerExchange).
//   outbound  the same filter in the cluster's `filters` (istiod sends it there, in a TypedStruct, with
//             the cluster's TLS offering ALPN "istio-peer-exchange","istio"): the upstream peer (the
//             callee) is learnt, once the upstream connection is up.
// Not negotiated (plaintext, another ALPN, a peer without it): nothing is written or read; the inbound
// filter counts the connection in istio_inert.metadata_exchange.cx_total as before.
//
// Wire (each side, once, before any application byte; Istio's MetadataExchangeInitialHeader):
//   uint32 magic 0x3D230467, big-endian | uint32 payload length, big-endian | payload
//   payload: a serialized google.protobuf.Any, type_url type.googleapis.com/google.protobuf.Struct, of a
//            Struct { "x-envoy-peer-metadata": <Struct of the node's exchanged metadata keys>,
//                     "x-envoy-peer-metadata-id": <node id> }
// This side's metadata is the Struct istio_metrics.h already encodes for the HTTP header (same keys).
// The peer's frame is read and stripped from the front of its byte stream (split anywhere); what follows
// it in the same read is application data and is forwarded.
//
// When the peer's bytes are not a frame, Istio's filter gives up the exchange and passes the bytes on;
// so does Strait:
//   bad magic, or a length above kMaxPayload (64 KiB; Istio sets no bound and would wait for it): the
//       bytes held back so far go on to the application, in order, followed by the rest; no peer.
//   the stream ends (half-close) before 8 header bytes arrived: the same.
//   the stream ends inside the payload: the partial frame is dropped (Istio's filter holds it forever).
//   a whole frame whose payload is not an Any: the 8 header bytes are dropped and the payload goes on
//       (Istio drains the header before it parses); an Any that is not of a Struct, or a Struct without
//       x-envoy-peer-metadata: the frame is consumed, no peer.
// Stats (Istio's names, process-wide): metadata_exchange.alpn_protocol_found | alpn_protocol_not_found
// (connections checked), metadata_added (frames written), initial_header_not_found (bad magic, oversized
// length or an end before the header), header_not_found (a payload that is not an Any, or cut short).
// The bytes of the frames are not application bytes: tcp_proxy's byte counters and istio_tcp_*_bytes
// count what is forwarded, without them.

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "proxy/common/buffer.h"
#include "proxy/config/bootstrap.h"
#include "proxy/stats/istio_metrics.h"
#include "proxy/stats/stats.h"

namespace google::protobuf {
class Any;
class Struct;
}  // namespace google::protobuf
namespace strait::network {
class Connection;
}

namespace strait::filters::network {

inline constexpr uint32_t kPeerExchangeMagic = 0x3D230467;
inline constexpr size_t kPeerExchangeHeaderSize = 8;
inline constexpr uint32_t kPeerExchangeMaxPayload = 64 * 1024;

// One istio.metadata_exchange configuration (a chain's filter or a cluster's), made at config time.
using PeerExchangeConfig = config::PeerExchangeConfig;
using PeerExchangeConfigConstSharedPtr = std::shared_ptr<const PeerExchangeConfig>;

// The configuration of an istio.metadata_exchange typed_config (directly typed or in a TypedStruct).
// Null when its `protocol` is empty (such a filter stays inert). A `protocol` that is not a string is an
// error naming `path`.value.protocol.
absl::StatusOr<PeerExchangeConfigConstSharedPtr> peerExchangeConfig(const google::protobuf::Any& typed_config,
                                                                   const std::string& path, stats::Store& store);

// The chain's read filter for `cfg`; `inert` counts the connections it leaves alone (not negotiated).
config::NetworkReadFilterConstSharedPtr createPeerExchangeFilter(PeerExchangeConfigConstSharedPtr cfg,
                                                                 stats::Counter inert);

// The exchange the chain's filter started for the accepted connection `connection_id` on this thread, or
// null (the filter is absent or the ALPN was not negotiated). Taken once, by tcp_proxy as it takes the
// connection: one thread-local compare, nothing more, for a connection without the filter.
const PeerExchangeConfig* takeDownstreamPeerExchange(uint64_t connection_id);

// The frame this side sends: header + Any of Struct{x-envoy-peer-metadata: `metadata` (a serialized
// google.protobuf.Struct), x-envoy-peer-metadata-id: `node_id` (left out when empty)}.
std::string encodePeerExchangeFrame(std::string_view metadata, std::string_view node_id);

// The peer's node metadata and node id from a frame's payload. False when the payload is not an Any
// of a google.protobuf.Struct; true with `metadata` empty when the Struct has no x-envoy-peer-metadata.
bool decodePeerExchangePayload(std::string_view payload, google::protobuf::Struct* metadata, std::string* node_id);

// Reads the peer's frame off the front of a byte stream, across reads split anywhere.
class PeerExchangeReader {
 public:
  enum class Status {
    NeedMore,    // everything in `data` was taken: nothing to forward yet
    Done,        // the frame was taken (payload()); `data` holds what followed it
    NotFrame,    // bad magic / oversized / ended early: `data` holds the bytes held back, then the rest
    BadPayload,  // a whole frame whose payload is not an Any: `data` holds the payload, then the rest
    Dropped,     // ended inside the payload: the partial frame is gone; `data` is empty
  };
  // Takes the frame's bytes from the front of `data`. After a status other than NeedMore the reader is
  // finished and takes nothing more.
  Status onData(common::Buffer& data, bool end_stream);
  bool finished() const { return finished_; }
  const std::string& payload() const { return payload_; }

 private:
  Status giveBack(common::Buffer& data, Status status);
  char header_[kPeerExchangeHeaderSize] = {};
  uint32_t header_len_ = 0;
  uint32_t expected_ = 0;  // payload length, once the header is read
  bool in_payload_ = false;
  bool finished_ = false;
  std::string payload_;
};

// One side's exchange on one connection: writes this side's frame, strips and decodes the peer's.
class PeerExchange {
 public:
  explicit PeerExchange(const PeerExchangeConfig& cfg) : cfg_(cfg) {}
  // The exchange for an upstream connection of a cluster with the filter, once the connection is up:
  // null when its TLS did not negotiate the protocol (counted either way).
  static std::unique_ptr<PeerExchange> forUpstream(const PeerExchangeConfig& cfg, const strait::network::Connection& conn);
  // Writes this side's frame to `conn` (before anything else is written to it).
  void start(strait::network::Connection& conn);
  // Whether the peer's frame is still being read.
  bool reading() const { return !reader_.finished(); }
  // Strips the peer's frame from `data`. False: more is needed and `data` has nothing to forward.
  bool onData(common::Buffer& data, bool end_stream);
  // The peer's workload (stats::istio peer id; kUnknown when none was learnt or Istio metrics are off).
  uint32_t peer() const { return peer_; }

 private:
  const PeerExchangeConfig& cfg_;
  PeerExchangeReader reader_;
  uint32_t peer_ = stats::istio::kUnknown;
};

// Registers peerExchangeConfig() for Cluster.filters' istio.metadata_exchange
// (config::registerUpstreamPeerExchange). Called by registerIstioNoopFilters().
void registerClusterPeerExchange();

}  // namespace strait::filters::network
