#include "proxy/http/conn_manager.h"
#include "proxy/common/pooled.h"

#include <arpa/inet.h>

#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.pb.h"
#include "envoy/config/route/v3/route.pb.h"
#include "google/protobuf/any.pb.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "proxy/common/log.h"
#include "proxy/common/overload_state.h"
#include "proxy/common/owned_list.h"
#include "proxy/config/bootstrap.h"
#include "proxy/http/http1/codec.h"
#include "proxy/http/http2/codec.h"
#include "proxy/http/route_table.h"
#include "proxy/network/connection.h"
#include "proxy/stats/live_edges.h"
#include "proxy/config/typed_struct.h"
#include "proxy/tracing/tracer.h"

namespace strait::http {

// ---- request header sanitizing ---------------------------------------------------------------------

namespace {

// The request headers the sanitizing rules treat specially.
enum class SanitizedHeader : uint8_t {
  Other,
  XForwardedFor,
  XForwardedProto,
  XRequestId,
  Expect,
  EnvoyInternal,         // x-envoy-internal: never from a client
  EnvoyExternalAddress,  // set on edge requests (a client's is replaced)
  EnvoyEdgeOnly,         // removed from edge requests
  EnvoyExternalOnly,     // removed from external requests
};

struct EnvoyHeaderName {
  std::string_view suffix;  // after "x-envoy-"
  SanitizedHeader kind;
};
constexpr EnvoyHeaderName kEnvoyHeaders[] = {
    {"internal", SanitizedHeader::EnvoyInternal},
    {"external-address", SanitizedHeader::EnvoyExternalAddress},
    {"decorator-operation", SanitizedHeader::EnvoyEdgeOnly},
    {"downstream-service-cluster", SanitizedHeader::EnvoyEdgeOnly},
    {"downstream-service-node", SanitizedHeader::EnvoyEdgeOnly},
    {"retriable-status-codes", SanitizedHeader::EnvoyExternalOnly},
    {"retriable-header-names", SanitizedHeader::EnvoyExternalOnly},
    {"retry-on", SanitizedHeader::EnvoyExternalOnly},
    {"retry-grpc-on", SanitizedHeader::EnvoyExternalOnly},
    {"max-retries", SanitizedHeader::EnvoyExternalOnly},
    {"upstream-alt-stat-name", SanitizedHeader::EnvoyExternalOnly},
    {"upstream-rq-timeout-ms", SanitizedHeader::EnvoyExternalOnly},
    {"upstream-rq-per-try-timeout-ms", SanitizedHeader::EnvoyExternalOnly},
    {"upstream-rq-timeout-alt-response", SanitizedHeader::EnvoyExternalOnly},
    {"expected-rq-timeout-ms", SanitizedHeader::EnvoyExternalOnly},
    {"force-trace", SanitizedHeader::EnvoyExternalOnly},
    {"ip-tags", SanitizedHeader::EnvoyExternalOnly},
    {"original-url", SanitizedHeader::EnvoyExternalOnly},
    {"hedge-on-per-try-timeout", SanitizedHeader::EnvoyExternalOnly},
};

// One look at the length and the first bytes rules out almost every name before any comparison.
SanitizedHeader classifyRequestHeader(std::string_view name) {
  const size_t n = name.size();
  if (n == 6) return headerNameEquals(name, "expect") ? SanitizedHeader::Expect : SanitizedHeader::Other;
  if (n < 12 || lowerAscii(name[0]) != 'x' || name[1] != '-') return SanitizedHeader::Other;
  switch (lowerAscii(name[2])) {
    case 'e': {
      constexpr std::string_view kPrefix = "x-envoy-";
      if (!headerNameEquals(name.substr(0, kPrefix.size()), kPrefix)) return SanitizedHeader::Other;
      const std::string_view rest = name.substr(kPrefix.size());
      for (const auto& e : kEnvoyHeaders) {
        if (e.suffix.size() == rest.size() && headerNameEquals(rest, e.suffix)) return e.kind;
      }
      return SanitizedHeader::Other;
    }
    case 'f':
      if (n == 15) return headerNameEquals(name, "x-forwarded-for") ? SanitizedHeader::XForwardedFor : SanitizedHeader::Other;
      if (n == 17) return headerNameEquals(name, "x-forwarded-proto") ? SanitizedHeader::XForwardedProto : SanitizedHeader::Other;
      return SanitizedHeader::Other;
    case 'r':
      return n == 12 && headerNameEquals(name, "x-request-id") ? SanitizedHeader::XRequestId : SanitizedHeader::Other;
    default: return SanitizedHeader::Other;
  }
}

bool isOws(char c) { return c == ' ' || c == '\t'; }

std::string_view trimOws(std::string_view s) {
  while (!s.empty() && isOws(s.front())) s.remove_prefix(1);
  while (!s.empty() && isOws(s.back())) s.remove_suffix(1);
  return s;
}

// A numeric IPv4 or IPv6 address (no brackets, no port), parsed without allocating.
std::optional<network::Address> parseIp(std::string_view text) {
  char buf[INET6_ADDRSTRLEN + 1];
  if (text.empty() || text.size() >= sizeof(buf)) return std::nullopt;
  std::memcpy(buf, text.data(), text.size());
  buf[text.size()] = '\0';
  sockaddr_storage ss{};
  auto* v4 = reinterpret_cast<sockaddr_in*>(&ss);
  if (inet_pton(AF_INET, buf, &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    return network::Address(reinterpret_cast<const sockaddr*>(&ss));
  }
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (inet_pton(AF_INET6, buf, &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    return network::Address(reinterpret_cast<const sockaddr*>(&ss));
  }
  return std::nullopt;
}

// Appends the address's IP (no port) without a temporary string.
void appendIp(std::string& out, const network::Address& a) {
  char buf[INET6_ADDRSTRLEN] = {0};
  if (a.isV6()) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(a.sockAddr())->sin6_addr, buf, sizeof(buf));
  } else {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(a.sockAddr())->sin_addr, buf, sizeof(buf));
  }
  out.append(buf);
}

// Envoy's built-in notion of internal (Network::Utility::isInternalAddress, the default until 1.33).
bool defaultInternal(const network::Address& a) {
  if (a.isV6()) {
    const uint8_t* b = reinterpret_cast<const sockaddr_in6*>(a.sockAddr())->sin6_addr.s6_addr;
    if (b[0] == 0xfd) return true;  // RFC 4193 unique local, the locally assigned half
    for (int i = 0; i < 15; ++i) {
      if (b[i] != 0) return false;
    }
    return b[15] == 1;  // ::1
  }
  const auto* b = reinterpret_cast<const uint8_t*>(&reinterpret_cast<const sockaddr_in*>(a.sockAddr())->sin_addr);
  return b[0] == 10 || (b[0] == 172 && b[1] >= 16 && b[1] <= 31) || (b[0] == 192 && b[1] == 168) ||
         (b[0] == 127 && b[1] == 0 && b[2] == 0 && b[3] == 1);
}

}  // namespace

bool InternalAddressConfig::isInternal(const network::Address& a) const {
  if (cidr_ranges.empty()) return defaultInternal(a);
  for (const auto& r : cidr_ranges) {
    if (r.contains(a)) return true;
  }
  return false;
}

XffAddress lastAddressFromXff(std::string_view xff, uint32_t skip) {
  for (uint32_t i = 0; i < skip; ++i) {
    const size_t comma = xff.rfind(',');
    if (comma == std::string_view::npos) return {};
    xff = xff.substr(0, comma);
  }
  const size_t comma = xff.rfind(',');
  XffAddress out;
  out.single = comma == std::string_view::npos;
  out.address = parseIp(trimOws(out.single ? xff : xff.substr(comma + 1)));
  if (!out.address) out.single = false;
  return out;
}

RequestHeaderVerdict sanitizeRequestHeaders(RequestHeaders& h, const HcmConfig& cfg, const RouteTable* routes,
                                            const network::Address& peer, bool tls) {
  RequestHeaderVerdict v;
  auto& entries = h.entries();
  constexpr size_t kNone = static_cast<size_t>(-1);
  size_t xff = kNone, xfp = kNone;
  bool sweep = false;  // some entry was emptied (merged duplicate, answered Expect)
  bool seen_envoy_internal = false, seen_external_address = false, seen_edge_only = false, seen_external_only = false;
  for (size_t i = 0; i < entries.size(); ++i) {
    auto& e = entries[i];
    const SanitizedHeader kind = classifyRequestHeader(e.name);
    switch (kind) {
      case SanitizedHeader::Other: break;
      case SanitizedHeader::XForwardedFor:
      case SanitizedHeader::XForwardedProto: {
        // Repeated: one list, in order (what Envoy's header map makes of them), before anything reads it.
        size_t& first = kind == SanitizedHeader::XForwardedFor ? xff : xfp;
        if (first == kNone) {
          first = i;
        } else {
          entries[first].value.append(",").append(e.value);
          e.name.clear();
          sweep = true;
        }
        break;
      }
      case SanitizedHeader::XRequestId: v.has_request_id = v.has_request_id || !e.value.empty(); break;
      case SanitizedHeader::Expect:
        if (headerNameEquals(e.value, "100-continue")) {
          v.expect_continue = true;
          e.name.clear();
          sweep = true;
        }
        break;
      case SanitizedHeader::EnvoyInternal: seen_envoy_internal = true; break;
      case SanitizedHeader::EnvoyExternalAddress: seen_external_address = true; break;
      case SanitizedHeader::EnvoyEdgeOnly: seen_edge_only = true; break;
      case SanitizedHeader::EnvoyExternalOnly: seen_external_only = true; break;
    }
  }

  // The trusted client address, and whether it may make the request internal.
  const std::string_view scheme = tls ? "https" : "http";
  std::optional<network::Address> from_xff;
  const network::Address* trusted = nullptr;
  bool allow_internal = false;
  const uint32_t hops = cfg.xff_num_trusted_hops;
  if (cfg.use_remote_address) {
    allow_internal = xff == kNone;
    if (hops > 0 && xff != kNone) from_xff = lastAddressFromXff(entries[xff].value, hops - 1).address;
    trusted = from_xff ? &*from_xff : &peer;
    if (!cfg.skip_xff_append) {
      if (xff != kNone) {
        appendIp(entries[xff].value.append(","), peer);
      } else {
        std::string ip;
        appendIp(ip, peer);
        h.add("x-forwarded-for", ip);
      }
    }
    // An untrusted peer's x-forwarded-proto is overwritten.
    if (hops == 0 && xfp != kNone) entries[xfp].value.assign(scheme);
  } else if (xff != kNone) {
    XffAddress a = lastAddressFromXff(entries[xff].value, hops);
    from_xff = a.address;
    allow_internal = a.single;
    trusted = from_xff ? &*from_xff : nullptr;
  }
  if (xfp == kNone) h.add("x-forwarded-proto", scheme);
  v.internal = allow_internal && trusted != nullptr && cfg.internal_addresses.isInternal(*trusted);
  v.edge = !v.internal && cfg.use_remote_address;

  const bool drop_internal_only = !v.internal && routes != nullptr && !routes->internalOnlyHeaders().empty();
  if (sweep || seen_envoy_internal || (v.edge && (seen_external_address || seen_edge_only)) ||
      (!v.internal && seen_external_only) || drop_internal_only) {
    bool request_id = false;
    std::erase_if(entries, [&](const HeaderMap::Entry& e) {
      if (e.name.empty()) return true;
      if (drop_internal_only && routes->isInternalOnlyHeader(e.name)) return true;
      switch (classifyRequestHeader(e.name)) {
        case SanitizedHeader::EnvoyInternal: return true;
        case SanitizedHeader::EnvoyExternalAddress:
        case SanitizedHeader::EnvoyEdgeOnly: return v.edge;
        case SanitizedHeader::EnvoyExternalOnly: return !v.internal;
        case SanitizedHeader::XRequestId: request_id = request_id || !e.value.empty(); return false;
        default: return false;
      }
    });
    v.has_request_id = request_id;
  }
  v.envoy_controls = seen_external_only && v.internal;
  if (v.internal) h.add("x-envoy-internal", "true");
  if (v.edge) {
    std::string ip;
    appendIp(ip, *trusted);
    h.add("x-envoy-external-address", ip);
  }
  return v;
}

namespace {

using network::CloseType;
namespace hcm_v3 = envoy::extensions::filters::network::http_connection_manager::v3;

constexpr std::string_view kH2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

class HttpConnection;

bool isGrpc(const RequestHeaders& h) {
  const std::string* ct = h.get("content-type");
  return ct != nullptr && isGrpcContentType(*ct);
}

// gRPC status for an HTTP status of a local reply (the mapping gRPC's own spec gives).
int grpcStatusFor(uint32_t http) {
  switch (http) {
    case 400: return 13;  // INTERNAL
    case 401: return 16;  // UNAUTHENTICATED
    case 403: return 7;   // PERMISSION_DENIED
    case 404: return 12;  // UNIMPLEMENTED
    case 429: return 14;  // UNAVAILABLE
    case 502: return 14;
    case 503: return 14;
    case 504: return 4;   // DEADLINE_EXCEEDED
    default: return 2;    // UNKNOWN
  }
}

// One request/response exchange on a downstream connection, and its HTTP filter chain.
class ActiveStream : public event::DeferredDeletable,
                     public common::ListLinks<ActiveStream>,
                     public RequestDecoder,
                     public StreamCallbacks,
                     public DecoderFilterCallbacks,
                     public EncoderFilterCallbacks,
                     public FilterChainBuilder,
                     public common::Pooled<ActiveStream> {
 public:
  ActiveStream(HttpConnection& conn, ResponseEncoder& encoder);
  ~ActiveStream() override;

  // RequestDecoder
  void decodeHeaders(RequestHeadersPtr headers, bool end_stream) override;
  void decodeData(common::Buffer& data, bool end_stream) override;
  void decodeTrailers(TrailerMapPtr trailers) override;

  // StreamCallbacks (downstream codec stream)
  void onResetStream(StreamResetReason reason) override;
  void onAboveWriteBufferHighWatermark() override {
    ++downstream_above_;
    if (watermark_cb_) watermark_cb_->onAboveWriteBufferHighWatermark();
  }
  void onBelowWriteBufferLowWatermark() override {
    if (downstream_above_ > 0) --downstream_above_;
    if (watermark_cb_) watermark_cb_->onBelowWriteBufferLowWatermark();
  }

  // DecoderFilterCallbacks
  void continueDecoding() override;
  void sendLocalReply(uint32_t status, std::string_view body, std::string_view details) override;
  const RouteEntry* route() const override { return route_; }
  config::WorkerContext& worker() override;
  const network::Connection& connection() const override;
  StreamInfo& streamInfo() override { return info_; }
  const RequestHeaders& requestHeaders() const override { return *request_headers_; }
  void encode1xxHeaders(ResponseHeadersPtr headers) override;
  void encodeHeaders(ResponseHeadersPtr headers, bool end_stream) override;
  void encodeData(common::Buffer& data, bool end_stream) override;
  void encodeTrailers(TrailerMapPtr trailers) override;
  void resetStream() override;
  void onDecoderFilterAboveWriteBufferHighWatermark() override { encoder_.stream().readDisable(true); }
  void onDecoderFilterBelowWriteBufferLowWatermark() override { encoder_.stream().readDisable(false); }
  void setDownstreamWatermarkCallbacks(DownstreamWatermarkCallbacks* cb) override {
    watermark_cb_ = cb;
    // A filter that arrives while the client is already backed up hears about it at once.
    if (cb) {
      for (uint32_t i = 0; i < downstream_above_; ++i) cb->onAboveWriteBufferHighWatermark();
    }
  }
  uint32_t bufferLimit() const override;
  bool websocketAllowedByDefault() const override { return config().hcm_websocket_upgrade; }

  // EncoderFilterCallbacks
  void continueEncoding() override {}

  // FilterChainBuilder
  void addDecoderFilter(StreamDecoderFilterPtr f) override { decoder_filters_.push_back(std::move(f)); }
  void addEncoderFilter(StreamEncoderFilterPtr f) override { encoder_filters_.push_back(std::move(f)); }


 private:
  void runDecodeHeaders(size_t from);
  void runDecodeData(size_t from, common::Buffer& data, bool end_stream);
  void runDecodeTrailers(size_t from);
  // Stream idle timeout: 408 (or a reset) when nothing moved for stream_idle_timeout. Returns how long
  // until it would expire, 0 if it expired (or the stream is done). Driven by the connection's timer.
 public:
  uint64_t checkIdle(uint64_t now);

 private:
  void touch();
  void requestEnded() { info_.request_end = std::chrono::steady_clock::now(); }
  void writeAccessLogs();
  void recordLiveEdges(std::chrono::steady_clock::time_point now, uint64_t latency_us);
  void maybeFinish();
  void finish();
  void recordSpan();  // the stream's span, for a sampled trace
  bool prepareRequest(RequestHeaders& h, const RouteTable* table);
  const HcmConfig& config() const;

  HttpConnection& conn_;
  ResponseEncoder& encoder_;
  RequestHeadersPtr request_headers_;
  TrailerMapPtr request_trailers_;
  std::shared_ptr<const RouteTable> routes_;  // RDS only: pins the table route_ points into
  const RouteEntry* route_ = nullptr;
  std::vector<StreamDecoderFilterPtr> decoder_filters_;
  std::vector<StreamEncoderFilterPtr> encoder_filters_;
  StreamInfo info_;
  ResponseHeadersPtr response_headers_;  // kept for the access log (only when there is one)
  TrailerMapPtr response_trailers_;
  DownstreamWatermarkCallbacks* watermark_cb_ = nullptr;
  event::TimerPtr request_timer_;
  uint64_t last_activity_ms_ = 0;
  common::Buffer stopped_data_;    // request body held while a filter has stopped the chain
  size_t headers_next_ = 0;        // first filter that has not seen the headers
  size_t data_resume_at_ = 0;      // where held body data goes on continueDecoding()
  size_t trailers_next_ = 0;       // first filter that has not seen the request trailers
  bool headers_stopped_ = false;
  bool data_stopped_ = false;
  bool stopped_end_stream_ = false;
  bool decode_complete_ = false;
  bool encode_complete_ = false;
  bool response_started_ = false;
  bool local_replied_ = false;  // answered here: the rest of the request is dropped
  bool head_request_ = false;
  bool grpc_ = false;
  bool finished_ = false;
  uint32_t downstream_above_ = 0;
  std::string request_id_;
  tracing::ActiveTrace trace_;  // set when the HCM traces (sampled or not)
};

// A downstream HTTP connection: codec, streams, connection-level timers.
class HttpConnection : public config::ActiveSession,
                       public network::ConnectionCallbacks,
                       public ServerConnectionCallbacks,
                       public CodecTransport {
 public:
  HttpConnection(HcmConfigConstSharedPtr config, config::WorkerContext& worker, network::ConnectionPtr conn,
                 std::shared_ptr<const config::Listener> listener)
      : ActiveSession(std::move(listener)), config_(std::move(config)), worker_(worker), conn_(std::move(conn)) {
    conn_->setCallbacks(this);
    // The listener's per_connection_buffer_limit_bytes bounds the connection and each stream's buffers.
    buffer_limit_ = this->listener() ? this->listener()->buffer_limit : config_->buffer_limit;
    conn_->setBufferLimits(buffer_limit_);
    stats::inc(config_->stats.downstream_cx_total);
    stats::inc(config_->stats.downstream_cx_active);
    if (config_->codec == HcmConfig::Codec::Http1) createCodec(Protocol::Http11);
    if (config_->codec == HcmConfig::Codec::Http2) createCodec(Protocol::Http2);
    if (config_->idle_timeout_ms > 0) {
      idle_timer_ = worker_.dispatcher().createTimer([this] { onIdleTimeout(); });
      armIdleTimer();
    }
  }

  ~HttpConnection() override = default;

  void start() { conn_->startReading(); }

  // ActiveSession
  void forceClose() override { conn_->close(CloseType::NoFlush); }
  void startDrain() override {
    if (closed_) return;
    draining_ = true;
    applyDrain();
  }
  // HTTP/2: GOAWAY "shutting down soon" now, the final one (naming the last stream taken) after
  // drain_timeout. HTTP/1: the next response (or the one in progress) carries Connection: close and the
  // connection ends after it. An idle HTTP/1 connection is not closed here: the client may be sending
  // its next request right now (the keep-alive race); it is closed when the drain time ends. A
  // connection that has not sent a byte yet is told once its protocol is known.
  void applyDrain() {
    if (!draining_ || !codec_ || closed_) return;
    if (protocol_ == Protocol::Http2) {
      if (drain_goaway_timer_) return;
      codec_->shutdownNotice();
      drain_goaway_timer_ = worker_.dispatcher().createTimer([this] {
        if (codec_ && !closed_) codec_->goAway();
      });
      drain_goaway_timer_->enable(config_->drain_timeout_ms);
      return;
    }
    if (!streams_.empty()) codec_->goAway();  // the codec says close on this response or the next
  }

  // CodecTransport
  void write(common::Buffer& data, bool end_stream) override {
    LOG_TRACE("[C%lu] hcm: write %zu bytes", conn_->id(), data.length());
    stats::inc(config_->stats.downstream_cx_tx_bytes_total, static_cast<int64_t>(data.length()));
    conn_->write(data, end_stream);
  }
  void closeAfterFlush() override { conn_->close(CloseType::FlushWrite); }
  void readDisable(bool disable) override { conn_->readDisable(disable); }
  event::Dispatcher& dispatcher() override { return worker_.dispatcher(); }

  // ServerConnectionCallbacks
  RequestDecoder& newStream(ResponseEncoder& encoder) override {
    if (headers_timer_) headers_timer_->disable();
    if (idle_timer_) idle_timer_->disable();
    seen_stream_ = true;
    ActiveStream* raw = &streams_.pushBack(std::make_unique<ActiveStream>(*this, encoder));
    if (!draining_ && common::overloadDraw(common::overloadState().disable_keepalive.load(std::memory_order_relaxed))) {
      // The overload manager's disable_http_keepalive: this connection drains as on a listener drain
      // (HTTP/1: this response says Connection: close; HTTP/2: GOAWAY).
      stats::inc(config_->stats.downstream_cx_overload_disable_keepalive);
      draining_ = true;
      if (protocol_ == Protocol::Http2) applyDrain();
    }
    if (draining_ && protocol_ != Protocol::Http2) codec_->goAway();  // this response says Connection: close
    // One timer per connection watches every stream's idle time (no timer handle per request).
    if (config_->stream_idle_timeout_ms > 0) {
      if (!stream_idle_timer_) stream_idle_timer_ = worker_.dispatcher().createTimer([this] { onStreamIdleTimer(); });
      if (!stream_idle_timer_->enabled()) {
        const uint64_t t = config_->stream_idle_timeout_ms;
        stream_idle_timer_->enable(std::min(common::scaledTimeoutMs(common::OverloadState::kStreamIdle, t),
                                            common::scaledRecheckMs(common::OverloadState::kStreamIdle, t)));
      }
    }
    return *raw;
  }

  // A request began (HTTP/1), e.g. a pipelined one whose bytes came with the previous request: no new
  // read will arm the headers timer for it.
  void onRequestBegin() override {
    if (streams_.empty()) armHeadersTimer();
  }

  // ConnectionCallbacks
  void onData(network::Connection&, common::Buffer& data, bool end_stream) override {
    LOG_TRACE("[C%lu] hcm: read %zu bytes (end %d)", conn_->id(), data.length(), end_stream ? 1 : 0);
    stats::inc(config_->stats.downstream_cx_rx_bytes_total, static_cast<int64_t>(data.length()));
    if (!codec_) {
      // AUTO: the HTTP/2 connection preface decides; any other first bytes are HTTP/1.
      size_t n = std::min(data.length(), kH2Preface.size());
      char head[24];
      data.copyOut(0, n, head);
      if (std::string_view(head, n) == kH2Preface.substr(0, n) && n < kH2Preface.size() && !end_stream) {
        armHeadersTimer();  // a partial preface is held to the request headers timeout too
        return;
      }
      createCodec(std::string_view(head, n) == kH2Preface ? Protocol::Http2 : Protocol::Http11);
    }
    // HTTP/1: the first byte of a request starts the clock for its headers. HTTP/2: the first bytes of the
    // connection (a partial preface, SETTINGS without a stream) until its first stream.
    if ((protocol_ != Protocol::Http2 || !seen_stream_) && streams_.empty() && data.length() > 0) armHeadersTimer();
    CodecError err;
    if (!codec_->dispatch(data, err)) {
      onCodecError(err);
      return;
    }
    if (end_stream) {
      // The client half-closed: a tunnel (WebSocket) passes that on; otherwise nothing more will come.
      if (protocol_ != Protocol::Http2) static_cast<http1::Http1ServerConnection&>(*codec_).onRemoteHalfClose();
      if (streams_.empty() && !closed_) conn_->close(CloseType::FlushWrite);
    }
  }

  void onEvent(network::Connection&, network::ConnectionEvent event) override {
    if (event != network::ConnectionEvent::RemoteClose && event != network::ConnectionEvent::LocalClose) return;
    if (closed_) return;
    closed_ = true;
    if (codec_) codec_->onTransportClosed();
    // Streams the codec did not reset go too (a stream finishing right now removes itself).
    std::vector<ActiveStream*> left;
    for (ActiveStream* st = streams_.front(); st != nullptr; st = streams_.next(*st)) left.push_back(st);
    for (auto* st : left) {
      if (event == network::ConnectionEvent::RemoteClose) st->streamInfo().setFlag(common::kDownstreamConnectionTermination);
      st->resetStream();
    }
    headers_timer_.reset();
    idle_timer_.reset();
    stream_idle_timer_.reset();
    stats::dec(config_->stats.downstream_cx_active);
    stats::inc(config_->stats.downstream_cx_destroy);
    worker_.removeSession(*this);
  }
  void onAboveWriteBufferHighWatermark(network::Connection&) override {
    if (codec_) codec_->onUnderlyingConnectionAboveWriteBufferHighWatermark();
  }
  void onBelowWriteBufferLowWatermark(network::Connection&) override {
    if (codec_) codec_->onUnderlyingConnectionBelowWriteBufferLowWatermark();
  }

  void removeStream(ActiveStream& s) {
    worker_.dispatcher().deferredDelete(streams_.take(s));
    if (streams_.empty() && !closed_) {
      if (idle_timer_) armIdleTimer();
      if (conn_->readHalfClosed()) conn_->close(CloseType::FlushWrite);
    }
  }

  const HcmConfig& config() const { return *config_; }
  uint32_t bufferLimit() const { return buffer_limit_; }
  config::WorkerContext& worker() { return worker_; }
  const network::Connection& connection() const { return *conn_; }
  Protocol protocol() const { return protocol_; }
  std::optional<std::string>& xfccElement() { return xfcc_element_; }
  stats::live::CachedSlot& liveSlot() { return live_slot_; }

 private:
  void createCodec(Protocol p) {
    protocol_ = p;
    if (p == Protocol::Http2) {
      stats::inc(config_->stats.downstream_cx_http2_total);
      CodecSettings settings = config_->codec_settings;
      settings.stream_buffer_limit = buffer_limit_;
      codec_ = http2::createServerConnection(*this, *this, settings);
    } else {
      stats::inc(config_->stats.downstream_cx_http1_total);
      CodecSettings settings = config_->codec_settings;
      settings.stream_buffer_limit = buffer_limit_;
      codec_ = http1::createServerConnection(*this, *this, settings);
      // Errors in pipelined requests surface outside dispatch().
      static_cast<http1::Http1ServerConnection&>(*codec_).setDeferredErrorHandler(
          [this](const CodecError& err) { onCodecError(err); });
    }
    applyDrain();
  }

  void onCodecError(const CodecError& err) {
    stats::inc(config_->stats.downstream_cx_protocol_error);
    for (ActiveStream* st = streams_.front(); st != nullptr; st = streams_.next(*st)) {
      st->streamInfo().setFlag(common::kDownstreamProtocolError);
    }
    LOG_DEBUG("[C%lu] downstream protocol error: %u %s", conn_->id(), err.status, err.detail.c_str());
    if (protocol_ != Protocol::Http2) {
      // The codec answers (unless a response already started) and closes after flushing.
      if (err.status >= 500) {
        stats::inc(config_->stats.downstream_rq_5xx);
      } else {
        stats::inc(config_->stats.downstream_rq_4xx);
      }
      static_cast<http1::Http1ServerConnection&>(*codec_).sendErrorResponse(err);
    }
    if (!closed_) conn_->close(CloseType::FlushWrite);
  }

  void writeRawError(uint32_t status, const std::string& detail) {
    if (status >= 500) {
      stats::inc(config_->stats.downstream_rq_5xx);
    } else {
      stats::inc(config_->stats.downstream_rq_4xx);
    }
    std::string body = std::string(statusReason(status)) + "\n";
    common::Buffer out;
    out.add(absl::StrCat("HTTP/1.1 ", status, " ", statusReason(status), "\r\ncontent-length: ", body.size(),
                         "\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n", body));
    (void)detail;
    write(out, false);
  }

  void armHeadersTimer() {
    if (config_->request_headers_timeout_ms == 0) return;
    if (!headers_timer_) headers_timer_ = worker_.dispatcher().createTimer([this] { onHeadersTimeout(); });
    if (!headers_timer_->enabled()) headers_timer_->enable(config_->request_headers_timeout_ms);
  }

  void onHeadersTimeout() {
    if (!streams_.empty() || closed_) return;
    stats::inc(config_->stats.downstream_rq_header_timeout);
    LOG_DEBUG("[C%lu] request headers timeout", conn_->id());
    if (codec_ && protocol_ != Protocol::Http2) {
      writeRawError(408, "request_headers_timeout");
    } else if (codec_) {
      codec_->goAway();  // HTTP/2: a GOAWAY, not an HTTP/1 408
    }
    conn_->close(CloseType::FlushWrite);
  }

  void onStreamIdleTimer() {
    const uint64_t now = worker_.dispatcher().nowMs();
    uint64_t next = 0;
    std::vector<ActiveStream*> open;
    for (ActiveStream* st = streams_.front(); st != nullptr; st = streams_.next(*st)) open.push_back(st);
    for (auto* st : open) {
      uint64_t left = st->checkIdle(now);
      if (left > 0 && (next == 0 || left < next)) next = left;
    }
    if (next > 0 && !closed_) {
      stream_idle_timer_->enable(
          std::min(next, common::scaledRecheckMs(common::OverloadState::kStreamIdle, config_->stream_idle_timeout_ms)));
    }
  }

  // The idle timeout counts from now; under reduce_timeouts it is the scaled time, looked at again at
  // least every recheck interval so that pressure that rises later shortens it too.
  void armIdleTimer() {
    idle_since_ms_ = worker_.dispatcher().nowMs();
    idle_timer_->enable(std::min(common::scaledTimeoutMs(common::OverloadState::kConnectionIdle, config_->idle_timeout_ms),
                                 common::scaledRecheckMs(common::OverloadState::kConnectionIdle, config_->idle_timeout_ms)));
  }

  void onIdleTimeout() {
    if (!streams_.empty()) return;
    const uint64_t idle = worker_.dispatcher().nowMs() - idle_since_ms_;
    const uint64_t limit = common::scaledTimeoutMs(common::OverloadState::kConnectionIdle, config_->idle_timeout_ms);
    if (idle < limit) {
      idle_timer_->enable(
          std::min(limit - idle, common::scaledRecheckMs(common::OverloadState::kConnectionIdle, config_->idle_timeout_ms)));
      return;
    }
    stats::inc(config_->stats.downstream_cx_idle_timeout);
    if (codec_) codec_->goAway();
    conn_->close(CloseType::FlushWrite);
  }

  HcmConfigConstSharedPtr config_;
  config::WorkerContext& worker_;
  network::ConnectionPtr conn_;
  std::unique_ptr<ServerConnection> codec_;
  event::TimerPtr drain_goaway_timer_;
  bool draining_ = false;
  bool seen_stream_ = false;  // HTTP/2: the headers timeout guards the connection until its first stream
  uint32_t buffer_limit_ = 0;
  Protocol protocol_ = Protocol::Http11;
  common::OwnedList<ActiveStream> streams_;
  event::TimerPtr headers_timer_;
  event::TimerPtr idle_timer_;
  uint64_t idle_since_ms_ = 0;  // when the connection last became idle (no streams)
  event::TimerPtr stream_idle_timer_;
  std::optional<std::string> xfcc_element_;  // this hop's x-forwarded-client-cert element, once built
  stats::live::CachedSlot live_slot_;         // the live graph's inbound edge of this connection's caller
  bool closed_ = false;
};

// ---- ActiveStream --------------------------------------------------------------------------------

ActiveStream::ActiveStream(HttpConnection& conn, ResponseEncoder& encoder) : conn_(conn), encoder_(encoder) {
  encoder_.stream().setCallbacks(this);
  info_.start = std::chrono::steady_clock::now();
  if (!conn.config().access_logs.empty() || conn.config().tracing) info_.start_time = std::chrono::system_clock::now();
  info_.protocol = conn.protocol();
  const auto& st = config().stats;
  stats::inc(st.downstream_rq_total);
  stats::inc(st.downstream_rq_active);
  stats::inc(conn.protocol() == Protocol::Http2 ? st.downstream_rq_http2_total : st.downstream_rq_http1_total);
  last_activity_ms_ = conn_.worker().dispatcher().nowMs();
  for (const auto& f : config().filters) f->createFilters(*this);
  for (auto& f : decoder_filters_) f->setDecoderFilterCallbacks(*this);
  for (auto& f : encoder_filters_) f->setEncoderFilterCallbacks(*this);
}

ActiveStream::~ActiveStream() {
  if (!finished_) {
    for (auto& f : decoder_filters_) f->onDestroy();
    for (auto& f : encoder_filters_) f->onDestroy();
  }
}

const HcmConfig& ActiveStream::config() const { return conn_.config(); }
config::WorkerContext& ActiveStream::worker() { return conn_.worker(); }
const network::Connection& ActiveStream::connection() const { return conn_.connection(); }
uint32_t ActiveStream::bufferLimit() const { return conn_.bufferLimit(); }

void ActiveStream::touch() { last_activity_ms_ = conn_.worker().dispatcher().nowMs(); }

bool ActiveStream::prepareRequest(RequestHeaders& h, const RouteTable* table) {
  const HcmConfig& cfg = config();
  if (h.method.empty() || (h.path.empty() && h.method != "CONNECT")) {
    sendLocalReply(400, "missing method or path\n", "missing_required_header");
    return false;
  }
  if (h.authority.empty() && conn_.protocol() != Protocol::Http2) {
    // Only HTTP/1.0 may omit Host (the codec rejects HTTP/1.1 without it): route it as addressed to
    // this listener.
    h.authority = connection().localAddress().asString();
  }
  if (h.authority.empty() && h.method != "CONNECT") {
    sendLocalReply(400, "missing host\n", "missing_host_header");
    return false;
  }
  if (h.method != "CONNECT" && !(h.method == "OPTIONS" && h.path == "*")) {
    PathNormalizeResult r = normalizePath(h.path, cfg.path);
    if (r == PathNormalizeResult::Reject) {
      sendLocalReply(400, "invalid path\n", "path_normalization_failed");
      return false;
    }
    if (r == PathNormalizeResult::Redirect) {
      auto resp = std::make_unique<ResponseHeaders>();
      resp->status = 307;
      resp->add("location", h.path);
      resp->add("content-length", "0");
      local_replied_ = true;
      encodeHeaders(std::move(resp), true);
      return false;
    }
  }
  if (h.scheme.empty()) h.scheme = "http";
  // Internal or external; x-forwarded-for / -proto, x-envoy-* and internal_only_headers (Envoy's rules).
  const RequestHeaderVerdict verdict =
      sanitizeRequestHeaders(h, cfg, table, connection().remoteAddress(), connection().ssl() != nullptr);
  info_.envoy_controls = verdict.envoy_controls;
  // x-forwarded-client-cert (proxy/http/xfcc.h); this hop's element is built once per connection.
  applyXfcc(h, cfg.xfcc, connection().ssl(), conn_.xfccElement());
  // x-request-id: kept when present, made otherwise; an edge request's is replaced unless
  // preserve_external_request_id.
  if (cfg.generate_request_id &&
      (!verdict.has_request_id || (verdict.edge && !cfg.preserve_external_request_id))) {
    // UUID version 4 (RFC 4122), formatted by hand: this runs on every request.
    uint64_t a = conn_.worker().random(), b = conn_.worker().random();
    a = (a & 0xffffffffffff0fffULL) | 0x0000000000004000ULL;  // version 4
    b = (b & 0x3fffffffffffffffULL) | 0x8000000000000000ULL;  // variant 1
    static constexpr char kHex[] = "0123456789abcdef";
    char buf[36];
    int pos = 0;
    for (int i = 0; i < 32; ++i) {
      if (i == 8 || i == 12 || i == 16 || i == 20) buf[pos++] = '-';
      uint64_t word = i < 16 ? a : b;
      buf[pos++] = kHex[(word >> (60 - 4 * (i % 16))) & 0xf];
    }
    h.set("x-request-id", std::string_view(buf, sizeof(buf)));
  }
  if (cfg.always_set_request_id_in_response) {
    const std::string* id = h.get("x-request-id");
    if (id) request_id_ = *id;
  }
  // Trace context after x-request-id, which the sampling decision reads.
  if (cfg.tracing) {
    config::WorkerContext& w = conn_.worker();
    trace_ = tracing::startTrace(*cfg.tracing, h, w.random(), w.random(), w.random(), w.random());
  }
  // Expect: 100-continue is answered here, and not forwarded (Envoy's default).
  if (verdict.expect_continue) {
    ResponseHeaders cont;
    cont.status = 100;
    encoder_.encode1xxHeaders(cont);
  }
  return true;
}

void ActiveStream::decodeHeaders(RequestHeadersPtr headers, bool end_stream) {
  touch();
  request_headers_ = std::move(headers);
  head_request_ = request_headers_->method == "HEAD";
  grpc_ = isGrpc(*request_headers_);
  if (end_stream) {
    decode_complete_ = true;
    requestEnded();
  }
  if (common::overloadDraw(common::overloadState().stop_requests.load(std::memory_order_relaxed))) {
    // The overload manager's stop_accepting_requests (that share of new requests): Envoy's answer.
    info_.setFlag(common::kOverloadManager);
    sendLocalReply(503, "envoy overloaded", "overload");
    return;
  }
  if (config().request_timeout_ms > 0 && !end_stream) {
    request_timer_ = conn_.worker().dispatcher().createTimer([this] {
      if (decode_complete_ || finished_) return;
      stats::inc(config().stats.downstream_rq_timeout);
      sendLocalReply(408, "request timeout\n", "request_overall_timeout");
    });
    request_timer_->enable(config().request_timeout_ms);
  }
  // RDS: the worker's newest table (a long-lived connection follows route updates); inline: the
  // listener's own. The stream keeps the table alive while it uses one of its routes.
  // (Inline tables live as long as the listener config the connection pins: no reference taken.)
  // Its internal_only_headers are applied before routing.
  const RouteTable* table = config().routes.get();
  if (config().rds_id) {
    if (auto t = conn_.worker().routeTable(*config().rds_id)) {
      routes_ = std::static_pointer_cast<const RouteTable>(std::move(t));
      table = routes_.get();
    }
  }
  if (!prepareRequest(*request_headers_, table)) return;
  route_ = table ? table->route(*request_headers_) : nullptr;
  info_.route = route_;
  if (route_ == nullptr) {
    stats::inc(config().stats.no_route);
    info_.setFlag(common::kNoRouteFound);
    sendLocalReply(404, "", "route_not_found");
    return;
  }
  runDecodeHeaders(0);
}

// Filter iteration. `headers_next_` is the first filter that has not seen the request headers; a filter
// that stopped the headers still gets the body (it may be the router, which takes it from there), and
// one that returns Continue from decodeData lets the headers go on, as in Envoy.
void ActiveStream::runDecodeHeaders(size_t from) {
  for (size_t i = from; i < decoder_filters_.size(); ++i) {
    if (finished_ || local_replied_) return;
    headers_next_ = i + 1;
    const bool end = decode_complete_ && stopped_data_.empty() && !request_trailers_;
    if (decoder_filters_[i]->decodeHeaders(*request_headers_, end) == FilterHeadersStatus::StopIteration) {
      headers_stopped_ = true;
      return;
    }
  }
  headers_stopped_ = false;
}

void ActiveStream::decodeData(common::Buffer& data, bool end_stream) {
  touch();
  info_.bytes_received += data.length();
  if (end_stream) {
    decode_complete_ = true;
    requestEnded();
  }
  if (finished_ || local_replied_) {
    // A local reply answered the request: the rest of it goes nowhere.
    data.drain(data.length());
    maybeFinish();
    return;
  }
  if (data_stopped_) {
    // A filter is holding the body: keep adding to what it holds.
    stopped_data_.move(data);
    stopped_end_stream_ = end_stream;
    if (stopped_data_.length() > bufferLimit()) sendLocalReply(413, "payload too large\n", "request_payload_too_large");
    return;
  }
  runDecodeData(0, data, end_stream);
}

void ActiveStream::runDecodeData(size_t from, common::Buffer& data, bool end_stream) {
  for (size_t i = from; i < decoder_filters_.size(); ++i) {
    if (finished_ || local_replied_) return;
    if (i >= headers_next_) {
      // The filter that stopped the headers let the body through with Continue: the headers go on
      // first (runDecodeHeaders always reaches filter i), then the body follows them.
      runDecodeHeaders(i);
      if (finished_ || local_replied_) return;
    }
    if (i >= headers_next_) {
      stopped_data_.move(data);
      stopped_end_stream_ = end_stream;
      data_stopped_ = true;
      data_resume_at_ = i;
      return;
    }
    FilterDataStatus s = decoder_filters_[i]->decodeData(data, end_stream);
    if (s == FilterDataStatus::StopIterationAndBuffer) {
      stopped_data_.move(data);
      stopped_end_stream_ = end_stream;
      data_stopped_ = true;
      data_resume_at_ = i + 1;
      return;
    }
    if (s == FilterDataStatus::StopIterationNoBuffer) return;
  }
}

void ActiveStream::decodeTrailers(TrailerMapPtr trailers) {
  touch();
  decode_complete_ = true;
  requestEnded();
  request_trailers_ = std::move(trailers);
  if (finished_ || local_replied_) {
    maybeFinish();
    return;
  }
  if (data_stopped_) return;  // delivered after the held body, on continueDecoding()
  runDecodeTrailers(0);
}

void ActiveStream::runDecodeTrailers(size_t from) {
  for (size_t i = from; i < decoder_filters_.size() && i < headers_next_; ++i) {
    if (finished_ || local_replied_) return;
    trailers_next_ = i + 1;
    if (decoder_filters_[i]->decodeTrailers(*request_trailers_) == FilterTrailersStatus::StopIteration) return;
  }
}

void ActiveStream::continueDecoding() {
  if (finished_) return;
  if (headers_stopped_) runDecodeHeaders(headers_next_);
  if (finished_ || local_replied_) return;
  if (data_stopped_) {
    data_stopped_ = false;
    common::Buffer data;
    data.move(stopped_data_);
    runDecodeData(data_resume_at_, data, stopped_end_stream_);
  }
  // Trailers that came while the chain was stopped go on from the first filter that has not seen them
  // (a request of headers and trailers only has no body to carry them).
  if (!data_stopped_ && !headers_stopped_ && request_trailers_ && !finished_) runDecodeTrailers(trailers_next_);
}

void ActiveStream::sendLocalReply(uint32_t status, std::string_view body, std::string_view details) {
  if (finished_) return;
  info_.details = std::string(details);
  local_replied_ = true;
  if (response_started_) {
    info_.setFlag(common::kLocalReset);
    resetStream();
    return;
  }
  LOG_DEBUG("local reply %u (%.*s) to %s %s", status, static_cast<int>(details.size()), details.data(),
            request_headers_ ? request_headers_->method.c_str() : "-", request_headers_ ? request_headers_->path.c_str() : "-");
  auto h = std::make_unique<ResponseHeaders>();
  if (grpc_) {
    // gRPC clients read errors from grpc-status; a "trailers-only" response carries it in the headers.
    h->status = 200;
    h->add("content-type", "application/grpc");
    h->add("grpc-status", std::to_string(grpcStatusFor(status)));
    std::string msg(body.empty() ? std::string(statusReason(status)) : std::string(body));
    while (!msg.empty() && msg.back() == '\n') msg.pop_back();
    h->add("grpc-message", msg);
    encodeHeaders(std::move(h), true);
    return;
  }
  h->status = status;
  // Envoy marks answers of a protection mechanism (circuit breakers, the overload manager) so clients
  // and retry policies upstream of us can tell them from the service's own 503s.
  if (details == "upstream_overflow" || details == "overload") h->add("x-envoy-overloaded", "true");
  if (!body.empty()) h->add("content-type", "text/plain");
  h->add("content-length", std::to_string(body.size()));
  if (body.empty() || head_request_) {
    encodeHeaders(std::move(h), true);
    return;
  }
  encodeHeaders(std::move(h), false);
  common::Buffer b;
  b.add(body);
  encodeData(b, true);
}

void ActiveStream::encode1xxHeaders(ResponseHeadersPtr headers) {
  if (finished_ || response_started_) return;
  if (headers->status == 100) return;  // 100 Continue was answered by us already
  encoder_.encode1xxHeaders(*headers);
}

void ActiveStream::encodeHeaders(ResponseHeadersPtr headers, bool end_stream) {
  if (finished_) return;
  touch();
  response_started_ = true;
  for (auto it = encoder_filters_.rbegin(); it != encoder_filters_.rend(); ++it) (*it)->encodeHeaders(*headers, end_stream);
  if (route_) route_->response_headers.applyTo(*headers);
  if (!config().server_name.empty()) headers->set("server", config().server_name);
  if (!request_id_.empty()) headers->set("x-request-id", request_id_);
  info_.response_code = headers->status;
  info_.response_start = std::chrono::steady_clock::now();
  const auto& st = config().stats;
  uint32_t c = headers->status / 100;
  stats::inc(c == 1 ? st.downstream_rq_1xx : c == 2 ? st.downstream_rq_2xx : c == 3 ? st.downstream_rq_3xx
             : c == 4 ? st.downstream_rq_4xx : st.downstream_rq_5xx);
  if (end_stream) encode_complete_ = true;
  encoder_.encodeHeaders(*headers, end_stream);
  if (!config().access_logs.empty()) response_headers_ = std::move(headers);
  if (end_stream) maybeFinish();
}

void ActiveStream::encodeData(common::Buffer& data, bool end_stream) {
  if (finished_) {
    data.drain(data.length());
    return;
  }
  touch();
  info_.bytes_sent += data.length();
  for (auto it = encoder_filters_.rbegin(); it != encoder_filters_.rend(); ++it) (*it)->encodeData(data, end_stream);
  if (end_stream) encode_complete_ = true;
  if (head_request_) {
    data.drain(data.length());
    if (end_stream) {
      common::Buffer empty;
      encoder_.encodeData(empty, true);
    }
  } else {
    encoder_.encodeData(data, end_stream);
  }
  if (end_stream) maybeFinish();
}

void ActiveStream::encodeTrailers(TrailerMapPtr trailers) {
  if (finished_) return;
  touch();
  for (auto it = encoder_filters_.rbegin(); it != encoder_filters_.rend(); ++it) (*it)->encodeTrailers(*trailers);
  encode_complete_ = true;
  encoder_.encodeTrailers(*trailers);
  if (!config().access_logs.empty()) response_trailers_ = std::move(trailers);
  maybeFinish();
}

void ActiveStream::maybeFinish() {
  if (finished_ || !encode_complete_) return;
  if (!decode_complete_) {
    // The response is complete but the request is not: nothing more of it will be read. HTTP/2 resets
    // the stream with NO_ERROR once the response has gone out whole; HTTP/1 closes the connection after
    // the response (it cannot find the next request).
    finished_ = true;
    for (auto& f : decoder_filters_) f->onDestroy();
    for (auto& f : encoder_filters_) f->onDestroy();
    encoder_.stream().resetStream(StreamResetReason::ResponseComplete);
    finish();
    return;
  }
  finished_ = true;
  for (auto& f : decoder_filters_) f->onDestroy();
  for (auto& f : encoder_filters_) f->onDestroy();
  finish();
}

// One line per configured access log, from what the stream holds at its end (local replies, resets
// and timeouts included: every path ends here).
void ActiveStream::writeAccessLogs() {
  accesslog::LogContext c;
  c.start_time = info_.start_time;
  c.start = info_.start;
  c.end = std::chrono::steady_clock::now();
  c.request_end = info_.request_end;
  c.response_start = info_.response_start;
  c.response_code = info_.response_code;
  c.response_flags = info_.response_flags;
  c.bytes_received = info_.bytes_received;
  c.bytes_sent = info_.bytes_sent;
  c.protocol = protocolName(info_.protocol);
  c.request = request_headers_.get();
  c.response = response_headers_.get();
  c.response_trailers = response_trailers_.get();
  c.downstream = &connection();
  if (info_.upstream_host) c.upstream_host = &*info_.upstream_host;
  if (info_.cluster != nullptr) c.upstream_cluster = info_.cluster->name;
  if (route_ != nullptr) c.route_name = route_->name;
  c.response_code_details = info_.details;
  c.upstream_transport_failure = info_.upstream_transport_failure_reason;
  accesslog::logAll(config().access_logs, c, conn_.worker().dispatcher());
}

void ActiveStream::finish() {
  if (!config().access_logs.empty()) writeAccessLogs();
  if (trace_.sampled && config().tracing) recordSpan();
  const auto& st = config().stats;
  stats::dec(st.downstream_rq_active);
  stats::inc(st.downstream_rq_completed);
  const auto now = std::chrono::steady_clock::now();
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(now - info_.start).count();
  stats::record(st.downstream_rq_time, static_cast<uint64_t>(us));
  if (stats::live::enabled()) recordLiveEdges(now, static_cast<uint64_t>(us));
  request_timer_.reset();
  // The codec may keep its stream a little longer (HTTP/1 until the connection moves on): it must not
  // call back into a finished stream.
  encoder_.stream().setCallbacks(nullptr);
  conn_.removeStream(*this);
}

// The admin's live graph (stats/live_edges.h): an INBOUND listener's streams are caller -> this
// workload, an OUTBOUND one's this workload -> cluster; a listener with no traffic_direction (a plain
// proxy) shows both. The slots are cached per connection and per cluster: no name is hashed here.
void ActiveStream::recordLiveEdges(std::chrono::steady_clock::time_point now, uint64_t latency_us) {
  namespace live = stats::live;
  const config::Listener* l = conn_.listener().get();
  const bool inbound = l == nullptr || !l->outbound;
  const bool outbound = l == nullptr || !l->inbound;
  // steady_clock is CLOCK_MONOTONIC, the clock live::nowMs() reads.
  const auto now_ms = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count());
  if (inbound) {
    live::recordRequest(live::inboundHttpSlot(connection(), conn_.liveSlot()), now_ms, latency_us, info_.response_code, info_.response_flags);
  }
  if (outbound && info_.cluster != nullptr) {
    live::recordRequest(live::outboundHttpSlot(info_.cluster->index, info_.cluster->name, info_.upstream_principal),
                        now_ms, latency_us, info_.response_code, info_.response_flags);
  }
}

void ActiveStream::recordSpan() {
  tracing::FinishedRequest r;
  if (request_headers_) {
    r.host = request_headers_->authority;
    r.path = request_headers_->path;
    r.method = request_headers_->method;
    if (const std::string* id = request_headers_->get("x-request-id")) r.request_id = *id;
  }
  if (info_.route != nullptr) r.decorator = info_.route->decoratorOperation();
  if (info_.cluster != nullptr) r.cluster = info_.cluster->name;
  r.status = info_.response_code;
  r.response_flags = info_.response_flags;
  r.protocol = static_cast<uint8_t>(info_.protocol);
  // Envoy's span kind: CLIENT on an egress (OUTBOUND) listener's HCM, SERVER otherwise.
  r.client_kind = conn_.listener() != nullptr && conn_.listener()->outbound;
  const auto elapsed = std::chrono::steady_clock::now() - info_.start;
  const auto start = std::chrono::duration_cast<std::chrono::nanoseconds>(info_.start_time.time_since_epoch());
  r.start_unix_ns = static_cast<uint64_t>(start.count());
  r.end_unix_ns = r.start_unix_ns + static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(elapsed).count());
  tracing::finishTrace(*config().tracing, trace_, r, conn_.worker().dispatcher());
}

void ActiveStream::resetStream() {
  if (finished_) return;
  finished_ = true;
  for (auto& f : decoder_filters_) f->onDestroy();
  for (auto& f : encoder_filters_) f->onDestroy();
  stats::inc(config().stats.downstream_rq_tx_reset);
  encoder_.stream().resetStream(StreamResetReason::LocalReset);
  finish();
}

void ActiveStream::onResetStream(StreamResetReason reason) {
  if (finished_) return;
  finished_ = true;
  LOG_DEBUG("downstream stream reset: %s", resetReasonName(reason));
  if (reason == StreamResetReason::RemoteReset) stats::inc(config().stats.downstream_rq_rx_reset);
  info_.setFlag(reason == StreamResetReason::RemoteReset ? common::kDownstreamRemoteReset
                                                         : common::kDownstreamConnectionTermination);
  for (auto& f : decoder_filters_) f->onDestroy();
  for (auto& f : encoder_filters_) f->onDestroy();
  finish();
}

uint64_t ActiveStream::checkIdle(uint64_t now) {
  if (finished_) return 0;
  // reduce_timeouts: checked against the scaled time, so a rising scale shortens running streams too.
  const uint64_t timeout = common::scaledTimeoutMs(common::OverloadState::kStreamIdle, config().stream_idle_timeout_ms);
  const uint64_t idle = now - last_activity_ms_;
  if (idle < timeout) return timeout - idle;
  stats::inc(config().stats.downstream_rq_idle_timeout);
  info_.setFlag(common::kStreamIdleTimeout);
  sendLocalReply(408, "stream timeout\n", "stream_idle_timeout");
  return 0;
}

// ---- config translation --------------------------------------------------------------------------

struct HttpFilterRegistration {
  HttpFilterFactoryFn fn;
  bool terminal;
};
std::map<std::string, HttpFilterRegistration>& httpFilterRegistry() {
  static auto* r = new std::map<std::string, HttpFilterRegistration>;
  return *r;
}

class HcmFactory : public config::NetworkFilterFactory {
 public:
  explicit HcmFactory(HcmConfigConstSharedPtr c) : config_(std::move(c)) {}
  void onAccept(config::WorkerContext& worker, network::ConnectionPtr conn,
                const std::shared_ptr<const config::Listener>& listener, uint64_t chain_hash) const override {
    startHttpConnection(config_, worker, std::move(conn), listener, chain_hash);
  }
  const HcmConfig* httpConnectionManager() const override { return config_.get(); }

 private:
  HcmConfigConstSharedPtr config_;
};

absl::Status fieldError(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

// A TypedStruct's value as the message `type_url` names (through JSON, so field names are checked),
// packed as an Any. Errors name `path` (the wrapper's value).
absl::Status structToAny(const google::protobuf::Struct& value, const std::string& type_url, const std::string& path,
                         google::protobuf::Any& out) {
  const std::string name = type_url.substr(type_url.rfind('/') + 1);
  const auto* desc = google::protobuf::DescriptorPool::generated_pool()->FindMessageTypeByName(name);
  if (desc == nullptr) return fieldError(path, absl::StrCat("unknown message type '", name, "'"));
  std::unique_ptr<google::protobuf::Message> msg(
      google::protobuf::MessageFactory::generated_factory()->GetPrototype(desc)->New());
  std::string json;
  if (auto st = google::protobuf::util::MessageToJsonString(value, &json); !st.ok()) {
    return fieldError(path, std::string(st.message()));
  }
  if (auto st = google::protobuf::util::JsonStringToMessage(json, msg.get()); !st.ok()) {
    return fieldError(path, absl::StrCat("not a valid ", name, ": ", std::string(st.message())));
  }
  out.PackFrom(*msg);
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const config::NetworkFilterFactory>> createHcm(const google::protobuf::Any& any,
                                                                             const std::string& path,
                                                                             config::TranslationContext& ctx) {
  hcm_v3::HttpConnectionManager proto;
  if (!any.UnpackTo(&proto)) return fieldError(path, "cannot decode HttpConnectionManager");
  auto cfg = std::make_shared<HcmConfig>();
  if (proto.stat_prefix().empty()) return fieldError(path + ".stat_prefix", "is required");
  cfg->stat_prefix = proto.stat_prefix();
  switch (proto.codec_type()) {
    case hcm_v3::HttpConnectionManager::AUTO: cfg->codec = HcmConfig::Codec::Auto; break;
    case hcm_v3::HttpConnectionManager::HTTP1: cfg->codec = HcmConfig::Codec::Http1; break;
    case hcm_v3::HttpConnectionManager::HTTP2: cfg->codec = HcmConfig::Codec::Http2; break;
    default: return fieldError(path + ".codec_type", "only AUTO, HTTP1 and HTTP2 are supported");
  }
  RouteTable::Options ro;
  // An inline route_config of an xDS listener may name a cluster CDS has removed: it answers
  // cluster_not_found until the cluster is back (config::TranslationContext::dynamic).
  ro.validate_clusters = !ctx.dynamic;
  for (const auto& u : proto.upgrade_configs()) {
    if (u.upgrade_type() == "websocket" && (!u.has_enabled() || u.enabled().value())) ro.hcm_websocket_upgrade = true;
  }
  std::string waiting_for_rds;
  if (proto.has_rds()) {
    const auto& rds = proto.rds();
    if (rds.route_config_name().empty()) return fieldError(path + ".rds.route_config_name", "is required");
    if (rds.has_config_source() && !rds.config_source().has_ads()) {
      return fieldError(path + ".rds.config_source", "only ads: {} is supported");
    }
    if (ctx.rds_names) ctx.rds_names->insert(rds.route_config_name());
    auto it = ctx.route_tables ? ctx.route_tables->find(rds.route_config_name()) : decltype(ctx.route_tables->end()){};
    if (ctx.route_tables == nullptr || it == ctx.route_tables->end()) {
      // Warming: the listener waits for its RouteConfiguration. The rest of the HCM is still checked
      // first, so that a fault of the listener's is NACKed with the listener, not found later and
      // blamed on the RouteConfiguration whose arrival completes it.
      waiting_for_rds = rds.route_config_name();
    } else {
      cfg->routes = std::static_pointer_cast<const RouteTable>(it->second);
    }
    cfg->rds_id = config::routeIds().get(rds.route_config_name());
    // WebSocket upgrades allowed on the HCM apply to RDS routes that do not say otherwise.
    cfg->hcm_websocket_upgrade = ro.hcm_websocket_upgrade;
  } else {
    if (!proto.has_route_config()) return fieldError(path + ".route_config", "is required (or rds)");
    auto routes = RouteTable::create(proto.route_config(), path + ".route_config", ctx.clusters, ro);
    if (!routes.ok()) return routes.status();
    cfg->routes = *routes;
  }
  cfg->hcm_websocket_upgrade = ro.hcm_websocket_upgrade;

  if (proto.has_stream_idle_timeout()) cfg->stream_idle_timeout_ms = config::durationMs(proto.stream_idle_timeout());
  if (proto.has_request_timeout()) cfg->request_timeout_ms = config::durationMs(proto.request_timeout());
  if (proto.has_drain_timeout()) cfg->drain_timeout_ms = config::durationMs(proto.drain_timeout());
  if (proto.has_request_headers_timeout()) {
    cfg->request_headers_timeout_ms = config::durationMs(proto.request_headers_timeout());
  }
  if (proto.has_common_http_protocol_options()) {
    const auto& o = proto.common_http_protocol_options();
    if (o.has_idle_timeout()) cfg->idle_timeout_ms = config::durationMs(o.idle_timeout());
    if (o.has_max_headers_count()) {
      if (o.max_headers_count().value() == 0) return fieldError(path + ".common_http_protocol_options.max_headers_count", "must be at least 1");
      cfg->codec_settings.max_headers_count = o.max_headers_count().value();
    }
  }
  if (proto.has_max_request_headers_kb()) {
    uint32_t kb = proto.max_request_headers_kb().value();
    if (kb == 0 || kb > 8192) return fieldError(path + ".max_request_headers_kb", "must be 1..8192");
    cfg->codec_settings.max_request_headers_kb = kb;
  }
  if (proto.has_http2_protocol_options()) {
    const auto& h2 = proto.http2_protocol_options();
    if (h2.has_max_concurrent_streams()) {
      if (h2.max_concurrent_streams().value() == 0) return fieldError(path + ".http2_protocol_options.max_concurrent_streams", "must be at least 1");
      cfg->codec_settings.max_concurrent_streams = h2.max_concurrent_streams().value();
    }
    // RFC 9113 bounds, and Envoy's: windows 65535..2^31-1 (a window above it is a protocol error on the
    // wire; below 65535 Envoy refuses it), an HPACK table up to 2^32-1 octets.
    const std::string hp = path + ".http2_protocol_options";
    if (h2.has_initial_stream_window_size()) {
      const uint32_t v = h2.initial_stream_window_size().value();
      if (v < 65535 || v > 2147483647u) return fieldError(hp + ".initial_stream_window_size", "must be 65535..2147483647");
      cfg->codec_settings.initial_stream_window_size = v;
    }
    if (h2.has_initial_connection_window_size()) {
      const uint32_t v = h2.initial_connection_window_size().value();
      if (v < 65535 || v > 2147483647u) return fieldError(hp + ".initial_connection_window_size", "must be 65535..2147483647");
      cfg->codec_settings.initial_connection_window_size = v;
    }
    if (h2.has_hpack_table_size()) cfg->codec_settings.hpack_table_size = h2.hpack_table_size().value();
  }
  cfg->use_remote_address = proto.has_use_remote_address() && proto.use_remote_address().value();
  cfg->skip_xff_append = proto.skip_xff_append();
  cfg->xff_num_trusted_hops = proto.xff_num_trusted_hops();
  if (proto.has_internal_address_config()) {
    const auto& iac = proto.internal_address_config();
    cfg->internal_addresses.unix_sockets = iac.unix_sockets();
    for (int i = 0; i < iac.cidr_ranges_size(); ++i) {
      const auto& r = iac.cidr_ranges(i);
      const std::string rp = absl::StrCat(path, ".internal_address_config.cidr_ranges[", i, "]");
      auto a = network::Address::parse(r.address_prefix(), 0);
      if (!a || r.address_prefix().find('[') != std::string::npos) {
        return fieldError(rp + ".address_prefix", absl::StrCat("'", r.address_prefix(), "' is not an IP address"));
      }
      // As in Envoy, an unset prefix_len is 0: every address of that family.
      const uint32_t len = r.has_prefix_len() ? r.prefix_len().value() : 0;
      if (len > (a->isV6() ? 128u : 32u)) return fieldError(rp + ".prefix_len", absl::StrCat(len, " is too long"));
      cfg->internal_addresses.cidr_ranges.push_back(config::CidrRange{*a, len});
    }
  }
  if (proto.has_generate_request_id()) cfg->generate_request_id = proto.generate_request_id().value();
  cfg->preserve_external_request_id = proto.preserve_external_request_id();
  cfg->always_set_request_id_in_response = proto.always_set_request_id_in_response();
  cfg->server_name = proto.server_name();
  auto xfcc = translateXfcc(proto, path);
  if (!xfcc.ok()) return xfcc.status();
  cfg->xfcc = *xfcc;
  // Unless the path handling is configured, Strait normalises fully before routing (hardening guide):
  // dot segments, "//", and escaped slashes (%2F, %5C) unescaped and normalised. Configured, it does
  // exactly what the fields say, as Envoy does.
  const bool path_configured = proto.has_normalize_path() || proto.merge_slashes() ||
                               proto.path_with_escaped_slashes_action() != hcm_v3::HttpConnectionManager::IMPLEMENTATION_SPECIFIC_DEFAULT;
  if (proto.has_normalize_path()) cfg->path.normalize_path = proto.normalize_path().value();
  cfg->path.merge_slashes = path_configured ? proto.merge_slashes() : true;
  if (!path_configured) cfg->path.escaped_slashes = PathEscapedSlashesAction::UnescapeAndForward;
  if (path_configured) switch (proto.path_with_escaped_slashes_action()) {
    case hcm_v3::HttpConnectionManager::REJECT_REQUEST: cfg->path.escaped_slashes = PathEscapedSlashesAction::RejectRequest; break;
    case hcm_v3::HttpConnectionManager::UNESCAPE_AND_REDIRECT: cfg->path.escaped_slashes = PathEscapedSlashesAction::UnescapeAndRedirect; break;
    case hcm_v3::HttpConnectionManager::UNESCAPE_AND_FORWARD: cfg->path.escaped_slashes = PathEscapedSlashesAction::UnescapeAndForward; break;
    default: cfg->path.escaped_slashes = PathEscapedSlashesAction::Keep; break;
  }

  if (proto.has_tracing()) {
    auto t = tracing::translateTracing(proto.tracing(), path + ".tracing", cfg->stat_prefix, ctx);
    if (!t.ok()) return t.status();
    cfg->tracing = *t;
  }

  if (proto.access_log_size() > 0) {
    auto logs = accesslog::translateAccessLogs(proto.access_log(), path + ".access_log", ctx.store);
    if (!logs.ok()) return logs.status();
    cfg->access_logs = std::move(*logs);
  }

  HttpFilterContext fctx{ctx.store, ctx.clusters, cfg->stat_prefix};
  bool have_terminal = false;
  for (int i = 0; i < proto.http_filters_size(); ++i) {
    const auto& f = proto.http_filters(i);
    const std::string fp = absl::StrCat(path, ".http_filters[", i, "]");
    if (f.disabled()) continue;
    if (have_terminal) return fieldError(fp, "no HTTP filter may follow the router");
    // The router may be named without a config, as Envoy allows for it (and older bootstraps do).
    google::protobuf::Any router_by_name;
    const bool named_router = !f.has_typed_config() && (f.name() == "envoy.filters.http.router" || f.name() == "envoy.router");
    if (named_router) router_by_name.set_type_url("type.googleapis.com/envoy.extensions.filters.http.router.v3.Router");
    if (!f.has_typed_config() && !named_router) {
      if (f.is_optional()) continue;
      return fieldError(fp + ".typed_config", "is required (filters are chosen by type URL; only the router may be named alone)");
    }
    // A TypedStruct wrapper is resolved by the type it wraps: that filter, given the wrapped value.
    const google::protobuf::Any* typed = named_router ? &router_by_name : &f.typed_config();
    std::string type_url = typed->type_url();
    std::string config_path = fp + ".typed_config";
    std::string wrapper;  // the wrapper's type name, when there is one
    google::protobuf::Any unwrapped;
    std::optional<google::protobuf::Struct> wrapped_value;
    if (config::isTypedStruct(*typed)) {
      auto ts = config::readTypedStruct(*typed);
      if (!ts) return fieldError(config_path, "cannot decode TypedStruct");
      wrapper = ts->wrapper;
      type_url = ts->type_url;
      config_path += ".value";
      wrapped_value = std::move(ts->value);
    }
    auto it = httpFilterRegistry().find(type_url);
    if (it == httpFilterRegistry().end()) {
      const std::string what = wrapper.empty() ? absl::StrCat("'", type_url, "'")
                                               : absl::StrCat("'", type_url, "' (in a ", wrapper, ")");
      if (f.is_optional()) {
        LOG_INFO("%s: skipping optional unsupported HTTP filter %s", fp.c_str(), what.c_str());
        continue;
      }
      return fieldError(fp + ".typed_config", absl::StrCat("unsupported HTTP filter type ", what));
    }
    if (wrapped_value) {
      if (auto st = structToAny(*wrapped_value, type_url, config_path, unwrapped); !st.ok()) return st;
      typed = &unwrapped;
    }
    fctx.filter_name = f.name();
    auto factory = it->second.fn(*typed, config_path, fctx);
    if (!factory.ok() && factory.status().code() == absl::StatusCode::kUnimplemented && f.is_optional()) {
      LOG_INFO("%s: skipping optional HTTP filter: %s", fp.c_str(), std::string(factory.status().message()).c_str());
      continue;
    }
    if (!factory.ok()) return factory.status();
    cfg->filters.push_back(*factory);
    have_terminal = it->second.terminal;
  }
  if (!have_terminal) return fieldError(path + ".http_filters", "the last HTTP filter must be the router");
  if (!waiting_for_rds.empty()) {
    return absl::UnavailableError(absl::StrCat("waiting for RouteConfiguration '", waiting_for_rds, "'"));
  }

  const std::string p = "http." + cfg->stat_prefix + ".";
  auto& s = ctx.store;
  HcmStats& st = cfg->stats;
  st.downstream_cx_total = s.counter(p + "downstream_cx_total");
  st.downstream_cx_active = s.gauge(p + "downstream_cx_active");
  st.downstream_cx_destroy = s.counter(p + "downstream_cx_destroy");
  st.downstream_cx_http1_total = s.counter(p + "downstream_cx_http1_total");
  st.downstream_cx_http2_total = s.counter(p + "downstream_cx_http2_total");
  st.downstream_cx_protocol_error = s.counter(p + "downstream_cx_protocol_error");
  st.downstream_cx_idle_timeout = s.counter(p + "downstream_cx_idle_timeout");
  st.downstream_cx_overload_disable_keepalive = s.counter(p + "downstream_cx_overload_disable_keepalive");
  st.downstream_cx_rx_bytes_total = s.counter(p + "downstream_cx_rx_bytes_total");
  st.downstream_cx_tx_bytes_total = s.counter(p + "downstream_cx_tx_bytes_total");
  st.downstream_rq_total = s.counter(p + "downstream_rq_total");
  st.downstream_rq_active = s.gauge(p + "downstream_rq_active");
  st.downstream_rq_http1_total = s.counter(p + "downstream_rq_http1_total");
  st.downstream_rq_http2_total = s.counter(p + "downstream_rq_http2_total");
  st.downstream_rq_1xx = s.counter(p + "downstream_rq_1xx");
  st.downstream_rq_2xx = s.counter(p + "downstream_rq_2xx");
  st.downstream_rq_3xx = s.counter(p + "downstream_rq_3xx");
  st.downstream_rq_4xx = s.counter(p + "downstream_rq_4xx");
  st.downstream_rq_5xx = s.counter(p + "downstream_rq_5xx");
  st.downstream_rq_completed = s.counter(p + "downstream_rq_completed");
  st.downstream_rq_timeout = s.counter(p + "downstream_rq_timeout");
  st.downstream_rq_idle_timeout = s.counter(p + "downstream_rq_idle_timeout");
  st.downstream_rq_header_timeout = s.counter(p + "downstream_rq_header_timeout");
  st.downstream_rq_rx_reset = s.counter(p + "downstream_rq_rx_reset");
  st.downstream_rq_tx_reset = s.counter(p + "downstream_rq_tx_reset");
  st.no_route = s.counter(p + "no_route");
  st.downstream_rq_time = s.histogram(p + "downstream_rq_time");
  return std::shared_ptr<const config::NetworkFilterFactory>(std::make_shared<HcmFactory>(cfg));
}

}  // namespace

void registerHttpFilter(const std::string& type_url, HttpFilterFactoryFn fn, bool terminal) {
  httpFilterRegistry()[type_url] = HttpFilterRegistration{std::move(fn), terminal};
}

void registerHttpConnectionManager() {
  // RDS tables are built by the config layer through this (it knows no HTTP types).
  config::setRouteTableFactory([](const std::shared_ptr<const google::protobuf::Message>& m, const std::string& path,
                                  const config::ClusterMap& clusters)
                                   -> absl::StatusOr<std::shared_ptr<const void>> {
    RouteTable::Options o;
    o.validate_clusters = false;  // xDS: an unknown cluster answers 503 at run time, as in Envoy
    // Shared with the xDS sources, which hold the resource anyway (for SotW comparison and /config_dump).
    auto t = RouteTable::create(std::static_pointer_cast<const envoy::config::route::v3::RouteConfiguration>(m), path,
                                clusters, o);
    if (!t.ok()) return t.status();
    return std::shared_ptr<const void>(*t);
  });
  config::registerNetworkFilter(
      "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager", createHcm);
}

void startHttpConnection(const HcmConfigConstSharedPtr& config, config::WorkerContext& worker,
                         network::ConnectionPtr conn, const std::shared_ptr<const config::Listener>& listener,
                         uint64_t chain_hash) {
  auto c = std::make_unique<HttpConnection>(config, worker, std::move(conn), listener);
  c->chain_hash = chain_hash;
  HttpConnection* raw = c.get();
  worker.addSession(std::move(c));
  raw->start();
}

}  // namespace strait::http
