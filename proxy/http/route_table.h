#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "proxy/config/snapshot.h"
#include "proxy/http/header_map.h"
#include "proxy/http/matchers.h"

namespace envoy::config::route::v3 {
class RouteConfiguration;
class Route;
class VirtualHost;
}  // namespace envoy::config::route::v3

namespace google::protobuf {
class Any;
}

namespace re2 {
class RE2;
}

namespace strait::http {

struct RouteExplanation;  // route_explain.h

// An HTTP filter's configuration for some routes (typed_per_filter_config of a route or virtual host),
// parsed once when the route table is built. Each filter downcasts to its own type.
class RouteSpecificFilterConfig {
 public:
  virtual ~RouteSpecificFilterConfig() = default;
};
using RouteSpecificFilterConfigConstSharedPtr = std::shared_ptr<const RouteSpecificFilterConfig>;

// Parses one typed_per_filter_config value; errors name `path` (the map entry) or a field below it.
using PerFilterConfigParser = std::function<absl::StatusOr<RouteSpecificFilterConfigConstSharedPtr>(
    const google::protobuf::Any& config, const std::string& path)>;
// Chosen by the value's type URL. Filters register at start, before any configuration is loaded; values
// of types no filter registered are accepted and ignored.
void registerPerFilterConfigParser(const std::string& type_url, PerFilterConfigParser parser);
// VirtualHost.cors and RouteAction.cors (Envoy's older place for a CORS policy) are parsed by the parser
// registered for type.googleapis.com/envoy.config.route.v3.CorsPolicy (the CORS filter's) and kept in
// per_filter_configs under these names, which no HTTP filter can have.
inline constexpr std::string_view kRouteCorsPolicyKey = "@route.cors";
inline constexpr std::string_view kVirtualHostCorsPolicyKey = "@virtual_host.cors";

// Header additions and removals as an ordered list of operations. Envoy applies each level's removals,
// then its additions, level by level from the most specific (weighted cluster, route, virtual host, route
// configuration); the list is that sequence flattened at config time, so a later level can remove or
// overwrite what an earlier one added exactly as in Envoy. Names are lower case; values are literals
// ("%%" in the config is a literal '%'); additions with an empty value are dropped unless
// keep_empty_value, as Envoy does.
struct HeaderMutation {
  struct Op {
    enum class Action {
      Remove,             // *_headers_to_remove
      Append,             // APPEND_IF_EXISTS_OR_ADD (default), or append: true
      AddIfAbsent,        // ADD_IF_ABSENT
      Overwrite,          // OVERWRITE_IF_EXISTS_OR_ADD, or append: false
      OverwriteIfExists,  // OVERWRITE_IF_EXISTS
    };
    Action action = Action::Append;
    std::string name;
    std::string value;
  };
  std::vector<Op> ops;

  bool empty() const { return ops.empty(); }
  void applyTo(HeaderMap& headers) const;
};

struct RetryPolicy {
  bool enabled = false;      // a policy exists (on the route, else on the virtual host)
  uint32_t num_retries = 1;  // Envoy's default when a policy exists
  // retry_on conditions.
  bool on_5xx = false;
  bool on_gateway_error = false;  // 502, 503, 504
  bool on_reset = false;
  bool on_reset_before_request = false;
  bool on_connect_failure = false;
  bool on_retriable_4xx = false;  // 409
  bool on_refused_stream = false;
  bool on_retriable_status_codes = false;
  bool on_envoy_ratelimited = false;  // x-envoy-ratelimited in the response
  bool on_retriable_headers = false;  // a response matching retriable_headers
  // gRPC status in the response headers/trailers.
  bool on_grpc_cancelled = false;
  bool on_grpc_deadline_exceeded = false;
  bool on_grpc_internal = false;
  bool on_grpc_resource_exhausted = false;
  bool on_grpc_unavailable = false;
  std::vector<uint32_t> retriable_status_codes;
  // retriable_headers: response matchers for "retriable-headers" (the router adds presence matchers for
  // the names in x-envoy-retriable-header-names). retriable_request_headers: when set, a request that
  // matches none of them is not retried at all. Shared, so a per-request copy of the policy is cheap.
  std::shared_ptr<const std::vector<HeaderMatch>> retriable_headers;
  std::shared_ptr<const std::vector<HeaderMatch>> retriable_request_headers;
  uint64_t per_try_timeout_ms = 0;       // 0: none (the route timeout still applies)
  uint64_t per_try_idle_timeout_ms = 0;  // 0: none
  uint64_t base_interval_ms = 25;
  uint64_t max_interval_ms = 250;  // 10 x base_interval unless set
  // retry_host_predicate envoy.retry_host_predicates.previous_hosts: a retry avoids the hosts earlier
  // attempts used, re-picking up to host_selection_retry_max_attempts times.
  bool avoid_previous_hosts = false;
  uint32_t host_selection_retry_max_attempts = 1;
  bool anyGrpc() const {
    return on_grpc_cancelled || on_grpc_deadline_exceeded || on_grpc_internal || on_grpc_resource_exhausted ||
           on_grpc_unavailable;
  }
};

// Adds the conditions of a retry_on list ("5xx,reset,...") to `out`. false: a token is unknown (named
// in `unknown`); the known ones are still added (the x-envoy-retry-on header ignores unknown ones).
bool parseRetryOn(std::string_view on, RetryPolicy& out, std::string* unknown = nullptr);

// One route hash_policy entry: what a consistent-hash balancer (RING_HASH, MAGLEV) hashes.
struct HashPolicy {
  enum class Kind { Header, Cookie, SourceIp, QueryParameter };
  Kind kind = Kind::Header;
  std::string name;  // header name (lower case), cookie name, or query parameter
  uint64_t cookie_ttl_ms = 0;  // Cookie: when set (> 0 or explicitly 0), a missing cookie is generated
  bool cookie_generate = false;
  std::string cookie_path;
  bool terminal = false;
};

struct RedirectAction {
  enum class PathKind { Keep, Path, PrefixRewrite, RegexRewrite };
  std::string scheme;  // empty: the request's; "https" for https_redirect; else scheme_redirect (lower case)
  std::string host;    // empty: the request's
  uint32_t port = 0;   // 0: keep
  PathKind path_kind = PathKind::Keep;
  std::string path;            // path_redirect (may carry its own query, which then replaces the request's)
  std::string prefix_rewrite;  // replaces the matched prefix (the whole path for path / regex routes)
  std::shared_ptr<const re2::RE2> regex_rewrite;
  std::string regex_substitution;
  uint32_t response_code = 301;  // 301, 302, 303, 307 or 308
  bool strip_query = false;
};

// A RouteAction's path and authority rewrites. Most routes have none, so a route holds them out of line
// (RouteEntry::rewrites, null when there are none).
struct RouteRewrites {
  std::string prefix_rewrite;
  std::shared_ptr<const re2::RE2> regex_rewrite;  // applied to the path without the query, every match
  std::string regex_rewrite_substitution;
  std::string host_rewrite_literal;
  std::string host_rewrite_header;  // lower case; the authority becomes that header's value when present
};

struct WeightedTarget {
  std::string name;
  // The cluster's clusterIds() index: the worker resolves it to the current version per request (null
  // when the config has no such cluster: 503 cluster_not_found).
  uint32_t cluster_index = UINT32_MAX;
  uint32_t weight = 0;
  // The complete chains for requests sent to this target: the cluster weight's own mutations first,
  // then the route's, virtual host's and route configuration's (RouteEntry::request_headers). Use these
  // instead of the entry's when the route is weighted.
  HeaderMutation request_headers;
  HeaderMutation response_headers;
};

// One route: what the router does with a request that matched it. Immutable; owned by the RouteTable.
struct RouteEntry {
  enum class Kind { Cluster, WeightedClusters, ClusterHeader, DirectResponse, Redirect };
  enum class PathMatch { Prefix, Path, Regex, PathSeparatedPrefix };

  std::string name;  // Route.name (may be empty)
  Kind kind = Kind::Cluster;

  // Kind::Cluster. The name is checked at config time (with validate_clusters); the version in force is
  // looked up by index per request, and a cluster the config lacks gets cluster_not_found_status.
  std::string cluster_name;
  uint32_t cluster_index = UINT32_MAX;  // see WeightedTarget::cluster_index
  // Kind::WeightedClusters.
  std::vector<WeightedTarget> weighted;
  uint64_t total_weight = 0;
  // Kind::ClusterHeader: the cluster is named by this request header (lower case); the router looks it up.
  std::string cluster_header;
  uint32_t cluster_not_found_status = 503;  // 503, 404 or 500 (cluster_not_found_response_code)

  // How the route matched the path, for rewrites: `matched_prefix` is the prefix (Prefix,
  // PathSeparatedPrefix) or the path (Path); for Path and Regex routes the whole path (without the query)
  // is what a prefix_rewrite replaces, as in Envoy.
  PathMatch path_match = PathMatch::Prefix;
  std::string matched_prefix;
  std::unique_ptr<const RouteRewrites> rewrites;  // null: the route rewrites neither path nor authority
  bool auto_host_rewrite = false;  // the router sets the authority to the chosen host's name

  uint64_t timeout_ms = 15000;  // Envoy's default route timeout; 0: none
  uint64_t idle_timeout_ms = 0;
  std::optional<uint64_t> max_stream_duration_ms;
  std::optional<uint64_t> grpc_timeout_header_max_ms;  // set: honour grpc-timeout, capped (0: no cap)
  RetryPolicy retry;  // the route's, else the virtual host's
  // RouteAction.priority: which of the cluster's circuit-breaker threshold sets the requests count against.
  upstream::ResourcePriority priority = upstream::ResourcePriority::Default;
  std::vector<HashPolicy> hash_policies;
  bool include_attempt_count = false;              // x-envoy-attempt-count on the upstream request
  bool include_attempt_count_in_response = false;  // ... and on the response

  // Kind::DirectResponse.
  uint32_t direct_status = 0;
  std::string direct_body;
  // Kind::Redirect (also the synthesized https redirect of a virtual host with require_tls); null for
  // every other kind.
  std::unique_ptr<const RedirectAction> redirect;

  // Merged at config time, most specific level first: route, then virtual host, then route configuration.
  // The router also applies response_headers to direct responses and redirects, as Envoy does.
  HeaderMutation request_headers;
  HeaderMutation response_headers;

  bool websocket_upgrade = false;  // the HCM default, overridden by the route's upgrade_configs
  bool websocket_upgrade_set = false;  // the route said so itself (an RDS table does not know the HCM)

  // The route's proto (typed_per_filter_config, metadata, hash_policy for the load balancer) and its
  // virtual host's; they live as long as the table. Null for a synthesized https redirect's `proto`.
  // What is read from them rarely (names, the decorator) is not copied into the entry.
  const envoy::config::route::v3::Route* proto = nullptr;
  const envoy::config::route::v3::VirtualHost* virtual_host_proto = nullptr;
  // The virtual host it belongs to ("" without a virtual_host_proto).
  const std::string& virtualHostName() const;
  // Route.decorator.operation: the span name when tracing (may be empty).
  const std::string& decoratorOperation() const;

  // Parsed typed_per_filter_config by HTTP filter name (the HttpFilter's `name`): the route's entries,
  // then its virtual host's for names the route does not have (Envoy's most specific wins).
  std::vector<std::pair<std::string, RouteSpecificFilterConfigConstSharedPtr>> per_filter_configs;
  // The most specific configuration for the filter of that name, or nullptr. A scan of a short list.
  const RouteSpecificFilterConfig* perFilterConfig(std::string_view filter_name) const {
    for (const auto& [name, config] : per_filter_configs) {
      if (name == filter_name) return config.get();
    }
    return nullptr;
  }

  // Applies prefix/regex rewrite (path; the query is kept) and host_rewrite_literal/_header (authority).
  // When the path changes and `insert_original_path`, x-envoy-original-path gets the old one (Envoy does
  // unless the router's suppress_envoy_headers).
  void rewrite(RequestHeaders& headers, bool insert_original_path = true) const;
  // Picks a weighted cluster: `random % total_weight` falls in one target's share (Envoy's rule), so the
  // choice is deterministic for a given number. Null unless Kind::WeightedClusters.
  const WeightedTarget* pickWeighted(uint64_t random) const;
  // Kind::Redirect: the Location for this request (scheme://host[:port]/path[?query]).
  std::string redirectLocation(const RequestHeaders& headers) const;
};

// The immutable route table the HTTP router uses, translated from envoy.config.route.v3.RouteConfiguration.
// Built once per config (static route_config or an RDS resource); workers share it by shared_ptr.
class RouteTable {
 public:
  struct Options {
    // For a route config inline in the bootstrap; xDS passes false. The proto's own validate_clusters,
    // when set, wins.
    bool validate_clusters = true;
    bool hcm_websocket_upgrade = false;  // the HCM's upgrade_configs allow websocket
  };

  // Errors name the field: "<path>.virtual_hosts[1].routes[0].match.safe_regex.regex: invalid regex: ..."
  // The table keeps the proto it was made from (/config_dump and the routes' proto pointers read it).
  // This form shares `proto` (an RDS resource, which the xDS sources hold anyway: no second copy, which
  // was about 1.3 KB per virtual host); the one below copies it (a route_config inline in an HCM).
  static absl::StatusOr<std::shared_ptr<const RouteTable>> create(
      std::shared_ptr<const envoy::config::route::v3::RouteConfiguration> proto, const std::string& path,
      const config::ClusterMap& clusters, const Options& options);
  static absl::StatusOr<std::shared_ptr<const RouteTable>> create(
      const envoy::config::route::v3::RouteConfiguration& proto, const std::string& path,
      const config::ClusterMap& clusters, const Options& options);

  // The route for a request, or nullptr (the router answers 404, response flag NR). The virtual host is
  // chosen by :authority, ignoring case; the port is dropped for matching unless some domain of the
  // table names a port ("host:8080", "host:*"). Envoy's order: exact domain, then suffix wildcards
  // ("*.foo", "*-bar.foo") longest first, then prefix wildcards ("foo.*") longest first, then "*". A
  // wildcard matches at least one character. In a virtual host with require_tls, a request that is not
  // https (x-forwarded-proto, else :scheme) gets a 301 https redirect entry (EXTERNAL_ONLY: unless
  // x-envoy-internal is "true"). Then the first route whose match fits wins:
  //  - prefix: on the whole :path (Envoy's rule); path and safe_regex (full match): on the path without
  //    query and fragment; path_separated_prefix: the prefix then '/' or the end of the path;
  //    case_sensitive (default true) applies to prefix/path/path_separated_prefix, not to regexes;
  //  - headers: names ignore case; ":method", ":path", ":authority" (also "host"), ":scheme" and
  //    ":protocol" read the pseudo-header fields; repeated headers are joined with "," (Envoy); no
  //    specifier means "present"; a missing header fails every matcher except present_match: false (or an
  //    inverted present_match: true) unless treat_missing_header_as_empty;
  //  - query_parameters: the first parameter of that name, value as sent (not percent-decoded); no '='
  //    gives an empty value;
  //  - grpc: content-type application/grpc, or application/grpc+... / application/grpc;...
  // Does not allocate (steady state) and never looks anything up by name.
  const RouteEntry* route(const RequestHeaders& headers) const;
  // The admin's /explain: route()'s answer for `headers` (it calls route()), with the virtual host it
  // came from and why each virtual host and route tried before was passed over (route_explain.cc).
  void explain(const RequestHeaders& headers, RouteExplanation& out) const;

  const std::string& name() const { return name_; }
  // RouteConfiguration.internal_only_headers (lower case): to drop from requests of external clients.
  const std::vector<std::string>& internalOnlyHeaders() const { return internal_only_headers_; }
  // Whether `name` (any case) is one of them. A header whose length no internal-only name has is ruled out
  // by one bit test (the mask is built with the table), so this is cheap to ask of every request header.
  bool isInternalOnlyHeader(std::string_view name) const {
    if ((internal_only_lengths_ & (uint64_t{1} << (name.size() < 63 ? name.size() : 63))) == 0) return false;
    for (const auto& n : internal_only_headers_) {
      if (headerNameEquals(n, name)) return true;
    }
    return false;
  }
  // The configuration as given, for /config_dump.
  const envoy::config::route::v3::RouteConfiguration& proto() const { return *proto_; }

  ~RouteTable();
  RouteTable(const RouteTable&) = delete;
  RouteTable& operator=(const RouteTable&) = delete;

  struct VirtualHost;  // defined in route_table_internal.h

 private:
  RouteTable();
  const VirtualHost* findVirtualHost(std::string_view authority) const;

  using DomainEntry = std::pair<std::string, const VirtualHost*>;  // lower case, sorted
  struct WildcardGroup {
    size_t length = 0;  // of every key in `entries`
    std::vector<DomainEntry> entries;
  };

  std::string name_;
  std::shared_ptr<const envoy::config::route::v3::RouteConfiguration> proto_;
  std::vector<std::unique_ptr<VirtualHost>> virtual_hosts_;
  std::vector<DomainEntry> exact_;
  std::vector<WildcardGroup> suffix_;  // "*.foo" stored as ".foo", longest first
  std::vector<WildcardGroup> prefix_;  // "foo.*" stored as "foo.", longest first
  const VirtualHost* default_ = nullptr;
  bool strip_port_ = true;
  std::vector<std::string> internal_only_headers_;
  uint64_t internal_only_lengths_ = 0;  // bit n: an internal-only name has n characters (bit 63: 63 or more)
};

using RouteTableConstSharedPtr = std::shared_ptr<const RouteTable>;

}  // namespace strait::http
