#include "proxy/upstream/health_checker.h"

#include <algorithm>
#include <limits>
#include <string_view>
#include <unordered_set>

#include "proxy/common/buffer.h"
#include "proxy/common/log.h"
#include "proxy/http/codec.h"
#include "proxy/http/header_map.h"
#include "proxy/http/http1/codec.h"
#include "proxy/http/http2/codec.h"
#include "proxy/network/connection.h"
#include "proxy/network/transport_socket.h"

namespace strait::upstream {

namespace {

// Envoy's HealthCheckFailureType: only the network kinds (and HTTP retriable statuses) count towards
// unhealthy_threshold; an ACTIVE or PASSIVE failure is final at once.
enum class FailureType { Active, Network, NetworkTimeout, Passive };

// What a check keeps of an answer: enough for any sane payload match, never a peer-sized buffer.
constexpr size_t kMaxTcpAnswer = 64 * 1024;
constexpr size_t kMaxHttpBody = 1024 * 1024;
constexpr size_t kMaxGrpcBody = 64 * 1024;

// Envoy's health-check user agent: servers (Envoy's own health_check filter among them) and logs
// recognise checks by it.
constexpr std::string_view kUserAgent = "Envoy/HC";
constexpr std::string_view kGrpcHealthPath = "/grpc.health.v1.Health/Check";
constexpr uint64_t kGrpcServing = 1;  // grpc.health.v1.HealthCheckResponse.ServingStatus.SERVING

const std::vector<StatusRange>& defaultExpected() {
  static const std::vector<StatusRange> ranges{{200, 201}};
  return ranges;
}

bool inRanges(uint32_t status, const std::vector<StatusRange>& ranges) {
  for (const auto& r : ranges) {
    if (status >= r.start && status < r.end) return true;
  }
  return false;
}

// Envoy's PayloadMatcher: each block must appear, in the given order, each one searched from the end
// of the previous match (so blocks may have other bytes between them but never overlap).
bool payloadMatches(const std::vector<std::string>& blocks, std::string_view data) {
  size_t from = 0;
  for (const auto& b : blocks) {
    if (b.empty()) continue;  // Envoy drops empty blocks when it loads the config
    const size_t at = data.find(b, from);
    if (at == std::string_view::npos) return false;
    from = at + b.size();
  }
  return true;
}

// ---- the two grpc.health.v1 messages, by hand (proto3 wire format) ----

void appendVarint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

bool readVarint(std::string_view& in, uint64_t& v) {
  v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (in.empty()) return false;
    const auto b = static_cast<uint8_t>(in.front());
    in.remove_prefix(1);
    v |= static_cast<uint64_t>(b & 0x7f) << shift;
    if ((b & 0x80) == 0) return true;
  }
  return false;  // more than 10 bytes: not a varint
}

// A gRPC length-prefixed message (flags 0: uncompressed) holding HealthCheckRequest{service = 1}. An
// empty service is the default value, which proto3 leaves out: the message is then empty.
std::string grpcHealthRequestFrame(const std::string& service) {
  std::string msg;
  if (!service.empty()) {
    msg.push_back(static_cast<char>((1 << 3) | 2));  // field 1, length-delimited
    appendVarint(msg, service.size());
    msg += service;
  }
  std::string frame;
  frame.push_back('\0');
  const auto len = static_cast<uint32_t>(msg.size());
  frame.push_back(static_cast<char>(len >> 24));
  frame.push_back(static_cast<char>(len >> 16));
  frame.push_back(static_cast<char>(len >> 8));
  frame.push_back(static_cast<char>(len));
  return frame + msg;
}

// HealthCheckResponse{status = 1 (enum)}: the status, 0 (UNKNOWN) when absent; unknown fields are
// skipped as protobuf does. Empty on malformed input.
std::optional<uint64_t> decodeHealthResponse(std::string_view msg) {
  uint64_t status = 0;
  while (!msg.empty()) {
    uint64_t key;
    if (!readVarint(msg, key)) return std::nullopt;
    const uint64_t field = key >> 3;
    const uint64_t wire = key & 7;
    if (field == 0) return std::nullopt;
    uint64_t v;
    switch (wire) {
      case 0:
        if (!readVarint(msg, v)) return std::nullopt;
        if (field == 1) status = v;  // the last value wins, as protobuf parses it
        break;
      case 1:
        if (msg.size() < 8) return std::nullopt;
        msg.remove_prefix(8);
        break;
      case 2:
        if (!readVarint(msg, v) || v > msg.size()) return std::nullopt;
        msg.remove_prefix(static_cast<size_t>(v));
        break;
      case 5:
        if (msg.size() < 4) return std::nullopt;
        msg.remove_prefix(4);
        break;
      default:
        return std::nullopt;  // groups and invalid wire types
    }
  }
  return status;
}

// The response body of a unary call: gRPC frames holding exactly one non-empty, uncompressed
// HealthCheckResponse (Envoy ignores empty frames and fails on a second message). Empty when there is
// no such message or the framing is broken.
std::optional<uint64_t> parseGrpcHealthBody(std::string_view body) {
  std::optional<uint64_t> status;
  while (!body.empty()) {
    if (body.size() < 5) return std::nullopt;
    const auto flags = static_cast<uint8_t>(body[0]);
    const uint32_t len = (static_cast<uint32_t>(static_cast<uint8_t>(body[1])) << 24) |
                         (static_cast<uint32_t>(static_cast<uint8_t>(body[2])) << 16) |
                         (static_cast<uint32_t>(static_cast<uint8_t>(body[3])) << 8) |
                         static_cast<uint32_t>(static_cast<uint8_t>(body[4]));
    body.remove_prefix(5);
    if (body.size() < len) return std::nullopt;
    // We offer no grpc-accept-encoding, so a compressed (or otherwise flagged) message is an error.
    if (flags != 0) return std::nullopt;
    if (len > 0) {
      if (status) return std::nullopt;
      status = decodeHealthResponse(body.substr(0, len));
      if (!status) return std::nullopt;
    }
    body.remove_prefix(len);
  }
  return status;
}

// grpc-status as a number; a present but unparseable value is a failure status (not OK).
std::optional<uint32_t> grpcStatus(const http::HeaderMap& headers) {
  const std::string* v = headers.get("grpc-status");
  if (v == nullptr) return std::nullopt;
  if (v->empty() || v->size() > 9) return std::numeric_limits<uint32_t>::max();
  uint32_t n = 0;
  for (char c : *v) {
    if (c < '0' || c > '9') return std::numeric_limits<uint32_t>::max();
    n = n * 10 + static_cast<uint32_t>(c - '0');
  }
  return n;
}

bool isGrpcContentType(const std::string* ct) { return ct != nullptr && http::isGrpcContentType(*ct); }

// grpc-timeout: at most 8 digits, then the unit.
std::string grpcTimeout(uint64_t ms) {
  if (ms <= 99999999) return std::to_string(ms) + "m";
  return std::to_string(std::min<uint64_t>(ms / 1000, 99999999)) + "S";
}

const char* eventName(network::ConnectionEvent e) {
  switch (e) {
    case network::ConnectionEvent::ConnectFailed: return "connect failed";
    case network::ConnectionEvent::ConnectTimeout: return "connect timeout";
    case network::ConnectionEvent::RemoteClose: return "connection closed by the host";
    case network::ConnectionEvent::LocalClose: return "connection closed";
    case network::ConnectionEvent::Connected: return "connected";
  }
  return "?";
}

void inc(std::atomic<uint64_t>& s) { s.fetch_add(1, std::memory_order_relaxed); }

}  // namespace

// ------------------------------------------------------------------------------------------------
// The connection of one session.

namespace hc_detail {

// What a session hears from its connection (and, for HTTP, from the one stream on it).
class ClientEvents {
 public:
  virtual ~ClientEvents() = default;
  virtual void onClientConnected() = 0;
  virtual void onClientClosed(network::ConnectionEvent event) = 0;
  virtual void onClientRawData(common::Buffer& data, bool end_stream) { data.drain(data.length()); }
  virtual void onResponseHeaders(http::ResponseHeadersPtr headers, bool end_stream) {}
  virtual void onResponseData(common::Buffer& data, bool end_stream) { data.drain(data.length()); }
  virtual void onResponseTrailers(http::TrailerMapPtr trailers) {}
  virtual void onStreamReset(http::StreamResetReason reason) {}
  virtual void onClientGoAway() {}
};

// One outgoing connection of a session: the socket (with the host's transport socket), and for HTTP and
// gRPC the client codec on it, with at most one stream. It forwards what happens to its owner until the
// owner detaches; a detached client stays silent and is deferred-deleted by its owner, so a session may
// drop its client from inside the client's own callbacks, and the client may outlive the session.
class HcClient final : public event::DeferredDeletable,
                       public network::ConnectionCallbacks,
                       public http::CodecTransport,
                       public http::ClientConnectionCallbacks,
                       public http::ResponseDecoder,
                       public http::StreamCallbacks {
 public:
  enum class Mode { Raw, Http1, Http2 };

  // `connect_timeout_ms` 0: no connect timer (the session's check timeout bounds the attempt).
  HcClient(event::Dispatcher& dispatcher, ClientEvents& owner, const Host& host, Mode mode, uint64_t connect_timeout_ms,
           const network::SslStats* ssl_stats)
      : dispatcher_(dispatcher),
        owner_(&owner),
        mode_(mode),
        conn_(std::make_unique<network::Connection>(dispatcher, host.address)) {
    conn_->setCallbacks(this);
    bool ok = true;
    if (host.transport_socket) {
      // The traffic's TLS settings (mTLS, SNI, SANs), as the connection pools use them.
      network::TransportSocketOptions options;
      options.stats = ssl_stats;
      options.alpn_fallback = mode == Mode::Http2 ? "h2" : (mode == Mode::Http1 ? "http/1.1" : "");
      network::TransportSocketPtr socket = host.transport_socket->create(options);
      if (socket) {
        conn_->setTransportSocket(std::move(socket));
      } else {
        ok = false;  // no certificate yet: the check fails; it never goes out in plaintext
      }
    }
    if (ok) {
      conn_->connect(connect_timeout_ms);
    } else {
      conn_->failConnect();
    }
    // The codec may write at once (the HTTP/2 preface): the connection buffers it until it is up.
    http::CodecSettings settings;
    if (mode == Mode::Http2) {
      codec_ = http::http2::createClientConnection(*this, *this, settings);
    } else if (mode == Mode::Http1) {
      codec_ = http::http1::createClientConnection(*this, *this, settings);
    }
  }

  ~HcClient() override {
    // The codec first: the HTTP/1 one gives its read-disables back to the connection on the way out.
    codec_.reset();
    conn_->setCallbacks(nullptr);
    conn_->close(network::CloseType::NoFlush);
  }

  void detach() { owner_ = nullptr; }
  bool connected() const { return connected_ && !closed(); }
  bool closed() const { return close_pending_ || conn_->state() == network::Connection::State::Closed; }
  bool goAwayReceived() const { return goaway_; }
  bool hasStream() const { return stream_ != nullptr; }
  // A new request may go on this connection now.
  bool idleAndUsable() const {
    return connected() && !goaway_ && stream_ == nullptr && codec_ != nullptr && codec_->canOpenStream();
  }

  http::RequestEncoder& startStream() {
    stream_ = &codec_->newStream(*this);
    stream_->stream().setCallbacks(this);
    return *stream_;
  }
  // Abandons the stream in flight; what the codec says about it afterwards is ignored.
  void resetStream() {
    http::RequestEncoder* s = stream_;
    if (s == nullptr) return;
    stream_ = nullptr;
    s->stream().resetStream(http::StreamResetReason::LocalReset);
  }
  void writeRaw(common::Buffer& data) { conn_->write(data, false); }
  // Closes without flushing. Inside the codec's dispatch (a session judging a response from a decoder
  // callback) the close waits until the codec has returned: closing under nghttp2's callbacks would
  // tear its streams down under it.
  void close() {
    if (in_dispatch_) {
      close_pending_ = true;
      return;
    }
    closeNow();
  }

  // ---- http::CodecTransport ----
  void write(common::Buffer& data, bool end_stream) override { conn_->write(data, end_stream); }
  void closeAfterFlush() override { conn_->close(network::CloseType::FlushWrite); }
  void readDisable(bool disable) override { conn_->readDisable(disable); }
  event::Dispatcher& dispatcher() override { return dispatcher_; }

  // ---- network::ConnectionCallbacks ----
  void onData(network::Connection&, common::Buffer& data, bool end_stream) override {
    if (codec_ == nullptr) {
      if (owner_ != nullptr) {
        owner_->onClientRawData(data, end_stream);
      } else {
        data.drain(data.length());
      }
      return;
    }
    in_dispatch_ = true;
    http::CodecError err;
    const bool ok = codec_->dispatch(data, err);
    in_dispatch_ = false;
    if (!ok) {
      // A protocol error: the stream (if any) is reset through the codec as the connection closes.
      LOG_DEBUG("[C%lu] health check: protocol error: %s", conn_->id(), err.detail.c_str());
      closeNow();
      return;
    }
    if (close_pending_ || conn_->state() == network::Connection::State::Closed) {
      closeNow();
      return;
    }
    if (end_stream) {
      // The host half-closed: that ends a close-delimited HTTP/1 body, and nothing else can come.
      if (mode_ == Mode::Http1) {
        in_dispatch_ = true;
        static_cast<http::http1::Http1ClientConnection&>(*codec_).onRemoteHalfClose();
        in_dispatch_ = false;
      }
      closeNow();
      return;
    }
    // A connection that can carry no further request (HTTP/1 "connection: close", a GOAWAY) closes
    // now rather than at the next check.
    if (stream_ == nullptr && !codec_->canOpenStream()) closeNow();
  }

  void onEvent(network::Connection&, network::ConnectionEvent event) override {
    if (event == network::ConnectionEvent::Connected) {
      connected_ = true;
      conn_->startReading();
      if (owner_ != nullptr) owner_->onClientConnected();
      return;
    }
    // Closed (or never opened): a stream in flight is reset first, then the owner hears the close.
    if (codec_ != nullptr) codec_->onTransportClosed();
    if (owner_ != nullptr) owner_->onClientClosed(event);
  }

  // ---- http::ClientConnectionCallbacks ----
  void onGoAway() override {
    goaway_ = true;
    if (owner_ != nullptr) owner_->onClientGoAway();
  }

  // ---- http::ResponseDecoder ----
  void decode1xxHeaders(http::ResponseHeadersPtr) override {}
  void decodeHeaders(http::ResponseHeadersPtr headers, bool end_stream) override {
    if (stream_ == nullptr) return;
    if (end_stream) stream_ = nullptr;  // the request went out whole before; the exchange is over
    if (owner_ != nullptr) owner_->onResponseHeaders(std::move(headers), end_stream);
  }
  void decodeData(common::Buffer& data, bool end_stream) override {
    if (stream_ == nullptr || owner_ == nullptr) {
      data.drain(data.length());
      return;
    }
    if (end_stream) stream_ = nullptr;
    owner_->onResponseData(data, end_stream);
  }
  void decodeTrailers(http::TrailerMapPtr trailers) override {
    if (stream_ == nullptr) return;
    stream_ = nullptr;
    if (owner_ != nullptr) owner_->onResponseTrailers(std::move(trailers));
  }

  // ---- http::StreamCallbacks ----
  void onResetStream(http::StreamResetReason reason) override {
    if (stream_ == nullptr) return;  // over, or reset by us
    stream_ = nullptr;
    if (owner_ != nullptr) owner_->onStreamReset(reason);
  }
  void onAboveWriteBufferHighWatermark() override {}
  void onBelowWriteBufferLowWatermark() override {}
  // The connection's watermark callbacks keep their (empty) defaults; named so that they are not hidden
  // by the stream's of the same name (clang's -Woverloaded-virtual).
  using network::ConnectionCallbacks::onAboveWriteBufferHighWatermark;
  using network::ConnectionCallbacks::onBelowWriteBufferLowWatermark;

 private:
  void closeNow() {
    close_pending_ = false;
    if (conn_->state() != network::Connection::State::Closed) conn_->close(network::CloseType::NoFlush);
  }

  event::Dispatcher& dispatcher_;
  ClientEvents* owner_;
  const Mode mode_;
  network::ConnectionPtr conn_;
  std::unique_ptr<http::ClientConnection> codec_;  // null: raw (TCP check)
  http::RequestEncoder* stream_ = nullptr;         // the exchange in flight
  bool connected_ = false;
  bool goaway_ = false;
  bool in_dispatch_ = false;
  bool close_pending_ = false;
};

}  // namespace hc_detail

using hc_detail::HcClient;

// ------------------------------------------------------------------------------------------------
// A session: the checking of one host. The base keeps Envoy's bookkeeping (consecutive results, flags,
// stats, the schedule); the subclasses speak TCP, HTTP or gRPC.
//
// Lifetime: owned by the checker; when its host leaves (or the checker stops, changes config or goes
// away) it is halted (timers off, connection dropped, nothing touches the checker any more) and
// deferred-deleted, because that may happen from inside its own callbacks (the check-complete callback
// may call setHosts). For the same reason every path that ends a check runs the user callback last and
// touches nothing after it.

class HealthCheckSession : public event::DeferredDeletable, public hc_detail::ClientEvents {
 public:
  // Consecutive results; they survive updateConfig (copied into the new session).
  struct Counts {
    uint32_t num_healthy = 0;
    uint32_t num_unhealthy = 0;
    bool first_check = true;  // no result yet: the first success makes the host healthy at once
  };

  HealthCheckSession(HealthChecker& parent, HostSharedPtr host)
      : parent_(parent),
        dispatcher_(parent.dispatcher_),
        host_(std::move(host)),
        interval_timer_(dispatcher_.createTimer([this] { onIntervalTimer(); })),
        timeout_timer_(dispatcher_.createTimer([this] { onTimeoutTimer(); })) {}
  ~HealthCheckSession() override { dropClient(); }

  const HostSharedPtr& host() const { return host_; }
  Counts counts;

  // The first check comes after the initial jitter, or on the next loop turn (never synchronously
  // inside setHosts()/start()).
  void start() {
    active_ = true;
    interval_timer_->enable(parent_.initialDelayMs());
  }
  // No more checks: a check in flight is abandoned uncounted. After this the session never touches
  // its checker again.
  void halt() {
    active_ = false;
    in_flight_ = false;
    interval_timer_->disable();
    timeout_timer_->disable();
    dropClient();
  }
  // reportPassiveFailure: unhealthy at once; the schedule and any check in flight go on.
  void passiveFailure() {
    const HealthTransition t = applyFailure(FailureType::Passive, false, "passive failure reported");
    runCallback(t, false);
  }

 protected:
  // A check starts: send it, (re)connecting as needed. It may end synchronously.
  virtual void sendCheck() = 0;
  // The check timed out: abandon it (by default, with its connection).
  virtual void abandonCheck() { dropClient(); }

  // Default close handling: a check in flight fails with a network failure.
  void onClientConnected() override {}
  void onClientClosed(network::ConnectionEvent event) override {
    dropClient();
    if (in_flight_) checkFailed(FailureType::Network, true, eventName(event));
  }

  bool inFlight() const { return in_flight_; }
  const HealthCheckConfig& config() const { return parent_.config_; }
  HealthCheckStats& stats() { return *parent_.stats_; }

  void newClient(HcClient::Mode mode) {
    client_ = std::make_unique<HcClient>(dispatcher_, *this, *host_, mode, 0, parent_.ssl_stats_);
  }
  void dropClient() {
    if (client_ == nullptr) return;
    client_->detach();
    client_->close();
    dispatcher_.deferredDelete(std::move(client_));
  }
  // :authority / Host: the configured one, else the cluster's name, else the host's address.
  std::string authority(const std::string& configured) const {
    if (!configured.empty()) return configured;
    if (!config().cluster_name.empty()) return config().cluster_name;
    return host_->address.asString();
  }
  std::string_view scheme() const {
    return host_->transport_socket && host_->transport_socket->implementsSecureTransport() ? "https" : "http";
  }

  // A check passed. Envoy's handleSuccess: an unhealthy host turns healthy after healthy_threshold
  // passes in a row, or at once on its very first check.
  void checkPassed() {
    if (!in_flight_) return;
    endAttempt();
    counts.num_unhealthy = 0;
    HealthTransition t = HealthTransition::Unchanged;
    const uint32_t flags = host_->healthFlags();
    uint32_t clear = 0;
    if ((flags & kFailedActiveHc) != 0) {
      if (counts.first_check || ++counts.num_healthy >= parent_.eff_.healthy_threshold) {
        clear |= kFailedActiveHc;
        t = HealthTransition::Changed;
        LOG_INFO("health check: %s %s is healthy", config().cluster_name.c_str(), host_->address.asString().c_str());
      } else {
        t = HealthTransition::ChangePending;
      }
    }
    // The first result, whatever it is, ends the pending state; the balancers must rebuild for that
    // too, so it counts as a change.
    if ((flags & kPendingActiveHc) != 0) {
      clear |= kPendingActiveHc;
      t = HealthTransition::Changed;
    }
    if (clear != 0) {
      host_->health_flags.fetch_and(~clear, std::memory_order_release);
      parent_.bumpGeneration();
      if ((clear & kFailedActiveHc) != 0) parent_.recountHealthy();
    }
    inc(parent_.stats_->success);
    counts.first_check = false;
    scheduleNext(true, t);
    runCallback(t, true);
  }

  // A check failed (`why` is for the log).
  void checkFailed(FailureType type, bool retriable, std::string_view why) {
    if (!in_flight_) return;
    endAttempt();
    const HealthTransition t = applyFailure(type, retriable, why);
    scheduleNext(false, t);
    runCallback(t, false);
  }

  HealthChecker& parent_;  // valid until halt()
  event::Dispatcher& dispatcher_;
  HostSharedPtr host_;
  std::unique_ptr<HcClient> client_;

 private:
  void onIntervalTimer() {
    if (!active_ || in_flight_) return;
    in_flight_ = true;
    inc(parent_.stats_->attempt);
    timeout_timer_->enable(std::max<uint64_t>(1, config().timeout_ms));
    sendCheck();
  }
  void onTimeoutTimer() {
    if (!in_flight_) return;
    abandonCheck();
    checkFailed(FailureType::NetworkTimeout, true, "timeout");
  }
  void endAttempt() {
    in_flight_ = false;
    timeout_timer_->disable();
  }
  // Envoy's setUnhealthy: a healthy host turns unhealthy at once on a final (non-network,
  // non-retriable) failure, else after unhealthy_threshold failures in a row.
  HealthTransition applyFailure(FailureType type, bool retriable, std::string_view why) {
    counts.num_healthy = 0;
    HealthTransition t = HealthTransition::Unchanged;
    const bool network = type == FailureType::Network || type == FailureType::NetworkTimeout;
    const uint32_t flags = host_->healthFlags();
    uint32_t set = 0;
    uint32_t clear = 0;
    if ((flags & kFailedActiveHc) == 0) {
      if ((!network && !retriable) || ++counts.num_unhealthy >= parent_.eff_.unhealthy_threshold) {
        set |= kFailedActiveHc;
        t = HealthTransition::Changed;
      } else {
        t = HealthTransition::ChangePending;
      }
    }
    if ((flags & kPendingActiveHc) != 0) {
      clear |= kPendingActiveHc;
      t = HealthTransition::Changed;
    }
    if (set != 0) host_->health_flags.fetch_or(set, std::memory_order_release);
    if (clear != 0) host_->health_flags.fetch_and(~clear, std::memory_order_release);
    if ((set | clear) != 0) parent_.bumpGeneration();
    if (set != 0) parent_.recountHealthy();

    HealthCheckStats& stats = *parent_.stats_;
    inc(stats.failure);
    if (network) {
      inc(stats.network_failure);
    } else if (type == FailureType::Passive) {
      inc(stats.passive_failure);
    }
    const std::string host = host_->address.asString();
    if (set != 0) {
      LOG_INFO("health check: %s %s is unhealthy: %.*s", config().cluster_name.c_str(), host.c_str(),
               static_cast<int>(why.size()), why.data());
    } else if (counts.first_check || config().always_log_health_check_failures) {
      LOG_INFO("health check: %s %s failed: %.*s", config().cluster_name.c_str(), host.c_str(),
               static_cast<int>(why.size()), why.data());
    } else {
      LOG_DEBUG("health check: %s %s failed: %.*s", config().cluster_name.c_str(), host.c_str(),
                static_cast<int>(why.size()), why.data());
    }
    counts.first_check = false;
    return t;
  }
  void scheduleNext(bool passed, HealthTransition t) {
    if (active_) interval_timer_->enable(parent_.nextIntervalMs(passed, t));
  }
  // Last thing on every path: the callback may halt this session or destroy the checker.
  void runCallback(HealthTransition t, bool passed) {
    if (!parent_.on_check_complete_) return;
    HealthChecker::CheckCompleteCb cb = parent_.on_check_complete_;  // it may replace itself
    HostSharedPtr host = host_;
    cb(host, t, passed);
  }

  event::TimerPtr interval_timer_;
  event::TimerPtr timeout_timer_;
  bool in_flight_ = false;  // a check was sent and is not judged yet
  bool active_ = false;     // started and not halted
};

namespace {

// ---- TCP: connect, optionally send bytes and look for the expected ones in the answer ----
class TcpSession final : public HealthCheckSession {
 public:
  using HealthCheckSession::HealthCheckSession;

 private:
  void sendCheck() override {
    answer_.clear();
    if (client_ != nullptr && client_->closed()) dropClient();
    if (client_ == nullptr) newClient(HcClient::Mode::Raw);
    if (!config().tcp.send.empty()) {
      // Buffered by the connection until it is up.
      common::Buffer out;
      out.add(config().tcp.send);
      client_->writeRaw(out);
    }
  }

  void onClientConnected() override {
    if (!inFlight() || !config().tcp.receive.empty()) return;
    // Connect-only: the connection (and its TLS handshake) is the answer; it is not kept (Envoy).
    dropClient();
    checkPassed();
  }

  void onClientRawData(common::Buffer& data, bool end_stream) override {
    if (!inFlight()) {
      // Between checks: nothing to judge; a host that hangs up is simply reconnected next time.
      data.drain(data.length());
      if (end_stream) dropClient();
      return;
    }
    const size_t room = kMaxTcpAnswer - answer_.size();
    if (room > 0 && !data.empty()) {
      std::string chunk = data.toString();
      answer_.append(chunk, 0, std::min(room, chunk.size()));
    }
    data.drain(data.length());
    if (payloadMatches(config().tcp.receive, answer_)) {
      answer_.clear();
      if (!config().reuse_connection || end_stream) dropClient();
      checkPassed();
      return;
    }
    // Not yet: more may come, until the timeout. A host that closed cannot send the rest.
    if (end_stream) {
      dropClient();
      checkFailed(FailureType::Network, true, "connection closed before the expected answer");
    }
  }

  std::string answer_;  // what the host sent during this check (at most kMaxTcpAnswer bytes)
};

// ---- HTTP/1.1 or HTTP/2: one request, judged by status (and optionally body / cluster header) ----
class HttpSession final : public HealthCheckSession {
 public:
  using HealthCheckSession::HealthCheckSession;

 private:
  const HealthCheckConfig::Http& http() const { return config().http; }

  void sendCheck() override {
    if (client_ != nullptr && !client_->idleAndUsable()) dropClient();
    if (client_ == nullptr) {
      newClient(http().http2 ? HcClient::Mode::Http2 : HcClient::Mode::Http1);
      return;  // the request goes once connected
    }
    sendRequest();
  }

  void onClientConnected() override {
    if (inFlight() && client_ != nullptr && !client_->hasStream()) sendRequest();
  }

  void sendRequest() {
    headers_.reset();
    body_.clear();
    http::RequestHeaders req;
    req.method = http().method.empty() ? "GET" : http().method;
    req.path = http().path;
    req.authority = authority(http().host);
    req.scheme = std::string(scheme());
    req.add("user-agent", kUserAgent);
    // Envoy's header parser: removals first, then additions.
    for (const auto& name : http().request_headers_to_remove) req.remove(name);
    for (const auto& [name, value] : http().request_headers_to_add) req.add(name, value);
    client_->startStream().encodeHeaders(req, true);
  }

  void onResponseHeaders(http::ResponseHeadersPtr headers, bool end_stream) override {
    if (!inFlight()) return;
    headers_ = std::move(headers);
    if (end_stream) complete();
  }

  void onResponseData(common::Buffer& data, bool end_stream) override {
    if (inFlight() && !http().receive.empty()) {
      const size_t limit = http().response_buffer_size == 0
                               ? kMaxHttpBody
                               : static_cast<size_t>(std::min<uint64_t>(http().response_buffer_size, kMaxHttpBody));
      if (body_.size() < limit && !data.empty()) {
        std::string chunk = data.toString();
        body_.append(chunk, 0, std::min(limit - body_.size(), chunk.size()));
      }
    }
    data.drain(data.length());
    if (end_stream) complete();
  }

  void onResponseTrailers(http::TrailerMapPtr) override { complete(); }

  void onStreamReset(http::StreamResetReason reason) override {
    if (!inFlight()) return;
    if (!config().reuse_connection) dropClient();
    checkFailed(FailureType::Network, true, http::resetReasonName(reason));
  }

  void onClientGoAway() override {
    // Graceful: an answer in flight may still come; the connection is replaced at the next check.
    if (client_ != nullptr && !client_->hasStream()) dropClient();
  }

  // The whole response is in: judge it as Envoy does (body first, then status, then the cluster name).
  void complete() {
    if (!inFlight() || headers_ == nullptr) return;
    const uint32_t status = headers_->status;
    bool passed = true;
    bool retriable = false;
    std::string why;
    if (!http().receive.empty() && !payloadMatches(http().receive, body_)) {
      passed = false;
      why = "response body mismatch (status " + std::to_string(status) + ")";
    } else if (!inRanges(status, http().expected_statuses.empty() ? defaultExpected() : http().expected_statuses)) {
      passed = false;
      retriable = inRanges(status, http().retriable_statuses);
      why = "status " + std::to_string(status);
    } else if (http().service_name_matcher) {
      inc(stats().verify_cluster);
      const std::string* cluster = headers_->get("x-envoy-upstream-healthchecked-cluster");
      if (!http().service_name_matcher->match(cluster != nullptr ? std::string_view(*cluster) : std::string_view())) {
        passed = false;
        why = "service name mismatch";
      }
    }
    headers_.reset();
    body_.clear();
    // A connection that cannot carry another request closes by itself (HcClient::onData).
    if (!config().reuse_connection) dropClient();
    if (passed) {
      checkPassed();
    } else {
      checkFailed(FailureType::Active, retriable, why);
    }
  }

  http::ResponseHeadersPtr headers_;
  std::string body_;  // what receive matching needs of the body
};

// ---- gRPC: grpc.health.v1.Health/Check over HTTP/2 ----
class GrpcSession final : public HealthCheckSession {
 public:
  GrpcSession(HealthChecker& parent, HostSharedPtr host)
      : HealthCheckSession(parent, std::move(host)), request_(grpcHealthRequestFrame(config().grpc.service_name)) {}

 private:
  void sendCheck() override {
    if (client_ != nullptr && !client_->idleAndUsable()) dropClient();
    if (client_ == nullptr) {
      newClient(HcClient::Mode::Http2);
      return;
    }
    sendRequest();
  }

  void onClientConnected() override {
    if (inFlight() && client_ != nullptr && !client_->hasStream()) sendRequest();
  }

  void sendRequest() {
    body_.clear();
    http::RequestHeaders req;
    req.method = "POST";
    req.path = std::string(kGrpcHealthPath);
    req.authority = authority(config().grpc.authority);
    req.scheme = std::string(scheme());
    req.add("content-type", "application/grpc");
    req.add("te", "trailers");
    req.add("user-agent", kUserAgent);
    req.add("grpc-timeout", grpcTimeout(config().timeout_ms));
    for (const auto& [name, value] : config().grpc.initial_metadata) req.add(name, value);
    http::RequestEncoder& encoder = client_->startStream();
    encoder.encodeHeaders(req, false);
    // A stream refused on the spot ends the check (and may have dropped the client) already.
    if (!inFlight() || client_ == nullptr || !client_->hasStream()) return;
    common::Buffer body;
    body.add(request_);
    encoder.encodeData(body, true);
  }

  void onResponseHeaders(http::ResponseHeadersPtr headers, bool end_stream) override {
    if (!inFlight()) return;
    if (headers->status != 200) {
      // gRPC's HTTP mapping: a grpc-status in a trailers-only response wins over the HTTP status.
      if (end_stream) {
        if (auto s = grpcStatus(*headers)) {
          rpcComplete(*s, true);
          return;
        }
      }
      finish(false, end_stream, "HTTP status " + std::to_string(headers->status));
      return;
    }
    if (end_stream) {
      // Trailers-only (how servers say UNIMPLEMENTED or NOT_FOUND for an unknown service).
      if (auto s = grpcStatus(*headers)) {
        rpcComplete(*s, true);
      } else {
        finish(false, true, "gRPC protocol violation: stream ended without grpc-status");
      }
      return;
    }
    if (!isGrpcContentType(headers->get("content-type"))) finish(false, false, "not a gRPC response");
  }

  void onResponseData(common::Buffer& data, bool end_stream) override {
    if (!inFlight()) {
      data.drain(data.length());
      return;
    }
    if (end_stream) {
      data.drain(data.length());
      finish(false, true, "gRPC protocol violation: stream ended without trailers");
      return;
    }
    if (body_.size() + data.length() > kMaxGrpcBody) {
      data.drain(data.length());
      finish(false, false, "gRPC response too large");
      return;
    }
    body_ += data.toString();
    data.drain(data.length());
  }

  void onResponseTrailers(http::TrailerMapPtr trailers) override {
    if (!inFlight()) return;
    if (auto s = grpcStatus(*trailers)) {
      rpcComplete(*s, true);
    } else {
      finish(false, true, "no grpc-status in trailers");
    }
  }

  // Success needs grpc-status 0 and a HealthCheckResponse saying SERVING.
  void rpcComplete(uint32_t grpc_status, bool end_stream) {
    if (grpc_status != 0) {
      finish(false, end_stream, "grpc-status " + std::to_string(grpc_status));
      return;
    }
    const std::optional<uint64_t> status = parseGrpcHealthBody(body_);
    if (!status) {
      finish(false, end_stream, "invalid or missing grpc.health.v1 response");
    } else if (*status != kGrpcServing) {
      finish(false, end_stream, "serving status " + std::to_string(*status));
    } else {
      finish(true, end_stream, {});
    }
  }

  // Judges the call. A call judged before its stream ended is reset (Envoy does the same).
  void finish(bool passed, bool end_stream, const std::string& why) {
    body_.clear();
    if (client_ != nullptr) {
      if (!end_stream) client_->resetStream();
      if (!config().reuse_connection || client_->goAwayReceived()) dropClient();
    }
    if (passed) {
      checkPassed();
    } else {
      checkFailed(FailureType::Active, false, why);
    }
  }

  void onStreamReset(http::StreamResetReason reason) override {
    if (!inFlight()) return;
    if (client_ != nullptr && (!config().reuse_connection || client_->goAwayReceived())) dropClient();
    checkFailed(FailureType::Network, true, http::resetReasonName(reason));
  }

  void onClientGoAway() override {
    if (client_ != nullptr && !client_->hasStream()) dropClient();
  }

  // A timed-out call: only its stream goes when the connection is up and reusable (Envoy).
  void abandonCheck() override {
    if (client_ != nullptr && client_->connected() && config().reuse_connection && !client_->goAwayReceived()) {
      client_->resetStream();
    } else {
      dropClient();
    }
  }

  const std::string request_;  // the framed HealthCheckRequest, the same every time
  std::string body_;           // response DATA so far
};

}  // namespace

// ------------------------------------------------------------------------------------------------
// The checker.

std::string healthCheckConfigError(const HealthCheckConfig& c) {
  if (c.timeout_ms == 0) return "timeout must be greater than 0";
  if (c.interval_ms == 0) return "interval must be greater than 0";
  auto checkRanges = [](const std::vector<StatusRange>& ranges, const char* what) -> std::string {
    for (const auto& r : ranges) {
      if (r.start >= r.end) {
        return std::string("invalid http ") + what + " status range: expecting start < end, but found start=" +
               std::to_string(r.start) + " and end=" + std::to_string(r.end);
      }
      if (r.start < 100) return std::string("invalid http ") + what + " status range: expecting start >= 100";
      if (r.end > 600) return std::string("invalid http ") + what + " status range: expecting end <= 600";
    }
    return {};
  };
  if (c.kind == HealthCheckConfig::Kind::Http) {
    if (c.http.path.empty()) return "http_health_check.path must not be empty";
    if (c.http.path.find_first_of("\r\n") != std::string::npos ||
        c.http.host.find_first_of("\r\n") != std::string::npos) {
      return "http_health_check.path and host must be valid header values";
    }
    if (c.http.method == "CONNECT") return "http_health_check.method must not be CONNECT";
    if (auto e = checkRanges(c.http.expected_statuses, "expected"); !e.empty()) return e;
    if (auto e = checkRanges(c.http.retriable_statuses, "retriable"); !e.empty()) return e;
    if (c.http.response_buffer_size != 0) {
      uint64_t total = 0;
      for (const auto& b : c.http.receive) total += b.size();
      if (total > c.http.response_buffer_size) {
        return "the expected response length '" + std::to_string(total) +
               "' is over than http health response buffer size '" + std::to_string(c.http.response_buffer_size) + "'";
      }
    }
  }
  return {};
}

void HealthChecker::PassiveFailureReporter::report(HostSharedPtr host) const {
  if (!host) return;
  // Runs on the checker's thread, where the checker is destroyed too: if the token still resolves
  // there, the checker is alive for the whole call.
  dispatcher_.post([token = token_, host = std::move(host)] {
    if (auto t = token.lock()) t->checker->reportPassiveFailure(*host);
  });
}

HealthChecker::HealthChecker(event::Dispatcher& dispatcher, HealthCheckConfig config,
                             std::atomic<uint64_t>* health_generation, uint64_t seed)
    : dispatcher_(dispatcher),
      config_(std::move(config)),
      health_generation_(health_generation),
      random_(seed),
      stats_(std::make_shared<HealthCheckStats>()),
      token_(std::make_shared<PassiveFailureReporter::Token>(PassiveFailureReporter::Token{this})) {
  computeEffective();
}

HealthChecker::~HealthChecker() {
  token_.reset();  // passive reports still queued find nobody
  bool changed = false;
  constexpr uint32_t kOurs = kFailedActiveHc | kPendingActiveHc;
  for (auto& [raw, session] : sessions_) {
    Host& host = *session->host();
    if ((host.healthFlags() & kOurs) != 0) {
      host.health_flags.fetch_and(~kOurs, std::memory_order_release);
      changed = true;
    }
    retire(std::move(session));
  }
  sessions_.clear();
  if (changed) bumpGeneration();
  stats_->healthy.store(0, std::memory_order_relaxed);
}

void HealthChecker::computeEffective() {
  const HealthCheckConfig& c = config_;
  eff_.unhealthy_interval_ms = c.unhealthy_interval_ms != 0 ? c.unhealthy_interval_ms : c.interval_ms;
  eff_.unhealthy_edge_interval_ms =
      c.unhealthy_edge_interval_ms != 0 ? c.unhealthy_edge_interval_ms : eff_.unhealthy_interval_ms;
  eff_.healthy_edge_interval_ms = c.healthy_edge_interval_ms != 0 ? c.healthy_edge_interval_ms : c.interval_ms;
  eff_.no_traffic_interval_ms = c.no_traffic_interval_ms != 0 ? c.no_traffic_interval_ms : 60000;
  eff_.no_traffic_healthy_interval_ms =
      c.no_traffic_healthy_interval_ms != 0 ? c.no_traffic_healthy_interval_ms : eff_.no_traffic_interval_ms;
  eff_.unhealthy_threshold = std::max<uint32_t>(1, c.unhealthy_threshold);
  eff_.healthy_threshold = std::max<uint32_t>(1, c.healthy_threshold);
}

std::unique_ptr<HealthCheckSession> HealthChecker::makeSession(HostSharedPtr host) {
  switch (config_.kind) {
    case HealthCheckConfig::Kind::Tcp: return std::make_unique<TcpSession>(*this, std::move(host));
    case HealthCheckConfig::Kind::Grpc: return std::make_unique<GrpcSession>(*this, std::move(host));
    case HealthCheckConfig::Kind::Http: break;
  }
  return std::make_unique<HttpSession>(*this, std::move(host));
}

void HealthChecker::retire(std::unique_ptr<HealthCheckSession> session) {
  session->halt();
  dispatcher_.deferredDelete(std::move(session));
}

void HealthChecker::setHosts(std::vector<HostSharedPtr> hosts) {
  std::unordered_set<const Host*> listed;
  listed.reserve(hosts.size());
  bool changed = false;
  if (started_) dispatcher_.updateTime();
  const uint32_t mark = kFailedActiveHc | (config_.mark_new_hosts_pending ? kPendingActiveHc : 0u);
  for (auto& h : hosts) {
    if (!h || !listed.insert(h.get()).second) continue;
    if (sessions_.count(h.get()) != 0) continue;
    // New: unhealthy until its first check passes.
    const uint32_t before = h->health_flags.fetch_or(mark, std::memory_order_release);
    if ((before & mark) != mark) changed = true;
    const Host* key = h.get();
    auto session = makeSession(std::move(h));
    HealthCheckSession* raw = session.get();
    sessions_.emplace(key, std::move(session));
    if (started_) raw->start();
  }
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    if (listed.count(it->first) != 0) {
      ++it;
      continue;
    }
    retire(std::move(it->second));
    it = sessions_.erase(it);
  }
  if (changed) bumpGeneration();
  recountHealthy();
}

void HealthChecker::start() {
  if (started_) return;
  started_ = true;
  // The loop's cached clock may be old (a long config apply): the first checks count from now.
  dispatcher_.updateTime();
  for (auto& [raw, session] : sessions_) session->start();
}

void HealthChecker::stop() {
  if (!started_) return;
  started_ = false;
  for (auto& [raw, session] : sessions_) session->halt();
}

void HealthChecker::updateConfig(HealthCheckConfig config) {
  config_ = std::move(config);
  computeEffective();
  for (auto& [raw, session] : sessions_) {
    auto fresh = makeSession(session->host());
    fresh->counts = session->counts;
    retire(std::move(session));
    session = std::move(fresh);
    if (started_) session->start();
  }
}

void HealthChecker::reportPassiveFailure(const Host& host) {
  auto it = sessions_.find(&host);
  if (it != sessions_.end()) it->second->passiveFailure();
}

uint64_t HealthChecker::withJitter(uint64_t base_ms, uint64_t jitter_ms) {
  uint64_t ms = base_ms;
  // interval_jitter_percent of the base (computed without overflowing for any base).
  const uint64_t pct = config_.interval_jitter_percent;
  const uint64_t percent_mod = base_ms / 100 * pct + base_ms % 100 * pct / 100;
  if (percent_mod > 0) ms += random_() % percent_mod;
  if (jitter_ms > 0) ms += random_() % jitter_ms;
  return std::max<uint64_t>(1, ms);  // never 0: a zero interval would spin
}

uint64_t HealthChecker::initialDelayMs() {
  if (config_.initial_jitter_ms == 0) return 0;
  return std::max<uint64_t>(1, random_() % config_.initial_jitter_ms);
}

// Envoy's interval choice: with traffic, after a failed check unhealthy_interval (unhealthy_edge_interval
// while a transition is pending), after a passed one interval (healthy_edge_interval while pending);
// without traffic no_traffic_interval, or no_traffic_healthy_interval after a passed check that left
// nothing pending.
uint64_t HealthChecker::nextIntervalMs(bool passed, HealthTransition transition) {
  const bool pending = transition == HealthTransition::ChangePending;
  uint64_t base;
  if (hasTraffic()) {
    if (passed) {
      base = pending ? eff_.healthy_edge_interval_ms : config_.interval_ms;
    } else {
      base = pending ? eff_.unhealthy_edge_interval_ms : eff_.unhealthy_interval_ms;
    }
  } else {
    base = passed && !pending ? eff_.no_traffic_healthy_interval_ms : eff_.no_traffic_interval_ms;
  }
  return withJitter(base, config_.interval_jitter_ms);
}

void HealthChecker::bumpGeneration() {
  if (health_generation_ != nullptr) health_generation_->fetch_add(1, std::memory_order_release);
}

void HealthChecker::recountHealthy() {
  uint64_t n = 0;
  for (const auto& [raw, session] : sessions_) {
    if ((raw->healthFlags() & kFailedActiveHc) == 0) ++n;
  }
  stats_->healthy.store(n, std::memory_order_relaxed);
}

}  // namespace strait::upstream
