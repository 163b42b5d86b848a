#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "proxy/common/buffer.h"
#include "proxy/common/pooled.h"
#include "proxy/common/response_flags.h"
#include "proxy/http/codec.h"
#include "proxy/http/header_map.h"
#include "proxy/network/address.h"

namespace strait::config {
class WorkerContext;
struct Cluster;
}  // namespace strait::config
namespace strait::network {
class Connection;
}

namespace strait::http {

struct RouteEntry;

// HTTP filter contract (Envoy's shape, fewer states). Decoder filters see the request in order, then
// the router (always last) sends it upstream; encoder filters see the response in reverse order.
//
//   request:  codec -> [decoder filter 1 .. n] -> router -> upstream
//   response: upstream -> router -> [encoder filter n .. 1] -> codec
//
// A filter returning Stop* pauses the chain at itself; it resumes it with continueDecoding() /
// continueEncoding(), or ends the stream with sendLocalReply().
enum class FilterHeadersStatus { Continue, StopIteration };
enum class FilterDataStatus {
  Continue,
  StopIterationAndBuffer,  // keep the data; it is passed on (with what follows) on continue
  StopIterationNoBuffer    // the filter took the data
};
enum class FilterTrailersStatus { Continue, StopIteration };

// What a request learnt on its way (for stats, logs and filters).
struct StreamInfo {
  std::chrono::steady_clock::time_point start;
  Protocol protocol = Protocol::Http11;
  uint32_t response_code = 0;
  uint64_t bytes_received = 0;
  uint64_t bytes_sent = 0;
  const RouteEntry* route = nullptr;
  const config::Cluster* cluster = nullptr;
  std::string details;  // why a local reply was sent ("route_not_found", "upstream_reset_before_response_started")
  bool envoy_controls = false;  // a trusted client sent x-envoy-retry-on / x-envoy-max-retries and the like
  // Istio's istio.alpn: the ALPN override (network::internAlpnOverride ids, 0: none) for an upstream
  // connection by its protocol, indexed by Protocol (HTTP/1.0, HTTP/1.1, HTTP/2). Null: no override.
  const uint32_t* alpn_override = nullptr;
  // For access logs. response_flags: common::ResponseFlag bits, set where the thing happens.
  uint32_t response_flags = 0;
  std::chrono::system_clock::time_point start_time;             // wall clock at the start
  std::chrono::steady_clock::time_point request_end{};           // last request byte (unset: epoch)
  std::chrono::steady_clock::time_point response_start{};        // response headers sent (unset: epoch)
  std::optional<network::Address> upstream_host;                 // the last attempt's host
  std::string upstream_transport_failure_reason;                 // why the upstream connection failed
  // Istio's metadata exchange: the peer workload the istio.metadata_exchange filter learnt from
  // x-envoy-peer-metadata (a stats::istio peer id; 0: none), for the istio.stats filter.
  uint32_t istio_peer = 0;
  // The upstream TLS peer's identity (its certificate's first URI SAN) as a stats::istio string id,
  // set by the router when the pool hands it a connection (0: unknown, plaintext or no upstream yet).
  // Resolved once per upstream connection: istio.stats' destination_principal and the live graph's
  // outbound edges read it.
  uint32_t upstream_principal = 0;
  void setFlag(uint32_t flag) { response_flags |= flag; }
};

// The router's view of downstream back-pressure: when the client stops reading, the router stops
// reading from upstream.
class DownstreamWatermarkCallbacks {
 public:
  virtual ~DownstreamWatermarkCallbacks() = default;
  virtual void onAboveWriteBufferHighWatermark() = 0;
  virtual void onBelowWriteBufferLowWatermark() = 0;
};

class DecoderFilterCallbacks {
 public:
  virtual ~DecoderFilterCallbacks() = default;
  virtual void continueDecoding() = 0;
  // Answers the request locally (if no response has started) or resets the stream (if one has).
  virtual void sendLocalReply(uint32_t status, std::string_view body, std::string_view details) = 0;
  virtual const RouteEntry* route() const = 0;
  virtual config::WorkerContext& worker() = 0;
  virtual const network::Connection& connection() const = 0;
  virtual StreamInfo& streamInfo() = 0;
  virtual const RequestHeaders& requestHeaders() const = 0;
  // The response, from the filter that produced it (the router) towards the client.
  virtual void encode1xxHeaders(ResponseHeadersPtr headers) = 0;
  virtual void encodeHeaders(ResponseHeadersPtr headers, bool end_stream) = 0;
  virtual void encodeData(common::Buffer& data, bool end_stream) = 0;
  virtual void encodeTrailers(TrailerMapPtr trailers) = 0;
  // Abandons the downstream stream (HTTP/2 RST_STREAM, HTTP/1 connection close).
  virtual void resetStream() = 0;
  // The filter's onward path is backing up: stop / resume reading the request from the client.
  virtual void onDecoderFilterAboveWriteBufferHighWatermark() = 0;
  virtual void onDecoderFilterBelowWriteBufferLowWatermark() = 0;
  virtual void setDownstreamWatermarkCallbacks(DownstreamWatermarkCallbacks* cb) = 0;
  virtual uint32_t bufferLimit() const = 0;
  // The HTTP connection manager's upgrade_configs allow WebSocket (for routes that do not say).
  virtual bool websocketAllowedByDefault() const = 0;
};

class StreamDecoderFilter {
 public:
  virtual ~StreamDecoderFilter() = default;
  virtual void setDecoderFilterCallbacks(DecoderFilterCallbacks& callbacks) = 0;
  virtual FilterHeadersStatus decodeHeaders(RequestHeaders& headers, bool end_stream) = 0;
  virtual FilterDataStatus decodeData(common::Buffer& data, bool end_stream) = 0;
  virtual FilterTrailersStatus decodeTrailers(TrailerMap& trailers) = 0;
  // The stream is over (complete or reset): release everything, expect no more calls.
  virtual void onDestroy() = 0;
};
using StreamDecoderFilterPtr = std::unique_ptr<StreamDecoderFilter>;

class EncoderFilterCallbacks {
 public:
  virtual ~EncoderFilterCallbacks() = default;
  virtual void continueEncoding() = 0;
};

class StreamEncoderFilter {
 public:
  virtual ~StreamEncoderFilter() = default;
  virtual void setEncoderFilterCallbacks(EncoderFilterCallbacks& callbacks) = 0;
  virtual FilterHeadersStatus encodeHeaders(ResponseHeaders& headers, bool end_stream) = 0;
  virtual FilterDataStatus encodeData(common::Buffer& data, bool end_stream) = 0;
  virtual FilterTrailersStatus encodeTrailers(TrailerMap& trailers) = 0;
  virtual void onDestroy() = 0;
};
using StreamEncoderFilterPtr = std::unique_ptr<StreamEncoderFilter>;

// Builds a stream's filters (one factory per configured HTTP filter, made at config time).
class FilterChainBuilder {
 public:
  virtual ~FilterChainBuilder() = default;
  virtual void addDecoderFilter(StreamDecoderFilterPtr filter) = 0;
  virtual void addEncoderFilter(StreamEncoderFilterPtr filter) = 0;
};

// For a decoder filter that also looks at the response headers and nothing else of the response:
// its encoder half, which hands the headers to `Filter::onResponseHeaders(ResponseHeaders&)` and
// passes the rest through. Pooled per filter type like the stream's other small objects.
template <class Filter>
class ResponseHeadersHalf : public StreamEncoderFilter, public common::Pooled<ResponseHeadersHalf<Filter>> {
 public:
  explicit ResponseHeadersHalf(Filter& filter) : filter_(filter) {}
  void setEncoderFilterCallbacks(EncoderFilterCallbacks&) override {}
  FilterHeadersStatus encodeHeaders(ResponseHeaders& headers, bool) override {
    filter_.onResponseHeaders(headers);
    return FilterHeadersStatus::Continue;
  }
  FilterDataStatus encodeData(common::Buffer&, bool) override { return FilterDataStatus::Continue; }
  FilterTrailersStatus encodeTrailers(TrailerMap&) override { return FilterTrailersStatus::Continue; }
  void onDestroy() override {}

 private:
  Filter& filter_;
};

// Adds `filter` as a decoder filter and its ResponseHeadersHalf as an encoder filter.
template <class Filter>
void addWithResponseHeadersHalf(FilterChainBuilder& builder, std::unique_ptr<Filter> filter) {
  Filter& raw = *filter;
  builder.addDecoderFilter(std::move(filter));
  builder.addEncoderFilter(std::make_unique<ResponseHeadersHalf<Filter>>(raw));
}

class HttpFilterFactory {
 public:
  virtual ~HttpFilterFactory() = default;
  virtual void createFilters(FilterChainBuilder& builder) const = 0;
};
using HttpFilterFactorySharedPtr = std::shared_ptr<const HttpFilterFactory>;

}  // namespace strait::http
