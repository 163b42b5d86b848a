#include "proxy/stats/istio_metrics.h"

#include <charconv>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/struct.pb.h"
#include "proxy/common/response_flags.h"
#include "proxy/stats/stats.h"

namespace strait::stats::istio {

namespace {

// Debian's Abseil has its own string_view type.
absl::string_view av(std::string_view s) { return absl::string_view(s.data(), s.size()); }

struct Service {
  uint32_t host = kUnknown, name = kUnknown, ns = kUnknown;
  bool operator==(const Service&) const = default;
  template <typename H>
  friend H AbslHashValue(H h, const Service& s) {
    return H::combine(std::move(h), s.host, s.name, s.ns);
  }
};

// One worker's series. The worker looks keys up without a lock (it alone changes `index`); `list` is
// what the scrape reads, under `mu`, which the worker takes only to append to it.
struct WorkerTable {
  absl::flat_hash_map<SeriesKey, Series*> index;
  std::mutex mu;
  std::deque<std::pair<SeriesKey, Series>> list;  // stable addresses
  // Per-worker caches of the global ids.
  absl::flat_hash_map<std::string, uint32_t> strings;
  absl::flat_hash_map<std::string, uint32_t> services;
  absl::flat_hash_map<std::string, uint32_t> peers;  // by x-envoy-peer-metadata value, or "ns:" + namespace
  uint64_t generation = 0;
};

// Everything process-wide. `mu` guards all of it; taken on rare paths only (a value or key new to a
// worker) and by the scrape.
struct Tables {
  std::mutex mu;
  std::atomic<uint64_t> generation{1};  // configure() bumps it: workers drop their tables and caches
  uint32_t max_series = kDefaultMaxSeries;
  std::deque<std::string> strings;
  absl::flat_hash_map<std::string, uint32_t> string_ids;
  std::vector<Peer> peers;
  absl::flat_hash_map<Peer, uint32_t> peer_ids;
  std::vector<Service> services;
  absl::flat_hash_map<Service, uint32_t> service_ids;
  absl::flat_hash_map<SeriesKey, bool> keys;  // label sets admitted (true) across workers
  uint32_t http_series = 0, tcp_series = 0;
  std::vector<std::unique_ptr<WorkerTable>> workers;  // never freed: workers live as long as the process
  uint32_t local_peer = kUnknown;
  std::string local_ns;
  std::string md_header, id_header;
  Store* store = nullptr;
  Counter overflow;
  bool have_overflow = false;
};

Tables& tables() {
  static auto* t = new Tables;
  return *t;
}

// Bounds of the id tables (an attacker-chosen header must not grow them without end).
uint32_t stringCap(const Tables& t) { return 16 * t.max_series + 64; }

uint32_t internLocked(Tables& t, std::string_view s) {
  if (s.empty()) return kUnknown;
  auto it = t.string_ids.find(av(s));
  if (it != t.string_ids.end()) return it->second;
  if (t.strings.size() >= stringCap(t)) return kOverflowId;
  const auto id = static_cast<uint32_t>(t.strings.size());
  t.strings.emplace_back(s);
  t.string_ids.emplace(std::string(s), id);
  return id;
}

void resetLocked(Tables& t) {
  t.strings.clear();
  t.string_ids.clear();
  t.peers.clear();
  t.peer_ids.clear();
  t.services.clear();
  t.service_ids.clear();
  t.keys.clear();
  t.http_series = t.tcp_series = 0;
  internLocked(t, "unknown");   // kUnknown
  internLocked(t, "overflow");  // kOverflowId
  t.peers.push_back(Peer{});    // peer 0: all unknown
  t.peer_ids.emplace(Peer{}, 0);
  Peer of{kOverflowId, kOverflowId, kOverflowId, kOverflowId, kOverflowId};
  t.peers.push_back(of);  // peer 1: overflow
  t.peer_ids.emplace(of, 1);
  t.services.push_back(Service{});
  t.service_ids.emplace(Service{}, 0);
  Service os{kOverflowId, kOverflowId, kOverflowId};
  t.services.push_back(os);
  t.service_ids.emplace(os, 1);
  ++t.generation;
}

std::string structString(const google::protobuf::Struct& s, const std::string& key) {
  auto it = s.fields().find(key);
  return it != s.fields().end() && it->second.kind_case() == google::protobuf::Value::kStringValue
             ? it->second.string_value()
             : std::string();
}

thread_local WorkerTable* tl_table = nullptr;

WorkerTable& workerTable() {
  Tables& t = tables();
  if (tl_table == nullptr) {
    auto w = std::make_unique<WorkerTable>();
    tl_table = w.get();
    std::lock_guard<std::mutex> lock(t.mu);
    w->generation = t.generation.load(std::memory_order_relaxed);
    t.workers.push_back(std::move(w));
  }
  return *tl_table;
}

bool hasOverflowId(const SeriesKey& k) {
  return k.src_peer == 1 || k.dst_peer == 1 || k.src_principal == kOverflowId ||
         k.dst_principal == kOverflowId || k.service == 1;
}

SeriesKey overflowKey(const SeriesKey& k) {
  SeriesKey o;
  o.reporter = k.reporter;
  o.protocol = k.protocol == Protocol::Tcp ? Protocol::Tcp : Protocol::Http;
  o.overflow = 1;
  o.src_peer = o.dst_peer = 1;
  o.src_principal = o.dst_principal = kOverflowId;
  o.service = 1;
  return o;
}

Series& addSeries(WorkerTable& w, const SeriesKey& key, bool overflow) {
  std::lock_guard<std::mutex> lock(w.mu);
  w.list.emplace_back(std::piecewise_construct, std::forward_as_tuple(key), std::forward_as_tuple());
  Series& s = w.list.back().second;
  s.overflow = overflow;
  return s;
}

void bump(std::atomic<uint64_t>& a, uint64_t by) {
  a.store(a.load(std::memory_order_relaxed) + by, std::memory_order_relaxed);
}

template <size_t N>
void observe(std::atomic<uint64_t> (&buckets)[N], std::atomic<uint64_t>& sum, const double* bounds, double value,
             uint64_t sum_add) {
  size_t b = 0;
  while (b < N - 1 && value > bounds[b]) ++b;
  bump(buckets[b], 1);
  bump(sum, sum_add);
}

}  // namespace

// The keys of node metadata a sidecar tells its peers (Istio's set); the rest of the node's metadata
// (proxy config, environment) stays local.
constexpr const char* kExchangedKeys[] = {"NAME",         "NAMESPACE",     "LABELS",          "WORKLOAD_NAME",
                                          "CLUSTER_ID",   "MESH_ID",       "OWNER",           "SERVICE_ACCOUNT",
                                          "APP_CONTAINERS", "INSTANCE_IPS", "PLATFORM_METADATA"};

namespace {
std::atomic<bool> g_enabled{false};
}  // namespace

bool enabled() { return g_enabled.load(std::memory_order_relaxed); }
uint64_t generation() { return tables().generation.load(std::memory_order_relaxed); }

absl::Status configureFromNode(const google::protobuf::Struct& md, const std::string& node_id, Store* store) {
  bool on = false;
  uint32_t max = 0;
  auto it = md.fields().find("STRAIT_ISTIO_METRICS");
  if (it != md.fields().end()) {
    const auto& v = it->second;
    if (v.kind_case() == google::protobuf::Value::kBoolValue) {
      on = v.bool_value();
    } else if (v.kind_case() == google::protobuf::Value::kStringValue &&
               (v.string_value() == "true" || v.string_value() == "false")) {
      on = v.string_value() == "true";
    } else {
      return absl::InvalidArgumentError("node.metadata.STRAIT_ISTIO_METRICS: must be true or false");
    }
  }
  it = md.fields().find("STRAIT_ISTIO_METRICS_MAX_SERIES");
  if (it != md.fields().end()) {
    const auto& v = it->second;
    bool ok = false;
    if (v.kind_case() == google::protobuf::Value::kNumberValue) {
      ok = v.number_value() >= 1 && v.number_value() <= 1e6 && v.number_value() == static_cast<uint32_t>(v.number_value());
      if (ok) max = static_cast<uint32_t>(v.number_value());
    } else if (v.kind_case() == google::protobuf::Value::kStringValue) {
      const std::string& text = v.string_value();
      auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), max);
      ok = ec == std::errc() && p == text.data() + text.size() && max >= 1 && max <= 1000000;
    }
    if (!ok) {
      return absl::InvalidArgumentError(
          "node.metadata.STRAIT_ISTIO_METRICS_MAX_SERIES: must be a whole number from 1 to 1000000");
    }
  }
  configure(md, node_id, store, max, on);
  return absl::OkStatus();
}

void configure(const google::protobuf::Struct& md, const std::string& node_id, Store* store, uint32_t max_series,
               bool enable) {
  Tables& t = tables();
  g_enabled.store(enable, std::memory_order_relaxed);
  PeerStrings local = peerFromMetadata(md);
  google::protobuf::Struct exchanged;
  for (const char* key : kExchangedKeys) {
    auto it = md.fields().find(key);
    if (it != md.fields().end()) (*exchanged.mutable_fields())[key] = it->second;
  }
  std::string bytes;
  exchanged.SerializeToString(&bytes);
  std::lock_guard<std::mutex> lock(t.mu);
  t.max_series = max_series == 0 ? kDefaultMaxSeries : max_series;
  resetLocked(t);
  t.local_ns = local.ns;
  Peer p{internLocked(t, local.workload), internLocked(t, local.ns), internLocked(t, local.app),
         internLocked(t, local.version), internLocked(t, local.cluster)};
  auto [it, added] = t.peer_ids.emplace(p, static_cast<uint32_t>(t.peers.size()));
  if (added) t.peers.push_back(p);
  t.local_peer = it->second;
  t.md_header = absl::Base64Escape(bytes);
  t.id_header = node_id;
  // Made only when the metrics are on: a pod without them shows no stat of theirs.
  t.have_overflow = false;
  if (enable && store != nullptr) {
    t.store = store;
    t.overflow = store->counter("istio.series_overflow");
    t.have_overflow = true;
  }
}

uint32_t maxSeries() { return tables().max_series; }
uint32_t localPeer() { return tables().local_peer; }
const std::string& localNamespace() { return tables().local_ns; }
const std::string& localPeerMetadataHeader() { return tables().md_header; }
const std::string& localPeerIdHeader() { return tables().id_header; }

PeerStrings peerFromMetadata(const google::protobuf::Struct& md) {
  PeerStrings p;
  p.ns = structString(md, "NAMESPACE");
  p.cluster = structString(md, "CLUSTER_ID");
  p.workload = structString(md, "WORKLOAD_NAME");
  auto it = md.fields().find("LABELS");
  if (it != md.fields().end() && it->second.kind_case() == google::protobuf::Value::kStructValue) {
    const auto& labels = it->second.struct_value();
    // Istio's order: the canonical labels first, then app / version.
    p.app = structString(labels, "app");
    if (p.app.empty()) p.app = structString(labels, "app.kubernetes.io/name");
    p.version = structString(labels, "version");
    if (p.version.empty()) p.version = structString(labels, "app.kubernetes.io/version");
    if (p.workload.empty()) p.workload = structString(labels, "service.istio.io/canonical-name");
  }
  if (p.workload.empty()) p.workload = structString(md, "NAME");  // the pod's name: better than nothing
  return p;
}

uint32_t intern(std::string_view s) {
  std::lock_guard<std::mutex> lock(tables().mu);
  return internLocked(tables(), s);
}

std::string idString(uint32_t id) {
  Tables& t = tables();
  std::lock_guard<std::mutex> lock(t.mu);
  return id < t.strings.size() ? t.strings[id] : std::string("unknown");
}

uint32_t peer(const PeerStrings& ps) {
  Tables& t = tables();
  std::lock_guard<std::mutex> lock(t.mu);
  Peer p{internLocked(t, ps.workload), internLocked(t, ps.ns), internLocked(t, ps.app), internLocked(t, ps.version),
         internLocked(t, ps.cluster)};
  for (uint32_t id : {p.workload, p.ns, p.app, p.version, p.cluster}) {
    if (id == kOverflowId) return 1;
  }
  auto it = t.peer_ids.find(p);
  if (it != t.peer_ids.end()) return it->second;
  if (t.peers.size() >= stringCap(t)) return 1;
  const auto id = static_cast<uint32_t>(t.peers.size());
  t.peers.push_back(p);
  t.peer_ids.emplace(p, id);
  return id;
}

std::string_view istioClusterHost(std::string_view name) {
  // direction|port|subset|fqdn
  if (!name.starts_with("outbound|") && !name.starts_with("inbound|")) return {};
  size_t bar = 0;
  for (int i = 0; i < 3; ++i) {
    bar = name.find('|', bar);
    if (bar == std::string_view::npos) return {};
    ++bar;
  }
  return name.substr(bar);
}

std::string_view spiffeNamespace(std::string_view principal) {
  constexpr std::string_view kScheme = "spiffe://";
  if (!principal.starts_with(kScheme)) return {};
  size_t ns = principal.find("/ns/", kScheme.size());
  if (ns == std::string_view::npos) return {};
  ns += 4;
  size_t end = principal.find('/', ns);
  return principal.substr(ns, end == std::string_view::npos ? std::string_view::npos : end - ns);
}

uint32_t serviceForHost(std::string_view host) {
  if (host.empty()) return kUnknown;
  Tables& t = tables();
  std::string_view name = host, ns = t.local_ns;
  // <name>.<namespace>.svc[.<cluster domain>]
  size_t d1 = host.find('.');
  if (d1 != std::string_view::npos) {
    size_t d2 = host.find('.', d1 + 1);
    std::string_view rest = d2 == std::string_view::npos ? std::string_view() : host.substr(d2 + 1);
    if (rest == "svc" || rest.starts_with("svc.")) {
      name = host.substr(0, d1);
      ns = host.substr(d1 + 1, d2 - d1 - 1);
    }
  }
  std::lock_guard<std::mutex> lock(t.mu);
  Service s{internLocked(t, host), internLocked(t, name), internLocked(t, ns)};
  if (s.host == kOverflowId || s.name == kOverflowId || s.ns == kOverflowId) return 1;
  auto it = t.service_ids.find(s);
  if (it != t.service_ids.end()) return it->second;
  if (t.services.size() >= stringCap(t)) return 1;
  const auto id = static_cast<uint32_t>(t.services.size());
  t.services.push_back(s);
  t.service_ids.emplace(s, id);
  return id;
}

namespace {
// A worker's tables are dropped when configure() ran since (tests reconfigure in one process).
WorkerTable& currentWorkerTable() {
  WorkerTable& w = workerTable();
  Tables& t = tables();
  const uint64_t gen = t.generation.load(std::memory_order_relaxed);
  if (gen != w.generation) {
    std::lock_guard<std::mutex> lock(w.mu);
    w.index.clear();
    w.list.clear();
    w.strings.clear();
    w.services.clear();
    w.peers.clear();
    w.generation = gen;
  }
  return w;
}

uint32_t cacheBound() { return 4 * tables().max_series + 64; }
}  // namespace

uint32_t internCached(std::string_view s) {
  if (s.empty()) return kUnknown;
  WorkerTable& w = currentWorkerTable();
  auto it = w.strings.find(av(s));
  if (it != w.strings.end()) return it->second;
  uint32_t id = intern(s);
  if (w.strings.size() < cacheBound()) w.strings.emplace(std::string(s), id);
  return id;
}

uint32_t serviceCached(std::string_view host) {
  if (host.empty()) return kUnknown;
  WorkerTable& w = currentWorkerTable();
  auto it = w.services.find(av(host));
  if (it != w.services.end()) return it->second;
  uint32_t id = serviceForHost(host);
  if (w.services.size() < cacheBound()) w.services.emplace(std::string(host), id);
  return id;
}

namespace {
// Longest x-envoy-peer-metadata value decoded (Istio's are a few hundred bytes).
constexpr size_t kMaxPeerHeader = 8192;

uint32_t cachedPeer(std::string_view key, uint32_t (*make)(std::string_view)) {
  WorkerTable& w = currentWorkerTable();
  auto it = w.peers.find(av(key));
  if (it != w.peers.end()) return it->second;
  uint32_t id = make(key);
  if (w.peers.size() < cacheBound()) w.peers.emplace(std::string(key), id);
  return id;
}
}  // namespace

uint32_t peerCached(std::string_view key, uint32_t (*make)(std::string_view)) { return cachedPeer(key, make); }

uint32_t peerFromHeaderCached(std::string_view value) {
  if (value.empty() || value.size() > kMaxPeerHeader) return kUnknown;
  return cachedPeer(value, [](std::string_view v) -> uint32_t {
    std::string bytes;
    google::protobuf::Struct md;
    if (!absl::Base64Unescape(av(v), &bytes) || !md.ParseFromString(bytes)) return kUnknown;
    return peer(peerFromMetadata(md));
  });
}

uint32_t peerForNamespaceCached(std::string_view ns) {
  if (ns.empty()) return kUnknown;
  char buf[256];  // "ns:" + namespace (a base64 value never holds ':'), without a heap string per call
  if (ns.size() > sizeof buf - 3) return 1;  // the overflow peer
  std::memcpy(buf, "ns:", 3);
  std::memcpy(buf + 3, ns.data(), ns.size());
  return cachedPeer(std::string_view(buf, ns.size() + 3), [](std::string_view k) -> uint32_t {
    PeerStrings p;
    p.ns = std::string(k.substr(3));
    return peer(p);
  });
}

Series& series(const SeriesKey& key) {
  WorkerTable& w = currentWorkerTable();
  auto it = w.index.find(key);
  if (it != w.index.end()) return *it->second;
  // New to this worker: is it admitted process-wide (or can it be)?
  Tables& t = tables();
  bool admitted = false;
  if (!hasOverflowId(key) && w.index.size() < cacheBound()) {
    std::lock_guard<std::mutex> lock(t.mu);
    auto k = t.keys.find(key);
    if (k != t.keys.end()) {
      admitted = k->second;
    } else {
      uint32_t& count = key.protocol == Protocol::Tcp ? t.tcp_series : t.http_series;
      admitted = count < t.max_series;
      if (admitted) ++count;
      t.keys.emplace(key, admitted);
    }
  }
  if (!admitted) {
    const SeriesKey ok = overflowKey(key);
    auto o = w.index.find(ok);
    Series& s = o != w.index.end() ? *o->second : *w.index.emplace(ok, &addSeries(w, ok, true)).first->second;
    if (w.index.size() < cacheBound()) w.index.emplace(key, &s);
    return s;
  }
  Series& s = addSeries(w, key, false);
  w.index.emplace(key, &s);
  return s;
}

namespace {
void countOverflow(const Series& s) {
  if (s.overflow && tables().have_overflow) inc(tables().overflow);
}
}  // namespace

void recordHttp(const SeriesKey& key, uint64_t duration_us, uint64_t request_bytes, uint64_t response_bytes) {
  Series& s = series(key);
  countOverflow(s);
  bump(s.requests, 1);
  observe(s.duration, s.duration_sum_us, kDurationBounds, static_cast<double>(duration_us) / 1000.0, duration_us);
  observe(s.request_bytes, s.request_bytes_sum, kSizeBounds, static_cast<double>(request_bytes), request_bytes);
  observe(s.response_bytes, s.response_bytes_sum, kSizeBounds, static_cast<double>(response_bytes), response_bytes);
}

void recordTcpOpen(const SeriesKey& key) {
  Series& s = series(key);
  countOverflow(s);
  bump(s.tcp_opened, 1);
}

void recordTcpClose(const SeriesKey& key, uint64_t sent, uint64_t received) {
  Series& s = series(key);
  countOverflow(s);
  bump(s.tcp_closed, 1);
  bump(s.tcp_sent, sent);
  bump(s.tcp_received, received);
}

// ---- rendering ----------------------------------------------------------------------------------

namespace {

struct Sum {
  uint64_t requests = 0;
  uint64_t duration[kDurationBuckets] = {};
  uint64_t duration_sum_us = 0;
  uint64_t request_bytes[kSizeBuckets] = {};
  uint64_t request_bytes_sum = 0;
  uint64_t response_bytes[kSizeBuckets] = {};
  uint64_t response_bytes_sum = 0;
  uint64_t tcp_opened = 0, tcp_closed = 0, tcp_sent = 0, tcp_received = 0;
};

uint64_t rd(const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); }

void addInto(Sum& sum, const Series& s) {
  sum.requests += rd(s.requests);
  for (uint32_t i = 0; i < kDurationBuckets; ++i) sum.duration[i] += rd(s.duration[i]);
  sum.duration_sum_us += rd(s.duration_sum_us);
  for (uint32_t i = 0; i < kSizeBuckets; ++i) {
    sum.request_bytes[i] += rd(s.request_bytes[i]);
    sum.response_bytes[i] += rd(s.response_bytes[i]);
  }
  sum.request_bytes_sum += rd(s.request_bytes_sum);
  sum.response_bytes_sum += rd(s.response_bytes_sum);
  sum.tcp_opened += rd(s.tcp_opened);
  sum.tcp_closed += rd(s.tcp_closed);
  sum.tcp_sent += rd(s.tcp_sent);
  sum.tcp_received += rd(s.tcp_received);
}

void appendEscaped(std::string& out, std::string_view v) {
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
}

std::string flagsText(uint32_t flags) {
  if (flags == 0) return "-";
  std::string out;
  for (int i = 0; i < common::kResponseFlagCount; ++i) {
    if ((flags & (1u << i)) == 0) continue;
    if (!out.empty()) out += ',';
    out += common::kResponseFlagNames[i].short_name;
  }
  return out;
}

// The label set of a key, as `{a="b",...}` without the braces (so `le` can be appended).
std::string labelsOf(const Tables& t, const SeriesKey& k) {
  const bool tcp = k.protocol == Protocol::Tcp;
  auto str = [&](uint32_t id) -> const std::string& { return t.strings[id]; };
  const Peer& src = t.peers[k.src_peer];
  const Peer& dst = t.peers[k.dst_peer];
  const Service& svc = t.services[k.service];
  std::string out;
  auto label = [&](std::string_view name, std::string_view value) {
    if (!out.empty()) out += ',';
    out += name;
    out += "=\"";
    appendEscaped(out, value);
    out += '"';
  };
  const bool of = k.overflow != 0;
  label("reporter", k.reporter == Reporter::Source ? "source" : "destination");
  label("source_workload", str(src.workload));
  label("source_workload_namespace", str(src.ns));
  label("source_principal", str(k.src_principal));
  label("source_app", str(src.app));
  label("source_version", str(src.version));
  label("source_cluster", str(src.cluster));
  label("destination_workload", str(dst.workload));
  label("destination_workload_namespace", str(dst.ns));
  label("destination_principal", str(k.dst_principal));
  label("destination_app", str(dst.app));
  label("destination_version", str(dst.version));
  label("destination_service", str(svc.host));
  label("destination_service_name", str(svc.name));
  label("destination_service_namespace", str(svc.ns));
  label("destination_cluster", str(dst.cluster));
  label("request_protocol", of ? "overflow" : (tcp ? "tcp" : (k.protocol == Protocol::Grpc ? "grpc" : "http")));
  if (!tcp) {
    label("response_code", of ? "overflow" : std::to_string(k.response_code));
    label("grpc_response_status", of ? "overflow" : (k.grpc_status < 0 ? "" : std::to_string(k.grpc_status)));
  }
  label("response_flags", of ? "overflow" : flagsText(k.flags));
  label("connection_security_policy",
        of ? "overflow" : (k.security == Security::MutualTls ? "mutual_tls" : (k.security == Security::None ? "none" : "unknown")));
  return out;
}

void header(std::string& out, const char* name, const char* type, const char* help) {
  absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
}

std::string bound(double b) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", b);
  std::string s = buf;
  // Prometheus clients print bounds as floats ("1000.0", "1e+06"): keep %g's form but never "1e+06"
  // style ambiguity for integers below 1e15.
  if (b >= 1e6 && b == static_cast<double>(static_cast<uint64_t>(b))) s = std::to_string(static_cast<uint64_t>(b));
  return s;
}

template <size_t N>
void histogram(std::string& out, const char* name, const std::vector<std::pair<std::string, const Sum*>>& rows,
               uint64_t (Sum::*buckets)[N], uint64_t Sum::*sum, const double* bounds, double sum_scale) {
  for (const auto& [labels, s] : rows) {
    uint64_t cum = 0;
    for (size_t i = 0; i < N; ++i) {
      cum += (s->*buckets)[i];
      absl::StrAppend(&out, name, "_bucket{", labels, ",le=\"", i + 1 < N ? bound(bounds[i]) : std::string("+Inf"),
                      "\"} ", cum, "\n");
    }
    char sbuf[48];
    std::snprintf(sbuf, sizeof sbuf, "%.12g", static_cast<double>(s->*sum) * sum_scale);
    absl::StrAppend(&out, name, "_sum{", labels, "} ", sbuf, "\n", name, "_count{", labels, "} ", cum, "\n");
  }
}

}  // namespace

std::string renderPrometheus() {
  Tables& t = tables();
  std::lock_guard<std::mutex> lock(t.mu);
  // Sum the workers' series by key (ordered, so the output is stable).
  std::map<std::string, Sum> http, tcp;
  for (const auto& w : t.workers) {
    std::lock_guard<std::mutex> wl(w->mu);
    if (w->generation != t.generation) continue;
    for (const auto& [key, s] : w->list) {
      auto& into = key.protocol == Protocol::Tcp ? tcp : http;
      addInto(into[labelsOf(t, key)], s);
    }
  }
  std::string out;
  if (!http.empty()) {
    std::vector<std::pair<std::string, const Sum*>> rows;
    for (const auto& [l, s] : http) rows.emplace_back(l, &s);
    header(out, "istio_requests_total", "counter", "Requests, by source and destination workload (Istio's standard metric).");
    for (const auto& [l, s] : rows) absl::StrAppend(&out, "istio_requests_total{", l, "} ", s->requests, "\n");
    header(out, "istio_request_duration_milliseconds", "histogram", "Request duration in milliseconds, start to end of the response.");
    histogram(out, "istio_request_duration_milliseconds", rows, &Sum::duration, &Sum::duration_sum_us, kDurationBounds, 0.001);
    header(out, "istio_request_bytes", "histogram", "Request body bytes received from the downstream.");
    histogram(out, "istio_request_bytes", rows, &Sum::request_bytes, &Sum::request_bytes_sum, kSizeBounds, 1.0);
    header(out, "istio_response_bytes", "histogram", "Response body bytes sent to the downstream.");
    histogram(out, "istio_response_bytes", rows, &Sum::response_bytes, &Sum::response_bytes_sum, kSizeBounds, 1.0);
  }
  if (!tcp.empty()) {
    struct Fam {
      const char* name;
      const char* help;
      uint64_t Sum::*field;
    };
    const Fam fams[] = {
        {"istio_tcp_sent_bytes_total", "Bytes sent to the downstream during TCP sessions (counted at close).", &Sum::tcp_sent},
        {"istio_tcp_received_bytes_total", "Bytes received from the downstream during TCP sessions (counted at close).",
         &Sum::tcp_received},
        {"istio_tcp_connections_opened_total", "TCP connections opened.", &Sum::tcp_opened},
        {"istio_tcp_connections_closed_total", "TCP connections closed.", &Sum::tcp_closed},
    };
    for (const Fam& f : fams) {
      header(out, f.name, "counter", f.help);
      for (const auto& [l, s] : tcp) absl::StrAppend(&out, f.name, "{", l, "} ", s.*(f.field), "\n");
    }
  }
  return out;
}

// ---- which tcp_proxy sessions record ------------------------------------------------------------

namespace {
// Connections that passed an istio.stats network filter, by id, on this worker: the read filter runs
// just before the terminal filter on the same thread, so a small direct-mapped table suffices.
constexpr size_t kTcpMarks = 256;
thread_local uint64_t tl_tcp_marks[kTcpMarks] = {};
}  // namespace

void markTcpStats(uint64_t id) { tl_tcp_marks[id % kTcpMarks] = id + 1; }
bool takeTcpStats(uint64_t id) {
  uint64_t& m = tl_tcp_marks[id % kTcpMarks];
  if (m != id + 1) return false;
  m = 0;
  return true;
}

}  // namespace strait::stats::istio
