#include "filters/http/istio_stats.h"

#include <charconv>
#include <memory>
#include <mutex>
#include <set>

#include "absl/strings/str_cat.h"
#include "google/protobuf/any.pb.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "istio/peer_metadata/config.pb.h"
#include "proxy/common/log.h"
#include "proxy/common/pooled.h"
#include "proxy/config/snapshot.h"
#include "proxy/config/typed_struct.h"
#include "proxy/http/conn_manager.h"
#include "proxy/network/connection.h"
#include "proxy/network/transport_socket.h"
#include "proxy/stats/istio_metrics.h"

namespace strait::filters::http {

namespace {

using namespace strait::http;
namespace im = stats::istio;
using PeerMetadataConfig = io::istio::http::peer_metadata::Config;

constexpr std::string_view kPeerMetadata = "x-envoy-peer-metadata";
constexpr std::string_view kPeerMetadataId = "x-envoy-peer-metadata-id";

bool inboundPrefix(const std::string& stat_prefix) { return stat_prefix.starts_with("inbound"); }

// The host of an authority ("a.b:80" -> "a.b", "[::1]:80" -> "::1").
std::string_view hostOf(std::string_view authority) {
  if (authority.starts_with('[')) {
    size_t end = authority.find(']');
    return end == std::string_view::npos ? authority : authority.substr(1, end - 1);
  }
  size_t colon = authority.rfind(':');
  if (colon != std::string_view::npos && authority.find(':') == colon) return authority.substr(0, colon);
  return authority;
}

// ---- istio.stats ----------------------------------------------------------------------------------

struct StatsConfig : HttpFilterFactory {
  void createFilters(FilterChainBuilder& builder) const override;
  im::Reporter reporter = im::Reporter::Source;
  stats::Counter inert;  // requests seen while Istio telemetry is off
};

// While telemetry is off (im::enabled()), Istio's filters are the inert stand-ins they were: they count
// requests in http.<stat_prefix>.inert.<kind>.requests_total and touch nothing. Said once per kind (configs
// are translated again on every xDS update; the switch may be read only after the bootstrap is).
stats::Counter inertCounter(HttpFilterContext& ctx, const std::string& kind) {
  static std::mutex mu;
  static auto* said = new std::set<std::string>;
  {
    std::lock_guard<std::mutex> lock(mu);
    if (said->insert(kind).second) {
      LOG_INFO("HTTP filter %s (Istio's telemetry) is inert in Strait unless the node metadata has "
               "STRAIT_ISTIO_METRICS: \"true\"; inert, it counts requests in http.<stat_prefix>.inert.%s.requests_total",
               ctx.filter_name.c_str(), kind.c_str());
    }
  }
  return ctx.store.counter(absl::StrCat("http.", ctx.stat_prefix, ".inert.", kind, ".requests_total"));
}

// What a connection contributes to a stream's labels, resolved once per connection on a worker (the
// streams of a connection follow each other on its worker): a small direct-mapped table by connection
// id, so a keep-alive or HTTP/2 connection's requests hash no strings for their principals and reuse
// the destination service while the cluster and authority stay the same.
struct ConnFacts {
  uint64_t conn_id = 0;  // 0: empty
  uint64_t generation = 0;
  im::Security security = im::Security::Unknown;
  uint32_t src_principal = im::kUnknown, dst_principal = im::kUnknown;
  uint32_t principal_peer = im::kUnknown;  // the downstream peer known only by its SPIFFE namespace
  const void* service_cluster = nullptr;
  std::string service_key;  // the cluster's name, or the authority it came from
  uint32_t service = im::kUnknown;
};
constexpr size_t kConnFacts = 64;
thread_local ConnFacts tl_conn[kConnFacts];

std::string_view firstOf(const std::vector<std::string>& v) { return v.empty() ? std::string_view() : v.front(); }

class StatsFilter;

class StatsEncoderHalf : public StreamEncoderFilter, public common::Pooled<StatsEncoderHalf> {
 public:
  explicit StatsEncoderHalf(int16_t& grpc_status) : grpc_status_(grpc_status) {}
  void setEncoderFilterCallbacks(EncoderFilterCallbacks&) override {}
  FilterHeadersStatus encodeHeaders(ResponseHeaders& headers, bool) override {
    read(headers);  // a trailers-only gRPC response carries grpc-status in its headers
    return FilterHeadersStatus::Continue;
  }
  FilterDataStatus encodeData(common::Buffer&, bool) override { return FilterDataStatus::Continue; }
  FilterTrailersStatus encodeTrailers(TrailerMap& trailers) override {
    read(trailers);
    return FilterTrailersStatus::Continue;
  }
  void onDestroy() override {}

 private:
  void read(const HeaderMap& h) {
    const std::string* v = h.get("grpc-status");
    if (v == nullptr) return;
    int status = 0;
    auto [p, ec] = std::from_chars(v->data(), v->data() + v->size(), status);
    if (ec == std::errc() && p == v->data() + v->size() && status >= 0 && status < 1000) {
      grpc_status_ = static_cast<int16_t>(status);
    }
  }
  int16_t& grpc_status_;
};

class StatsFilter : public StreamDecoderFilter, public common::Pooled<StatsFilter> {
 public:
  explicit StatsFilter(const StatsConfig& config) : config_(config) {}
  void setDecoderFilterCallbacks(DecoderFilterCallbacks& cb) override { cb_ = &cb; }
  FilterHeadersStatus decodeHeaders(RequestHeaders& headers, bool) override {
    if (!im::enabled()) {
      stats::inc(config_.inert);
      return FilterHeadersStatus::Continue;
    }
    saw_request_ = true;
    const std::string* ct = headers.get("content-type");
    grpc_ = ct != nullptr && ct->starts_with("application/grpc");
    return FilterHeadersStatus::Continue;
  }
  FilterDataStatus decodeData(common::Buffer&, bool) override { return FilterDataStatus::Continue; }
  FilterTrailersStatus decodeTrailers(TrailerMap&) override { return FilterTrailersStatus::Continue; }
  void onDestroy() override {
    if (!saw_request_ || recorded_) return;
    recorded_ = true;
    record();
  }
  int16_t& grpcStatus() { return grpc_status_; }

 private:
  ConnFacts& facts() {
    const ::strait::network::Connection& conn = cb_->connection();
    ConnFacts& f = tl_conn[conn.id() % kConnFacts];
    const uint64_t gen = im::generation();  // ids made before a configure() are stale
    if (f.conn_id == conn.id() + 1 && f.generation == gen) return f;
    f = ConnFacts{};
    f.conn_id = conn.id() + 1;
    f.generation = gen;
    if (config_.reporter == im::Reporter::Destination) {
      // Inbound: the downstream is the source; our own certificate names the destination.
      const ::strait::network::SslInfo* ssl = conn.ssl();
      if (ssl == nullptr) {
        f.security = im::Security::None;
      } else {
        f.security = ssl->peerCertificateValidated() ? im::Security::MutualTls : im::Security::None;
        const std::string_view peer = firstOf(ssl->uriSanPeerCertificate());
        f.src_principal = im::internCached(peer);
        f.dst_principal = im::internCached(firstOf(ssl->uriSanLocalCertificate()));
        f.principal_peer = im::peerForNamespaceCached(im::spiffeNamespace(peer));
      }
    }
    return f;
  }

  uint32_t service(ConnFacts& f) {
    const StreamInfo& info = cb_->streamInfo();
    const config::Cluster* cluster = info.cluster;
    std::string_view host;
    if (cluster != nullptr) host = im::istioClusterHost(cluster->name);
    std::string_view key;
    if (!host.empty()) {
      key = cluster->name;
    } else {
      // Not an Istio cluster name (or an inbound one, which names no service): the request's host, as
      // Istio's host header fallback does.
      host = hostOf(cb_->requestHeaders().authority);
      key = host;
      cluster = nullptr;
    }
    if (f.service_cluster == cluster && f.service_key == key) return f.service;
    f.service_cluster = cluster;
    f.service_key.assign(key);
    f.service = im::serviceCached(host);
    return f.service;
  }

  void record() {
    const StreamInfo& info = cb_->streamInfo();
    ConnFacts& f = facts();
    im::SeriesKey k;
    k.reporter = config_.reporter;
    k.protocol = grpc_ ? im::Protocol::Grpc : im::Protocol::Http;
    k.security = f.security;
    k.response_code = static_cast<uint16_t>(info.response_code);
    k.grpc_status = grpc_ ? grpc_status_ : -1;
    k.flags = info.response_flags;
    k.src_principal = f.src_principal;
    k.dst_principal = f.dst_principal;
    if (config_.reporter == im::Reporter::Destination) {
      k.src_peer = info.istio_peer != im::kUnknown ? info.istio_peer : f.principal_peer;
      k.dst_peer = im::localPeer();
    } else {
      k.src_peer = im::localPeer();
      k.dst_peer = info.istio_peer;
      k.dst_principal = info.upstream_principal;  // the router's upstream connection (TLS peer), if any
    }
    k.service = service(f);
    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - info.start);
    im::recordHttp(k, static_cast<uint64_t>(us.count()), info.bytes_received, info.bytes_sent);
  }

  const StatsConfig& config_;
  DecoderFilterCallbacks* cb_ = nullptr;
  bool saw_request_ = false;
  bool recorded_ = false;
  bool grpc_ = false;
  int16_t grpc_status_ = -1;
};

void StatsConfig::createFilters(FilterChainBuilder& builder) const {
  auto f = std::make_unique<StatsFilter>(*this);
  int16_t& grpc = f->grpcStatus();
  builder.addDecoderFilter(std::move(f));
  builder.addEncoderFilter(std::make_unique<StatsEncoderHalf>(grpc));
}

HttpFilterFactorySharedPtr makeStats(im::Reporter reporter, stats::Counter inert) {
  auto cfg = std::make_shared<StatsConfig>();
  cfg->reporter = reporter;
  cfg->inert = inert;
  return cfg;
}

absl::StatusOr<HttpFilterFactorySharedPtr> createStats(const google::protobuf::Any& any, const std::string& path,
                                                       HttpFilterContext& ctx) {
  // stats.PluginConfig's settings (dimensions, definitions, tcp_reporting_duration) are not applied:
  // the standard metrics and labels are fixed here. A TypedStruct must at least decode.
  if (config::isTypedStruct(any) && !config::readTypedStruct(any)) {
    return absl::InvalidArgumentError(path + ".value: cannot decode the TypedStruct");
  }
  return makeStats(inboundPrefix(ctx.stat_prefix) ? im::Reporter::Destination : im::Reporter::Source,
                   inertCounter(ctx, "istio_stats"));
}

// ---- istio.metadata_exchange ----------------------------------------------------------------------

struct MxConfig : HttpFilterFactory {
  void createFilters(FilterChainBuilder& builder) const override;
  bool discover_request = false, propagate_request = false;
  bool discover_response = false, propagate_response = false;
  stats::Counter inert;
};

void stripPeer(HeaderMap& h) {
  h.remove(kPeerMetadata);
  h.remove(kPeerMetadataId);
}
void addOwn(HeaderMap& h) {
  const std::string& md = im::localPeerMetadataHeader();
  if (md.empty()) return;
  h.set(kPeerMetadata, md);
  if (!im::localPeerIdHeader().empty()) h.set(kPeerMetadataId, im::localPeerIdHeader());
}
uint32_t discover(HeaderMap& h) {
  const std::string* v = h.get(kPeerMetadata);
  const uint32_t peer = v != nullptr ? im::peerFromHeaderCached(*v) : im::kUnknown;
  stripPeer(h);
  return peer;
}

class MxFilter : public StreamDecoderFilter, public common::Pooled<MxFilter> {
 public:
  explicit MxFilter(const MxConfig& config) : config_(config) {}
  void setDecoderFilterCallbacks(DecoderFilterCallbacks& cb) override { cb_ = &cb; }
  FilterHeadersStatus decodeHeaders(RequestHeaders& headers, bool) override {
    if (!im::enabled()) {
      stats::inc(config_.inert);
      return FilterHeadersStatus::Continue;
    }
    active_ = true;
    if (config_.discover_request) {
      const uint32_t peer = discover(headers);
      if (peer != im::kUnknown) cb_->streamInfo().istio_peer = peer;
    }
    if (config_.propagate_request) addOwn(headers);
    return FilterHeadersStatus::Continue;
  }
  FilterDataStatus decodeData(common::Buffer&, bool) override { return FilterDataStatus::Continue; }
  FilterTrailersStatus decodeTrailers(TrailerMap&) override { return FilterTrailersStatus::Continue; }
  void onDestroy() override {}

  void onResponseHeaders(ResponseHeaders& headers) {
    if (!active_) return;
    if (config_.discover_response) {
      const uint32_t peer = discover(headers);
      if (peer != im::kUnknown) cb_->streamInfo().istio_peer = peer;
    }
    if (config_.propagate_response) addOwn(headers);
  }

 private:
  const MxConfig& config_;
  DecoderFilterCallbacks* cb_ = nullptr;
  bool active_ = false;
};

void MxConfig::createFilters(FilterChainBuilder& builder) const {
  addWithResponseHeadersHalf(builder, std::make_unique<MxFilter>(*this));
}

std::shared_ptr<MxConfig> mxByDirection(bool inbound, std::shared_ptr<MxConfig> cfg) {
  cfg->discover_request = cfg->propagate_response = inbound;
  cfg->discover_response = cfg->propagate_request = !inbound;
  return cfg;
}

bool anyIstioHeaders(const google::protobuf::RepeatedPtrField<PeerMetadataConfig::DiscoveryMethod>& methods) {
  for (const auto& m : methods) {
    if (m.has_istio_headers()) return true;
  }
  return false;
}
bool anyIstioHeaders(const google::protobuf::RepeatedPtrField<PeerMetadataConfig::PropagationMethod>& methods) {
  for (const auto& m : methods) {
    if (m.has_istio_headers()) return true;
  }
  return false;
}

absl::StatusOr<HttpFilterFactorySharedPtr> createMx(const google::protobuf::Any& any, const std::string& path,
                                                    HttpFilterContext& ctx) {
  PeerMetadataConfig proto;
  if (auto ts = config::readTypedStruct(any)) {
    std::string json;
    if (!google::protobuf::util::MessageToJsonString(ts->value, &json).ok() ||
        !google::protobuf::util::JsonStringToMessage(json, &proto).ok()) {
      return absl::InvalidArgumentError(path + ".value: not an io.istio.http.peer_metadata.Config");
    }
  } else if (config::isTypedStruct(any) || !any.UnpackTo(&proto)) {
    return absl::InvalidArgumentError(path + ": cannot decode io.istio.http.peer_metadata.Config");
  }
  auto cfg = std::make_shared<MxConfig>();
  cfg->inert = inertCounter(ctx, "peer_metadata");
  cfg->discover_request = anyIstioHeaders(proto.downstream_discovery());
  cfg->discover_response = anyIstioHeaders(proto.upstream_discovery());
  cfg->propagate_response = anyIstioHeaders(proto.downstream_propagation());
  cfg->propagate_request = anyIstioHeaders(proto.upstream_propagation());
  if (!cfg->discover_request && !cfg->discover_response && !cfg->propagate_request && !cfg->propagate_response) {
    return HttpFilterFactorySharedPtr(mxByDirection(inboundPrefix(ctx.stat_prefix), cfg));
  }
  return HttpFilterFactorySharedPtr(cfg);
}

}  // namespace

absl::StatusOr<HttpFilterFactorySharedPtr> createIstioWasmTelemetry(const std::string& plugin,
                                                                     const std::string& inert_kind,
                                                                     HttpFilterContext& ctx) {
  const bool inbound = inboundPrefix(ctx.stat_prefix);
  if (plugin == "metadata_exchange") {
    auto cfg = std::make_shared<MxConfig>();
    cfg->inert = inertCounter(ctx, inert_kind);
    return HttpFilterFactorySharedPtr(mxByDirection(inbound, cfg));
  }
  im::Reporter r = inbound ? im::Reporter::Destination : im::Reporter::Source;
  if (plugin == "stats_inbound") r = im::Reporter::Destination;
  if (plugin == "stats_outbound") r = im::Reporter::Source;
  return makeStats(r, inertCounter(ctx, inert_kind));
}

void registerIstioTelemetryHttpFilters() {
  registerHttpFilter("type.googleapis.com/stats.PluginConfig", createStats, false);
  registerHttpFilter("type.googleapis.com/io.istio.http.peer_metadata.Config", createMx, false);
}

}  // namespace strait::filters::http
