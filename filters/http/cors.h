#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "filters/http/percent.h"
#include "proxy/http/conn_manager.h"
#include "proxy/http/matchers.h"
#include "proxy/http/route_table.h"

namespace strait::filters::http {

// Registers the CORS filter (type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors) and the
// policies it reads from the routes: envoy.extensions.filters.http.cors.v3.CorsPolicy in a route's or
// virtual host's typed_per_filter_config under the filter's name (the route's wins), or else Envoy's
// older VirtualHost.cors / RouteAction.cors (envoy.config.route.v3.CorsPolicy; field by field, the
// route's value where it has one, else the virtual host's).
//
// A request with an Origin the policy allows: a preflight (OPTIONS with Access-Control-Request-Method)
// is answered here, 200 with access-control-allow-origin/-methods/-headers/-max-age/-credentials
// (and -private-network when asked and allowed); any other request goes on and its response gets
// access-control-allow-origin (and -allow-credentials, -expose-headers). An Origin the policy does not
// allow gets no CORS headers (a preflight goes upstream unless forward_not_matching_preflights is
// false, then it is answered 200 without them). Stats: http.<hcm stat_prefix>.cors.origin_valid|
// origin_invalid (also under shadow_enabled, where nothing is applied).
void registerHttpCors();

// One policy, translated (either proto form).
struct CorsPolicySettings : strait::http::RouteSpecificFilterConfig {
  std::vector<strait::http::StringMatch> allow_origins;  // empty: not set here
  std::string allow_methods;
  std::string allow_headers;
  std::string expose_headers;
  std::string max_age;
  std::optional<bool> allow_credentials;
  std::optional<Fraction> filter_enabled;  // none anywhere: enforced on every request
  std::optional<Fraction> shadow_enabled;
  std::optional<bool> allow_private_network_access;
  std::optional<bool> forward_not_matching_preflights;
};

// What the filter does with one request.
struct CorsVerdict {
  enum class Action {
    None,               // not a CORS request, or no policy applies: nothing is done
    OriginInvalid,      // the Origin is not allowed: no CORS headers; the request goes on
    RejectPreflight,    // ... and it is a preflight that is answered here (200, no CORS headers)
    Preflight,          // answered here: 200 with `headers`
    Simple,             // goes on; `headers` are added to its response
  };
  Action action = Action::None;
  bool counted = false;  // origin_valid / origin_invalid applies (enforced or shadow)
  bool valid = false;
  std::vector<std::pair<std::string, std::string>> headers;
};

// Evaluates `h` against `policies` (most specific first; field by field the first that sets a value
// wins). `random` decides filter_enabled / shadow_enabled.
CorsVerdict evaluateCors(const std::vector<const CorsPolicySettings*>& policies, const strait::http::RequestHeaders& h,
                         uint64_t random);

}  // namespace strait::filters::http
