#include "proxy/server/admin.h"

#include <malloc.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "certs/secret_manager.h"
#include "absl/strings/str_split.h"
#include "proxy/accesslog/log_file.h"
#include "proxy/common/json.h"
#include "proxy/common/log.h"
#include "proxy/config/bootstrap.h"
#include "proxy/server/config_dump.h"
#include "proxy/server/explain.h"
#include "proxy/server/server.h"
#include "proxy/server/xds_applier.h"
#include "proxy/stats/istio_metrics.h"
#include "re2/re2.h"

namespace strait::server {

namespace {

// The stats the bootstrap's stats_config.stats_matcher lets the admin show (all without one).
// The stats a scrape shows: those the bootstrap's stats_matcher lets through and, for /stats, that match
// ?filter=. Filtered while the store is read, so what is left out is never copied.
std::vector<stats::Store::Value> visibleStats(const stats::Store& store, const config::StatsMatcher* m,
                                              const re2::RE2* filter = nullptr) {
  if (m == nullptr && filter == nullptr) return store.snapshot();
  return store.snapshot([m, filter](std::string_view name) {
    return (m == nullptr || m->shows(name)) &&
           (filter == nullptr || re2::RE2::PartialMatch(re2::StringPiece(name.data(), name.size()), *filter));
  });
}

std::string jsonEscape(const std::string& s) { return common::jsonString(s); }

std::string percentDecode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && std::isxdigit(static_cast<unsigned char>(s[i + 1])) &&
        std::isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      out.push_back(static_cast<char>(std::stoi(std::string(s.substr(i + 1, 2)), nullptr, 16)));
      i += 2;
    } else if (s[i] == '+') {
      out.push_back(' ');
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

std::string addressJson(const network::Address& a) {
  return absl::StrCat("{\"socket_address\":{\"address\":", jsonEscape(a.ip()), ",\"port_value\":", a.port(), "}}");
}

const char* kPaths[][2] = {
    {"/", "the live service map and this pod's clusters, listeners, certificates (HTML)"},
    {"/help", "this list"},
    {"/graph", "the live service map's nodes and edges over the last minute (?format=json)"},
    {"/graph/events", "the same as server-sent events, one snapshot a second (?count=N: N events, then the end)"},
    {"/ready", "200 LIVE when serving, 503 otherwise"},
    {"/server_info", "version, state, uptime, node, options (JSON)"},
    {"/memory", "heap in use and held by the allocator, RSS (JSON)"},
    {"/stats", "all stats as 'name: value' (?filter=RE2, ?format=json)"},
    {"/stats/prometheus", "stats in Prometheus text format"},
    {"/config_dump", "the effective configuration (JSON)"},
    {"/clusters", "clusters and hosts (?format=json)"},
    {"/explain", "the listener, chain, virtual host, route and cluster a request would take, and why not the others "
                 "(?host=&path=[&method=&header=name:value&listener=|address=|port=]; no host/path: TCP; ?format=text)"},
    {"/listeners", "listeners and bound addresses (?format=json)"},
    {"/certs", "certificates in use: identity (SANs), serial, validity (JSON; never a key)"},
    {"/logging", "POST ?level=LEVEL to change the log level"},
    {"/quitquitquit", "POST: drain and exit"},
    {"/drain_listeners", "POST: drain listeners (?graceful: keep accepting for the drain time; ?inboundonly)"},
    {"/reopen_logs", "POST: reopen the access log files (after logrotate moved them)"},
};

std::string pathList() {
  std::string out = "admin commands are:\n";
  for (const auto& p : kPaths) out += absl::StrCat("  ", p[0], ": ", p[1], "\n");
  return out;
}

}  // namespace

std::string prometheusStats(Server& server) {
  server.uptimeSeconds();
  const config::SnapshotConstSharedPtr snap = server.snapshot();  // held while its tag rules are used
  std::string out =
      stats::renderPrometheus(visibleStats(server.store(), snap->stats_matcher.get()), snap->tag_rules.get());
  out += stats::istio::renderPrometheus();  // Istio's standard metrics (istio_metrics.h), when any were recorded
  return out;
}

AdminServer::AdminServer(Server& server)
    : server_(server),
      http_(server.dispatcher(), [this](const std::string& method, const std::string& url, const LocalHttpServer::Respond& respond) {
        respond(handle(method, url));
      }),
      live_(server) {}
AdminServer::~AdminServer() { stop(); }

bool AdminServer::bind(const network::Address& address, std::string* error) { return http_.bind(address, error); }

AdminServer::Response AdminServer::handle(const std::string& method, const std::string& url) {
  std::string path = url;
  std::map<std::string, std::string> query;
  QueryParams params;  // in order, repeated names kept (/explain's header=)
  size_t q = url.find('?');
  if (q != std::string::npos) {
    path = url.substr(0, q);
    for (absl::string_view akv : absl::StrSplit(url.substr(q + 1), '&', absl::SkipEmpty())) {
      std::string_view kv(akv.data(), akv.size());
      size_t eq = kv.find('=');
      if (eq == std::string_view::npos) {
        query[percentDecode(kv)] = "";
        params.emplace_back(percentDecode(kv), "");
      } else {
        query[percentDecode(kv.substr(0, eq))] = percentDecode(kv.substr(eq + 1));
        params.emplace_back(percentDecode(kv.substr(0, eq)), percentDecode(kv.substr(eq + 1)));
      }
    }
  }
  const bool json = query.count("format") && query["format"] == "json";
  const auto& snap = server_.snapshot();
  Response r;

  if (path == "/ready") {
    r.status = server_.ready(&r.body) ? 200 : 503;
    return r;
  }
  if (path == "/certs") {
    r.content_type = "application/json";
    r.body = certs::SecretManager::get().certsJson();
    return r;
  }
  if (path == "/memory") {
    // Envoy's field names where they mean the same; glibc has no page heap, so "pageheap_free" is the
    // free memory malloc still holds (it goes back to the system on trim).
    const struct mallinfo2 mi = mallinfo2();
    const uint64_t heap = mi.arena + mi.hblkhd;
    long rss_pages = 0;
    if (FILE* f = std::fopen("/proc/self/statm", "r")) {
      long size_pages = 0;
      if (std::fscanf(f, "%ld %ld", &size_pages, &rss_pages) != 2) rss_pages = 0;
      std::fclose(f);
    }
    r.content_type = "application/json";
    r.body = absl::StrCat("{\"allocated\":\"", mi.uordblks + mi.hblkhd, "\",\"heap_size\":\"", heap,
                          "\",\"pageheap_free\":\"", mi.fordblks, "\",\"releasable\":\"", mi.keepcost,
                          "\",\"total_physical_bytes\":\"", static_cast<uint64_t>(rss_pages) * static_cast<uint64_t>(sysconf(_SC_PAGESIZE)), "\"}\n");
    return r;
  }
  if (path == "/server_info") {
    const auto& o = server_.options();
    r.content_type = "application/json";
    r.body = absl::StrCat(
        "{\"version\":\"strait/", STRAIT_VERSION, "\",\"state\":\"", server_.stateName(),
        "\",\"uptime_current_epoch\":\"", server_.uptimeSeconds(), "s\",\"uptime_all_epochs\":\"",
        server_.uptimeSeconds(), "s\",\"node\":{\"id\":", jsonEscape(snap->node_id), ",\"cluster\":",
        jsonEscape(snap->node_cluster), "},\"command_line_options\":{\"concurrency\":", o.concurrency,
        ",\"config_path\":", jsonEscape(o.config_path), ",\"log_level\":\"",
        common::logLevelName(common::currentLogLevel()), "\",\"drain_time\":\"", o.drain_time_s,
        "s\",\"mode\":\"", o.mode == Mode::Serve ? "Serve" : "Validate", "\",\"command_line\":",
        jsonEscape(o.command_line), "}}\n");
    return r;
  }
  if (path == "/stats") {
    server_.uptimeSeconds();
    std::unique_ptr<re2::RE2> filter;
    if (query.count("filter")) {
      filter = std::make_unique<re2::RE2>(query["filter"]);
      if (!filter->ok()) {
        r.status = 400;
        r.body = absl::StrCat("invalid regex: ", filter->error(), "\n");
        return r;
      }
    }
    auto values = visibleStats(server_.store(), snap->stats_matcher.get(), filter.get());
    if (json) {
      r.content_type = "application/json";
      r.body = "{\"stats\":[";
      bool first = true;
      for (const auto& v : values) {
        absl::StrAppend(&r.body, first ? "" : ",", "{\"name\":", jsonEscape(v.name), ",\"value\":", v.value, "}");
        first = false;
      }
      r.body += "]}\n";
      return r;
    }
    for (const auto& v : values) {
      if (v.type == stats::StatType::Histogram) {
        absl::StrAppend(&r.body, v.name, ": ", stats::histogramSummary(v), "\n");
      } else {
        absl::StrAppend(&r.body, v.name, ": ", v.value, "\n");
      }
    }
    return r;
  }
  if (path == "/stats/prometheus") {
    r.content_type = "text/plain; version=0.0.4";
    r.body = prometheusStats(server_);
    return r;
  }
  if (path == "/config_dump") return configDump(server_, query);
  if (path == "/explain") return explain(server_, params);
  if (path == "/clusters") {
    auto& store = server_.store();
    // Envoy's health_flags text: "healthy", or each reason as "/<flag>" run together.
    auto healthFlags = [](const upstream::Host& h) {
      const uint32_t f = h.healthFlags();
      if ((f & ~upstream::kDegradedEdsHealth) == 0 && (f & upstream::kDegradedEdsHealth) == 0) return std::string("healthy");
      std::string out;
      if (f & upstream::kFailedActiveHc) out += "/failed_active_hc";
      if (f & upstream::kFailedOutlierCheck) out += "/failed_outlier_check";
      if (f & upstream::kFailedEdsHealth) out += "/failed_eds_health";
      if (f & upstream::kDegradedEdsHealth) out += "/degraded_eds_health";
      if (f & upstream::kEdsDraining) out += "/pending_dynamic_removal";
      if (f & upstream::kPendingActiveHc) out += "/pending_active_hc";
      return out;
    };
    auto edsStatus = [](const upstream::Host& h) {
      const uint32_t f = h.healthFlags();
      return (f & upstream::kFailedEdsHealth) ? "UNHEALTHY" : (f & upstream::kEdsDraining) ? "DRAINING"
             : (f & upstream::kDegradedEdsHealth) ? "DEGRADED" : "HEALTHY";
    };
    if (json) {
      r.content_type = "application/json";
      r.body = "{\"cluster_statuses\":[";
      bool first_c = true;
      for (const auto& c : snap->clusters) {
        absl::StrAppend(&r.body, first_c ? "" : ",", "{\"name\":", jsonEscape(c->name), ",\"host_statuses\":[");
        first_c = false;
        bool first_h = true;
        for (const auto& hp : *config::hostsInForce(*c)) {  // a DNS cluster's newest resolution
          const upstream::Host& h = *hp;
          const uint32_t f = h.healthFlags();
          absl::StrAppend(&r.body, first_h ? "" : ",", "{\"address\":", addressJson(h.address),
                          ",\"stats\":[{\"name\":\"cx_total\",\"value\":\"", store.value(h.cx_total),
                          "\"},{\"name\":\"cx_active\",\"value\":\"", store.value(h.cx_active),
                          "\"},{\"name\":\"cx_connect_fail\",\"value\":\"", store.value(h.cx_connect_fail),
                          "\"},{\"name\":\"rq_total\",\"value\":\"", store.value(h.rq_total),
                          "\"},{\"name\":\"rq_error\",\"value\":\"", store.value(h.rq_error),
                          "\"},{\"name\":\"rq_active\",\"value\":\"", store.value(h.rq_active),
                          "\"}],\"health_status\":{\"eds_health_status\":\"", edsStatus(h), "\"",
                          (f & upstream::kFailedOutlierCheck) ? ",\"failed_outlier_check\":true" : "",
                          (f & upstream::kFailedActiveHc) ? ",\"failed_active_health_check\":true" : "",
                          (f & upstream::kPendingActiveHc) ? ",\"pending_active_hc\":true" : "",
                          "},\"weight\":", h.weight.load(std::memory_order_relaxed), ",\"priority\":", h.priority,
                          ",\"locality\":{\"region\":", jsonEscape(h.locality ? h.locality->region : ""),
                          ",\"zone\":", jsonEscape(h.locality ? h.locality->zone : ""), "}}");
          first_h = false;
        }
        r.body += "]}";
      }
      r.body += "]}\n";
      return r;
    }
    for (const auto& c : snap->clusters) {
      absl::StrAppend(&r.body, c->name, "::observability_name::", c->name, "\n");
      for (const auto& [prio, l] : {std::pair<const char*, const upstream::ResourceLimits&>{"default", c->limits()},
                                    std::pair<const char*, const upstream::ResourceLimits&>{"high", c->highLimits()}}) {
        absl::StrAppend(&r.body, c->name, "::", prio, "_priority::max_connections::", l.max_connections, "\n", c->name,
                        "::", prio, "_priority::max_pending_requests::", l.max_pending_requests, "\n", c->name,
                        "::", prio, "_priority::max_requests::", l.max_requests, "\n", c->name,
                        "::", prio, "_priority::max_retries::", l.max_retries, "\n");
      }
      for (const auto& hp : *config::hostsInForce(*c)) {
        const upstream::Host& h = *hp;
        const std::string p = absl::StrCat(c->name, "::", h.address.asString(), "::");
        absl::StrAppend(&r.body, p, "cx_active::", store.value(h.cx_active), "\n", p, "cx_connect_fail::",
                        store.value(h.cx_connect_fail), "\n", p, "cx_total::", store.value(h.cx_total), "\n", p,
                        "rq_active::", store.value(h.rq_active), "\n", p, "rq_error::", store.value(h.rq_error), "\n", p,
                        "rq_total::", store.value(h.rq_total), "\n", p, "health_flags::", healthFlags(h), "\n", p,
                        "weight::", h.weight.load(std::memory_order_relaxed), "\n", p, "region::",
                        h.locality ? h.locality->region : "", "\n", p, "zone::", h.locality ? h.locality->zone : "",
                        "\n", p, "sub_zone::", h.locality ? h.locality->sub_zone : "", "\n", p, "priority::", h.priority,
                        "\n");
        if (const auto* od = c->runtime ? c->runtime->outlierDetector() : nullptr) {
          absl::StrAppend(&r.body, p, "success_rate::", od->hostSuccessRate(h, upstream::OutlierOrigin::External), "\n");
        }
      }
    }
    return r;
  }
  if (path == "/listeners") {
    if (json) {
      r.content_type = "application/json";
      r.body = "{\"listener_statuses\":[";
      bool first = true;
      for (const auto& b : server_.boundListeners()) {
        absl::StrAppend(&r.body, first ? "" : ",", "{\"name\":", jsonEscape(b.listener->name),
                        ",\"local_address\":", addressJson(b.address), "}");
        first = false;
      }
      r.body += "]}\n";
      return r;
    }
    for (const auto& b : server_.boundListeners()) {
      absl::StrAppend(&r.body, b.listener->name, "::", b.address.asString(), "\n");
    }
    return r;
  }
  if (path == "/logging") {
    if (query.count("level")) {
      if (method != "POST") {
        return Response{405, "text/plain", "use POST to change the log level\n"};
      }
      common::LogLevel level;
      if (!common::parseLogLevel(query["level"], level)) {
        return Response{400, "text/plain",
                        absl::StrCat("unknown level '", query["level"],
                                     "': use trace, debug, info, warning, error, critical or off\n")};
      }
      common::setLogLevel(level);
      LOG_INFO("log level set to %s", common::logLevelName(level));
    }
    r.body = absl::StrCat("active loggers:\n  strait: ", common::logLevelName(common::currentLogLevel()), "\n");
    return r;
  }
  if (path == "/drain_listeners") {
    if (method != "POST") return Response{405, "text/plain", "use POST\n"};
    const bool inbound_only = query.count("inboundonly") > 0;
    const bool graceful = query.count("graceful") > 0;
    server_.dispatcher().post([this, inbound_only, graceful] { server_.drainListeners(inbound_only, graceful); });
    r.body = "OK\n";
    return r;
  }
  if (path == "/reopen_logs") {
    if (method != "POST") return Response{405, "text/plain", "use POST\n"};
    accesslog::LogFiles::get().reopenAll();  // returns once the writer thread has reopened them
    r.body = "OK\n";
    return r;
  }
  if (path == "/quitquitquit") {
    if (method != "POST") return Response{405, "text/plain", "use POST\n"};
    server_.dispatcher().post([this] { server_.startDrain("/quitquitquit"); });
    r.body = "OK\n";
    return r;
  }
  if (path == "/help") {
    r.body = pathList();
    return r;
  }
  if (path == "/") {
    std::vector<std::pair<std::string, std::string>> paths;
    for (const auto& p : kPaths) paths.emplace_back(p[0], p[1]);
    r.content_type = "text/html; charset=UTF-8";
    r.body = live_.page(paths);
    return r;
  }
  if (path == "/graph") {
    r.content_type = "application/json";
    r.body = live_.json();
    return r;
  }
  if (path == "/graph/events") {
    uint32_t count = 0;
    if (query.count("count") && (!absl::SimpleAtoi(query["count"], &count) || count > 86400)) {
      return Response{400, "text/plain", "count: a number of events from 0 (no end) to 86400\n"};
    }
    return live_.events(count);
  }
  r.status = 404;
  r.body = absl::StrCat("unknown path ", path, "\n", pathList());
  return r;
}

}  // namespace strait::server
