// Listeners: addresses, filter chains and their matching, listener filters, connection limits.
#include "proxy/config/translate_internal.h"


#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "certs/client_hello.h"
#include "envoy/config/bootstrap/v3/bootstrap.pb.h"
#include "envoy/config/cluster/v3/cluster.pb.h"
#include "envoy/config/endpoint/v3/endpoint.pb.h"
#include "envoy/config/listener/v3/listener.pb.h"
#include "envoy/config/route/v3/route.pb.h"
#include "envoy/extensions/transport_sockets/tls/v3/tls.pb.h"
#include "envoy/extensions/upstreams/http/v3/http_protocol_options.pb.h"
#include "envoy/extensions/filters/listener/original_dst/v3/original_dst.pb.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/dynamic_message.h"
#include "google/protobuf/util/json_util.h"
#include "proxy/accesslog/access_log.h"
#include "proxy/common/log.h"
#include "proxy/common/overload_state.h"
#include "proxy/config/default_bootstrap.h"
#include "proxy/http/matchers.h"
#include "proxy/upstream/health_checker.h"
#include "strait/lb/v1/peak_ewma.pb.h"

namespace strait::config {

namespace bootstrap_v3 = envoy::config::bootstrap::v3;
namespace cluster_v3 = envoy::config::cluster::v3;
namespace listener_v3 = envoy::config::listener::v3;
namespace core_v3 = envoy::config::core::v3;
namespace endpoint_v3 = envoy::config::endpoint::v3;
namespace route_v3 = envoy::config::route::v3;

namespace {

constexpr const char* kOriginalDstType =
    "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst";
constexpr const char* kTlsInspectorType =
    "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector";
constexpr const char* kHttpInspectorType =
    "type.googleapis.com/envoy.extensions.filters.listener.http_inspector.v3.HttpInspector";

absl::StatusOr<PortPredicate> translatePredicate(const listener_v3::ListenerFilterChainMatchPredicate& p,
                                                 const std::string& path, int depth) {
  if (depth > 16) return fieldError(path, "nested too deeply");
  PortPredicate out;
  using P = listener_v3::ListenerFilterChainMatchPredicate;
  switch (p.rule_case()) {
    case P::kAnyMatch:
      out.kind = PortPredicate::Kind::Any;
      return out;
    case P::kDestinationPortRange:
      out.kind = PortPredicate::Kind::Range;
      out.start = p.destination_port_range().start();
      out.end = p.destination_port_range().end();
      if (out.start >= out.end) return fieldError(path + ".destination_port_range", "start must be below end");
      return out;
    case P::kNotMatch: {
      out.kind = PortPredicate::Kind::Not;
      auto c = translatePredicate(p.not_match(), path + ".not_match", depth + 1);
      if (!c.ok()) return c.status();
      out.children.push_back(*c);
      return out;
    }
    case P::kOrMatch:
    case P::kAndMatch: {
      bool is_or = p.rule_case() == P::kOrMatch;
      out.kind = is_or ? PortPredicate::Kind::Or : PortPredicate::Kind::And;
      const auto& set = is_or ? p.or_match() : p.and_match();
      const std::string sp = path + (is_or ? ".or_match" : ".and_match");
      if (set.rules_size() < 2) return fieldError(sp + ".rules", "needs at least two rules");
      for (int i = 0; i < set.rules_size(); ++i) {
        auto c = translatePredicate(set.rules(i), absl::StrCat(sp, ".rules[", i, "]"), depth + 1);
        if (!c.ok()) return c.status();
        out.children.push_back(*c);
      }
      return out;
    }
    default:
      return fieldError(path, "a rule is required");
  }
}

absl::Status translateCidrs(const google::protobuf::RepeatedPtrField<core_v3::CidrRange>& ranges, const std::string& path,
                            std::vector<CidrRange>& out) {
  for (int i = 0; i < ranges.size(); ++i) {
    const auto& r = ranges[i];
    auto a = network::Address::parse(r.address_prefix(), 0);
    if (!a) return fieldError(absl::StrCat(path, "[", i, "].address_prefix"), "is not an IP address");
    uint32_t len = r.has_prefix_len() ? r.prefix_len().value() : (a->isV6() ? 128 : 32);
    if (len > (a->isV6() ? 128u : 32u)) return fieldError(absl::StrCat(path, "[", i, "].prefix_len"), "is too long");
    out.push_back(CidrRange{*a, len});
  }
  return absl::OkStatus();
}

// Envoy refuses a listener with two filter chains that match exactly the same connections; so does
// Strait (for chains whose matches are equal once their lists are sorted).
std::string matchKey(const FilterChain& fc) {
  auto cidrs = [](const std::vector<CidrRange>& v) {
    std::vector<std::string> out;
    for (const auto& r : v) out.push_back(absl::StrCat(r.prefix.ip(), "/", r.len));
    std::sort(out.begin(), out.end());
    return absl::StrJoin(out, ",");
  };
  auto strs = [](std::vector<std::string> v) {
    std::sort(v.begin(), v.end());
    return absl::StrJoin(v, ",");
  };
  std::vector<uint32_t> ports = fc.source_ports;
  std::sort(ports.begin(), ports.end());
  return absl::StrCat(fc.destination_port ? static_cast<int64_t>(*fc.destination_port) : -1, "|",
                      cidrs(fc.prefix_ranges), "|", strs(fc.server_names), "|", fc.transport_protocol, "|",
                      strs(fc.application_protocols), "|", cidrs(fc.direct_source_prefix_ranges), "|",
                      static_cast<int>(fc.source_type), "|", cidrs(fc.source_prefix_ranges), "|",
                      absl::StrJoin(ports, ","));
}

absl::StatusOr<FilterChain> translateFilterChain(const listener_v3::FilterChain& fc, const std::string& path,
                                                 TranslationContext& ctx) {
  FilterChain out;
  out.name = fc.name();
  out.hash = std::hash<std::string>{}(fc.SerializeAsString());
  if (fc.has_transport_socket()) {
    auto ts = translateTransportSocket(fc.transport_socket(), path + ".transport_socket", true);
    if (!ts.ok()) return ts.status();
    out.transport_socket = *ts;
  }
  if (fc.has_transport_socket_connect_timeout()) {
    out.transport_socket_connect_timeout_ms = durationMs(fc.transport_socket_connect_timeout());
  }
  if (fc.has_filter_chain_match()) {
    const auto& m = fc.filter_chain_match();
    const std::string mp = path + ".filter_chain_match";
    if (m.has_destination_port()) {
      if (m.destination_port().value() == 0 || m.destination_port().value() > 65535) {
        return fieldError(mp + ".destination_port", "is not a valid port");
      }
      out.destination_port = m.destination_port().value();
    }
    if (auto st = translateCidrs(m.prefix_ranges(), mp + ".prefix_ranges", out.prefix_ranges); !st.ok()) return st;
    out.transport_protocol = m.transport_protocol();
    for (const auto& ap : m.application_protocols()) out.application_protocols.push_back(ap);
    for (const auto& sn : m.server_names()) {
      if (sn.empty()) return fieldError(mp + ".server_names", "must not hold an empty name");
      out.server_names.push_back(absl::AsciiStrToLower(sn));
    }
    if (auto st = translateCidrs(m.direct_source_prefix_ranges(), mp + ".direct_source_prefix_ranges",
                                 out.direct_source_prefix_ranges);
        !st.ok()) {
      return st;
    }
    switch (m.source_type()) {
      case listener_v3::FilterChainMatch::ANY: out.source_type = FilterChain::SourceType::Any; break;
      case listener_v3::FilterChainMatch::SAME_IP_OR_LOOPBACK:
        out.source_type = FilterChain::SourceType::SameIpOrLoopback;
        break;
      case listener_v3::FilterChainMatch::EXTERNAL: out.source_type = FilterChain::SourceType::External; break;
      default:
        return fieldError(mp + ".source_type", absl::StrCat("unknown value ", static_cast<int>(m.source_type())));
    }
    if (auto st = translateCidrs(m.source_prefix_ranges(), mp + ".source_prefix_ranges", out.source_prefix_ranges);
        !st.ok()) {
      return st;
    }
    for (int i = 0; i < m.source_ports_size(); ++i) {
      if (m.source_ports(i) == 0 || m.source_ports(i) > 65535) {
        return fieldError(absl::StrCat(mp, ".source_ports[", i, "]"), "is not a valid port");
      }
      out.source_ports.push_back(m.source_ports(i));
    }
  }
  if (fc.filters_size() == 0) return fieldError(path + ".filters", "needs a terminal network filter");
  for (int i = 0; i < fc.filters_size(); ++i) {
    const auto& f = fc.filters(i);
    const std::string fp = absl::StrCat(path, ".filters[", i, "]");
    if (!f.has_typed_config()) return fieldError(fp + ".typed_config", "is required (extensions are chosen by type URL)");
    const std::string& type_url = f.typed_config().type_url();
    if (i != fc.filters_size() - 1) {
      auto rit = networkReadFilterRegistry().find(type_url);
      if (rit == networkReadFilterRegistry().end()) {
        if (networkFilterRegistry().count(type_url)) return fieldError(fp, "a terminal network filter must be the last one");
        return fieldError(fp + ".typed_config", absl::StrCat("unsupported network filter type '", type_url, "'"));
      }
      auto rf = rit->second(f.typed_config(), fp + ".typed_config", ctx);
      if (!rf.ok()) return rf.status();
      out.read_filters.push_back(*rf);
      continue;
    }
    auto it = networkFilterRegistry().find(type_url);
    if (it == networkFilterRegistry().end()) {
      return fieldError(fp + ".typed_config", absl::StrCat("unsupported network filter type '", type_url, "'"));
    }
    auto factory = it->second(f.typed_config(), fp + ".typed_config", ctx);
    if (!factory.ok()) return factory.status();
    out.terminal = *factory;
  }
  return out;
}

// One open-connection count per listener name for the life of the process (see Listener::max_connections).
std::shared_ptr<std::atomic<int64_t>> listenerConnectionCount(const std::string& name) {
  static std::mutex mu;
  static std::map<std::string, std::shared_ptr<std::atomic<int64_t>>> counts;
  std::lock_guard<std::mutex> lock(mu);
  auto& c = counts[name];
  if (!c) c = std::make_shared<std::atomic<int64_t>>(0);
  return c;
}

}  // namespace

absl::StatusOr<ListenerConstSharedPtr> translateListener(const listener_v3::Listener& l, const std::string& path,
                                                       TranslationContext& ctx) {
  auto out = std::make_shared<Listener>();
  if (l.name().empty()) return fieldError(path + ".name", "is required");
  out->name = l.name();
  auto addr = translateAddress(l.address(), path + ".address");
  if (!addr.ok()) return addr.status();
  out->address = *addr;
  out->bind_to_port = !l.has_bind_to_port() || l.bind_to_port().value();
  if (l.has_per_connection_buffer_limit_bytes()) out->buffer_limit = l.per_connection_buffer_limit_bytes().value();
  if (ctx.runtime != nullptr) {
    const std::string key = absl::StrCat("envoy.resource_limits.listener.", l.name(), ".connection_limit");
    auto it = ctx.runtime->find(key);
    if (it != ctx.runtime->end()) {
      uint64_t v = 0;
      if (!absl::SimpleAtoi(it->second, &v)) {
        return fieldError("layered_runtime." + key, absl::StrCat("'", it->second, "' is not a connection count"));
      }
      out->max_connections = v;
    }
    auto global = ctx.runtime->find("overload.global_downstream_max_connections");
    if (global != ctx.runtime->end() && !l.ignore_global_conn_limit()) {
      uint64_t v = 0;
      if (!absl::SimpleAtoi(global->second, &v)) {
        return fieldError("layered_runtime.overload.global_downstream_max_connections",
                          absl::StrCat("'", global->second, "' is not a connection count"));
      }
      out->global_max_connections = v;
    }
  }
  // The process-wide count (the overload manager's global_downstream_max_connections monitor, the
  // runtime key above); a listener that ignores the global limit is not counted.
  if (!l.ignore_global_conn_limit()) out->global_connections = common::overloadState().downstream_connections;
  out->open_connections = listenerConnectionCount(l.name());
  out->inbound = l.traffic_direction() == core_v3::INBOUND;
  out->outbound = l.traffic_direction() == core_v3::OUTBOUND;
  // Both forms recover the pre-NAT destination; use_original_dst also hands the connection to the
  // listener on that destination (worker.cc, ListenerAddressMap).
  out->use_original_dst = l.has_use_original_dst() && l.use_original_dst().value();
  out->restore_original_dst = out->use_original_dst;
  for (int i = 0; i < l.listener_filters_size(); ++i) {
    const auto& lf = l.listener_filters(i);
    const std::string lp = absl::StrCat(path, ".listener_filters[", i, "]");
    if (!lf.has_typed_config()) return fieldError(lp + ".typed_config", "is required");
    const std::string& t = lf.typed_config().type_url();
    Inspector* inspector = t == kTlsInspectorType ? &out->tls_inspector : t == kHttpInspectorType ? &out->http_inspector : nullptr;
    if (t == kOriginalDstType) {
      out->restore_original_dst = true;
    } else if (inspector != nullptr) {
      inspector->enabled = true;
      if (lf.has_filter_disabled()) {
        auto pred = translatePredicate(lf.filter_disabled(), lp + ".filter_disabled", 0);
        if (!pred.ok()) return pred.status();
        inspector->disabled = *pred;
      }
    } else {
      return fieldError(lp + ".typed_config",
                        absl::StrCat("unsupported listener filter type '", lf.typed_config().type_url(), "'"));
    }
  }
  if (l.has_listener_filters_timeout()) out->listener_filters_timeout_ms = durationMs(l.listener_filters_timeout());
  out->continue_on_listener_filters_timeout = l.continue_on_listener_filters_timeout();
  if (l.filter_chains_size() == 0 && !l.has_default_filter_chain()) {
    return fieldError(path + ".filter_chains", "a listener needs at least one filter chain");
  }
  std::map<std::string, int> match_keys;
  for (int i = 0; i < l.filter_chains_size(); ++i) {
    const std::string fp = absl::StrCat(path, ".filter_chains[", i, "]");
    auto fc = translateFilterChain(l.filter_chains(i), fp, ctx);
    if (!fc.ok()) return fc.status();
    auto [it, fresh] = match_keys.emplace(matchKey(*fc), i);
    if (!fresh) {
      return fieldError(fp + ".filter_chain_match",
                        absl::StrCat("matches the same connections as filter_chains[", it->second, "]"));
    }
    out->filter_chains.push_back(std::move(*fc));
  }
  if (l.has_default_filter_chain()) {
    auto fc = translateFilterChain(l.default_filter_chain(), path + ".default_filter_chain", ctx);
    if (!fc.ok()) return fc.status();
    out->default_filter_chain = std::move(*fc);
  }
  out->stat_prefix = l.stat_prefix();
  if (l.access_log_size() > 0) {
    auto logs = accesslog::translateAccessLogs(l.access_log(), path + ".access_log", ctx.store);
    if (!logs.ok()) return logs.status();
    out->access_logs = std::move(*logs);
  }
  // A listener on port 0 gets its stats once bound (named after the real port), see createListenerStats.
  if (out->address.port() != 0 || !out->stat_prefix.empty()) createListenerStats(*out, out->address, ctx.store);
  out->proto = std::make_shared<listener_v3::Listener>(l);
  out->proto_hash = l.SerializeAsString();
  return ListenerConstSharedPtr(out);
}

void createListenerStats(Listener& l, const network::Address& bound, stats::Store& store) {
  const std::string p = "listener." + (l.stat_prefix.empty() ? bound.statName() : l.stat_prefix) + ".";
  l.stats.downstream_cx_total = store.counter(p + "downstream_cx_total");
  l.stats.downstream_cx_active = store.gauge(p + "downstream_cx_active");
  l.stats.downstream_cx_destroy = store.counter(p + "downstream_cx_destroy");
  l.stats.no_filter_chain_match = store.counter(p + "no_filter_chain_match");
  l.stats.downstream_pre_cx_timeout = store.counter(p + "downstream_pre_cx_timeout");
  l.stats.downstream_cx_overload_reject = store.counter(p + "downstream_cx_overload_reject");
  l.stats.downstream_cx_overflow = store.counter(p + "downstream_cx_overflow");
  l.stats.downstream_global_cx_overflow = store.counter(p + "downstream_global_cx_overflow");
  if (l.http_inspector.enabled) {
    l.stats.http10_found = store.counter(p + "http_inspector.http10_found");
    l.stats.http11_found = store.counter(p + "http_inspector.http11_found");
    l.stats.http2_found = store.counter(p + "http_inspector.http2_found");
    l.stats.http_not_found = store.counter(p + "http_inspector.http_not_found");
  }
  if (l.tls_inspector.enabled) {
    l.stats.tls_found = store.counter(p + "tls_inspector.tls_found");
    l.stats.tls_not_found = store.counter(p + "tls_inspector.tls_not_found");
    l.stats.tls_client_hello_too_large = store.counter(p + "tls_inspector.client_hello_too_large");
  }
  bool tls = false;
  for (const auto& fc : l.filter_chains) tls = tls || fc.transport_socket != nullptr;
  if (l.default_filter_chain) tls = tls || l.default_filter_chain->transport_socket != nullptr;
  if (tls) {
    l.stats.ssl = network::makeSslStats(store, p);
    l.stats.downstream_cx_transport_socket_connect_timeout = store.counter(p + "downstream_cx_transport_socket_connect_timeout");
    l.stats.downstream_cx_no_certificate = store.counter(p + "downstream_cx_no_certificate");
  }
  l.stats_ready = true;
}

bool CidrRange::contains(const network::Address& a) const {
  if (a.family() != prefix.family()) return false;
  const uint8_t* x;
  const uint8_t* y;
  if (a.isV6()) {
    x = reinterpret_cast<const sockaddr_in6*>(a.sockAddr())->sin6_addr.s6_addr;
    y = reinterpret_cast<const sockaddr_in6*>(prefix.sockAddr())->sin6_addr.s6_addr;
  } else {
    x = reinterpret_cast<const uint8_t*>(&reinterpret_cast<const sockaddr_in*>(a.sockAddr())->sin_addr);
    y = reinterpret_cast<const uint8_t*>(&reinterpret_cast<const sockaddr_in*>(prefix.sockAddr())->sin_addr);
  }
  uint32_t bits = len;
  for (uint32_t i = 0; bits > 0; ++i) {
    uint32_t take = bits >= 8 ? 8 : bits;
    uint8_t mask = static_cast<uint8_t>(0xff00 >> take);
    if ((x[i] & mask) != (y[i] & mask)) return false;
    bits -= take;
  }
  return true;
}

bool PortPredicate::matches(uint32_t port) const {
  switch (kind) {
    case Kind::Any: return true;
    case Kind::Range: return static_cast<int64_t>(port) >= start && static_cast<int64_t>(port) < end;
    case Kind::Not: return !children[0].matches(port);
    case Kind::Or:
      for (const auto& c : children) {
        if (c.matches(port)) return true;
      }
      return false;
    case Kind::And:
      for (const auto& c : children) {
        if (!c.matches(port)) return false;
      }
      return true;
  }
  return false;
}

namespace {

// Longest prefix among `ranges` that holds `a`: -1 when none does; 0 when there are none (a chain
// without the criterion fits every address as a /0 would, as in Envoy).
int cidrScore(const std::vector<CidrRange>& ranges, const network::Address& a) {
  if (ranges.empty()) return 0;
  int best = -1;
  for (const auto& r : ranges) {
    if (r.contains(a)) best = std::max(best, static_cast<int>(r.len));
  }
  return best;
}

bool isLoopback(const network::Address& a) {
  if (a.isV6()) {
    const auto& in6 = reinterpret_cast<const sockaddr_in6*>(a.sockAddr())->sin6_addr;
    return IN6_IS_ADDR_LOOPBACK(&in6);
  }
  const auto* in4 = reinterpret_cast<const uint8_t*>(&reinterpret_cast<const sockaddr_in*>(a.sockAddr())->sin_addr);
  return in4[0] == 127;
}

bool sameIp(const network::Address& a, const network::Address& b) {
  if (a.family() != b.family()) return false;
  if (a.isV6()) {
    return std::memcmp(&reinterpret_cast<const sockaddr_in6*>(a.sockAddr())->sin6_addr,
                       &reinterpret_cast<const sockaddr_in6*>(b.sockAddr())->sin6_addr, 16) == 0;
  }
  return reinterpret_cast<const sockaddr_in*>(a.sockAddr())->sin_addr.s_addr ==
         reinterpret_cast<const sockaddr_in*>(b.sockAddr())->sin_addr.s_addr;
}

using Candidates = std::vector<const FilterChain*>;

// match() observes nothing; /explain's matchExplained() hears of every chain a step drops. The
// observer is a template parameter so that match() compiles to the plain narrowing.
struct NoObserver {
  void operator()(const FilterChain&, ChainMatchStep, int, int, std::string_view) const {}
};

// Keeps the candidates with the highest score; a negative score rules a chain out. `drop` hears of
// each chain ruled out, with its score and the best one (`detail`: what the step compared, if not
// evident from its inputs).
template <class Score, class Observer>
void narrow(Candidates& c, Score score, Observer& drop, ChainMatchStep step, std::string_view detail = {}) {
  int best = -1;
  for (const auto* fc : c) best = std::max(best, score(*fc));
  size_t kept = 0;
  for (const auto* fc : c) {
    const int s = best >= 0 ? score(*fc) : -1;  // with no best, every score was negative
    if (best >= 0 && s == best) {
      c[kept++] = fc;
    } else {
      drop(*fc, step, s, best, detail);
    }
  }
  c.resize(kept);
}

template <class Observer>
const FilterChain* matchChains(const Listener& l, const network::Address& dst, const network::Address& src,
                               std::string_view transport, std::string_view application,
                               std::string_view server_name, const std::vector<std::string>* alpn, Observer& drop) {
  const FilterChain* fallback = l.default_filter_chain ? &*l.default_filter_chain : nullptr;
  const auto& filter_chains = l.filter_chains;
  using enum ChainMatchStep;
  if (filter_chains.empty()) return fallback;
  thread_local Candidates c;
  c.clear();
  for (const auto& fc : filter_chains) c.push_back(&fc);
  // 1. Destination port.
  narrow(c, [&](const FilterChain& fc) { return !fc.destination_port ? 0 : *fc.destination_port == dst.port() ? 1 : -1; },
         drop, DestinationPort);
  // 2. Destination IP: the longest prefix.
  if (c.size() > 0) narrow(c, [&](const FilterChain& fc) { return cidrScore(fc.prefix_ranges, dst); }, drop, DestinationIp);
  // 3. Server name: exact, then the longest wildcard suffix, then chains that name none.
  if (c.size() > 0) {
    narrow(c, [&](const FilterChain& fc) {
      if (fc.server_names.empty()) return 0;
      int best = -1;
      if (server_name.empty()) return -1;
      for (const auto& sn : fc.server_names) {
        if (!certs::serverNameMatches(sn, server_name)) continue;
        // A wildcard scores its length (the longest suffix wins); an exact name beats any wildcard.
        best = std::max(best, sn[0] == '*' ? static_cast<int>(sn.size()) : 1 << 16);
      }
      return best;
    }, drop, ServerName, server_name);
  }
  // 4. Transport protocol (raw_buffer when no listener filter detected one, as Envoy sets it).
  if (c.size() > 0) {
    const std::string_view t = transport.empty() ? std::string_view("raw_buffer") : transport;
    narrow(c, [&](const FilterChain& fc) { return fc.transport_protocol.empty() ? 0 : fc.transport_protocol == t ? 1 : -1; },
           drop, TransportProtocol, t);
  }
  // 5. Application protocols: the first of the connection's protocols (the TLS client's ALPN list in its
  // order, or what http_inspector found) that some chain names; else the chains that name none.
  if (c.size() > 0) {
    auto names = [](const FilterChain& fc, std::string_view p) {
      return std::find(fc.application_protocols.begin(), fc.application_protocols.end(), p) !=
             fc.application_protocols.end();
    };
    auto pick = [&](std::string_view p) {
      for (const auto* fc : c) {
        if (names(*fc, p)) {
          narrow(c, [&](const FilterChain& x) { return names(x, p) ? 1 : -1; }, drop, ApplicationProtocols, p);
          return true;
        }
      }
      return false;
    };
    bool done = false;
    if (alpn != nullptr) {
      for (const auto& p : *alpn) {
        if ((done = pick(p))) break;
      }
    }
    if (!done && !application.empty()) done = pick(application);
    if (!done) narrow(c, [](const FilterChain& fc) { return fc.application_protocols.empty() ? 0 : -1; }, drop, ApplicationProtocols);
  }
  // 6. Direct source IP (the peer: Strait has no PROXY protocol, so it is the source IP).
  if (c.size() > 0) {
    narrow(c, [&](const FilterChain& fc) { return cidrScore(fc.direct_source_prefix_ranges, src); }, drop, DirectSourceIp);
  }
  // 7. Source type: a peer on the same IP as the destination, or on loopback, is local.
  if (c.size() > 0) {
    const bool local = isLoopback(src) || sameIp(src, dst);
    narrow(c, [&](const FilterChain& fc) {
      switch (fc.source_type) {
        case FilterChain::SourceType::Any: return 0;
        case FilterChain::SourceType::SameIpOrLoopback: return local ? 1 : -1;
        case FilterChain::SourceType::External: return local ? -1 : 1;
      }
      return -1;
    }, drop, SourceType);
  }
  // 8. Source IP, 9. source port.
  if (c.size() > 0) narrow(c, [&](const FilterChain& fc) { return cidrScore(fc.source_prefix_ranges, src); }, drop, SourceIp);
  if (c.size() > 0) {
    narrow(c, [&](const FilterChain& fc) {
      if (fc.source_ports.empty()) return 0;
      return std::find(fc.source_ports.begin(), fc.source_ports.end(), src.port()) != fc.source_ports.end() ? 1 : -1;
    }, drop, SourcePort);
  }
  // Equal matches are refused at config time, so at most one is left.
  return c.empty() ? fallback : c.front();
}

}  // namespace

const FilterChain* Listener::match(const network::Address& dst, const network::Address& src, std::string_view transport,
                                   std::string_view application, std::string_view server_name,
                                   const std::vector<std::string>* alpn) const {
  NoObserver none;
  return matchChains(*this, dst, src, transport, application, server_name, alpn, none);
}

const FilterChain* Listener::matchExplained(const network::Address& dst, const network::Address& src,
                                            std::string_view transport, std::string_view application,
                                            std::string_view server_name, const std::vector<std::string>* alpn,
                                            const ChainRuledOut& ruled_out) const {
  return matchChains(*this, dst, src, transport, application, server_name, alpn, ruled_out);
}

}  // namespace strait::config
