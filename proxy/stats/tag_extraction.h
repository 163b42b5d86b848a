#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace strait::stats {

// A stat name split as Envoy's default tag extractors split it for Prometheus: what is left of the name
// once the tag values are taken out ("cluster.upstream_rq") and the tags in the order they were found
// ({"envoy_response_code", "200"}, {"envoy_cluster_name", "backend"}). `pattern` is the name with each
// value replaced by its tag name in braces, for # HELP ("cluster.{envoy_cluster_name}.upstream_rq_total").
struct TaggedName {
  std::string name;
  std::vector<std::pair<const char*, std::string>> tags;
  std::string pattern;
};

// Envoy's defaults that apply to the stats Strait has: envoy_response_code (`*_rq_200`),
// envoy_response_code_class (`*_rq_2xx` -> `*_rq_xx`), envoy_ssl_cipher / _cipher_suite / _curve /
// _sigalg / _version, envoy_worker_id (`server.worker_0.`), envoy_cluster_name, envoy_listener_address
// (`listener.0.0.0.0_15001.`: the whole address with its port, or a stat_prefix; not `admin`),
// envoy_http_conn_manager_prefix (`http.<p>.`, `listener.<a>.http.<p>.`), envoy_tcp_prefix,
// envoy_rds_route_config, envoy_fault_downstream_cluster, envoy_http_user_agent, envoy_virtual_host,
// envoy_virtual_cluster, envoy_local_http_ratelimit_prefix, envoy_local_network_ratelimit_prefix.
// Where Envoy takes a single dot-free token (cluster names, HCM and tcp prefixes) Strait takes the
// whole name up to the stat's own tail (a leaf or a known sub-scope such as `circuit_breakers.`), so
// mesh names with dots ("outbound|80||a.ns.svc.cluster.local", "inbound_0.0.0.0_8080") stay whole, as
// Istio's own stats_tags make Envoy keep them.
// `with_pattern` false leaves `pattern` empty and skips its bookkeeping (the scrape needs it once per
// family, not per stat).
TaggedName extractTags(std::string_view stat_name, bool with_pattern = true);

}  // namespace strait::stats
