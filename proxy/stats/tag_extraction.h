#pragma once

#include <memory>
#include <regex>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace re2 {
class RE2;
}

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

// The bootstrap's stats_config.stats_tags and use_all_default_tags (Envoy's TagSpecifier), applied when
// /stats/prometheus is rendered. Each `regex` specifier, in order, is searched in what is left of the
// name: its first capture group is cut out of the name, and the tag's value is its second group if it
// has one, else the first (Envoy's rule). A `fixed_value` specifier adds its tag to every stat. Then the
// built-in extraction above runs on the rest, unless use_all_default_tags is false, and never for a tag
// a specifier already gives (Envoy's "envoy.cluster_name" and Prometheus' "envoy_cluster_name" are the
// same tag). A specifier that names one of Envoy's tags with neither regex nor fixed value asks for
// that built-in extraction (so it runs for that tag even when use_all_default_tags is false).
struct TagRules {
  struct Specifier {
    std::string label;  // the tag name as a Prometheus label: "envoy.cluster_name" -> "envoy_cluster_name"
    std::shared_ptr<const re2::RE2> regex;  // null for a fixed value or a built-in
    // A regex RE2 cannot run (Istio's bootstrap has one with a look-ahead): ECMAScript, as Envoy runs
    // every tag regex. Only at scrape time, on short names.
    std::shared_ptr<const std::regex> ecma;
    std::string fixed_value;
    bool fixed = false;
  };
  std::vector<Specifier> specifiers;
  bool use_defaults = true;
  std::set<std::string, std::less<>> given;     // labels the specifiers produce (regex or fixed)
  std::set<std::string, std::less<>> builtins;  // built-in tags asked for by name
  // Whether the built-in extraction may produce `label`.
  bool builtinAllowed(std::string_view label) const {
    if (given.count(label) != 0) return false;
    return use_defaults || builtins.count(label) != 0;
  }
};
// `rules` null: the built-in extraction alone (as above). The returned tags' names point into `rules`
// (or are static), so `rules` must outlive the result.
TaggedName extractTags(std::string_view stat_name, const TagRules* rules, bool with_pattern);
// "envoy.cluster_name" -> "envoy_cluster_name": a tag name as Prometheus takes it.
std::string tagLabel(std::string_view tag_name);

}  // namespace strait::stats
