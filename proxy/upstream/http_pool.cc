#include "proxy/upstream/http_pool.h"
#include "proxy/common/pooled.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "proxy/common/log.h"
#include "proxy/common/owned_list.h"
#include "proxy/http/http1/codec.h"
#include "proxy/http/http2/codec.h"
#include "proxy/network/connection.h"

namespace strait::upstream {

// A request waiting for a connection. It holds one of the cluster's max_pending_requests (across all
// workers) until it leaves the queue, whichever way.
struct HttpPool::Pending : public Cancellable {
  Pending(HttpPool& pool, http::ResponseDecoder& d, PoolCallbacks& c, upstream::ClusterRuntimeSharedPtr rt,
          ResourcePriority priority)
      : pool(pool), decoder(d), callbacks(c), runtime(std::move(rt)), priority(priority) {}
  ~Pending() override {
    if (runtime) runtime->resources(priority).pending_requests.release();
  }
  void cancel() override { pool.cancelPending(this); }
  HttpPool& pool;
  http::ResponseDecoder& decoder;
  PoolCallbacks& callbacks;
  upstream::ClusterRuntimeSharedPtr runtime;
  ResourcePriority priority;
};

class StreamWrapper;

// One upstream connection of a pool, with its client codec.
class ActiveClient : public network::ConnectionCallbacks,
                     public http::CodecTransport,
                     public http::ClientConnectionCallbacks,
                     public event::DeferredDeletable {
 public:
  explicit ActiveClient(HttpPool& pool);
  ~ActiveClient() override;

  uint32_t capacity() const;  // streams it could take now
  bool ready() const { return state_ == State::Ready && !draining_; }
  uint64_t totalStreams() const { return total_streams_; }
  const network::Connection& connection() const { return *conn_; }
  uint32_t activeStreams() const { return active_streams_; }
  http::RequestEncoder& newStream(http::ResponseDecoder& decoder);
  void onStreamDone(StreamWrapper& stream);
  void onReusable();
  void close() {
    if (conn_ && conn_->state() != network::Connection::State::Closed) conn_->close(network::CloseType::NoFlush);
  }

  // CodecTransport
  void write(common::Buffer& data, bool end_stream) override {
    // Envoy's upstream_cx_tx_bytes_total (and rx in onData): bytes of the connection as the codec sees
    // them (plaintext under TLS), counted per read or write, not per request.
    if (const size_t n = data.length()) stats::inc(pool_.cluster_->stats.upstream_cx_tx_bytes_total, static_cast<int64_t>(n));
    conn_->write(data, end_stream);
  }
  void closeAfterFlush() override { conn_->close(network::CloseType::FlushWrite); }
  void readDisable(bool disable) override { conn_->readDisable(disable); }
  event::Dispatcher& dispatcher() override { return pool_.dispatcher_; }

  // ConnectionCallbacks
  void onData(network::Connection&, common::Buffer& data, bool end_stream) override;
  void onEvent(network::Connection&, network::ConnectionEvent event) override;
  void onAboveWriteBufferHighWatermark(network::Connection&) override {
    if (codec_) codec_->onUnderlyingConnectionAboveWriteBufferHighWatermark();
  }
  void onBelowWriteBufferLowWatermark(network::Connection&) override {
    if (codec_) codec_->onUnderlyingConnectionBelowWriteBufferLowWatermark();
  }

  // ClientConnectionCallbacks
  void onGoAway() override { draining_ = true; }
  void onMaxConcurrentStreamsChanged(uint32_t max) override { peer_max_streams_ = max; }

  // The cluster's max_connections slot this connection holds (null: opened over the limit, see
  // HttpPool::createClient); given back when the connection object goes.
  upstream::ClusterRuntimeSharedPtr cx_slot_;
  ResourcePriority cx_priority_ = ResourcePriority::Default;  // whose max_connections the slot is

 private:
  friend class HttpPool;
  enum class State { Connecting, Ready, Closed };
  void armIdleTimer();

  HttpPool& pool_;
  network::ConnectionPtr conn_;
  std::unique_ptr<http::ClientConnection> codec_;
  common::OwnedList<StreamWrapper> streams_;
  event::TimerPtr idle_timer_;
  State state_ = State::Connecting;
  uint32_t active_streams_ = 0;
  uint64_t total_streams_ = 0;
  uint32_t peer_max_streams_;
  bool draining_ = false;
  bool in_dispatch_ = false;
  bool ready_after_dispatch_ = false;
  bool idle_listed_ = false;  // on the pool's idle stack (HTTP/1)
  size_t rx_left_ = 0;        // bytes the codec left in the read buffer last time (counted already)
};

// Sits between the router and the codec's stream: tells the pool when the exchange is over (request
// sent and response received, or reset) so the connection can serve the next request.
class StreamWrapper : public event::DeferredDeletable,
                      public common::ListLinks<StreamWrapper>,
                      public http::ResponseDecoder,
                      public http::RequestEncoder,
                      public http::StreamCallbacks,
                      public http::Stream,
                      public common::Pooled<StreamWrapper> {
 public:
  StreamWrapper(ActiveClient& client, http::ResponseDecoder& inner) : client_(client), inner_(inner) {}
  void setCodecEncoder(http::RequestEncoder& e) {
    codec_encoder_ = &e;
    e.stream().setCallbacks(this);
  }

  // ResponseDecoder (from the codec)
  void decode1xxHeaders(http::ResponseHeadersPtr h) override {
    if (!done_) inner_.decode1xxHeaders(std::move(h));
  }
  void decodeHeaders(http::ResponseHeadersPtr h, bool end_stream) override {
    if (done_) return;
    if (end_stream) response_done_ = true;
    inner_.decodeHeaders(std::move(h), end_stream);
    maybeDone();
  }
  void decodeData(common::Buffer& data, bool end_stream) override {
    if (done_) return;
    if (end_stream) response_done_ = true;
    inner_.decodeData(data, end_stream);
    maybeDone();
  }
  void decodeTrailers(http::TrailerMapPtr t) override {
    if (done_) return;
    response_done_ = true;
    inner_.decodeTrailers(std::move(t));
    maybeDone();
  }

  // RequestEncoder (from the router)
  void encodeHeaders(const http::RequestHeaders& h, bool end_stream) override {
    if (end_stream) request_done_ = true;
    codec_encoder_->encodeHeaders(h, end_stream);
    maybeDone();
  }
  void encodeData(common::Buffer& data, bool end_stream) override {
    if (end_stream) request_done_ = true;
    codec_encoder_->encodeData(data, end_stream);
    maybeDone();
  }
  void encodeTrailers(const http::TrailerMap& t) override {
    request_done_ = true;
    codec_encoder_->encodeTrailers(t);
    maybeDone();
  }
  http::Stream& stream() override { return *this; }

  // Stream (for the router)
  void setCallbacks(http::StreamCallbacks* cb) override { user_ = cb; }
  void resetStream(http::StreamResetReason reason) override {
    if (done_) return;
    done_ = true;
    user_ = nullptr;  // the router asked for it: no callback back into it
    codec_encoder_->stream().resetStream(reason);
    client_.onStreamDone(*this);
  }
  void readDisable(bool disable) override {
    if (!done_) codec_encoder_->stream().readDisable(disable);
  }

  // StreamCallbacks (from the codec)
  void onResetStream(http::StreamResetReason reason) override {
    if (done_) return;
    done_ = true;
    if (user_) user_->onResetStream(reason);
    client_.onStreamDone(*this);
  }
  void onAboveWriteBufferHighWatermark() override {
    if (user_ && !done_) user_->onAboveWriteBufferHighWatermark();
  }
  void onBelowWriteBufferLowWatermark() override {
    if (user_ && !done_) user_->onBelowWriteBufferLowWatermark();
  }

 private:
  void maybeDone() {
    if (!done_ && request_done_ && response_done_) {
      done_ = true;
      client_.onStreamDone(*this);
    }
  }

  ActiveClient& client_;
  http::ResponseDecoder& inner_;
  http::RequestEncoder* codec_encoder_ = nullptr;
  http::StreamCallbacks* user_ = nullptr;
  bool request_done_ = false;
  bool response_done_ = false;
  bool done_ = false;
};

namespace {
}  // namespace

ActiveClient::ActiveClient(HttpPool& pool)
    : pool_(pool),
      conn_(std::make_unique<network::Connection>(pool.dispatcher_, pool.address_)),
      peer_max_streams_(pool.protocol_ == http::Protocol::Http2 ? pool.cluster_->http2_max_concurrent_streams : 1) {
  conn_->setCallbacks(this);
  conn_->setBufferLimits(pool.cluster_->buffer_limit);
  if (const auto& ts = config::transportFor(*pool.cluster_, pool.host_)) {
    network::TransportSocketOptions options;
    options.stats = &pool.cluster_->stats.ssl;
    options.alpn_fallback = pool.protocol_ == http::Protocol::Http2 ? "h2" : "http/1.1";
    options.alpn_override = pool.alpn_override_;
    auto socket = ts->create(options);
    if (!socket) {
      // No client certificate yet: the attempt fails; it never goes out in plaintext.
      conn_->failConnect();
    } else {
      conn_->setTransportSocket(std::move(socket));
      conn_->connect(pool.cluster_->connect_timeout_ms, pool.cluster_->upstream_bind);
    }
  } else {
    conn_->connect(pool.cluster_->connect_timeout_ms, pool.cluster_->upstream_bind);
  }
  if (pool.protocol_ == http::Protocol::Http2) {
    codec_ = http::http2::createClientConnection(*this, *this, pool.settings_);
  } else {
    codec_ = http::http1::createClientConnection(*this, *this, pool.settings_);
  }
}

ActiveClient::~ActiveClient() {
  if (conn_) {
    conn_->setCallbacks(nullptr);
    close();
  }
  if (cx_slot_) cx_slot_->resources(cx_priority_).connections.release();
}

uint32_t ActiveClient::capacity() const {
  if (state_ == State::Closed || draining_) return 0;
  const uint32_t per_cx = pool_.cluster_->max_requests_per_connection;
  if (per_cx != 0 && total_streams_ >= per_cx) return 0;  // it has carried its share: no new stream
  if (pool_.protocol_ != http::Protocol::Http2) return active_streams_ == 0 ? 1 : 0;
  uint32_t max = std::min(peer_max_streams_, pool_.cluster_->http2_max_concurrent_streams);
  if (state_ == State::Ready && !codec_->canOpenStream()) return 0;
  return active_streams_ >= max ? 0 : max - active_streams_;
}

http::RequestEncoder& ActiveClient::newStream(http::ResponseDecoder& decoder) {
  if (idle_timer_) idle_timer_->disable();
  StreamWrapper* raw = &streams_.pushBack(std::make_unique<StreamWrapper>(*this, decoder));
  raw->setCodecEncoder(codec_->newStream(*raw));
  ++active_streams_;
  ++total_streams_;
  return *raw;
}

void ActiveClient::onStreamDone(StreamWrapper& stream) {
  --active_streams_;
  pool_.dispatcher_.deferredDelete(streams_.take(stream));
  if (state_ != State::Ready) return;
  if (in_dispatch_) {
    // Decide about reuse only once the codec has finished with this response.
    ready_after_dispatch_ = true;
    return;
  }
  onReusable();
}

void ActiveClient::onReusable() {
  if (pool_.draining_ && active_streams_ == 0 && pool_.pending_.empty()) {
    // The pool's host or cluster is gone: no next request.
    close();
    return;
  }
  if (pool_.protocol_ != http::Protocol::Http2 && !codec_->canOpenStream()) {
    // An HTTP/1 connection that cannot carry another request (close, an unfinished exchange).
    close();
    return;
  }
  const uint32_t per_cx = pool_.cluster_->max_requests_per_connection;
  if (per_cx != 0 && total_streams_ >= per_cx) {
    // max_requests_per_connection reached: closed once its last stream is done.
    if (active_streams_ == 0) close();
    return;
  }
  pool_.onClientReady(*this);
  if (active_streams_ == 0) armIdleTimer();
}

void ActiveClient::armIdleTimer() {
  if (pool_.cluster_->idle_timeout_ms == 0 || state_ != State::Ready) return;
  if (!idle_timer_) {
    idle_timer_ = pool_.dispatcher_.createTimer([this] {
      if (active_streams_ == 0) close();
    });
  }
  idle_timer_->enable(pool_.cluster_->idle_timeout_ms);
}

void ActiveClient::onData(network::Connection&, common::Buffer& data, bool end_stream) {
  if (data.length() > rx_left_) {
    stats::inc(pool_.cluster_->stats.upstream_cx_rx_bytes_total, static_cast<int64_t>(data.length() - rx_left_));
  }
  in_dispatch_ = true;
  http::CodecError err;
  bool ok = codec_->dispatch(data, err);
  in_dispatch_ = false;
  rx_left_ = data.length();
  if (!ok) {
    LOG_DEBUG("[C%lu] upstream protocol error: %s", conn_->id(), err.detail.c_str());
    close();
    return;
  }
  if (end_stream && conn_->state() != network::Connection::State::Closed) {
    // The server half-closed: that ends a close-delimited body or a tunnel's response direction, and no
    // more responses can come on this connection.
    if (pool_.protocol_ != http::Protocol::Http2) {
      in_dispatch_ = true;
      static_cast<http::http1::Http1ClientConnection&>(*codec_).onRemoteHalfClose();
      in_dispatch_ = false;
    }
    draining_ = true;
    if (active_streams_ == 0) close();
  }
  if (ready_after_dispatch_ && conn_->state() != network::Connection::State::Closed) {
    ready_after_dispatch_ = false;
    onReusable();
  }
}

void ActiveClient::onEvent(network::Connection&, network::ConnectionEvent event) {
  const auto& stats = pool_.cluster_->stats;
  switch (event) {
    case network::ConnectionEvent::Connected:
      state_ = State::Ready;
      stats::inc(stats.upstream_cx_total);
      stats::inc(stats.upstream_cx_active);
      stats::inc(pool_.protocol_ == http::Protocol::Http2 ? stats.upstream_cx_http2_total : stats.upstream_cx_http1_total);
      if (pool_.host_) {
        stats::inc(pool_.host_->cx_total);
        stats::inc(pool_.host_->cx_active);
      }
      conn_->startReading();
      pool_.onClientReady(*this);
      if (active_streams_ == 0) armIdleTimer();
      break;
    case network::ConnectionEvent::ConnectFailed:
    case network::ConnectionEvent::ConnectTimeout: {
      bool timeout = event == network::ConnectionEvent::ConnectTimeout;
      stats::inc(stats.upstream_cx_total);
      stats::inc(timeout ? stats.upstream_cx_connect_timeout : stats.upstream_cx_connect_fail);
      stats::inc(stats.upstream_cx_destroy);
      if (pool_.host_) {
        stats::inc(pool_.host_->cx_total);
        stats::inc(pool_.host_->cx_connect_fail);
      }
      state_ = State::Closed;
      codec_->onTransportClosed();
      pool_.onClientClosed(*this, true, timeout);
      break;
    }
    case network::ConnectionEvent::RemoteClose:
    case network::ConnectionEvent::LocalClose: {
      bool was_ready = state_ == State::Ready;
      state_ = State::Closed;
      if (was_ready) {
        stats::dec(stats.upstream_cx_active);
        stats::inc(stats.upstream_cx_destroy);
        if (pool_.host_) stats::dec(pool_.host_->cx_active);
      }
      codec_->onTransportClosed();
      pool_.onClientClosed(*this, !was_ready, false);
      break;
    }
  }
}

HttpPool::HttpPool(event::Dispatcher& dispatcher, config::ClusterConstSharedPtr cluster, network::Address address,
                   const config::Host* host, http::Protocol protocol, ResourcePriority priority, uint32_t alpn_override)
    : dispatcher_(dispatcher), cluster_(std::move(cluster)), address_(address), protocol_(protocol), priority_(priority),
      alpn_id_(alpn_override), alpn_override_(network::alpnOverrideWire(alpn_override)) {
  setHost(host);
  settings_.max_concurrent_streams = cluster_->http2_max_concurrent_streams;
  settings_.initial_stream_window_size = cluster_->http2_initial_stream_window;
  settings_.initial_connection_window_size = cluster_->http2_initial_connection_window;
  settings_.stream_buffer_limit = cluster_->buffer_limit;
  if (cluster_->runtime && cluster_->runtime->resources(priority_).connection_pools.tryAcquire()) {
    pool_slot_ = cluster_->runtime;
  }
}

HttpPool::~HttpPool() {
  for (auto& p : pending_) p->callbacks.onPoolFailure(PoolFailureReason::ConnectionFailure);
  pending_.clear();
  clients_.clear();
  if (pool_slot_) pool_slot_->resources(priority_).connection_pools.release();
}

bool HttpPool::idle() const { return clients_.empty() && pending_.empty(); }

Cancellable* HttpPool::newStream(http::ResponseDecoder& decoder, PoolCallbacks& callbacks) {
  if (!pool_slot_ && cluster_->runtime) {
    // max_connection_pools reached (Envoy: upstream_cx_pool_overflow): this pool may not exist. It
    // goes at once, so the next request tries for a slot again.
    stats::inc(cluster_->stats.upstream_cx_pool_overflow);
    callbacks.onPoolFailure(PoolFailureReason::Overflow);
    maybeRelease();
    return nullptr;
  }
  if (protocol_ != http::Protocol::Http2) {
    // HTTP/1: the most recently freed connection, from the idle stack (no scan per request).
    while (!idle_.empty()) {
      ActiveClient* c = idle_.back();
      idle_.pop_back();
      c->idle_listed_ = false;
      if (c->ready() && c->capacity() > 0) {
        attach(*c, decoder, callbacks);
        return nullptr;
      }
    }
  } else {
    for (auto& c : clients_) {
      if (c->ready() && c->capacity() > 0) {
        attach(*c, decoder, callbacks);
        return nullptr;
      }
    }
  }
  // The slow path: wait for a connection (and maybe open one).
  connecting_capacity_ = 0;
  for (auto& c : clients_) {
    if (c->state_ == ActiveClient::State::Connecting) connecting_capacity_ += c->capacity();
  }
  // max_pending_requests holds across workers: the cluster's runtime counts every queued request.
  const auto& rt = cluster_->runtime;
  if (rt && !rt->resources(priority_).pending_requests.tryAcquire()) {
    stats::inc(cluster_->stats.upstream_rq_pending_overflow);
    callbacks.onPoolFailure(PoolFailureReason::Overflow);
    return nullptr;
  }
  stats::inc(cluster_->stats.upstream_rq_pending_total);
  pending_.push_back(std::make_unique<Pending>(*this, decoder, callbacks, rt, priority_));
  Pending* p = pending_.back().get();
  if (connecting_capacity_ < pending_.size()) createClient();
  return p;
}

void HttpPool::createClient() {
  // max_connections holds across workers and pools. At the limit no connection is opened, unless this
  // pool has none at all: then its waiting requests would have nothing to wait for (Envoy does the same).
  upstream::ClusterRuntimeSharedPtr slot;
  if (const auto& rt = cluster_->runtime) {
    if (rt->resources(priority_).connections.tryAcquire()) {
      slot = rt;
    } else {
      stats::inc(cluster_->stats.upstream_cx_overflow);
      if (!clients_.empty()) return;
    }
  }
  auto c = std::make_unique<ActiveClient>(*this);
  c->cx_slot_ = std::move(slot);
  c->cx_priority_ = priority_;
  connecting_capacity_ += c->capacity();
  clients_.push_back(std::move(c));
}

void HttpPool::attach(ActiveClient& client, http::ResponseDecoder& decoder, PoolCallbacks& callbacks) {
  http::RequestEncoder& encoder = client.newStream(decoder);
  callbacks.onPoolReady(encoder, client.totalStreams() > 1, client.connection());
}

void HttpPool::onClientReady(ActiveClient& client) {
  // Waiting requests first, then (HTTP/1) the idle stack.
  while (!pending_.empty() && client.ready() && client.capacity() > 0) {
    std::unique_ptr<Pending> p = std::move(pending_.front());
    pending_.pop_front();
    attach(client, p->decoder, p->callbacks);
  }
  // A draining pool keeps no idle connection: one that came up with nothing left to serve closes.
  if (draining_ && pending_.empty() && client.ready() && client.activeStreams() == 0) {
    client.close();
    return;
  }
  if (protocol_ != http::Protocol::Http2 && !client.idle_listed_ && client.ready() && client.capacity() > 0) {
    idle_.push_back(&client);
    client.idle_listed_ = true;
  }
}

void HttpPool::processPending() {
  // Recompute the capacity still on its way from connections that are connecting.
  connecting_capacity_ = 0;
  for (auto& c : clients_) {
    if (c->state_ == ActiveClient::State::Connecting) connecting_capacity_ += c->capacity();
  }
  for (auto& c : clients_) {
    while (!pending_.empty() && c->ready() && c->capacity() > 0) {
      std::unique_ptr<Pending> p = std::move(pending_.front());
      pending_.pop_front();
      attach(*c, p->decoder, p->callbacks);
    }
  }
}

void HttpPool::onClientClosed(ActiveClient& client, bool connect_failed, bool timed_out) {
  // The connection is gone now, not when its object is deleted later: its max_connections slot goes
  // back first, so a replacement opened below takes a slot of its own.
  if (client.cx_slot_) {
    client.cx_slot_->resources(client.cx_priority_).connections.release();
    client.cx_slot_.reset();
  }
  if (client.idle_listed_) {
    idle_.erase(std::remove(idle_.begin(), idle_.end(), &client), idle_.end());
    client.idle_listed_ = false;
  }
  for (auto it = clients_.begin(); it != clients_.end(); ++it) {
    if (it->get() == &client) {
      dispatcher_.deferredDelete(std::move(*it));
      clients_.erase(it);
      break;
    }
  }
  connecting_capacity_ = 0;
  for (auto& c : clients_) {
    if (c->state_ == ActiveClient::State::Connecting) connecting_capacity_ += c->capacity();
  }
  if (connect_failed) {
    // Requests that no connecting client will serve fail now.
    while (pending_.size() > connecting_capacity_) {
      std::unique_ptr<Pending> p = std::move(pending_.back());
      pending_.pop_back();
      p->callbacks.onPoolFailure(timed_out ? PoolFailureReason::Timeout : PoolFailureReason::ConnectionFailure);
    }
    maybeRelease();
    return;
  }
  processPending();
  if (connecting_capacity_ < pending_.size()) createClient();
  maybeRelease();
}

void HttpPool::cancelPending(Pending* p) {
  for (auto it = pending_.begin(); it != pending_.end(); ++it) {
    if (it->get() == p) {
      pending_.erase(it);
      return;
    }
  }
}

void HttpPool::drain() {
  if (draining_) return;
  draining_ = true;
  // Idle connections close now (their close events come back through onClientClosed); busy ones close
  // once their streams end (onReusable).
  // Connecting ones too when no request waits for them.
  if (pending_.empty()) {
    std::vector<ActiveClient*> idle;
    for (auto& c : clients_) {
      if (c->active_streams_ == 0) idle.push_back(c.get());
    }
    for (ActiveClient* c : idle) c->close();
  }
  maybeRelease();
}

void HttpPool::maybeRelease() {
  if (released_ || manager_ == nullptr || !idle()) return;
  released_ = true;
  manager_->release(*this);
}

HttpPoolManager::~HttpPoolManager() {
  // Pools go before the dispatcher; none may call back into us while they are destroyed.
  for (auto& [key, p] : pools_) p->manager_ = nullptr;
  for (auto& [raw, p] : draining_) p->manager_ = nullptr;
}

void HttpPoolManager::release(HttpPool& pool) {
  // Deferred: this runs inside the pool's own callbacks (a connection closing).
  if (pool.draining_) {
    auto it = draining_.find(&pool);
    if (it == draining_.end()) return;
    dispatcher_.deferredDelete(std::move(it->second));
    draining_.erase(it);
    return;
  }
  const Key key{pool.cluster_->index, transportHash(*pool.cluster_, pool.host_), pool.address_, pool.protocol_,
                pool.priority_, pool.alpn_id_};
  auto it = pools_.find(key);
  if (it == pools_.end() || it->second.get() != &pool) return;
  dispatcher_.deferredDelete(std::move(it->second));
  pools_.erase(it);
}

void HttpPoolManager::onConfig(const config::Snapshot& snapshot) {
  std::vector<HttpPool*> to_drain;
  for (auto it = pools_.begin(); it != pools_.end();) {
    const config::Cluster* c = snapshot.clusterByIndex(it->first.cluster).get();
    bool keep = c != nullptr;
    // A host (or an ORIGINAL_DST cluster) whose TLS settings changed gets new pools; the old ones drain.
    if (keep && c->type == config::Cluster::Type::OriginalDst) {
      keep = transportHash(*c, nullptr) == it->first.transport;
    } else if (keep) {
      keep = false;
      for (const auto& h : *config::hostsInForce(*c)) {  // a DNS cluster: its newest resolution
        if (h->address == it->first.address && transportHash(*c, h.get()) == it->first.transport) {
          keep = true;
          break;
        }
      }
    }
    if (keep) {
      ++it;
      continue;
    }
    HttpPool* raw = it->second.get();
    draining_.emplace(raw, std::move(it->second));
    it = pools_.erase(it);
    to_drain.push_back(raw);
  }
  for (HttpPool* p : to_drain) p->drain();
}

bool HttpPoolManager::Key::operator<(const Key& o) const {
  if (cluster != o.cluster) return cluster < o.cluster;
  if (transport != o.transport) return transport < o.transport;
  if (protocol != o.protocol) return protocol < o.protocol;
  if (priority != o.priority) return priority < o.priority;
  if (alpn_override != o.alpn_override) return alpn_override < o.alpn_override;
  if (address.family() != o.address.family()) return address.family() < o.address.family();
  return std::memcmp(address.sockAddr(), o.address.sockAddr(), address.sockLen()) < 0;
}

HttpPool& HttpPoolManager::pool(const config::ClusterConstSharedPtr& cluster, const config::HostChoice& host,
                                http::Protocol protocol, ResourcePriority priority, uint32_t alpn_override) {
  Key key{cluster->index, transportHash(*cluster, host.host), host.address, protocol, priority, alpn_override};
  auto it = pools_.find(key);
  if (it != pools_.end()) {
    if (it->second->cluster() != cluster.get()) it->second->updateCluster(cluster, host.host);
    return *it->second;
  }
  auto p = std::make_unique<HttpPool>(dispatcher_, cluster, host.address, host.host, protocol, priority, alpn_override);
  p->manager_ = this;
  HttpPool& ref = *p;
  pools_.emplace(key, std::move(p));
  return ref;
}

}  // namespace strait::upstream
