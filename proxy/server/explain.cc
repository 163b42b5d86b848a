// The admin's /explain (explain.h). Three steps, each mirroring the worker or the HCM:
//  1. the listener: the one bound on the destination, else the use_original_dst listener that took the
//     redirected connection, then Worker::onAccept's hand-off to the listener on the original destination;
//  2. the filter chain: Listener::matchExplained (Listener::match's own narrowing), with the transport
//     and application protocol the listener's inspectors would report (Worker::onAccept, ProtocolSniffer);
//  3. HTTP: ActiveStream::prepareRequest's normalisation and sanitising, then RouteTable::explain (which
//     calls RouteTable::route); tcp_proxy: its clusters.
// Nothing here touches a worker: the snapshot is immutable and shared.

#include "proxy/server/explain.h"

#include <algorithm>
#include <optional>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "proxy/common/json.h"
#include "proxy/http/conn_manager.h"
#include "proxy/http/path_util.h"
#include "proxy/http/route_explain.h"
#include "proxy/http/route_table.h"
#include "proxy/server/server.h"

namespace strait::server {

namespace {

using config::ChainMatchStep;
using config::FilterChain;
using config::Listener;
using network::Address;

std::string q(std::string_view s) { return common::jsonString(s); }
// A value quoted in words (the renderers escape the whole text).
std::string quote(std::string_view s) { return absl::StrCat("\"", absl::string_view(s.data(), s.size()), "\""); }

// ---- what is found -------------------------------------------------------------------------------

struct Alternative {
  std::string name;
  std::string match;   // what it matches on (may be empty)
  std::string failed;  // the first thing that did not fit
};

struct Level {
  bool present = false;
  std::string chosen;  // empty with present: nothing was chosen
  std::string match;
  std::string why;
  std::vector<Alternative> rejected;
};

struct HostInfo {
  std::string address;
  std::string health;
  uint32_t weight = 1;
  uint32_t priority = 0;
  std::string zone;
};

struct ClusterInfo {
  std::string name;
  uint32_t weight = 0;  // weighted clusters / tcp_proxy weighted_clusters (0: a single cluster)
  bool found = false;
  std::string type;
  std::string lb_policy;
  size_t healthy = 0;
  std::vector<HostInfo> hosts;
  std::string host_choice;
};

struct Explanation {
  // The connection and request as the data plane would see them.
  std::string destination, source, transport, application, sni;
  std::vector<std::string> alpn;
  bool http = false;
  std::string method, host, path, normalized_path, scheme;
  std::vector<std::pair<std::string, std::string>> headers;

  Level listener, chain, virtual_host, route;
  std::string terminal;  // http_connection_manager, tcp_proxy, other
  std::string route_config;
  size_t routes_not_tried = 0;
  std::string action;  // cluster, weighted_clusters, redirect, direct_response, local_reply, none
  std::string action_detail;
  uint32_t status = 0;  // a local answer's status (direct response, redirect, 404, ...)
  std::vector<ClusterInfo> clusters;
  std::vector<std::string> notes;
};

// ---- words for config ------------------------------------------------------------------------------

std::string cidrs(const std::vector<config::CidrRange>& ranges) {
  std::string out = "[";
  for (size_t i = 0; i < ranges.size(); ++i) absl::StrAppend(&out, i ? ", " : "", ranges[i].prefix.ip(), "/", ranges[i].len);
  return out + "]";
}

template <class T>
std::string list(const std::vector<T>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) absl::StrAppend(&out, i ? ", " : "", v[i]);
  return out + "]";
}

const char* sourceTypeName(FilterChain::SourceType t) {
  switch (t) {
    case FilterChain::SourceType::Any: return "ANY";
    case FilterChain::SourceType::SameIpOrLoopback: return "SAME_IP_OR_LOOPBACK";
    case FilterChain::SourceType::External: return "EXTERNAL";
  }
  return "ANY";
}

std::string chainMatch(const FilterChain& fc) {
  std::vector<std::string> parts;
  if (fc.destination_port) parts.push_back(absl::StrCat("destination_port ", *fc.destination_port));
  if (!fc.prefix_ranges.empty()) parts.push_back("prefix_ranges " + cidrs(fc.prefix_ranges));
  if (!fc.server_names.empty()) parts.push_back("server_names " + list(fc.server_names));
  if (!fc.transport_protocol.empty()) parts.push_back("transport_protocol " + fc.transport_protocol);
  if (!fc.application_protocols.empty()) parts.push_back("application_protocols " + list(fc.application_protocols));
  if (!fc.direct_source_prefix_ranges.empty()) {
    parts.push_back("direct_source_prefix_ranges " + cidrs(fc.direct_source_prefix_ranges));
  }
  if (fc.source_type != FilterChain::SourceType::Any) parts.push_back(absl::StrCat("source_type ", sourceTypeName(fc.source_type)));
  if (!fc.source_prefix_ranges.empty()) parts.push_back("source_prefix_ranges " + cidrs(fc.source_prefix_ranges));
  if (!fc.source_ports.empty()) parts.push_back("source_ports " + list(fc.source_ports));
  if (parts.empty()) return "any connection";
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) absl::StrAppend(&out, i ? ", " : "", parts[i]);
  return out;
}

std::string chainName(const Listener& l, const FilterChain& fc) {
  if (!fc.name.empty()) return fc.name;
  if (l.default_filter_chain && &fc == &*l.default_filter_chain) return "default_filter_chain";
  return absl::StrCat("filter_chains[", &fc - l.filter_chains.data(), "]");
}

// Why Listener::match's step dropped a chain (see ChainRuledOut).
std::string chainFailure(const FilterChain& fc, ChainMatchStep step, int score, const Address& dst, const Address& src,
                         std::string_view compared_view, const std::vector<std::string>& offered) {
  const bool unfit = score < 0;
  const std::string compared(compared_view);
  switch (step) {
    case ChainMatchStep::DestinationPort:
      return unfit ? absl::StrCat("destination_port ", *fc.destination_port, " != ", dst.port())
                   : absl::StrCat("names no destination_port; a chain with destination_port ", dst.port(),
                                  " is more specific");
    case ChainMatchStep::DestinationIp:
      if (unfit) return absl::StrCat("prefix_ranges ", cidrs(fc.prefix_ranges), " do not contain ", dst.ip());
      return fc.prefix_ranges.empty()
                 ? absl::StrCat("names no prefix_ranges; a chain with a range holding ", dst.ip(), " is more specific")
                 : absl::StrCat("prefix_ranges ", cidrs(fc.prefix_ranges), " hold ", dst.ip(),
                                " but a longer prefix of another chain does too");
    case ChainMatchStep::ServerName:
      if (unfit) {
        return compared.empty() ? absl::StrCat("server_names ", list(fc.server_names), " but the connection has no SNI")
                                : absl::StrCat("server_names ", list(fc.server_names), " do not match ", quote(compared));
      }
      return fc.server_names.empty()
                 ? absl::StrCat("names no server_names; a chain naming ", quote(compared), " is more specific")
                 : absl::StrCat("server_names ", list(fc.server_names), " match ", quote(compared),
                                " less specifically than another chain's");
    case ChainMatchStep::TransportProtocol:
      return unfit ? absl::StrCat("transport_protocol ", fc.transport_protocol, " != ", compared)
                   : absl::StrCat("names no transport_protocol; a chain naming ", compared, " is more specific");
    case ChainMatchStep::ApplicationProtocols:
      if (compared.empty()) {
        return absl::StrCat("application_protocols ", list(fc.application_protocols),
                            " name none of the connection's protocols ", list(offered));
      }
      return fc.application_protocols.empty()
                 ? absl::StrCat("names no application_protocols; a chain naming ", quote(compared), " is more specific")
                 : absl::StrCat("application_protocols ", list(fc.application_protocols), " do not include ",
                                quote(compared), " (the first of the connection's protocols a chain names)");
    case ChainMatchStep::DirectSourceIp:
    case ChainMatchStep::SourceIp: {
      const auto& r = step == ChainMatchStep::SourceIp ? fc.source_prefix_ranges : fc.direct_source_prefix_ranges;
      const char* field = step == ChainMatchStep::SourceIp ? "source_prefix_ranges" : "direct_source_prefix_ranges";
      if (unfit) return absl::StrCat(field, " ", cidrs(r), " do not contain ", src.ip());
      return r.empty() ? absl::StrCat("names no ", field, "; a chain with a range holding ", src.ip(), " is more specific")
                       : absl::StrCat(field, " ", cidrs(r), " hold ", src.ip(), " but a longer prefix of another chain does too");
    }
    case ChainMatchStep::SourceType:
      return unfit ? absl::StrCat("source_type ", sourceTypeName(fc.source_type), " does not fit source ", src.ip(),
                                  fc.source_type == FilterChain::SourceType::External ? " (local)" : " (not local)")
                   : "names no source_type; a chain whose source_type fits is more specific";
    case ChainMatchStep::SourcePort:
      return unfit ? absl::StrCat("source_ports ", list(fc.source_ports), " do not include ", src.port())
                   : absl::StrCat("names no source_ports; a chain naming ", src.port(), " is more specific");
  }
  return "ruled out";
}

const char* clusterType(config::Cluster::Type t) {
  switch (t) {
    case config::Cluster::Type::Static: return "STATIC";
    case config::Cluster::Type::OriginalDst: return "ORIGINAL_DST";
    case config::Cluster::Type::Eds: return "EDS";
    case config::Cluster::Type::StrictDns: return "STRICT_DNS";
    case config::Cluster::Type::LogicalDns: return "LOGICAL_DNS";
  }
  return "STATIC";
}

const char* lbPolicy(upstream::LbConfig::Policy p) {
  using P = upstream::LbConfig::Policy;
  switch (p) {
    case P::RoundRobin: return "ROUND_ROBIN";
    case P::LeastRequest: return "LEAST_REQUEST";
    case P::Random: return "RANDOM";
    case P::RingHash: return "RING_HASH";
    case P::Maglev: return "MAGLEV";
    case P::PeakEwma: return "strait.lb.v1.PeakEwma";
  }
  return "ROUND_ROBIN";
}

std::string healthText(uint32_t f) {
  static constexpr std::pair<uint32_t, const char*> kFlags[] = {
      {upstream::kFailedActiveHc, "failed_active_hc"},   {upstream::kFailedOutlierCheck, "failed_outlier_check"},
      {upstream::kFailedEdsHealth, "failed_eds_health"}, {upstream::kDegradedEdsHealth, "degraded_eds_health"},
      {upstream::kEdsDraining, "pending_dynamic_removal"}, {upstream::kPendingActiveHc, "pending_active_hc"}};
  std::string out;
  for (const auto& [bit, name] : kFlags) {
    if (f & bit) absl::StrAppend(&out, out.empty() ? "" : ",", name);
  }
  return out.empty() ? "healthy" : out;
}

// A cluster as the worker would resolve it (WorkerContext::cluster: the snapshot's version by index).
ClusterInfo clusterInfo(const config::Snapshot& snap, const std::string& name, uint32_t index, uint32_t weight,
                        const Address& dst, bool dst_restored) {
  ClusterInfo out;
  out.name = name;
  out.weight = weight;
  const config::ClusterConstSharedPtr& c = snap.clusterByIndex(index);
  if (!c) {
    out.host_choice = "the configuration has no such cluster (cluster_not_found)";
    return out;
  }
  out.found = true;
  out.type = clusterType(c->type);
  out.lb_policy = lbPolicy(c->lb.policy);
  for (const auto& h : *config::hostsInForce(*c)) {
    out.hosts.push_back(HostInfo{h->address.asString(), healthText(h->healthFlags()),
                                 h->weight.load(std::memory_order_relaxed), h->priority,
                                 h->locality ? h->locality->zone : ""});
    if (h->healthy()) ++out.healthy;
  }
  if (c->type == config::Cluster::Type::OriginalDst) {
    out.host_choice = dst_restored ? absl::StrCat("the connection's original destination ", dst.asString())
                                   : "none: the connection was not redirected, so its destination is the listener "
                                     "itself (no healthy upstream, 503 / closed)";
  } else if (out.hosts.empty()) {
    out.host_choice = "none: the cluster has no host (no healthy upstream, UH)";
  } else if (out.hosts.size() == 1) {
    out.host_choice = absl::StrCat("its only host, ", out.hosts[0].address);
  } else {
    out.host_choice = absl::StrCat(out.lb_policy, " among ", out.healthy, " healthy of ", out.hosts.size(),
                                   " hosts, per request or connection (not determined in advance)");
  }
  return out;
}

// ---- the query ------------------------------------------------------------------------------------

struct Query {
  std::string listener, address, port, source, transport, application, sni, alpn, format = "json";
  std::string host, path, method, scheme;
  bool http = false;
  std::vector<std::pair<std::string, std::string>> headers;
};

LocalHttpResponse badRequest(const std::string& message) { return LocalHttpResponse(400, "text/plain", message + "\n"); }

std::optional<LocalHttpResponse> parseQuery(const QueryParams& params, Query& out) {
  for (const auto& [k, v] : params) {
    std::string* field = nullptr;
    if (k == "listener") field = &out.listener;
    else if (k == "address") field = &out.address;
    else if (k == "port") field = &out.port;
    else if (k == "source") field = &out.source;
    else if (k == "transport") field = &out.transport;
    else if (k == "application") field = &out.application;
    else if (k == "sni") field = &out.sni;
    else if (k == "alpn") field = &out.alpn;
    else if (k == "format") field = &out.format;
    else if (k == "host") field = &out.host;
    else if (k == "path") field = &out.path;
    else if (k == "method") field = &out.method;
    else if (k == "scheme") field = &out.scheme;
    if (field != nullptr) {
      *field = v;
      if (k == "host" || k == "path" || k == "method" || k == "scheme") out.http = true;
      continue;
    }
    if (k == "header" || k == "headers") {
      // name:value; a pseudo-header name starts with ':' itself.
      const size_t colon = v.find(':', v.starts_with(":") ? 1 : 0);
      if (colon == std::string::npos || colon == 0) return badRequest(absl::StrCat(k, ": '", v, "' is not name:value"));
      std::string value = v.substr(colon + 1);
      while (!value.empty() && value.front() == ' ') value.erase(0, 1);
      out.headers.emplace_back(http::lowerString(v.substr(0, colon)), value);
      out.http = true;
      continue;
    }
    return badRequest(absl::StrCat("unknown parameter '", k, "': use host, path, method, header, scheme, listener, ",
                                   "address, port, source, transport, sni, alpn, application, format"));
  }
  if (out.format != "json" && out.format != "text") return badRequest("format: json or text");
  if (!out.transport.empty() && out.transport != "tls" && out.transport != "raw_buffer") {
    return badRequest("transport: tls or raw_buffer");
  }
  if (out.http && out.host.empty()) {
    return badRequest("host: required to explain an HTTP request (the authority it would carry)");
  }
  if (out.http && out.path.empty()) out.path = "/";
  if (out.http && out.method.empty()) out.method = "GET";
  return std::nullopt;
}

std::string listenerNames(const config::Snapshot& snap) {
  std::string out;
  for (const auto& l : snap.listeners) absl::StrAppend(&out, out.empty() ? "" : ", ", l->name);
  return out.empty() ? "none" : out;
}

// Whether a socket bound on `bound` accepts connections to `dst`.
bool covers(const Address& bound, const Address& dst) {
  return bound == dst || (bound.isAnyAddress() && bound.family() == dst.family() && bound.port() == dst.port());
}

// A connection to a wildcard address comes in on some local address; say loopback.
Address concrete(Address a) {
  if (!a.isAnyAddress()) return a;
  auto l = Address::parse(a.isV6() ? "::1" : "127.0.0.1", a.port());
  return l ? *l : a;
}

// Step 1: the listener that handles the connection, and its destination.
struct ListenerChoice {
  const Listener* listener = nullptr;
  Address dst;
  bool restored = false;  // the destination is a recovered original destination (SO_ORIGINAL_DST)
};

std::optional<LocalHttpResponse> chooseListener(const config::Snapshot& snap,
                                                const std::map<std::string, Address>& bound, const Query& query,
                                                Explanation& ex, ListenerChoice& out) {
  auto boundAddress = [&](const Listener& l) {
    auto it = bound.find(l.name);
    return it != bound.end() ? it->second : l.address;
  };
  std::optional<Address> dst;
  if (!query.address.empty()) {
    dst = Address::parseHostPort(query.address);
    if (!dst) return badRequest(absl::StrCat("address: '", query.address, "' is not IP:port (e.g. 10.0.0.5:8080)"));
  } else if (!query.port.empty()) {
    uint32_t port = 0;
    if (!absl::SimpleAtoi(query.port, &port) || port == 0 || port > 65535) {
      return badRequest(absl::StrCat("port: '", query.port, "' is not a port (1-65535)"));
    }
    // A listener bound on a specific IP with that port gives the IP; else a local client's loopback.
    for (const auto& l : snap.listeners) {
      const Address a = boundAddress(*l);
      if (l->bind_to_port && a.port() == port && !a.isAnyAddress()) dst = a;
    }
    if (!dst) dst = Address::parse("127.0.0.1", port);
  }

  const Listener* accepting = nullptr;
  Level& level = ex.listener;
  level.present = true;
  if (!query.listener.empty()) {
    for (const auto& l : snap.listeners) {
      if (l->name == query.listener) accepting = l.get();
    }
    if (accepting == nullptr) {
      return badRequest(absl::StrCat("listener: no listener named '", query.listener, "' (listeners: ",
                                     listenerNames(snap), ")"));
    }
    const Address own = boundAddress(*accepting);
    if (!dst) {
      dst = concrete(own);
      level.why = absl::StrCat("named by the query; a connection to its address ", own.asString());
    } else if (covers(own, *dst)) {
      level.why = absl::StrCat("named by the query; bound on ", own.asString(), ", which takes ", dst->asString());
    } else if (accepting->restore_original_dst) {
      out.restored = true;
      level.why = absl::StrCat("named by the query; it recovers the original destination ", dst->asString(),
                               " of a redirected connection (", accepting->use_original_dst ? "use_original_dst" : "original_dst",
                               ")");
    } else {
      return badRequest(absl::StrCat("address: listener '", accepting->name, "' is on ", own.asString(),
                                     " and does not recover original destinations (use_original_dst, original_dst), "
                                     "so no connection it takes has destination ", dst->asString()));
    }
  } else if (dst) {
    // Who accepts a connection to dst: a socket bound on exactly it, else on its family's wildcard.
    for (int pass = 0; pass < 2 && accepting == nullptr; ++pass) {
      for (const auto& l : snap.listeners) {
        if (!l->bind_to_port) continue;
        const Address a = boundAddress(*l);
        if (pass == 0 ? a == *dst : covers(a, *dst)) {
          accepting = l.get();
          break;
        }
      }
    }
    if (accepting != nullptr) {
      level.why = absl::StrCat("bound on ", boundAddress(*accepting).asString(), ", which takes ", dst->asString());
    } else {
      // Only a redirected (iptables-captured) connection reaches Strait then: a use_original_dst listener took it.
      std::vector<const Listener*> capture;
      for (const auto& l : snap.listeners) {
        if (l->use_original_dst && l->restore_original_dst && l->bind_to_port) capture.push_back(l.get());
      }
      if (capture.empty()) {
        return badRequest(absl::StrCat("address: no listener is bound on ", dst->asString(),
                                       " and none takes redirected connections (use_original_dst); listeners: ",
                                       listenerNames(snap)));
      }
      if (capture.size() > 1) {
        std::string names;
        for (const auto* l : capture) absl::StrAppend(&names, names.empty() ? "" : ", ", l->name);
        return badRequest(absl::StrCat("listener: several listeners take redirected connections (", names,
                                       "); name the one that captured it with listener="));
      }
      accepting = capture[0];
      out.restored = true;
      level.why = absl::StrCat("no listener is bound on ", dst->asString(), "; only a redirected connection gets here, taken by ",
                               accepting->name, " (use_original_dst) on ", boundAddress(*accepting).asString());
    }
  } else {
    if (snap.listeners.size() != 1) {
      return badRequest(absl::StrCat("listener: say which listener (listener=NAME) or destination (address=IP:PORT ",
                                     "or port=PORT); listeners: ", listenerNames(snap)));
    }
    accepting = snap.listeners[0].get();
    dst = concrete(boundAddress(*accepting));
    level.why = absl::StrCat("the only listener; a connection to ", dst->asString());
  }

  // Worker::onAccept: a use_original_dst listener hands a redirected connection to the listener of the
  // snapshot on exactly the original destination, else on the wildcard address of its family and port
  // (listeners on port 0 are not in that table), before doing anything with it itself.
  const Listener* receiver = accepting;
  if (out.restored && accepting->use_original_dst) {
    config::ListenerAddressMap<const Listener*> by_address;
    for (const auto& l : snap.listeners) {
      if (l->address.port() != 0) by_address.add(l->address, l.get());
    }
    if (const Listener* const* to = by_address.find(*dst); to != nullptr && *to != accepting) {
      receiver = *to;
      level.rejected.push_back({accepting->name, "use_original_dst",
                                absl::StrCat("hands the connection to the listener on ", (*to)->address.asString(),
                                             ", the original destination's ", (*to)->address == *dst ? "exact" : "wildcard",
                                             " address")});
      level.why = absl::StrCat(level.why, "; handed to ", receiver->name, " (", receiver->address.asString(),
                               receiver->bind_to_port ? "" : ", bind_to_port: false", ")");
    } else {
      level.why += "; no listener is on the original destination, so it keeps the connection (its own chains)";
    }
  }
  level.chosen = receiver->name;
  level.match = boundAddress(*receiver).asString();
  out.listener = receiver;
  out.dst = *dst;
  return std::nullopt;
}

// ---- step 3: HTTP ---------------------------------------------------------------------------------

void explainHttp(const config::Snapshot& snap, const http::HcmConfig& hcm, const Query& query, const Address& src,
                 bool tls, const ListenerChoice& lc, Explanation& ex) {
  const http::RouteTable* table = hcm.routes.get();
  std::shared_ptr<const http::RouteTable> rds;
  if (hcm.rds_id) {
    // ActiveStream::decodeHeaders: the worker's newest table with this RDS id.
    auto it = snap.route_tables_by_id.find(*hcm.rds_id);
    if (it != snap.route_tables_by_id.end()) rds = std::static_pointer_cast<const http::RouteTable>(it->second);
    table = rds.get();
    if (table == nullptr) ex.notes.push_back("the RouteConfiguration (RDS) has not arrived: every request gets 404");
  }
  if (table != nullptr) ex.route_config = table->name();

  // ActiveStream::prepareRequest, as far as it touches routing.
  http::RequestHeaders h;
  h.method = query.method;
  h.path = query.path;
  h.authority = query.host;
  h.scheme = query.scheme;
  for (const auto& [n, v] : query.headers) h.add(n, v);
  if (h.method != "CONNECT" && !(h.method == "OPTIONS" && h.path == "*")) {
    const http::PathNormalizeResult r = http::normalizePath(h.path, hcm.path);
    ex.normalized_path = h.path;
    if (r == http::PathNormalizeResult::Reject) {
      ex.action = "local_reply";
      ex.status = 400;
      ex.action_detail = "invalid path (path_normalization_failed): rejected before routing";
      return;
    }
    if (r == http::PathNormalizeResult::Redirect) {
      ex.action = "redirect";
      ex.status = 307;
      ex.action_detail = absl::StrCat("the path had an escaped slash (path_with_escaped_slashes_action "
                                      "UNESCAPE_AND_REDIRECT): Location ", h.path);
      return;
    }
  }
  if (h.scheme.empty()) h.scheme = "http";
  http::sanitizeRequestHeaders(h, hcm, table, src, tls);
  ex.scheme = h.scheme;
  if (table == nullptr) {
    ex.action = "local_reply";
    ex.status = 404;
    ex.action_detail = "no route table: route_not_found (NR)";
    return;
  }

  http::RouteExplanation rx;
  table->explain(h, rx);
  ex.virtual_host.present = true;
  ex.virtual_host.chosen = rx.virtual_host;
  ex.virtual_host.why = rx.virtual_host.empty() ? absl::StrCat("no virtual host's domains match host ", quote(rx.host))
                                                : rx.virtual_host_why;
  for (const auto& p : rx.virtual_hosts_passed) ex.virtual_host.rejected.push_back({p.name, p.match, p.failed});
  ex.route.present = true;
  for (const auto& p : rx.routes_passed) {
    ex.route.rejected.push_back({absl::StrCat("#", p.index, p.name.empty() ? "" : " ", p.name), p.match, p.failed});
  }
  ex.routes_not_tried = rx.routes_not_tried;
  const http::RouteEntry* e = rx.route;
  if (rx.https_redirect) {
    ex.route.why = "the virtual host requires TLS (require_tls) and the request is not https";
  } else if (e != nullptr) {
    ex.route.chosen = absl::StrCat("#", rx.chosen_route.index, rx.chosen_route.name.empty() ? "" : " ", rx.chosen_route.name);
    ex.route.match = rx.chosen_route.match;
    ex.route.why = "the first route of the virtual host whose match fits";
  } else if (!rx.virtual_host.empty()) {
    ex.route.why = absl::StrCat("no route of virtual host ", rx.virtual_host, " matches");
  } else {
    ex.route.why = "no virtual host, so no route";
  }
  if (e == nullptr) {
    ex.action = "local_reply";
    ex.status = 404;
    ex.action_detail = "route_not_found (NR)";
    return;
  }
  // The router (filters/http/router.cc decodeHeaders).
  switch (e->kind) {
    case http::RouteEntry::Kind::DirectResponse:
      ex.action = "direct_response";
      ex.status = e->direct_status;
      ex.action_detail = absl::StrCat(e->direct_body.size(), " bytes of body");
      return;
    case http::RouteEntry::Kind::Redirect:
      ex.action = "redirect";
      ex.status = e->redirect->response_code;
      ex.action_detail = absl::StrCat("Location ", e->redirectLocation(h));
      return;
    case http::RouteEntry::Kind::ClusterHeader:
      ex.action = "local_reply";
      ex.status = e->cluster_not_found_status;
      ex.action_detail = absl::StrCat("cluster_header ", e->cluster_header,
                                      ": the router does not resolve clusters by header (cluster_not_found)");
      return;
    case http::RouteEntry::Kind::Cluster:
      ex.action = "cluster";
      ex.action_detail = e->cluster_name;
      ex.clusters.push_back(clusterInfo(snap, e->cluster_name, e->cluster_index, 0, lc.dst, lc.restored));
      break;
    case http::RouteEntry::Kind::WeightedClusters:
      ex.action = "weighted_clusters";
      ex.action_detail = absl::StrCat("one per request, by weight (total ", e->total_weight, ")");
      for (const auto& t : e->weighted) {
        ex.clusters.push_back(clusterInfo(snap, t.name, t.cluster_index, t.weight, lc.dst, lc.restored));
      }
      break;
  }
  for (const auto& c : ex.clusters) {
    if (!c.found) {
      ex.notes.push_back(absl::StrCat("cluster ", c.name, " is not in the configuration: requests sent to it get ",
                                      e->cluster_not_found_status, " (cluster_not_found)"));
    }
  }
}

// ---- rendering ------------------------------------------------------------------------------------

void appendLevel(std::string& out, const char* key, const Level& l, const char* extra = "") {
  absl::StrAppend(&out, ",", q(key), ":{\"chosen\":", l.chosen.empty() ? "null" : q(l.chosen));
  if (!l.match.empty()) absl::StrAppend(&out, ",\"match\":", q(l.match));
  absl::StrAppend(&out, ",\"why\":", q(l.why), extra, ",\"rejected\":[");
  for (size_t i = 0; i < l.rejected.size(); ++i) {
    const auto& r = l.rejected[i];
    absl::StrAppend(&out, i ? "," : "", "{\"name\":", q(r.name), ",\"match\":", q(r.match), ",\"failed\":", q(r.failed), "}");
  }
  out += "]}";
}

std::string renderJson(const Explanation& ex) {
  std::string out = absl::StrCat("{\"connection\":{\"destination\":", q(ex.destination), ",\"source\":", q(ex.source),
                                 ",\"transport\":", q(ex.transport), ",\"application\":", q(ex.application),
                                 ",\"sni\":", q(ex.sni), ",\"alpn\":[");
  for (size_t i = 0; i < ex.alpn.size(); ++i) absl::StrAppend(&out, i ? "," : "", q(ex.alpn[i]));
  out += "]}";
  if (ex.http) {
    absl::StrAppend(&out, ",\"request\":{\"method\":", q(ex.method), ",\"host\":", q(ex.host), ",\"path\":", q(ex.path),
                    ",\"normalized_path\":", q(ex.normalized_path), ",\"scheme\":", q(ex.scheme), ",\"headers\":[");
    for (size_t i = 0; i < ex.headers.size(); ++i) {
      absl::StrAppend(&out, i ? "," : "", "[", q(ex.headers[i].first), ",", q(ex.headers[i].second), "]");
    }
    out += "]}";
  }
  appendLevel(out, "listener", ex.listener);
  if (ex.chain.present) {
    appendLevel(out, "filter_chain", ex.chain, absl::StrCat(",\"terminal\":", q(ex.terminal)).c_str());
  }
  if (ex.virtual_host.present) {
    appendLevel(out, "virtual_host", ex.virtual_host, absl::StrCat(",\"route_config\":", q(ex.route_config)).c_str());
  }
  if (ex.route.present) {
    appendLevel(out, "route", ex.route, absl::StrCat(",\"not_tried\":", ex.routes_not_tried).c_str());
  }
  absl::StrAppend(&out, ",\"action\":{\"kind\":", q(ex.action), ",\"detail\":", q(ex.action_detail));
  if (ex.status != 0) absl::StrAppend(&out, ",\"status\":", ex.status);
  out += "}";
  auto cluster = [](const ClusterInfo& c) {
    std::string o = absl::StrCat("{\"name\":", q(c.name), ",\"found\":", c.found ? "true" : "false");
    if (c.weight != 0) absl::StrAppend(&o, ",\"weight\":", c.weight);
    absl::StrAppend(&o, ",\"type\":", q(c.type), ",\"lb_policy\":", q(c.lb_policy), ",\"healthy_hosts\":", c.healthy,
                    ",\"hosts\":[");
    for (size_t i = 0; i < c.hosts.size(); ++i) {
      const auto& h = c.hosts[i];
      absl::StrAppend(&o, i ? "," : "", "{\"address\":", q(h.address), ",\"health\":", q(h.health), ",\"weight\":", h.weight,
                      ",\"priority\":", h.priority, ",\"zone\":", q(h.zone), "}");
    }
    absl::StrAppend(&o, "],\"host\":", q(c.host_choice), "}");
    return o;
  };
  if (ex.clusters.size() == 1) absl::StrAppend(&out, ",\"cluster\":", cluster(ex.clusters[0]));
  out += ",\"clusters\":[";
  for (size_t i = 0; i < ex.clusters.size(); ++i) absl::StrAppend(&out, i ? "," : "", cluster(ex.clusters[i]));
  out += "],\"notes\":[";
  for (size_t i = 0; i < ex.notes.size(); ++i) absl::StrAppend(&out, i ? "," : "", q(ex.notes[i]));
  out += "]}\n";
  return out;
}

void textLevel(std::string& out, const char* label, const Level& l, const std::string& suffix = "") {
  absl::StrAppend(&out, label, l.chosen.empty() ? "(none)" : l.chosen, l.match.empty() ? "" : "  [", l.match,
                  l.match.empty() ? "" : "]", "\n            why: ", l.why, "\n");
  for (const auto& r : l.rejected) absl::StrAppend(&out, "  passed    ", r.name, ": ", r.failed, "\n");
  out += suffix;
}

std::string renderText(const Explanation& ex) {
  std::string out;
  if (ex.http) {
    absl::StrAppend(&out, "request     ", ex.method, " ", ex.scheme.empty() ? "http" : ex.scheme, "://", ex.host, ex.path);
    if (ex.normalized_path != ex.path && !ex.normalized_path.empty()) absl::StrAppend(&out, " (normalised: ", ex.normalized_path, ")");
    for (const auto& [n, v] : ex.headers) absl::StrAppend(&out, "\n            ", n, ": ", v);
    out += "\n";
  }
  absl::StrAppend(&out, "connection  ", ex.source, " -> ", ex.destination, " transport ",
                  ex.transport.empty() ? "(not detected)" : ex.transport,
                  ex.application.empty() ? "" : " application ", ex.application, ex.sni.empty() ? "" : " sni ", ex.sni,
                  "\n");
  textLevel(out, "listener    ", ex.listener);
  if (ex.chain.present) textLevel(out, "chain       ", ex.chain, absl::StrCat("            terminal: ", ex.terminal, "\n"));
  if (ex.virtual_host.present) textLevel(out, "vhost       ", ex.virtual_host);
  if (ex.route.present) {
    textLevel(out, "route       ", ex.route,
              ex.routes_not_tried ? absl::StrCat("            (", ex.routes_not_tried, " later routes not tried)\n") : "");
  }
  absl::StrAppend(&out, "action      ", ex.action, ex.status ? absl::StrCat(" ", ex.status) : "", ex.action_detail.empty() ? "" : ": ",
                  ex.action_detail, "\n");
  for (const auto& c : ex.clusters) {
    absl::StrAppend(&out, "cluster     ", c.name, c.weight ? absl::StrCat(" (weight ", c.weight, ")") : "");
    if (c.found) {
      absl::StrAppend(&out, ": ", c.type, ", ", c.lb_policy, ", ", c.healthy, " of ", c.hosts.size(), " hosts healthy");
    }
    absl::StrAppend(&out, "\n            host: ", c.host_choice, "\n");
    for (const auto& h : c.hosts) {
      absl::StrAppend(&out, "  host      ", h.address, " ", h.health, " weight ", h.weight,
                      h.priority ? absl::StrCat(" priority ", h.priority) : "", h.zone.empty() ? "" : " zone ", h.zone, "\n");
    }
  }
  for (const auto& n : ex.notes) absl::StrAppend(&out, "note        ", n, "\n");
  return out;
}

}  // namespace

LocalHttpResponse explain(const config::Snapshot& snap, const std::map<std::string, Address>& bound,
                          const QueryParams& params) {
  Query query;
  if (auto bad = parseQuery(params, query)) return *bad;
  Explanation ex;
  ListenerChoice lc;
  if (auto bad = chooseListener(snap, bound, query, ex, lc)) return *bad;
  const Listener& l = *lc.listener;

  std::optional<Address> src = Address::parse("127.0.0.1", 0);
  if (!query.source.empty()) {
    src = Address::parseHostPort(query.source);
    if (!src) src = Address::parse(query.source, 0);
    if (!src) return badRequest(absl::StrCat("source: '", query.source, "' is not IP or IP:port"));
  }

  // Worker::onAccept and ProtocolSniffer: the inspectors that run on this destination port, and what they
  // would report for this client.
  const uint32_t port = lc.dst.port();
  const bool tls_active = l.tls_inspector.activeFor(port);
  const bool http_active = l.http_inspector.activeFor(port);
  std::string transport, application, sni;
  std::vector<std::string> alpn;
  if (tls_active) transport = query.transport.empty() ? "raw_buffer" : query.transport;
  if (!tls_active && !query.transport.empty()) {
    ex.notes.push_back(absl::StrCat("tls_inspector does not run on ", l.name, " for port ", port,
                                    ": transport, sni and alpn are not detected (chains see raw_buffer)"));
  }
  if (transport == "tls") {
    sni = query.sni;
    for (absl::string_view p : absl::StrSplit(query.alpn, ',', absl::SkipEmpty())) alpn.emplace_back(p);
  } else if (http_active) {
    application = !query.application.empty() ? query.application : query.http ? "http/1.1" : "";
  } else if (!query.application.empty()) {
    ex.notes.push_back(absl::StrCat("http_inspector does not run on ", l.name, " for port ", port,
                                    ": no application protocol is detected"));
  }
  ex.destination = lc.dst.asString();
  ex.source = src->asString();
  ex.transport = transport;
  ex.application = application;
  ex.sni = sni;
  ex.alpn = alpn;
  ex.http = query.http;
  ex.method = query.method;
  ex.host = query.host;
  ex.path = query.path;
  ex.headers = query.headers;

  // Step 2: Worker::dispatchToChain's Listener::match, through its explained twin.
  ex.chain.present = true;
  std::vector<std::string> offered = alpn;
  if (!application.empty()) offered.push_back(application);
  const FilterChain* chain = l.matchExplained(
      lc.dst, *src, transport, application, sni, alpn.empty() ? nullptr : &alpn,
      [&](const FilterChain& fc, ChainMatchStep step, int score, int, std::string_view compared) {
        ex.chain.rejected.push_back({chainName(l, fc), chainMatch(fc),
                                     chainFailure(fc, step, score, lc.dst, *src, compared, offered)});
      });
  if (chain != l.match(lc.dst, *src, transport, application, sni, alpn.empty() ? nullptr : &alpn)) {
    ex.notes.push_back("internal: Listener::match and matchExplained disagree; report this");
  }
  if (chain == nullptr || !chain->terminal) {
    ex.chain.why = l.filter_chains.empty() ? "the listener has no filter chains and no default_filter_chain"
                                           : "every chain was ruled out and there is no default_filter_chain";
    ex.action = "close";
    ex.action_detail = "no filter chain matches: the connection is closed (no_filter_chain_match)";
    ex.terminal = "none";
  } else {
    ex.chain.chosen = chainName(l, *chain);
    ex.chain.match = chainMatch(*chain);
    const bool is_default = l.default_filter_chain && chain == &*l.default_filter_chain;
    ex.chain.why = is_default ? (l.filter_chains.empty() ? "the listener's only chain (default_filter_chain)"
                                                         : "every chain was ruled out: the default_filter_chain takes it")
                              : l.filter_chains.size() == 1 ? "the listener's only chain, and it fits"
                                                            : "the most specific chain left at every step";
    if (const http::HcmConfig* hcm = chain->terminal->httpConnectionManager()) {
      ex.terminal = "http_connection_manager";
      if (query.http) {
        explainHttp(snap, *hcm, query, *src, chain->transport_socket != nullptr, lc, ex);
        if (hcm->filters.size() > 1) {
          ex.notes.push_back(absl::StrCat(hcm->filters.size() - 1, " HTTP filter(s) run before the router (RBAC, fault, ",
                                          "CORS, ...) and may answer first; they are not evaluated"));
        }
      } else {
        ex.action = "http";
        ex.action_detail = "an HTTP connection manager: give host and path to explain a request's route";
      }
    } else if (auto targets = chain->terminal->tcpProxyTargets(); !targets.empty()) {
      ex.terminal = "tcp_proxy";
      if (query.http) ex.notes.push_back("the chain ends in tcp_proxy: host, path, method and headers play no part");
      ex.action = targets.size() == 1 ? "cluster" : "weighted_clusters";
      ex.action_detail = targets.size() == 1 ? targets[0].cluster : "one per connection, by weight";
      for (const auto& t : targets) {
        ex.clusters.push_back(clusterInfo(snap, t.cluster, t.cluster_index, targets.size() == 1 ? 0 : t.weight, lc.dst,
                                          lc.restored));
      }
    } else {
      ex.terminal = "other";
      ex.action = "other";
    }
  }
  if (chain != nullptr && !chain->read_filters.empty()) {
    ex.notes.push_back(absl::StrCat("the chain has ", chain->read_filters.size(),
                                    " network read filter(s) (e.g. RBAC) that may close the connection first; not evaluated"));
  }
  LocalHttpResponse r;
  if (query.format == "text") {
    r.body = renderText(ex);
  } else {
    r.content_type = "application/json";
    r.body = renderJson(ex);
  }
  return r;
}

LocalHttpResponse explain(Server& server, const QueryParams& params) {
  std::map<std::string, Address> bound;
  for (const auto& b : server.boundListeners()) bound.emplace(b.listener->name, b.address);
  const config::SnapshotConstSharedPtr snap = server.snapshot();
  return explain(*snap, bound, params);
}

}  // namespace strait::server
