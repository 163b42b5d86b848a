#include "filters/network/tcp_proxy.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "google/protobuf/any.pb.h"
#include "envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.pb.h"
#include "filters/network/istio_tcp_stats.h"
#include "filters/network/metadata_exchange.h"
#include "proxy/accesslog/access_log.h"
#include "proxy/common/log.h"
#include "proxy/common/response_flags.h"
#include "proxy/config/bootstrap.h"
#include "proxy/network/connection.h"
#include "proxy/stats/live_edges.h"

namespace strait::filters::network {

namespace {

using strait::network::CloseType;
using strait::network::Connection;
using strait::network::ConnectionEvent;
using strait::network::ConnectionPtr;
namespace tcp_v3 = envoy::extensions::filters::network::tcp_proxy::v3;

struct TcpStats {
  stats::Counter downstream_cx_total;
  stats::Counter downstream_cx_no_route;
  stats::Counter downstream_cx_rx_bytes_total;
  stats::Counter downstream_cx_tx_bytes_total;
  stats::Counter idle_timeout;
  stats::Counter upstream_flush_total;
};

struct WeightedTarget {
  // The cluster's clusterIds() index, resolved by the worker per connection to the version in force.
  // An xDS listener may name a cluster CDS does not hold (removed, or not there yet): connections sent
  // to it are closed (Envoy: "cluster not found") until a config brings the cluster.
  uint32_t cluster_index;
  uint32_t weight;
  std::string name;
};

class TcpProxyConfig : public config::NetworkFilterFactory {
 public:
  void onAccept(config::WorkerContext& worker, ConnectionPtr conn, const std::shared_ptr<const config::Listener>& listener,
                uint64_t chain_hash) const override;
  std::vector<UpstreamTarget> tcpProxyTargets() const override {
    std::vector<UpstreamTarget> out;
    for (const auto& t : targets) out.push_back(UpstreamTarget{t.name, t.cluster_index, t.weight});
    return out;
  }

  const WeightedTarget& pickTarget(config::WorkerContext& worker) const {
    if (targets.size() == 1) return targets[0];
    uint64_t r = worker.random() % total_weight;
    for (const auto& t : targets) {
      if (r < t.weight) return t;
      r -= t.weight;
    }
    return targets.back();
  }

  std::vector<WeightedTarget> targets;
  uint64_t total_weight = 0;
  uint64_t idle_timeout_ms = 3600 * 1000;  // Envoy's default: 1 hour
  uint32_t max_connect_attempts = 1;
  accesslog::AccessLogList access_logs;  // one line per session, at its close
  TcpStats stats;
};

// One proxied connection pair. Reads from one side are moved (not copied) into the other side's write
// buffer; when that buffer passes its high watermark, reading from the first side stops until it drains.
class Session : public config::ActiveSession, public strait::network::ConnectionCallbacks {
 public:
  Session(const TcpProxyConfig& cfg, config::WorkerContext& worker, ConnectionPtr downstream,
          std::shared_ptr<const config::Listener> listener)
      : ActiveSession(std::move(listener)), cfg_(cfg), worker_(worker), downstream_(std::move(downstream)),
        target_(cfg.pickTarget(worker)), cluster_(worker.cluster(target_.cluster_index)) {
    downstream_->setCallbacks(this);
    stats::inc(cfg_.stats.downstream_cx_total);
    istio_.begin(*downstream_, this->listener() != nullptr && this->listener()->inbound);
    // Istio's TCP metadata exchange, when the chain's filter started one: our frame goes first.
    if (const PeerExchangeConfig* px = takeDownstreamPeerExchange(downstream_->id())) {
      down_mx_ = std::make_unique<PeerExchange>(*px);
      down_mx_->start(*downstream_);
    }
    if (!cfg_.access_logs.empty()) {
      start_ = std::chrono::steady_clock::now();
      start_time_ = std::chrono::system_clock::now();
    }
  }
  ~Session() override { releaseCxSlot(); }

  void start() {
    if (cluster_ == nullptr) {
      stats::inc(cfg_.stats.downstream_cx_no_route);
      flags_ |= common::kNoClusterFound;
      LOG_DEBUG("[C%lu] tcp_proxy: cluster not found: %s", downstream_->id(), target_.name.c_str());
      downstream_->close(CloseType::NoFlush);
      maybeDone();
      return;
    }
    if (cfg_.idle_timeout_ms > 0) {
      idle_timer_ = worker_.dispatcher().createTimer([this] { onIdleTimer(); });
      idle_timer_->enable(cfg_.idle_timeout_ms);
      last_activity_ms_ = worker_.dispatcher().nowMs();
    }
    connectUpstream();
  }

  void forceClose() override {
    if (upstream_) upstream_->close(CloseType::NoFlush);
    downstream_->close(CloseType::NoFlush);
  }

  void onData(Connection& conn, common::Buffer& data, bool end_stream) override {
    last_activity_ms_ = worker_.dispatcher().nowMs();
    PeerExchange* mx = &conn == downstream_.get() ? down_mx_.get() : up_mx_.get();
    if (mx != nullptr && mx->reading() && !readPeerFrame(*mx, data, end_stream)) return;
    size_t n = data.length();
    if (live_resolved_) {
      const bool from_downstream = &conn == downstream_.get();
      stats::live::recordBytes(live_in_, last_activity_ms_, from_downstream ? n : 0, from_downstream ? 0 : n);
      stats::live::recordBytes(live_out_, last_activity_ms_, from_downstream ? 0 : n, from_downstream ? n : 0);
    }
    if (&conn == downstream_.get()) {
      bytes_received_ += n;
      if (n) stats::inc(cfg_.stats.downstream_cx_rx_bytes_total, static_cast<int64_t>(n));
      if (n && cluster_) stats::inc(cluster_->stats.upstream_cx_tx_bytes_total, static_cast<int64_t>(n));
      if (upstream_ && upstream_->state() == Connection::State::Open) {
        upstream_->write(data, end_stream);
      } else {
        data.drain(n);
      }
    } else {
      bytes_sent_ += n;
      if (n) stats::inc(cluster_->stats.upstream_cx_rx_bytes_total, static_cast<int64_t>(n));
      if (n) stats::inc(cfg_.stats.downstream_cx_tx_bytes_total, static_cast<int64_t>(n));
      downstream_->write(data, end_stream);
    }
  }

  void onEvent(Connection& conn, ConnectionEvent event) override {
    if (&conn == downstream_.get()) {
      if (event == ConnectionEvent::RemoteClose || event == ConnectionEvent::LocalClose) {
        // The client is gone: finish sending what the upstream has buffered, then close it.
        if (upstream_) upstream_->close(CloseType::FlushWrite);
        maybeDone();
      }
      return;
    }
    switch (event) {
      case ConnectionEvent::Connected:
        stats::inc(cluster_->stats.upstream_cx_total);
        stats::inc(cluster_->stats.upstream_cx_active);
        if (host_) {
          stats::inc(host_->cx_total);
          stats::inc(host_->cx_active);
        }
        upstream_counted_ = true;
        upstream_local_ = upstream_->localAddress();
        if (cluster_->peer_exchange) {
          up_mx_ = PeerExchange::forUpstream(*cluster_->peer_exchange, *upstream_);
          if (up_mx_) up_mx_->start(*upstream_);  // before any of the client's bytes
        }
        if (istio_.active() && !exchanging()) istio_.opened(*downstream_, upstream_.get(), cluster_->name);
        if (resolveLiveEdges(upstream_.get())) {
          const uint64_t now = worker_.dispatcher().nowMs();
          stats::live::recordConnection(live_in_, now, false, 0);
          stats::live::recordConnection(live_out_, now, false, 0);
        }
        upstream_->setBufferLimits(cluster_->buffer_limit);
        downstream_->setBufferLimits(listener()->buffer_limit);
        downstream_->startReading();
        upstream_->startReading();
        break;
      case ConnectionEvent::ConnectFailed:
      case ConnectionEvent::ConnectTimeout:
        stats::inc(event == ConnectionEvent::ConnectFailed ? cluster_->stats.upstream_cx_connect_fail
                                                           : cluster_->stats.upstream_cx_connect_timeout);
        stats::inc(cluster_->stats.upstream_cx_total);
        stats::inc(cluster_->stats.upstream_cx_destroy);
        if (host_) {
          stats::inc(host_->cx_total);
          stats::inc(host_->cx_connect_fail);
        }
        if (upstream_ && !upstream_->transportFailureReason().empty()) {
          failure_reason_ = std::string(upstream_->transportFailureReason());
        } else {
          failure_reason_ = event == ConnectionEvent::ConnectFailed ? "connection_failure" : "connection_timeout";
        }
        retireUpstream();
        if (attempts_ < cfg_.max_connect_attempts && downstream_->state() != Connection::State::Closed) {
          connectUpstream();
        } else {
          flags_ |= common::kUpstreamConnectionFailure | (attempts_ > 1 ? uint32_t{common::kUpstreamRetryLimitExceeded} : 0u);
          downstream_->close(CloseType::NoFlush);
          maybeDone();
        }
        break;
      case ConnectionEvent::RemoteClose:
      case ConnectionEvent::LocalClose:
        if (upstream_counted_) {
          stats::dec(cluster_->stats.upstream_cx_active);
          stats::inc(cluster_->stats.upstream_cx_destroy);
          if (host_) stats::dec(host_->cx_active);
          upstream_counted_ = false;
        }
        // The upstream is done: send the client what is still buffered for it, then close.
        downstream_->close(CloseType::FlushWrite);
        maybeDone();
        break;
    }
  }

  void onAboveWriteBufferHighWatermark(Connection& conn) override { other(conn).readDisable(true); }
  void onBelowWriteBufferLowWatermark(Connection& conn) override { other(conn).readDisable(false); }

 private:
  Connection& other(Connection& conn) { return &conn == downstream_.get() ? *upstream_ : *downstream_; }

  bool exchanging() const { return (down_mx_ && down_mx_->reading()) || (up_mx_ && up_mx_->reading()); }

  // Strips the peer's metadata exchange frame from the front of `data`. False: nothing to forward yet.
  // Istio's TCP metrics wait for the exchange (its peer labels) before counting the connection opened.
  bool readPeerFrame(PeerExchange& mx, common::Buffer& data, bool end_stream) {
    if (!mx.onData(data, end_stream)) return false;
    if (&mx == down_mx_.get()) {
      istio_.setDownstreamPeer(mx.peer());
    } else {
      istio_.setUpstreamPeer(mx.peer());
    }
    if (istio_.active() && upstream_counted_ && !exchanging()) istio_.opened(*downstream_, upstream_.get(), cluster_->name);
    return !data.empty() || end_stream;
  }

  void connectUpstream() {
    ++attempts_;
    auto host = worker_.chooseHost(*cluster_, *downstream_);
    if (!host) {
      stats::inc(cluster_->stats.upstream_cx_none_healthy);
      stats::inc(cfg_.stats.downstream_cx_no_route);
      flags_ |= common::kNoHealthyUpstream;
      LOG_DEBUG("[C%lu] tcp_proxy: no host for cluster %s", downstream_->id(), cluster_->name.c_str());
      downstream_->close(CloseType::NoFlush);
      maybeDone();
      return;
    }
    // The cluster's max_connections holds across workers (and across tcp_proxy and HTTP pools).
    if (cluster_->runtime && !cluster_->runtime->resources().connections.tryAcquire()) {
      stats::inc(cluster_->stats.upstream_cx_overflow);
      flags_ |= common::kUpstreamOverflow;
      LOG_DEBUG("[C%lu] tcp_proxy: cluster %s at max_connections", downstream_->id(), cluster_->name.c_str());
      downstream_->close(CloseType::NoFlush);
      maybeDone();
      return;
    }
    cx_slot_ = cluster_->runtime != nullptr;
    // Held: the cluster version the host came from may be replaced (EDS) while this session lives.
    host_ref_ = host->host != nullptr ? host->host->shared_from_this() : nullptr;
    host_ = host_ref_.get();
    upstream_host_ = host->address;
    upstream_ = std::make_unique<Connection>(worker_.dispatcher(), host->address);
    upstream_->setCallbacks(this);
    LOG_DEBUG("[C%lu] tcp_proxy: %s -> %s (cluster %s)", downstream_->id(), downstream_->remoteAddress().asString().c_str(),
              host->address.asString().c_str(), cluster_->name.c_str());
    if (const auto& ts = config::transportFor(*cluster_, host_)) {
      strait::network::TransportSocketOptions options;
      options.stats = &cluster_->stats.ssl;
      auto socket = ts->create(options);
      if (!socket) {
        upstream_->failConnect();  // no certificate yet: never plaintext
        return;
      }
      upstream_->setTransportSocket(std::move(socket));
    }
    upstream_->connect(cluster_->connect_timeout_ms, cluster_->upstream_bind);
  }

  // A failed upstream connection is freed after the current callback returns.
  void retireUpstream() {
    if (upstream_) worker_.dispatcher().deferredDelete(std::move(upstream_));
    releaseCxSlot();
  }

  void releaseCxSlot() {
    if (!cx_slot_) return;
    cx_slot_ = false;
    cluster_->runtime->resources().connections.release();
  }

  void onIdleTimer() {
    uint64_t now = worker_.dispatcher().nowMs();
    uint64_t idle = now - last_activity_ms_;
    if (idle < cfg_.idle_timeout_ms) {
      idle_timer_->enable(cfg_.idle_timeout_ms - idle);
      return;
    }
    LOG_DEBUG("[C%lu] tcp_proxy: idle timeout", downstream_->id());
    stats::inc(cfg_.stats.idle_timeout);
    forceClose();
  }

  // The admin's live graph (stats/live_edges.h): an INBOUND listener's sessions are caller -> this
  // workload, an OUTBOUND one's this workload -> cluster (+ the upstream's identity), a listener with no
  // traffic_direction shows both. Fixed once per session, when the upstream connects or the session
  // ends without one. False when the graph is off.
  bool resolveLiveEdges(const Connection* upstream) {
    namespace live = stats::live;
    if (live_resolved_ || !live::enabled()) return false;
    live_resolved_ = true;
    const config::Listener* l = listener().get();
    if (l == nullptr || !l->outbound) {
      live_in_ = live::slotFor(live::Direction::Inbound, live::Kind::Tcp, live::callerOf(*downstream_), "");
    }
    if ((l == nullptr || !l->inbound) && cluster_ != nullptr) {
      live_out_ = live::slotFor(live::Direction::Outbound, live::Kind::Tcp, cluster_->name,
                                upstream != nullptr ? live::peerPrincipal(*upstream) : std::string_view());
    }
    return true;
  }

  void maybeDone() {
    if (done_) return;
    if (downstream_->state() != Connection::State::Closed) return;
    if (upstream_ && upstream_->state() != Connection::State::Closed) return;
    done_ = true;
    if (resolveLiveEdges(nullptr)) {  // never connected: no cluster, no host, overflow, connect failure
      const uint64_t now = worker_.dispatcher().nowMs();
      stats::live::recordConnection(live_in_, now, true, flags_);
      stats::live::recordConnection(live_out_, now, true, flags_);
    }
    releaseCxSlot();
    if (idle_timer_) idle_timer_->disable();
    if (!cfg_.access_logs.empty()) writeAccessLogs();
    if (istio_.active()) {
      // Connected, but a metadata exchange never finished: opened now, with the upstream's identity.
      if (upstream_ && upstream_local_) istio_.opened(*downstream_, upstream_.get(), cluster_->name);
      istio_.closed(*downstream_, cluster_ ? std::string_view(cluster_->name) : std::string_view(), flags_, bytes_sent_,
                    bytes_received_);
    }
    worker_.removeSession(*this);
  }

  // One line per session when it closes (access_log_options.access_log_flush_interval, periodic lines
  // for long sessions, is not implemented: see createTcpProxy).
  void writeAccessLogs() {
    accesslog::LogContext c;
    c.start_time = start_time_;
    c.start = start_;
    c.end = std::chrono::steady_clock::now();
    c.response_flags = flags_;
    c.bytes_received = bytes_received_;
    c.bytes_sent = bytes_sent_;
    c.downstream = downstream_.get();
    if (upstream_host_) c.upstream_host = &*upstream_host_;
    if (upstream_local_) c.upstream_local = &*upstream_local_;
    if (cluster_) c.upstream_cluster = cluster_->name;
    c.upstream_transport_failure = failure_reason_;
    accesslog::logAll(cfg_.access_logs, c, worker_.dispatcher());
  }

  const TcpProxyConfig& cfg_;
  config::WorkerContext& worker_;
  IstioTcpStats istio_;  // Istio's TCP metrics, when the chain's istio.stats filter marked the connection
  // Istio's TCP metadata exchange with the downstream (the chain's istio.metadata_exchange) and with the
  // upstream (the cluster's); null without one.
  std::unique_ptr<PeerExchange> down_mx_, up_mx_;
  ConnectionPtr downstream_;
  ConnectionPtr upstream_;
  const WeightedTarget& target_;
  const config::ClusterConstSharedPtr cluster_;  // null: the cluster is not known (see WeightedTarget)
  upstream::HostConstSharedPtr host_ref_;
  bool cx_slot_ = false;  // holds one of the cluster's max_connections
  const config::Host* host_ = nullptr;
  event::TimerPtr idle_timer_;
  uint64_t last_activity_ms_ = 0;
  uint32_t attempts_ = 0;
  bool live_resolved_ = false;  // live graph slots below are set (stats/live_edges.h)
  uint16_t live_in_ = stats::live::kNoSlot, live_out_ = stats::live::kNoSlot;
  // For the access log.
  std::chrono::steady_clock::time_point start_;
  std::chrono::system_clock::time_point start_time_;
  uint64_t bytes_received_ = 0;
  uint64_t bytes_sent_ = 0;
  uint32_t flags_ = 0;  // common::ResponseFlag bits
  std::optional<strait::network::Address> upstream_host_;
  std::optional<strait::network::Address> upstream_local_;
  std::string failure_reason_;
  bool upstream_counted_ = false;
  bool done_ = false;
};

void TcpProxyConfig::onAccept(config::WorkerContext& worker, ConnectionPtr conn,
                              const std::shared_ptr<const config::Listener>& listener, uint64_t chain_hash) const {
  auto session = std::make_unique<Session>(*this, worker, std::move(conn), listener);
  session->chain_hash = chain_hash;
  Session* raw = session.get();
  worker.addSession(std::move(session));
  raw->start();
}

absl::StatusOr<std::shared_ptr<const config::NetworkFilterFactory>> createTcpProxy(
    const google::protobuf::Any& any, const std::string& path, config::TranslationContext& ctx) {
  tcp_v3::TcpProxy proto;
  if (!any.UnpackTo(&proto)) return absl::InvalidArgumentError(path + ": cannot decode TcpProxy");
  auto cfg = std::make_shared<TcpProxyConfig>();
  if (proto.stat_prefix().empty()) return absl::InvalidArgumentError(path + ".stat_prefix: is required");
  auto findCluster = [&](const std::string& name, const std::string& field) -> absl::StatusOr<uint32_t> {
    if (ctx.clusters.find(name) == ctx.clusters.end() && !(ctx.dynamic && !name.empty())) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": unknown cluster '", name, "'"));
    }
    return config::clusterIds().get(name);  // an xDS listener's unknown cluster resolves when it arrives
  };
  if (proto.has_weighted_clusters()) {
    const auto& wc = proto.weighted_clusters();
    if (wc.clusters_size() == 0) return absl::InvalidArgumentError(path + ".weighted_clusters.clusters: is empty");
    for (int i = 0; i < wc.clusters_size(); ++i) {
      const std::string f = absl::StrCat(path, ".weighted_clusters.clusters[", i, "]");
      auto c = findCluster(wc.clusters(i).name(), f + ".name");
      if (!c.ok()) return c.status();
      if (wc.clusters(i).weight() == 0) continue;
      cfg->targets.push_back(WeightedTarget{*c, wc.clusters(i).weight(), wc.clusters(i).name()});
      cfg->total_weight += wc.clusters(i).weight();
    }
    if (cfg->total_weight == 0) return absl::InvalidArgumentError(path + ".weighted_clusters: every weight is 0");
  } else {
    if (proto.cluster().empty()) return absl::InvalidArgumentError(path + ".cluster: is required");
    auto c = findCluster(proto.cluster(), path + ".cluster");
    if (!c.ok()) return c.status();
    cfg->targets.push_back(WeightedTarget{*c, 1, proto.cluster()});
    cfg->total_weight = 1;
  }
  if (proto.has_idle_timeout()) cfg->idle_timeout_ms = config::durationMs(proto.idle_timeout());
  if (proto.has_max_connect_attempts()) {
    if (proto.max_connect_attempts().value() < 1) {
      return absl::InvalidArgumentError(path + ".max_connect_attempts: must be at least 1");
    }
    cfg->max_connect_attempts = proto.max_connect_attempts().value();
  }
  if (proto.access_log_size() > 0) {
    auto logs = accesslog::translateAccessLogs(proto.access_log(), path + ".access_log", ctx.store);
    if (!logs.ok()) return logs.status();
    cfg->access_logs = std::move(*logs);
  }
  if (proto.access_log_options().has_access_log_flush_interval() || proto.access_log_options().flush_access_log_on_connected()) {
    // Accepted, not honoured: a session's line is written when it closes.
    LOG_WARN("%s.access_log_options: accepted but inert: one line is written per session, at its close",
             path.c_str());
  }
  const std::string p = "tcp." + proto.stat_prefix() + ".";
  cfg->stats.downstream_cx_total = ctx.store.counter(p + "downstream_cx_total");
  cfg->stats.downstream_cx_no_route = ctx.store.counter(p + "downstream_cx_no_route");
  cfg->stats.downstream_cx_rx_bytes_total = ctx.store.counter(p + "downstream_cx_rx_bytes_total");
  cfg->stats.downstream_cx_tx_bytes_total = ctx.store.counter(p + "downstream_cx_tx_bytes_total");
  cfg->stats.idle_timeout = ctx.store.counter(p + "idle_timeout");
  cfg->stats.upstream_flush_total = ctx.store.counter(p + "upstream_flush_total");
  return std::shared_ptr<const config::NetworkFilterFactory>(cfg);
}

}  // namespace

void registerTcpProxy() {
  config::registerNetworkFilter("type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
                                createTcpProxy);
}

}  // namespace strait::filters::network
