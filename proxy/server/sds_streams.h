#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "envoy/config/core/v3/base.pb.h"
#include "proxy/config/snapshot.h"
#include "proxy/stats/stats.h"
#include "xds/client/ads_client.h"

namespace strait::server {

// SDS on streams of their own, apart from ADS: one SecretDiscoveryService stream per cluster that a TLS
// context's sds_config names (Istio's "sds-grpc", a unix socket to its node agent). Each stream asks for
// exactly the secrets the live TLS contexts take from it; what arrives is checked and published to the
// secret registry (certs/), which rotates the contexts. A bad secret is NACKed and the old one stays.
class SdsStreams {
 public:
  SdsStreams(stats::Store& store, envoy::config::core::v3::Node node);
  ~SdsStreams();
  // Opens the streams the live contexts need (targets from `snapshot`'s clusters) and updates every
  // stream's names. Thread-safe (main thread at start, the xDS thread after each update).
  void refresh(const config::Snapshot& snapshot);
  void stop();

 private:
  class Stream;
  stats::Store& store_;
  envoy::config::core::v3::Node node_;
  std::mutex mu_;
  std::map<std::string, std::unique_ptr<Stream>> streams_;  // by cluster name
  bool stopped_ = false;
};

}  // namespace strait::server
