#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/config/snapshot.h"
#include "proxy/http/header_map.h"
#include "proxy/http/matchers.h"
#include "proxy/network/address.h"
#include "proxy/stats/stats.h"

namespace strait::network {
class Connection;
}

namespace strait::filters::rbac {

// Envoy's role-based access control (envoy.config.rbac.v3.RBAC) as plain structs, translated once at
// config time (engine_config.h) and shared read-only by the workers. Evaluation reads a Context that
// the network and HTTP filters fill from the connection and the request; it never allocates.

// What a decision is made on.
struct Context {
  const strait::network::Address* remote = nullptr;         // the downstream (remote_ip, source_ip)
  const strait::network::Address* direct_remote = nullptr;  // the directly connected peer (direct_remote_ip)
  const strait::network::Address* local = nullptr;          // the destination (destination_ip, destination_port)
  // The peer presented a certificate that was validated: its SANs are the peer's identities.
  bool authenticated = false;
  std::span<const std::string> uri_sans;  // SPIFFE IDs
  std::span<const std::string> dns_sans;
  std::string_view requested_server_name;  // TLS SNI; empty without
  // HTTP only: the request, its path already normalised by the connection manager. Null for the network
  // filter (header rules then see no headers, url_path rules never match).
  const strait::http::RequestHeaders* headers = nullptr;
};

// The Context of a downstream connection (everything but `headers`). The connection's addresses and
// TLS facts are referenced, not copied: use it while the connection lives. Strait derives no remote
// address from x-forwarded-for or PROXY protocol, so remote and direct_remote are the same peer.
Context connectionContext(const strait::network::Connection& conn);

struct Permission {
  enum class Kind {
    Any,
    And,
    Or,
    Not,
    Header,
    UrlPath,
    DestinationIp,
    DestinationPort,  // [port_start, port_end): a single port is [p, p + 1)
    RequestedServerName,
  };
  Kind kind = Kind::Any;
  std::vector<Permission> children;  // And, Or; Not has one
  strait::http::HeaderMatch header;
  strait::http::StringMatch string;  // UrlPath, RequestedServerName
  config::CidrRange cidr;    // DestinationIp
  uint32_t port_start = 0;
  uint32_t port_end = 0;

  bool matches(const Context& ctx) const;
};

struct Principal {
  enum class Kind { Any, And, Or, Not, Authenticated, RemoteIp, DirectRemoteIp, Header, UrlPath };
  Kind kind = Kind::Any;
  std::vector<Principal> children;  // And, Or; Not has one
  // Authenticated: without a principal_name any authenticated peer matches; with one, some URI SAN or
  // else some DNS SAN of the peer's certificate must match it. An unauthenticated peer never matches.
  bool any_principal_name = true;
  strait::http::StringMatch string;  // Authenticated principal_name, UrlPath
  strait::http::HeaderMatch header;
  config::CidrRange cidr;  // RemoteIp, DirectRemoteIp

  bool matches(const Context& ctx) const;
};

// Matches when one of its permissions and one of its principals match.
struct Policy {
  std::string name;
  std::string denied_details;  // "rbac_access_denied_matched_policy[<name>]" (whitespace as '_')
  std::vector<Permission> permissions;
  std::vector<Principal> principals;

  bool matches(const Context& ctx) const;
};

enum class Action { Allow, Deny, Log };

struct Engine {
  Action action = Action::Allow;
  std::vector<Policy> policies;  // in name order: the first that matches is the one reported

  struct Decision {
    bool allowed = true;
    const Policy* policy = nullptr;  // the first matching policy; null when none matched
  };
  // ALLOW: allowed iff some policy matches; DENY: allowed iff none does; LOG: always allowed.
  Decision evaluate(const Context& ctx) const;
  // Envoy's response detail for a refusal: "rbac_access_denied_matched_policy[<policy>|none]".
  static std::string_view deniedDetails(const Decision& d);
};
using EngineConstSharedPtr = std::shared_ptr<const Engine>;

// Envoy's RBAC filter stats: <prefix>rbac.allowed|denied and
// <prefix>rbac.<shadow_prefix>shadow_allowed|shadow_denied (the prefix is used as given: the network
// filter's stat_prefix, the HTTP filter's "http.<hcm stat_prefix>.").
struct FilterStats {
  stats::Counter allowed;
  stats::Counter denied;
  stats::Counter shadow_allowed;
  stats::Counter shadow_denied;
};
FilterStats createFilterStats(stats::Store& store, const std::string& prefix, const std::string& shadow_prefix);

// One filter's decision: the shadow engine (if any) is evaluated and counted only; the enforced one (if
// any) decides and is counted. No engine: allowed, nothing counted. When refused, `denied_details` (if
// not null) gets Envoy's response detail. `what` names the checked thing in debug logs.
bool enforce(const Engine* engine, const Engine* shadow, const Context& ctx, const FilterStats& stats,
             std::string_view* denied_details, const char* what);

}  // namespace strait::filters::rbac
