#include "filters/common/rbac/engine.h"

#include <optional>

#include "proxy/common/log.h"
#include "proxy/network/connection.h"
#include "proxy/network/transport_socket.h"

namespace strait::filters::rbac {

namespace {

const strait::http::RequestHeaders& noHeaders() {
  static const strait::http::RequestHeaders* empty = new strait::http::RequestHeaders();
  return *empty;
}

// The path without query and fragment; false when the request has none (CONNECT, or no request).
bool urlPath(const Context& ctx, std::string_view& out) {
  if (ctx.headers == nullptr || ctx.headers->path.empty()) return false;
  const std::string_view full(ctx.headers->path);
  out = full.substr(0, full.find_first_of("?#"));
  return true;
}

bool inRange(const strait::network::Address* a, const config::CidrRange& cidr) {
  return a != nullptr && cidr.contains(*a);
}

constexpr std::string_view kNoPolicyDetails = "rbac_access_denied_matched_policy[none]";

}  // namespace

Context connectionContext(const strait::network::Connection& conn) {
  Context ctx;
  ctx.remote = &conn.remoteAddress();
  ctx.direct_remote = &conn.remoteAddress();
  ctx.local = &conn.localAddress();
  if (const strait::network::SslInfo* ssl = conn.ssl()) {
    ctx.requested_server_name = ssl->sni();
    // An identity counts only from a certificate that was checked against the trust store.
    if (ssl->peerCertificatePresented() && ssl->peerCertificateValidated()) {
      ctx.authenticated = true;
      ctx.uri_sans = ssl->uriSanPeerCertificate();
      ctx.dns_sans = ssl->dnsSansPeerCertificate();
    }
  }
  return ctx;
}

namespace {
// any / and / or / not, the same for permissions and principals; nullopt for a leaf rule.
template <typename Rule>
std::optional<bool> matchCombinator(const Rule& r, const Context& ctx) {
  switch (r.kind) {
    case Rule::Kind::Any:
      return true;
    case Rule::Kind::And:
      for (const auto& c : r.children) {
        if (!c.matches(ctx)) return false;
      }
      return true;
    case Rule::Kind::Or:
      for (const auto& c : r.children) {
        if (c.matches(ctx)) return true;
      }
      return false;
    case Rule::Kind::Not:
      return !r.children[0].matches(ctx);
    default:
      return std::nullopt;
  }
}
}  // namespace

bool Permission::matches(const Context& ctx) const {
  if (auto c = matchCombinator(*this, ctx)) return *c;
  switch (kind) {
    case Kind::Any:
    case Kind::And:
    case Kind::Or:
    case Kind::Not:
      return false;  // handled above
    case Kind::Header:
      return header.match(ctx.headers != nullptr ? *ctx.headers : noHeaders());
    case Kind::UrlPath: {
      std::string_view path;
      return urlPath(ctx, path) && string.match(path);
    }
    case Kind::DestinationIp:
      return inRange(ctx.local, cidr);
    case Kind::DestinationPort: {
      if (ctx.local == nullptr || (ctx.local->family() != AF_INET && ctx.local->family() != AF_INET6)) return false;
      const uint32_t port = ctx.local->port();
      return port >= port_start && port < port_end;
    }
    case Kind::RequestedServerName:
      return string.match(ctx.requested_server_name);
  }
  return false;
}

bool Principal::matches(const Context& ctx) const {
  if (auto c = matchCombinator(*this, ctx)) return *c;
  switch (kind) {
    case Kind::Any:
    case Kind::And:
    case Kind::Or:
    case Kind::Not:
      return false;  // handled above
    case Kind::Authenticated:
      if (!ctx.authenticated) return false;
      if (any_principal_name) return true;
      // Envoy's order: every URI SAN, then every DNS SAN.
      for (const auto& san : ctx.uri_sans) {
        if (string.match(san)) return true;
      }
      for (const auto& san : ctx.dns_sans) {
        if (string.match(san)) return true;
      }
      return false;
    case Kind::RemoteIp:
      return inRange(ctx.remote, cidr);
    case Kind::DirectRemoteIp:
      return inRange(ctx.direct_remote, cidr);
    case Kind::Header:
      return header.match(ctx.headers != nullptr ? *ctx.headers : noHeaders());
    case Kind::UrlPath: {
      std::string_view path;
      return urlPath(ctx, path) && string.match(path);
    }
  }
  return false;
}

bool Policy::matches(const Context& ctx) const {
  bool permitted = false;
  for (const auto& p : permissions) {
    if (p.matches(ctx)) {
      permitted = true;
      break;
    }
  }
  if (!permitted) return false;
  for (const auto& p : principals) {
    if (p.matches(ctx)) return true;
  }
  return false;
}

Engine::Decision Engine::evaluate(const Context& ctx) const {
  Decision d;
  for (const auto& p : policies) {
    if (p.matches(ctx)) {
      d.policy = &p;
      break;
    }
  }
  switch (action) {
    case Action::Allow: d.allowed = d.policy != nullptr; break;
    case Action::Deny: d.allowed = d.policy == nullptr; break;
    case Action::Log: d.allowed = true; break;
  }
  return d;
}

std::string_view Engine::deniedDetails(const Decision& d) {
  return d.policy != nullptr ? std::string_view(d.policy->denied_details) : kNoPolicyDetails;
}

FilterStats createFilterStats(stats::Store& store, const std::string& prefix, const std::string& shadow_prefix) {
  const std::string p = prefix + "rbac.";
  FilterStats s;
  s.allowed = store.counter(p + "allowed");
  s.denied = store.counter(p + "denied");
  s.shadow_allowed = store.counter(p + shadow_prefix + "shadow_allowed");
  s.shadow_denied = store.counter(p + shadow_prefix + "shadow_denied");
  return s;
}

bool enforce(const Engine* engine, const Engine* shadow, const Context& ctx, const FilterStats& stats,
             std::string_view* denied_details, const char* what) {
  if (shadow != nullptr) {
    const Engine::Decision d = shadow->evaluate(ctx);
    stats::inc(d.allowed ? stats.shadow_allowed : stats.shadow_denied);
    LOG_DEBUG("rbac: %s shadow %s (policy %s)", what, d.allowed ? "allowed" : "denied",
              d.policy != nullptr ? d.policy->name.c_str() : "none");
  }
  if (engine == nullptr) return true;
  const Engine::Decision d = engine->evaluate(ctx);
  stats::inc(d.allowed ? stats.allowed : stats.denied);
  LOG_DEBUG("rbac: %s %s (policy %s)", what, d.allowed ? "allowed" : "denied",
            d.policy != nullptr ? d.policy->name.c_str() : "none");
  if (!d.allowed && denied_details != nullptr) *denied_details = Engine::deniedDetails(d);
  return d.allowed;
}

}  // namespace strait::filters::rbac
