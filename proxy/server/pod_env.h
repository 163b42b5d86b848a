#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "proxy/network/address.h"

namespace strait::server {

// What a Kubernetes pod tells its sidecar through the environment (the injector writes it; Istio's
// names are accepted as aliases so pods injected for Istio work). Read once at start; anything
// malformed is refused there, naming the variable and the key.

// One application probe of STRAIT_KUBE_APP_PROBERS (Istio's KUBE_APP_PROBERS): a Kubernetes probe
// handler that Strait runs when the kubelet asks for `path` on a status port.
struct AppProbe {
  enum class Kind { Http, Tcp, Grpc };
  Kind kind = Kind::Http;
  network::Address address;  // 127.0.0.1:<port>, or the handler's host
  uint64_t timeout_ms = 1000;  // timeoutSeconds (Kubernetes' default: 1)
  // httpGet
  bool https = false;  // TLS without verification, as the kubelet does
  std::string http_path = "/";
  std::string host_header;  // a "Host" entry of httpHeaders (empty: <ip>:<port>)
  std::vector<std::pair<std::string, std::string>> headers;  // the other httpHeaders, in order
  // grpc
  std::string grpc_service;
};
using AppProbes = std::map<std::string, AppProbe>;  // by request path (/app-health/<container>/<kind>z)

// STRAIT_PROMETHEUS_SCRAPE (Istio's ISTIO_PROMETHEUS_ANNOTATIONS): where the application's own
// metrics are, to merge into the status port's /stats/prometheus.
struct PrometheusScrape {
  std::string path = "/metrics";
  uint16_t port = 80;
};

struct PodEnv {
  AppProbes probes;
  std::optional<PrometheusScrape> scrape;  // none: not asked for, or "scrape" is not "true"
  // STRAIT_META_* / STRAIT_METAJSON_* as one JSON object for node.metadata ("" when none is set).
  std::string node_metadata_json;
};

// `environ`: "NAME=value" entries (the process's environment). Errors name the variable (and key).
absl::StatusOr<PodEnv> readPodEnv(const std::vector<std::string_view>& environ);

// The pieces, for tests. `var`: the variable's name, for the messages.
absl::StatusOr<AppProbes> parseAppProbes(std::string_view json, const std::string& var);
absl::StatusOr<std::optional<PrometheusScrape>> parsePrometheusScrape(std::string_view json, const std::string& var);
// Node metadata: NAME=value entries whose name starts with STRAIT_META_ (a string), STRAIT_METAJSON_
// (a JSON object) or Istio's ISTIO_META_ / ISTIO_METAJSON_; the rest of the name is the key. A STRAIT_
// variable wins over the ISTIO_ one of the same key; for one prefix, METAJSON wins over META.
absl::StatusOr<std::string> nodeMetadataJson(const std::vector<std::string_view>& environ);

}  // namespace strait::server
