#include "filters/network/istio_tcp_stats.h"

#include "proxy/network/connection.h"
#include "proxy/network/transport_socket.h"

namespace strait::filters::network {

namespace im = stats::istio;

namespace {
std::string_view firstOf(const std::vector<std::string>& v) { return v.empty() ? std::string_view() : v.front(); }
}  // namespace

void IstioTcpStats::begin(const strait::network::Connection& downstream, bool inbound_listener) {
  active_ = im::takeTcpStats(downstream.id()) && im::enabled();
  inbound_ = inbound_listener;
}

void IstioTcpStats::labels(const strait::network::Connection& downstream, const strait::network::Connection* upstream,
                           std::string_view cluster) {
  const bool inbound = inbound_ || cluster.starts_with("inbound|");
  key_ = im::SeriesKey{};
  key_.protocol = im::Protocol::Tcp;
  if (inbound) {
    key_.reporter = im::Reporter::Destination;
    key_.dst_peer = im::localPeer();
    const strait::network::SslInfo* ssl = downstream.ssl();
    key_.security = ssl != nullptr && ssl->peerCertificateValidated() ? im::Security::MutualTls : im::Security::None;
    if (ssl != nullptr) {
      const std::string_view peer = firstOf(ssl->uriSanPeerCertificate());
      key_.src_principal = im::internCached(peer);
      key_.dst_principal = im::internCached(firstOf(ssl->uriSanLocalCertificate()));
      key_.src_peer = im::peerForNamespaceCached(im::spiffeNamespace(peer));
    }
    if (downstream_peer_ != im::kUnknown) key_.src_peer = downstream_peer_;
  } else {
    key_.reporter = im::Reporter::Source;
    key_.src_peer = im::localPeer();
    const strait::network::SslInfo* ssl = upstream != nullptr ? upstream->ssl() : nullptr;
    if (ssl != nullptr) {
      const std::string_view peer = firstOf(ssl->uriSanPeerCertificate());
      key_.src_principal = im::internCached(firstOf(ssl->uriSanLocalCertificate()));
      key_.dst_principal = im::internCached(peer);
      key_.dst_peer = im::peerForNamespaceCached(im::spiffeNamespace(peer));
    }
    if (upstream_peer_ != im::kUnknown) key_.dst_peer = upstream_peer_;
  }
  key_.service = im::serviceCached(im::istioClusterHost(cluster));
}

void IstioTcpStats::opened(const strait::network::Connection& downstream, const strait::network::Connection* upstream,
                           std::string_view cluster) {
  if (!active_ || opened_) return;
  labels(downstream, upstream, cluster);
  opened_ = true;
  im::recordTcpOpen(key_);
}

void IstioTcpStats::closed(const strait::network::Connection& downstream, std::string_view cluster,
                           uint32_t response_flags, uint64_t sent, uint64_t received) {
  if (!active_) return;
  active_ = false;
  if (!opened_) {
    labels(downstream, nullptr, cluster);
    key_.flags = response_flags;
    im::recordTcpOpen(key_);
  }
  key_.flags = response_flags;
  im::recordTcpClose(key_, sent, received);
}

}  // namespace strait::filters::network
