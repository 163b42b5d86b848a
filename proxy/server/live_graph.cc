#include "proxy/server/live_graph.h"

#include <cstdio>
#include <map>

#include "absl/strings/str_cat.h"
#include "proxy/common/json.h"
#include "proxy/common/response_flags.h"
#include "proxy/server/live_graph_page.h"
#include "proxy/server/server.h"

namespace strait::server {

namespace {

namespace live = stats::live;

// A number with up to 3 decimals, as JSON ("12.5", "0").
std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", v);
  std::string s = buf;
  while (!s.empty() && s.back() == '0') s.pop_back();
  if (!s.empty() && s.back() == '.') s.pop_back();
  return s.empty() ? "0" : s;
}

std::string nodeId(const live::Edge& e) {
  if (e.direction == live::Direction::Inbound) return "caller:" + e.peer;
  return e.identity.empty() ? "callee:" + e.peer : absl::StrCat("callee:", e.peer, "|", e.identity);
}

const char* kindName(const live::Edge& e) {
  if (e.overflow) return "mixed";
  return e.kind == live::Kind::Tcp ? "tcp" : "http";
}

std::string htmlEscape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

}  // namespace

std::string liveGraphJson(const live::Snapshot& snap, const std::string& self) {
  using common::jsonString;
  std::string nodes = absl::StrCat("{\"id\":\"self\",\"role\":\"self\",\"label\":", jsonString(self), "}");
  std::map<std::string, const live::Edge*> seen;
  std::string edges;
  for (const live::Edge& e : snap.edges) {
    const std::string id = nodeId(e);
    const bool inbound = e.direction == live::Direction::Inbound;
    if (seen.emplace(id, &e).second) {
      absl::StrAppend(&nodes, ",{\"id\":", jsonString(id), ",\"role\":\"", inbound ? "caller" : "callee",
                      "\",\"label\":", jsonString(e.peer), ",\"identity\":", jsonString(e.identity), "}");
    }
    const live::EdgeFigures& f = e.figures;
    const bool tcp = e.kind == live::Kind::Tcp && !e.overflow;
    const uint64_t events = tcp ? f.connections : f.requests;
    absl::StrAppend(&edges, edges.empty() ? "" : ",", "{\"from\":", jsonString(inbound ? id : "self"),
                    ",\"to\":", jsonString(inbound ? "self" : id), ",\"direction\":\"", inbound ? "inbound" : "outbound",
                    "\",\"protocol\":\"", kindName(e), "\",\"peer\":", jsonString(e.peer),
                    ",\"identity\":", jsonString(e.identity), ",\"overflow\":", e.overflow ? "true" : "false",
                    ",\"requests\":", f.requests, ",\"errors\":", f.errors,
                    ",\"rps\":", num(static_cast<double>(f.requests) / live::kWindowSeconds),
                    ",\"error_rate\":", num(events ? static_cast<double>(f.errors) / static_cast<double>(events) : 0));
    if (f.requests > 0) {
      absl::StrAppend(&edges, ",\"p50_ms\":", num(live::percentileUs(f.latency, 0.5) / 1000), ",\"p99_ms\":",
                      num(live::percentileUs(f.latency, 0.99) / 1000));
    } else {
      edges += ",\"p50_ms\":null,\"p99_ms\":null";
    }
    absl::StrAppend(&edges, ",\"connections\":", f.connections, ",\"bytes_in\":", f.bytes_in, ",\"bytes_out\":", f.bytes_out,
                    "}");
  }
  std::string errors;
  for (const live::ErrorEvent& ev : snap.errors) {
    const live::Edge* e = ev.slot < snap.all_edges.size() ? &snap.all_edges[ev.slot] : nullptr;
    std::string flags;
    common::appendResponseFlags(flags, ev.flags);
    absl::StrAppend(&errors, errors.empty() ? "" : ",", "{\"timestamp_ms\":", ev.unix_ms,
                    ",\"edge\":", jsonString(e ? nodeId(*e) : "unknown"),
                    ",\"direction\":\"", e && e->direction == live::Direction::Outbound ? "outbound" : "inbound",
                    "\",\"code\":", ev.code, ",\"flags\":", jsonString(flags), "}");
  }
  return absl::StrCat("{\"timestamp_ms\":", snap.unix_ms, ",\"window_seconds\":", live::kWindowSeconds,
                      ",\"enabled\":", live::enabled() ? "true" : "false", ",\"self\":", jsonString(self),
                      ",\"nodes\":[", nodes, "],\"edges\":[", edges, "],\"recent_errors\":[", errors, "]}\n");
}

LiveGraph::LiveGraph(Server& server) : server_(server) {}
LiveGraph::~LiveGraph() { stop(); }

std::string LiveGraph::json() {
  const auto snap = server_.snapshot();
  return liveGraphJson(live::snapshot(), snap->node_id.empty() ? std::string("this workload") : snap->node_id);
}

std::string LiveGraph::page(const std::vector<std::pair<std::string, std::string>>& paths) {
  std::string list;
  for (const auto& [path, what] : paths) {
    absl::StrAppend(&list, "<tr><td><a href=\"", htmlEscape(path), "\">", htmlEscape(path), "</a></td><td>",
                    htmlEscape(what), "</td></tr>\n");
  }
  std::string out(kLiveGraphPage);
  const std::string marker = "<!--ENDPOINTS-->";
  const size_t at = out.find(marker);
  if (at != std::string::npos) out.replace(at, marker.size(), list);
  return out;
}

LocalHttpResponse LiveGraph::events(uint32_t count) {
  const auto gone = [](const Client& c) { return !c.stream.open(); };
  if (streams_.size() >= kMaxStreams) std::erase_if(streams_, gone);
  if (streams_.size() >= kMaxStreams || server_.state() == Server::State::Draining) {
    return LocalHttpResponse{503, "text/plain", "too many /graph/events clients, or draining\n"};
  }
  LocalHttpResponse r;
  r.content_type = "text/event-stream";
  // The first snapshot at once; retry: how long a browser waits before reconnecting.
  r.body = absl::StrCat("retry: 2000\n\ndata: ", json(), "\n");
  r.stream = [this, count](LocalHttpStream s) {
    if (count == 1) {
      s.end();
      return;
    }
    streams_.push_back(Client{std::move(s), count == 0 ? 0 : count - 1});
    if (!timer_) timer_ = server_.dispatcher().createTimer([this] { tick(); });
    if (!timer_->enabled()) timer_->enable(kIntervalMs);
  };
  return r;
}

void LiveGraph::tick() {
  if (server_.state() == Server::State::Draining) {
    stop();  // the streams end with the drain (a browser would otherwise hold the admin to the last)
    return;
  }
  std::erase_if(streams_, [](const Client& c) { return !c.stream.open(); });
  if (streams_.empty()) return;  // the timer rests until the next client
  const std::string event = absl::StrCat("data: ", json(), "\n");  // json() ends in "\n": a blank line ends the event
  std::erase_if(streams_, [&](Client& c) {
    if (!c.stream.send(event, kMaxUnsentBytes)) return true;
    if (c.left == 0 || --c.left > 0) return false;
    c.stream.end();
    return true;
  });
  if (!streams_.empty()) timer_->enable(kIntervalMs);
}

void LiveGraph::stop() {
  for (auto& c : streams_) c.stream.end();
  streams_.clear();
  if (timer_) timer_->disable();
}

}  // namespace strait::server
