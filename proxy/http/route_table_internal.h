#pragma once

// Internal to the route table, shared by its halves: route_config.cc compiles RouteConfiguration
// protos into these structures, route_table.cc reads them for every request and route_explain.cc for
// the admin's /explain. Nothing else includes it.

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "envoy/config/route/v3/route.pb.h"
#include "proxy/http/matchers.h"
#include "proxy/http/route_table.h"

namespace strait::http {

namespace route_internal {

// Position of the ':' before a port, or npos ("[::1]:80" -> 5, "a:80" -> 1, "::1" -> npos).
size_t portColon(std::string_view host);

// The value of the first parameter called `name` in `query` (without the '?'), as sent (not
// percent-decoded); empty for a name without '='. nullopt when there is none.
inline std::optional<std::string_view> firstQueryValue(std::string_view query, std::string_view name) {
  while (!query.empty()) {
    const size_t amp = query.find('&');
    const std::string_view param = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    const size_t eq = param.find('=');
    if (param.substr(0, eq) != name) continue;
    return eq == std::string_view::npos ? std::string_view() : param.substr(eq + 1);
  }
  return std::nullopt;
}

struct QueryMatch {
  std::string name;
  bool present_only = true;
  StringMatch string_match;

  bool match(std::string_view query) const;  // `query` without the '?'
};

struct CompiledRoute {
  RouteEntry::PathMatch path_kind = RouteEntry::PathMatch::Prefix;
  std::string path;  // prefix / path / path_separated_prefix; lower case when !case_sensitive
  bool case_sensitive = true;
  std::shared_ptr<const re2::RE2> regex;
  std::vector<HeaderMatch> headers;
  std::vector<QueryMatch> query_parameters;
  bool grpc = false;
  RouteEntry entry;

  // The first part of the match a request fails, in the order they are tried: the path, grpc, then
  // headers[index], then query_parameters[index]. Kind::None: the route matches.
  struct Mismatch {
    enum class Kind { None, Path, Grpc, Header, QueryParameter };
    Kind kind = Kind::None;
    size_t index = 0;
  };
  Mismatch firstMismatch(const RequestHeaders& h, std::string_view full_path, std::string_view path_only,
                         std::string_view query) const;
  bool matches(const RequestHeaders& h, std::string_view full_path, std::string_view path_only,
               std::string_view query) const {
    return firstMismatch(h, full_path, path_only, query).kind == Mismatch::Kind::None;
  }
};

// What route() matches against: the whole :path, the path without query and fragment, and the query
// (without '?' and fragment).
struct PathParts {
  std::string_view full;
  std::string_view path_only;
  std::string_view query;
  explicit PathParts(std::string_view path) : full(path) {
    const size_t qpos = full.find_first_of("?#");
    path_only = full.substr(0, qpos);
    if (qpos != std::string_view::npos && full[qpos] == '?') {
      query = full.substr(qpos + 1);
      query = query.substr(0, query.find('#'));
    }
  }
};

}  // namespace route_internal

struct RouteTable::VirtualHost {
  std::string name;
  envoy::config::route::v3::VirtualHost::TlsRequirementType require_tls = envoy::config::route::v3::VirtualHost::NONE;
  std::vector<route_internal::CompiledRoute> routes;
  // Returned when require_tls asks for one; null when require_tls is NONE (most virtual hosts: a whole
  // RouteEntry in each was about 930 bytes per virtual host for nothing).
  std::unique_ptr<RouteEntry> https_redirect;
};

}  // namespace strait::http
