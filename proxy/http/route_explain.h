#pragma once

// The admin's /explain for route tables: which virtual host and route a request takes, and why each
// alternative tried before them was passed over. The choice itself is RouteTable::route()'s (the same
// functions run); this adds the reasons. Read-only, main thread, never on the request path.

#include <cstddef>
#include <string>
#include <vector>

#include "proxy/http/header_map.h"
#include "proxy/http/matchers.h"
#include "proxy/http/route_table.h"

namespace strait::http {

struct RouteExplanation {
  // An alternative passed over: a virtual host (index: its place in the configuration) or a route
  // (index: its place in its virtual host), what it matches, and the first thing about the request that
  // did not fit.
  struct Passed {
    size_t index = 0;
    std::string name;
    std::string match;
    std::string failed;
  };
  const RouteEntry* route = nullptr;  // what route() returns for the request (nullptr: 404)
  std::string host;                   // the authority as the domains were matched against it
  // The virtual host chosen; empty when none matched.
  std::string virtual_host;
  std::string virtual_host_why;
  std::vector<Passed> virtual_hosts_passed;
  // require_tls answered with a redirect to https instead of routing.
  bool https_redirect = false;
  // The route chosen (when `route` is one of the virtual host's routes).
  Passed chosen_route;
  std::vector<Passed> routes_passed;  // the routes tried before it (all of them when none matched)
  size_t routes_not_tried = 0;        // after the chosen one
};

// "exact \"canary\"", "prefix \"/a\" (ignoring case)", "regex \"^v[0-9]+$\"".
std::string describe(const StringMatch& m);
// "header x-env: exact \"canary\"", "header x-debug: present", "header :method: not exact \"GET\"".
std::string describe(const HeaderMatch& m);

}  // namespace strait::http
