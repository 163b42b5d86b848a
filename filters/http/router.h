#pragma once

namespace strait::filters::http {

// Registers the router, the terminal HTTP filter
// (type.googleapis.com/envoy.extensions.filters.http.router.v3.Router).
void registerRouter();

}  // namespace strait::filters::http
