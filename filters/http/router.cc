#include "filters/http/router.h"

#include <algorithm>
#include <chrono>
#include <array>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/any.pb.h"
#include "proxy/common/log.h"
#include "proxy/common/pooled.h"
#include "proxy/config/snapshot.h"
#include "proxy/http/conn_manager.h"
#include "proxy/http/route_table.h"
#include "proxy/network/connection.h"
#include "proxy/stats/live_edges.h"
#include "proxy/upstream/http_pool.h"

namespace strait::filters::http {

namespace {

using namespace strait::http;
using upstream::PoolFailureReason;

// The router: picks the cluster and host for a request, sends it upstream through the worker's
// connection pool, streams the response back, and applies timeouts and retries. Bodies stream in both
// directions; for retries the request body is also kept (up to the buffer limit), as Envoy does.
class Router : public StreamDecoderFilter, public upstream::PoolCallbacks, public common::Pooled<Router> {
 public:
  ~Router() override { cleanup(); }

  void setDecoderFilterCallbacks(DecoderFilterCallbacks& cb) override { cb_ = &cb; }

  FilterHeadersStatus decodeHeaders(RequestHeaders& headers, bool end_stream) override {
    request_ = &headers;
    route_ = cb_->route();
    request_complete_ = end_stream;
    if (route_->kind == RouteEntry::Kind::DirectResponse) {
      cb_->sendLocalReply(route_->direct_status, route_->direct_body, "direct_response");
      return FilterHeadersStatus::StopIteration;
    }
    if (route_->kind == RouteEntry::Kind::Redirect) {
      sendRedirect(headers);
      return FilterHeadersStatus::StopIteration;
    }
    // The route names its cluster by index; the worker holds the version in force.
    const config::ClusterConstSharedPtr* c = nullptr;
    const HeaderMutation* request_mutation = &route_->request_headers;
    if (route_->kind == RouteEntry::Kind::WeightedClusters) {
      const WeightedTarget* t = route_->pickWeighted(cb_->worker().random());
      if (t != nullptr) {
        c = &cb_->worker().cluster(t->cluster_index);
        request_mutation = &t->request_headers;
      }
    } else if (route_->kind == RouteEntry::Kind::Cluster) {
      c = &cb_->worker().cluster(route_->cluster_index);
    } else if (route_->kind == RouteEntry::Kind::ClusterHeader) {
      // The header names the cluster (its first value); absent or unknown: cluster_not_found.
      if (const std::string* name = headers.get(route_->cluster_header); name != nullptr && !name->empty()) {
        c = &cb_->worker().clusterByName(*name);
      }
    }
    if (c == nullptr || !*c) {
      flag(common::kNoClusterFound);
      cb_->sendLocalReply(route_->cluster_not_found_status, "", "cluster_not_found");
      return FilterHeadersStatus::StopIteration;
    }
    cluster_ = *c;
    cb_->streamInfo().cluster = cluster_.get();
    // Upgrades: WebSocket only where configured; an h2c upgrade offer is simply dropped.
    if (const std::string* up = headers.get("upgrade")) {
      if (headerNameEquals(*up, "h2c")) {
        headers.remove("upgrade");
        headers.remove("http2-settings");
        headers.protocol.clear();
      } else if (!headerNameEquals(*up, "websocket") ||
                 !(route_->websocket_upgrade || (!route_->websocket_upgrade_set && cb_->websocketAllowedByDefault()))) {
        cb_->sendLocalReply(403, "upgrade not allowed\n", "upgrade_failed");
        return FilterHeadersStatus::StopIteration;
      } else {
        upgrade_ = true;
      }
    }
    route_->rewrite(headers);
    request_mutation->applyTo(headers);
    switch (cluster_->http_protocol) {
      case config::Cluster::HttpProtocol::Http2: protocol_ = Protocol::Http2; break;
      case config::Cluster::HttpProtocol::UseDownstream:
        protocol_ = cb_->streamInfo().protocol == Protocol::Http2 ? Protocol::Http2 : Protocol::Http11;
        break;
      default: protocol_ = Protocol::Http11; break;
    }
    // WebSocket over HTTP/1 needs an HTTP/1 upstream connection of its own.
    if (upgrade_) protocol_ = Protocol::Http11;
    retry_ = &route_->retry;
    // x-envoy-retry-on / x-envoy-max-retries: the HCM strips them from untrusted clients, so what
    // arrives here was sent by a trusted hop (or the application through an outbound listener).
    const bool controls = cb_->streamInfo().envoy_controls;
    const std::string* h_on = controls ? headers.get("x-envoy-retry-on") : nullptr;
    const std::string* h_max = controls ? headers.get("x-envoy-max-retries") : nullptr;
    const std::string* h_names = controls ? headers.get("x-envoy-retriable-header-names") : nullptr;
    if (h_on != nullptr || h_max != nullptr || h_names != nullptr) {
      header_retry_ = *retry_;
      if (h_on != nullptr) {
        header_retry_->enabled = true;
        parseRetryOn(*h_on, *header_retry_);
      }
      uint32_t n = 0;
      if (h_max != nullptr && absl::SimpleAtoi(*h_max, &n)) header_retry_->num_retries = n;
      if (h_names != nullptr) addRetriableHeaderNames(*h_names, *header_retry_);
      retry_ = &*header_retry_;
    }
    // retriable_request_headers: a request that matches none of them is not retried at all.
    if (retry_->enabled) {
      request_retriable_ = retryableRequest(headers);
      if (request_retriable_) retries_left_ = retry_->num_retries;
    }
    startDurationTimer(headers);
    if (!route_->hash_policies.empty()) lb_context_.hash_key = computeHash(headers);
    buffering_ = !upgrade_;
    cb_->setDownstreamWatermarkCallbacks(&dw_);
    if (request_complete_) startGlobalTimer();
    LOG_DEBUG("router: %s %s%s -> cluster %s", headers.method.c_str(), headers.authority.c_str(), headers.path.c_str(),
              cluster_->name.c_str());
    startAttempt();
    return FilterHeadersStatus::StopIteration;
  }

  FilterDataStatus decodeData(common::Buffer& data, bool end_stream) override {
    LOG_TRACE("router: request data %zu (end %d, upstream %d)", data.length(), end_stream ? 1 : 0,
              upstream_ != nullptr ? 1 : 0);
    if (end_stream) {
      request_complete_ = true;
      startGlobalTimer();
    }
    if (buffering_) {
      if (retry_buffer_.length() + data.length() > cb_->bufferLimit()) {
        // Too big to keep: this request can no longer be retried.
        buffering_ = false;
        retry_buffer_.clear();
        retries_left_ = 0;
        race_retry_allowed_ = false;
        stats::inc(cluster_->stats.retry_or_shadow_abandoned);
        // A retry is waiting (back-off, or its connection): the body it would send is gone, and the
        // bytes held since are only the tail. Sending them with the original headers would hand a
        // chunked or HTTP/2 upstream a truncated request that looks complete, so the request ends here.
        if (upstream_ == nullptr && (retry_waiting_ || attempts_ > 1)) {
          cleanup();
          cb_->sendLocalReply(507, "exceeded request buffer limit while retrying upstream\n",
                              "request_payload_exceeded_retry_buffer_limit");
          return FilterDataStatus::StopIterationNoBuffer;
        }
      } else {
        retry_buffer_.copyFrom(data);
      }
    }
    if (upstream_ != nullptr) {
      if (end_stream) upstream_request_complete_ = true;
      upstream_->encodeData(data, end_stream);
    } else {
      pending_body_.move(data);
      if (!pending_paused_ && pending_body_.length() > cb_->bufferLimit()) {
        pending_paused_ = true;
        cb_->onDecoderFilterAboveWriteBufferHighWatermark();
      }
    }
    return FilterDataStatus::StopIterationNoBuffer;
  }

  FilterTrailersStatus decodeTrailers(TrailerMap& trailers) override {
    request_complete_ = true;
    request_trailers_ = &trailers;
    startGlobalTimer();
    if (upstream_ != nullptr) {
      upstream_request_complete_ = true;
      upstream_->encodeTrailers(trailers);
    }
    return FilterTrailersStatus::StopIteration;
  }

  void onDestroy() override {
    destroyed_ = true;
    cleanup();
  }

  // ---- pool ----
  void onPoolReady(RequestEncoder& encoder, bool reused, const strait::network::Connection& connection) override {
    LOG_DEBUG("router: upstream ready (reused %d, pending body %zu, request complete %d)", reused ? 1 : 0,
              pending_body_.length(), request_complete_ ? 1 : 0);
    pending_ = nullptr;
    upstream_ = &encoder;
    reused_ = reused;
    cb_->streamInfo().upstream_principal = stats::live::upstreamPrincipal(connection);
    if (retry_->per_try_idle_timeout_ms > 0) {
      if (!idle_timer_) idle_timer_.emplace(cb_->worker().dispatcher(), [this] { onPerTryIdleTimeout(); });
      idle_timer_->enable(retry_->per_try_idle_timeout_ms);
    }
    upstream_->stream().setCallbacks(&up_);
    for (uint32_t i = 0; i < downstream_above_; ++i) upstream_->stream().readDisable(true);
    // Headers, then whatever body arrived meanwhile (a retry resends the kept copy), then the end.
    common::Buffer body;
    if (attempts_ > 1 && buffering_) {
      body.copyFrom(retry_buffer_);
      pending_body_.clear();
    } else {
      body.move(pending_body_);
    }
    const bool end_with_headers = request_complete_ && body.empty() && request_trailers_ == nullptr;
    if (request_complete_) upstream_request_complete_ = true;
    upstream_->encodeHeaders(*request_, end_with_headers);
    if (upstream_ == nullptr) return;  // reset while sending
    if (!end_with_headers && (!body.empty() || (request_complete_ && request_trailers_ == nullptr))) {
      upstream_->encodeData(body, request_complete_ && request_trailers_ == nullptr);
      if (upstream_ == nullptr) return;
    }
    if (request_complete_ && request_trailers_ != nullptr) upstream_->encodeTrailers(*request_trailers_);
    if (pending_paused_) {
      pending_paused_ = false;
      cb_->onDecoderFilterBelowWriteBufferLowWatermark();
    }
  }

  void onPoolFailure(PoolFailureReason reason) override {
    pending_ = nullptr;
    if (reason != PoolFailureReason::Overflow) {
      reportLocalFailure(reason == PoolFailureReason::Timeout ? upstream::LocalOriginFailure::Timeout
                                                              : upstream::LocalOriginFailure::ConnectFailed);
    }
    endAttempt();
    if (reason == PoolFailureReason::Overflow) {
      flag(common::kUpstreamOverflow);
      cb_->sendLocalReply(503, "upstream overflow\n", "upstream_overflow");
      return;
    }
    if (retryOn(retry_->on_connect_failure || retry_->on_reset)) return;
    flag(common::kUpstreamConnectionFailure | (attempts_ > 1 ? uint32_t{common::kUpstreamRetryLimitExceeded} : 0u));
    cb_->streamInfo().upstream_transport_failure_reason =
        reason == PoolFailureReason::Timeout ? "connection_timeout" : "connection_failure";
    cb_->sendLocalReply(503, "upstream connect error or disconnect/reset before headers. reset reason: connection failure\n",
                        "upstream_reset_before_response_started{connection_failure}");
  }

  // ---- upstream response ----
  void onUpstream1xx(ResponseHeadersPtr headers) {
    response_bytes_ = true;
    touchIdle();
    cb_->encode1xxHeaders(std::move(headers));
  }

  void onUpstreamHeaders(ResponseHeadersPtr headers, bool end_stream) {
    LOG_DEBUG("router: upstream response %u (end %d)", headers->status, end_stream ? 1 : 0);
    response_bytes_ = true;
    touchIdle();
    const uint32_t status = headers->status;
    countStatus(status);
    reportHttpStatus(status);
    // Decide before touching the attempt: if no retry may go (none left, body not kept, the cluster's
    // max_retries reached), this response is the answer and must flow on.
    if (!response_started_ && (shouldRetryResponse(*headers) || (end_stream && shouldRetryGrpc(*headers))) &&
        retryOn(true)) {
      resetUpstream();
      endAttempt();
      return;
    }
    response_started_ = true;
    if (cb_->streamInfo().details.empty()) cb_->streamInfo().details = "via_upstream";
    if (per_try_timer_) per_try_timer_->disable();
    // A retry succeeded only if what came back is not itself a retriable failure (Envoy's rule).
    if (attempts_ > 1 && !shouldRetryResponse(*headers)) stats::inc(cluster_->stats.upstream_rq_retry_success);
    if (route_->include_attempt_count_in_response) headers->set("x-envoy-attempt-count", std::to_string(attempts_));
    if (!set_cookie_.empty()) headers->add("set-cookie", set_cookie_);
    if (end_stream) onUpstreamComplete();
    cb_->encodeHeaders(std::move(headers), end_stream);
  }

  void onUpstreamData(common::Buffer& data, bool end_stream) {
    LOG_TRACE("router: upstream data %zu (end %d)", data.length(), end_stream ? 1 : 0);
    touchIdle();
    if (end_stream) onUpstreamComplete();
    cb_->encodeData(data, end_stream);
  }

  void onUpstreamTrailers(TrailerMapPtr trailers) {
    onUpstreamComplete();
    cb_->encodeTrailers(std::move(trailers));
  }

  // ---- upstream stream events ----
  void onUpstreamReset(StreamResetReason reason) {
    upstream_ = nullptr;
    releaseUpstreamWatermarks();
    if (attempt_active_ && !response_started_) {
      reportLocalFailure(reason == StreamResetReason::ConnectionFailure ? upstream::LocalOriginFailure::ConnectFailed
                                                                        : upstream::LocalOriginFailure::Reset);
    }
    endAttempt();
    if (reason == StreamResetReason::RemoteReset) stats::inc(cluster_->stats.upstream_rq_rx_reset);
    LOG_DEBUG("upstream reset: %s (response started: %d)", resetReasonName(reason), response_started_ ? 1 : 0);
    if (response_started_) {
      // Part of the response is already with the client: it must see the failure, not a short body.
      flag(resetFlag(reason));
      cb_->resetStream();
      return;
    }
    // The keep-alive race: a reused connection closed by the server as we sent. Nothing was received,
    // so the request is retried once on a fresh connection, whatever the retry policy says.
    if (reused_ && reason == StreamResetReason::ConnectionTermination && !response_bytes_ && race_retry_allowed_ &&
        buffering_) {
      race_retry_allowed_ = false;
      scheduleRetry(true);
      return;
    }
    const auto& rp = *retry_;
    bool retriable = (reason == StreamResetReason::ConnectionFailure && (rp.on_connect_failure || rp.on_reset)) ||
                     (reason == StreamResetReason::RefusedStream && (rp.on_refused_stream || rp.on_reset)) ||
                     ((reason == StreamResetReason::RemoteReset || reason == StreamResetReason::ConnectionTermination ||
                       reason == StreamResetReason::ProtocolError) && (rp.on_reset || rp.on_5xx || rp.on_gateway_error));
    if (retryOn(retriable)) return;
    flag(resetFlag(reason) | (attempts_ > 1 ? uint32_t{common::kUpstreamRetryLimitExceeded} : 0u));
    const bool refused = reason == StreamResetReason::ConnectionFailure || reason == StreamResetReason::Overflow ||
                         reason == StreamResetReason::RefusedStream;
    cb_->sendLocalReply(refused ? 503 : 502,
                        absl::StrCat("upstream connect error or disconnect/reset before headers. reset reason: ",
                                     resetReasonName(reason), "\n"),
                        absl::StrCat("upstream_reset_before_response_started{", resetReasonName(reason), "}"));
  }


 private:
  // DownstreamWatermarkCallbacks and StreamCallbacks share method names; the downstream ones come
  // through this adapter.
  struct DownstreamWatermarks : DownstreamWatermarkCallbacks {
    Router* r;
    void onAboveWriteBufferHighWatermark() override {
      ++r->downstream_above_;
      if (r->upstream_) r->upstream_->stream().readDisable(true);
    }
    void onBelowWriteBufferLowWatermark() override {
      if (r->downstream_above_ == 0) return;
      --r->downstream_above_;
      if (r->upstream_) r->upstream_->stream().readDisable(false);
    }
  };

  // The upstream stream's decoder and events (names clash with the filter's, hence the adapter).
  struct Upstream : ResponseDecoder, StreamCallbacks {
    Router* r;
    void decode1xxHeaders(ResponseHeadersPtr h) override { r->onUpstream1xx(std::move(h)); }
    void decodeHeaders(ResponseHeadersPtr h, bool end_stream) override { r->onUpstreamHeaders(std::move(h), end_stream); }
    void decodeData(common::Buffer& d, bool end_stream) override { r->onUpstreamData(d, end_stream); }
    void decodeTrailers(TrailerMapPtr t) override { r->onUpstreamTrailers(std::move(t)); }
    void onResetStream(StreamResetReason reason) override { r->onUpstreamReset(reason); }
    // Our request body is backing up upstream: stop reading it from the client until it drains.
    void onAboveWriteBufferHighWatermark() override {
      ++r->upstream_above_;
      r->cb_->onDecoderFilterAboveWriteBufferHighWatermark();
    }
    void onBelowWriteBufferLowWatermark() override {
      if (r->upstream_above_ == 0) return;
      --r->upstream_above_;
      r->cb_->onDecoderFilterBelowWriteBufferLowWatermark();
    }
  };

 public:
  Router() {
    dw_.r = this;
    up_.r = this;
  }

 private:
  void sendRedirect(const RequestHeaders& h) {
    auto resp = std::make_unique<ResponseHeaders>();
    resp->status = route_->redirect->response_code;
    resp->add("location", route_->redirectLocation(h));
    resp->add("content-length", "0");
    cb_->encodeHeaders(std::move(resp), true);
  }

  // A response worth another attempt: its status (5xx, gateway-error, retriable-4xx,
  // retriable-status-codes) or, with retriable-headers, a header matching retriable_headers.
  bool shouldRetryResponse(const ResponseHeaders& h) const {
    if (shouldRetryStatus(h.status)) return true;
    if (!retry_->on_retriable_headers || !retry_->retriable_headers) return false;
    for (const auto& m : *retry_->retriable_headers) {
      if (m.match(h)) return true;
    }
    return false;
  }

  bool retryableRequest(const RequestHeaders& h) const {
    if (!retry_->retriable_request_headers) return true;
    for (const auto& m : *retry_->retriable_request_headers) {
      if (m.match(h)) return true;
    }
    return false;
  }

  // x-envoy-retriable-header-names: "a, b": responses carrying any of those headers are retriable too
  // (with retriable-headers in retry_on), in addition to the policy's own retriable_headers.
  static void addRetriableHeaderNames(std::string_view names, RetryPolicy& policy) {
    std::vector<HeaderMatch> all;
    if (policy.retriable_headers) all = *policy.retriable_headers;
    const size_t before = all.size();
    while (!names.empty()) {
      const size_t comma = names.find(',');
      std::string_view name = names.substr(0, comma);
      names = comma == std::string_view::npos ? std::string_view() : names.substr(comma + 1);
      while (!name.empty() && (name.front() == ' ' || name.front() == '\t')) name.remove_prefix(1);
      while (!name.empty() && (name.back() == ' ' || name.back() == '\t')) name.remove_suffix(1);
      if (name.empty() || !isValidHeaderName(name) || name.front() == ':') continue;
      HeaderMatch m;
      m.name = lowerString(name);
      m.type = HeaderMatch::Type::Present;
      all.push_back(std::move(m));
    }
    if (all.size() != before) policy.retriable_headers = std::make_shared<const std::vector<HeaderMatch>>(std::move(all));
  }

  bool shouldRetryStatus(uint32_t status) const {
    const auto& rp = *retry_;
    if (rp.on_5xx && status >= 500) return true;
    if (rp.on_gateway_error && (status == 502 || status == 503 || status == 504)) return true;
    if (rp.on_retriable_4xx && status == 409) return true;
    if (rp.on_retriable_status_codes) {
      for (uint32_t c : rp.retriable_status_codes) {
        if (c == status) return true;
      }
    }
    return false;
  }

  // gRPC status in a trailers-only response (headers that end the stream).
  bool shouldRetryGrpc(const ResponseHeaders& h) const {
    if (!retry_->anyGrpc()) return false;
    const std::string* gs = h.get("grpc-status");
    uint32_t code = 0;
    if (gs == nullptr || !absl::SimpleAtoi(*gs, &code)) return false;
    const auto& rp = *retry_;
    return (code == 1 && rp.on_grpc_cancelled) || (code == 4 && rp.on_grpc_deadline_exceeded) ||
           (code == 8 && rp.on_grpc_resource_exhausted) || (code == 13 && rp.on_grpc_internal) ||
           (code == 14 && rp.on_grpc_unavailable);
  }

  bool retryOn(bool condition) {
    if (!condition || destroyed_) return false;
    // Without the whole body kept, a retry would send a different request (counted once, as
    // retry_or_shadow_abandoned, when the body outgrew the buffer).
    if (!buffering_) return false;
    if (retries_left_ == 0) {
      if (retry_->enabled && request_retriable_) stats::inc(cluster_->stats.upstream_rq_retry_limit_exceeded);
      return false;
    }
    // max_retries (or the retry budget) holds across all workers, so retries cannot turn a failing
    // upstream into a storm. The slot is held through the back-off, as Envoy holds it.
    if (cluster_->runtime && !cluster_->runtime->resources(route_->priority).tryAcquireRetry()) {
      stats::inc(cluster_->stats.upstream_rq_retry_overflow);
      return false;
    }
    retry_slot_ = cluster_->runtime != nullptr;
    --retries_left_;
    scheduleRetry(false);
    return true;
  }

  void releaseRetrySlot() {
    if (!retry_slot_) return;
    retry_slot_ = false;
    cluster_->runtime->resources(route_->priority).retries.release();
  }

  void scheduleRetry(bool immediate) {
    stats::inc(cluster_->stats.upstream_rq_retry);
    response_bytes_ = false;
    uint64_t delay = 0;
    if (!immediate) {
      const auto& rp = *retry_;
      uint64_t cap = rp.base_interval_ms << std::min<uint32_t>(attempts_ - 1, 10);
      cap = std::min(cap, rp.max_interval_ms);
      delay = cap == 0 ? 0 : cb_->worker().random() % (cap + 1);
    }
    retry_waiting_ = true;
    retry_timer_.emplace(cb_->worker().dispatcher(), [this] { startAttempt(); });
    retry_timer_->enable(delay);
  }

  void startAttempt() {
    if (destroyed_) return;
    releaseRetrySlot();  // the back-off is over
    retry_waiting_ = false;
    ++attempts_;
    if (retry_->avoid_previous_hosts && tried_count_ > 0) {
      lb_context_.avoid = tried_.data();
      lb_context_.avoid_count = tried_count_;
      lb_context_.host_selection_retry_max_attempts = retry_->host_selection_retry_max_attempts;
    }
    auto host = cb_->worker().chooseHost(*cluster_, cb_->connection(), &lb_context_);
    if (!host) {
      stats::inc(cluster_->stats.upstream_cx_none_healthy);
      flag(common::kNoHealthyUpstream);
      cb_->sendLocalReply(503, "no healthy upstream\n", "no_healthy_upstream");
      return;
    }
    // max_requests holds across all workers.
    if (cluster_->runtime && !cluster_->runtime->resources(route_->priority).requests.tryAcquire()) {
      stats::inc(cluster_->stats.upstream_rq_pending_overflow);
      flag(common::kUpstreamOverflow);
      cb_->sendLocalReply(503, "upstream overflow\n", "upstream_overflow");
      return;
    }
    cb_->streamInfo().upstream_host = host->address;
    rq_slot_ = cluster_->runtime != nullptr;
    if (host->host != nullptr) {
      // Held for the attempt: a config update may drop the host from the cluster meanwhile.
      attempt_host_ = host->host->shared_from_this();
      attempt_host_->active_requests.fetch_add(1, std::memory_order_relaxed);
      stats::inc(attempt_host_->rq_total);
      stats::inc(attempt_host_->rq_active);
      if (tried_count_ < tried_.size()) tried_[tried_count_++] = attempt_host_.get();
    }
    if (route_->auto_host_rewrite && host->host != nullptr) request_->authority = host->address.asString();
    if (route_->include_attempt_count) request_->set("x-envoy-attempt-count", std::to_string(attempts_));
    attempt_active_ = true;
    attempt_start_ = std::chrono::steady_clock::now();
    stats::inc(cluster_->stats.upstream_rq_total);
    stats::inc(cluster_->stats.upstream_rq_active);
    if (retry_->per_try_timeout_ms > 0) {
      per_try_timer_.emplace(cb_->worker().dispatcher(), [this] { onPerTryTimeout(); });
      per_try_timer_->enable(retry_->per_try_timeout_ms);
    }
    const uint32_t* alpn = cb_->streamInfo().alpn_override;
    auto& pool = cb_->worker().httpPools().pool(cluster_, *host, protocol_, route_->priority,
                                                alpn != nullptr ? alpn[static_cast<int>(protocol_)] : 0);
    pending_ = pool.newStream(up_, *this);
  }

  void endAttempt() {
    if (!attempt_active_) return;
    attempt_active_ = false;
    stats::dec(cluster_->stats.upstream_rq_active);
    if (per_try_timer_) per_try_timer_->disable();
    if (idle_timer_) idle_timer_->disable();
    if (rq_slot_) {
      rq_slot_ = false;
      cluster_->runtime->resources(route_->priority).requests.release();
    }
    if (attempt_host_) {
      attempt_host_->active_requests.fetch_sub(1, std::memory_order_relaxed);
      stats::dec(attempt_host_->rq_active);
      attempt_host_.reset();
    }
  }

  // What this attempt's host did, for its failure tallies (and outlier detection).
  void reportHttpStatus(uint32_t status) {
    if (!attempt_host_) return;
    if (status >= 500) stats::inc(attempt_host_->rq_error);
    recordLatency(status >= 500);
    reportOutcome(status);
  }
  // The peak-EWMA balancer learns each attempt's time to its response headers; a failure counts as at
  // least the policy's error penalty.
  void recordLatency(bool error) {
    if (cluster_->lb.policy != upstream::LbConfig::Policy::PeakEwma) return;
    const auto now = std::chrono::steady_clock::now();
    const auto ns = [](auto d) { return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(d).count()); };
    upstream::recordLatency(const_cast<upstream::Host&>(*attempt_host_), ns(now - attempt_start_), error,
                            ns(now.time_since_epoch()), cluster_->lb);
  }

  // Passive health: what the attempt's host did goes to the cluster's outlier detection, if any.
  void reportOutcome(uint32_t status) {
    if (auto* od = outlier()) od->putHttpResponse(const_cast<upstream::Host&>(*attempt_host_), status);
  }
  void reportLocalFailure(upstream::LocalOriginFailure kind) {
    if (!attempt_host_) return;
    stats::inc(attempt_host_->rq_error);
    recordLatency(true);
    if (auto* od = outlier()) od->putLocalOriginFailure(const_cast<upstream::Host&>(*attempt_host_), kind);
  }
  upstream::OutlierDetector* outlier() const {
    return attempt_host_ && cluster_->runtime ? cluster_->runtime->outlierDetector() : nullptr;
  }

  // The route's hash_policy over this request: Envoy's combination (rotate, then xor each new hash);
  // a terminal policy that produced a hash ends the walk. A cookie policy with a ttl and no cookie in the
  // request makes one up from the client address and has the response set it.
  std::optional<uint64_t> computeHash(const RequestHeaders& h) {
    std::optional<uint64_t> out;
    for (const auto& p : route_->hash_policies) {
      std::optional<uint64_t> one;
      switch (p.kind) {
        case HashPolicy::Kind::Header:
          if (const std::string* v = h.get(p.name)) one = upstream::hashKey(*v);
          break;
        case HashPolicy::Kind::SourceIp:
          one = upstream::hashKey(cb_->connection().remoteAddress().ip());
          break;
        case HashPolicy::Kind::QueryParameter: {
          const size_t q = h.path.find('?');
          std::string_view query = q == std::string::npos ? std::string_view() : std::string_view(h.path).substr(q + 1);
          while (!query.empty()) {
            const size_t amp = query.find('&');
            std::string_view pair = query.substr(0, amp);
            query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
            const size_t eq = pair.find('=');
            if (pair.substr(0, eq) == p.name) {
              one = upstream::hashKey(eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1));
              break;
            }
          }
          break;
        }
        case HashPolicy::Kind::Cookie: {
          for (const auto& e : h.entries()) {
            if (!headerNameEquals(e.name, "cookie")) continue;
            std::string_view rest = e.value;
            while (!rest.empty() && !one) {
              const size_t semi = rest.find(';');
              std::string_view c = rest.substr(0, semi);
              rest = semi == std::string_view::npos ? std::string_view() : rest.substr(semi + 1);
              while (!c.empty() && c.front() == ' ') c.remove_prefix(1);
              const size_t eq = c.find('=');
              if (eq != std::string_view::npos && c.substr(0, eq) == p.name) one = upstream::hashKey(c.substr(eq + 1));
            }
          }
          if (!one && p.cookie_generate) {
            const std::string value = absl::StrCat(absl::Hex(upstream::hashKey(cb_->connection().remoteAddress().asString())));
            one = upstream::hashKey(value);
            set_cookie_ = absl::StrCat(p.name, "=\"", value, "\"");
            if (p.cookie_ttl_ms > 0) absl::StrAppend(&set_cookie_, "; Max-Age=", p.cookie_ttl_ms / 1000);
            if (!p.cookie_path.empty()) absl::StrAppend(&set_cookie_, "; Path=", p.cookie_path);
            absl::StrAppend(&set_cookie_, "; HttpOnly");
          }
          break;
        }
      }
      if (one) {
        out = out ? (((*out << 1) | (*out >> 63)) ^ *one) : *one;
        if (p.terminal) break;
      }
    }
    return out;
  }

  void onUpstreamComplete() {
    if (!attempt_active_) return;
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - attempt_start_).count();
    stats::record(cluster_->stats.upstream_rq_time, static_cast<uint64_t>(us));
    endAttempt();
    if (timeout_timer_) timeout_timer_->disable();
    if (duration_timer_) duration_timer_->disable();
    // The server answered before it had the whole request: the exchange cannot finish cleanly.
    if (upstream_ != nullptr && !upstream_request_complete_) resetUpstream();
    upstream_ = nullptr;
    releaseUpstreamWatermarks();
  }

  void countStatus(uint32_t status) {
    const auto& s = cluster_->stats;
    uint32_t c = status / 100;
    stats::inc(c == 1 ? s.upstream_rq_1xx : c == 2 ? s.upstream_rq_2xx : c == 3 ? s.upstream_rq_3xx
               : c == 4 ? s.upstream_rq_4xx : s.upstream_rq_5xx);
    // upstream_rq_<code>: the cluster's counter for this code (made the first time it is seen).
    stats::Counter per_code;
    if (cluster_->runtime && cluster_->runtime->responseCodeCounter(status, &per_code)) stats::inc(per_code);
  }

  void startGlobalTimer() {
    if (timeout_timer_ || route_ == nullptr || route_->timeout_ms == 0 || cluster_ == nullptr) return;
    timeout_timer_.emplace(cb_->worker().dispatcher(), [this] { onGlobalTimeout(); });
    timeout_timer_->enable(route_->timeout_ms);
  }

  void onGlobalTimeout() {
    stats::inc(cluster_->stats.upstream_rq_timeout);
    flag(common::kUpstreamRequestTimeout);
    endOnTimeout(504, "upstream request timeout\n", "upstream_response_timeout");
  }

  // The whole request ran out of time (route timeout, max stream duration): the attempt and any retry
  // end here; the client gets `status` naming the timeout, or a reset once the response began.
  void endOnTimeout(uint32_t status, std::string_view body, std::string_view details) {
    if (attempt_active_) reportLocalFailure(upstream::LocalOriginFailure::Timeout);
    resetUpstream();
    endAttempt();
    if (retry_timer_) retry_timer_->disable();
    if (response_started_) {
      flag(common::kLocalReset);
      cb_->resetStream();
      return;
    }
    cb_->sendLocalReply(status, body, details);
  }

  // per_try_idle_timeout: the attempt is connected and nothing came from the upstream for that long.
  void touchIdle() {
    if (idle_timer_ && attempt_active_) idle_timer_->enable(retry_->per_try_idle_timeout_ms);
  }

  void onPerTryIdleTimeout() {
    if (!attempt_active_) return;
    stats::inc(cluster_->stats.upstream_rq_per_try_idle_timeout);
    onAttemptTimedOut("upstream_per_try_idle_timeout");
  }

  // The route's max_stream_duration, or the request's grpc-timeout when the route honours it
  // (grpc_timeout_header_max caps it; 0: no cap). The whole exchange must end within it.
  void startDurationTimer(const RequestHeaders& headers) {
    uint64_t ms = route_->max_stream_duration_ms.value_or(0);
    if (route_->grpc_timeout_header_max_ms) {
      if (const std::string* t = headers.get("grpc-timeout")) {
        if (auto g = parseGrpcTimeout(*t)) {
          const uint64_t cap = *route_->grpc_timeout_header_max_ms;
          ms = cap > 0 ? std::min(*g, cap) : *g;
        }
      }
    }
    if (ms == 0) return;
    const std::string* ct = headers.get("content-type");
    grpc_request_ = ct != nullptr && isGrpcContentType(*ct);
    duration_timer_.emplace(cb_->worker().dispatcher(), [this] { onMaxDuration(); });
    duration_timer_->enable(ms);
  }

  // "<1-8 digits><H|M|S|m|u|n>" in milliseconds (rounded up: a deadline is never shortened to zero).
  static std::optional<uint64_t> parseGrpcTimeout(std::string_view v) {
    if (v.size() < 2 || v.size() > 9) return std::nullopt;
    uint64_t n = 0;
    for (char c : v.substr(0, v.size() - 1)) {
      if (c < '0' || c > '9') return std::nullopt;
      n = n * 10 + static_cast<uint64_t>(c - '0');
    }
    switch (v.back()) {
      case 'H': return n * 3600 * 1000;
      case 'M': return n * 60 * 1000;
      case 'S': return n * 1000;
      case 'm': return n;
      case 'u': return (n + 999) / 1000;
      case 'n': return (n + 999999) / 1000000;
      default: return std::nullopt;
    }
  }

  void onMaxDuration() {
    stats::inc(cluster_->stats.upstream_rq_max_duration_reached);
    flag(common::kDurationTimeout);
    // gRPC clients read DEADLINE_EXCEEDED (the HCM maps 504 to it); HTTP clients get Envoy's 408.
    endOnTimeout(grpc_request_ ? 504 : 408, "request timeout\n", "max_duration_timeout");
  }

  void onPerTryTimeout() {
    stats::inc(cluster_->stats.upstream_rq_per_try_timeout);
    onAttemptTimedOut("upstream_per_try_timeout");
  }

  // One attempt ran out of time (per try, or idle): it ends; a retry follows if the policy retries
  // 5xx-like failures, else the client gets 504 naming the timeout (or a reset once the response began).
  void onAttemptTimedOut(std::string_view details) {
    if (attempt_active_) reportLocalFailure(upstream::LocalOriginFailure::Timeout);
    resetUpstream();
    endAttempt();
    if (response_started_) {
      flag(common::kUpstreamRequestTimeout | common::kLocalReset);
      cb_->resetStream();
      return;
    }
    const auto& rp = *retry_;
    if (retryOn(rp.on_5xx || rp.on_gateway_error || rp.on_reset)) return;
    flag(common::kUpstreamRequestTimeout | (attempts_ > 1 ? uint32_t{common::kUpstreamRetryLimitExceeded} : 0u));
    cb_->sendLocalReply(504, "upstream request timeout\n", details);
  }

  // Access log response flags (Envoy's), set where the thing happens.
  void flag(uint32_t f) { cb_->streamInfo().setFlag(f); }
  static uint32_t resetFlag(StreamResetReason reason) {
    switch (reason) {
      case StreamResetReason::ConnectionFailure: return common::kUpstreamConnectionFailure;
      case StreamResetReason::ConnectionTermination: return common::kUpstreamConnectionTermination;
      case StreamResetReason::Overflow: return common::kUpstreamOverflow;
      case StreamResetReason::ProtocolError: return common::kUpstreamProtocolError;
      case StreamResetReason::LocalReset: return common::kLocalReset;
      default: return common::kUpstreamRemoteReset;
    }
  }

  void resetUpstream() {
    if (pending_ != nullptr) {
      pending_->cancel();
      pending_ = nullptr;
    }
    if (upstream_ != nullptr) {
      RequestEncoder* u = upstream_;
      upstream_ = nullptr;
      stats::inc(cluster_->stats.upstream_rq_tx_reset);
      u->stream().resetStream(StreamResetReason::LocalReset);
    }
    releaseUpstreamWatermarks();
  }

  // The attempt whose send buffer had paused the client's upload is gone: the client may send again
  // (a retry buffers or a local reply ends the request); otherwise it would wait for its idle timeout.
  void releaseUpstreamWatermarks() {
    while (upstream_above_ > 0) {
      --upstream_above_;
      if (!destroyed_) cb_->onDecoderFilterBelowWriteBufferLowWatermark();
    }
  }

  void cleanup() {
    resetUpstream();
    endAttempt();
    releaseRetrySlot();
    timeout_timer_.reset();
    per_try_timer_.reset();
    idle_timer_.reset();
    duration_timer_.reset();
    retry_timer_.reset();
    if (cb_ && cluster_) cb_->setDownstreamWatermarkCallbacks(nullptr);
  }

  DecoderFilterCallbacks* cb_ = nullptr;
  const RouteEntry* route_ = nullptr;
  RequestHeaders* request_ = nullptr;
  TrailerMap* request_trailers_ = nullptr;
  config::ClusterConstSharedPtr cluster_;
  Protocol protocol_ = Protocol::Http11;
  upstream::Cancellable* pending_ = nullptr;
  RequestEncoder* upstream_ = nullptr;
  common::Buffer pending_body_;
  common::Buffer retry_buffer_;
  // In place (not TimerPtr): one is armed for every request.
  std::optional<event::Timer> timeout_timer_;
  std::optional<event::Timer> per_try_timer_;
  std::optional<event::Timer> retry_timer_;
  std::optional<event::Timer> idle_timer_;      // per_try_idle_timeout
  std::optional<event::Timer> duration_timer_;  // max_stream_duration / grpc-timeout
  std::chrono::steady_clock::time_point attempt_start_;
  DownstreamWatermarks dw_;
  Upstream up_;
  uint32_t retries_left_ = 0;
  uint32_t attempts_ = 0;
  uint32_t downstream_above_ = 0;
  uint32_t upstream_above_ = 0;  // high-watermark calls from the attempt's stream not yet undone
  const RetryPolicy* retry_ = nullptr;       // the route's, or header_retry_
  std::optional<RetryPolicy> header_retry_;  // the route's amended by x-envoy-retry-on / x-envoy-max-retries
  upstream::LbContext lb_context_;
  std::array<const upstream::Host*, 8> tried_{};  // hosts of earlier attempts (previous_hosts predicate)
  uint32_t tried_count_ = 0;
  upstream::HostConstSharedPtr attempt_host_;
  std::string set_cookie_;  // a generated hash-policy cookie for the response
  bool rq_slot_ = false;     // holds one of the cluster's max_requests
  bool request_retriable_ = true;  // false: retriable_request_headers ruled this request out
  bool retry_waiting_ = false;
  bool grpc_request_ = false;  // a retry is scheduled (back-off): the next attempt sends the kept body
  bool retry_slot_ = false;  // holds one of the cluster's max_retries (during a back-off)
  bool request_complete_ = false;
  bool upstream_request_complete_ = false;
  bool response_started_ = false;
  bool response_bytes_ = false;
  bool reused_ = false;
  bool race_retry_allowed_ = true;
  bool buffering_ = false;
  bool pending_paused_ = false;
  bool attempt_active_ = false;
  bool upgrade_ = false;
  bool destroyed_ = false;
};

class RouterFactory : public HttpFilterFactory {
 public:
  void createFilters(FilterChainBuilder& builder) const override { builder.addDecoderFilter(std::make_unique<Router>()); }
};

}  // namespace

void registerRouter() {
  strait::http::registerHttpFilter(
      "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
      [](const google::protobuf::Any&, const std::string&, HttpFilterContext&) -> absl::StatusOr<HttpFilterFactorySharedPtr> {
        return HttpFilterFactorySharedPtr(std::make_shared<RouterFactory>());
      },
      true);
}

}  // namespace strait::filters::http
