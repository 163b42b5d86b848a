#pragma once

// Internal to the route table, shared by its two halves: route_config.cc compiles RouteConfiguration
// protos into these structures and route_table.cc reads them for every request. Nothing else includes it.

#include <cstddef>
#include <memory>
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

  bool matches(const RequestHeaders& h, std::string_view full_path, std::string_view path_only,
               std::string_view query) const;
};

}  // namespace route_internal

struct RouteTable::VirtualHost {
  std::string name;
  envoy::config::route::v3::VirtualHost::TlsRequirementType require_tls = envoy::config::route::v3::VirtualHost::NONE;
  std::vector<route_internal::CompiledRoute> routes;
  RouteEntry https_redirect;  // returned when require_tls asks for one
};

}  // namespace strait::http
