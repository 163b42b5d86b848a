#include "proxy/tracing/span_exporter.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"

#include "proxy/common/buffer.h"
#include "proxy/common/log.h"
#include "proxy/config/snapshot.h"
#include "proxy/event/dispatcher.h"
#include "proxy/network/connection.h"
#include "proxy/stats/stats.h"

namespace strait::tracing {

namespace {

struct Exporter {
  ExporterSettings settings;
  uint32_t next_host = 0;  // round robin over the collector cluster's hosts
  size_t in_flight = 0;
};

class ExportRequest;

// Everything the exporter shares with the workers; `mu` guards queue, exporters' settings and stop.
struct State {
  std::mutex mu;
  std::vector<SpanRecord> queue;
  std::vector<Exporter> exporters;
  bool stop = false;
  std::atomic<bool> wake_posted{false};
  std::thread thread;
  event::Dispatcher* dispatcher = nullptr;  // the exporter thread's; set before the thread starts
  stats::Store* store = nullptr;
  stats::Counter spans_sent, spans_dropped, timer_flushed, reports_sent, reports_failed;
  // Exporter thread only.
  std::vector<SpanRecord> sending;
  std::list<std::unique_ptr<ExportRequest>> requests;
  event::TimerPtr timer;
};

State& state() {
  static auto* s = new State;
  return *s;
}

void flushQueue(bool from_timer);

// One POST on the exporter thread: connect, send, read the status line, done. Deletes itself (deferred)
// when it ends; `timeout_ms` bounds all of it. `tls` is the collector host's transport socket (the
// cluster's transport_socket or its matching transport_socket_matches entry), null for plaintext: the
// spans then go in TLS (mTLS with the cluster's certificate), as the cluster's traffic does, and never
// in plaintext to a host that asks for TLS.
class ExportRequest : public event::DeferredDeletable, public network::ConnectionCallbacks {
 public:
  ExportRequest(event::Dispatcher& d, uint32_t exporter, const network::Address& host,
                const network::TransportSocketFactorySharedPtr& tls, std::shared_ptr<const config::Cluster> cluster,
                const std::string& bytes, size_t spans, uint64_t timeout_ms)
      : dispatcher_(d),
        exporter_(exporter),
        spans_(spans),
        cluster_(std::move(cluster)),
        conn_(std::make_unique<network::Connection>(d, host)),
        timer_(d.createTimer([this] { done(false, "timed out"); })) {
    conn_->setCallbacks(this);
    if (tls) {
      network::TransportSocketOptions options;
      options.stats = &cluster_->stats.ssl;  // cluster.<collector>.ssl.*, as for its other traffic
      options.alpn_fallback = "http/1.1";
      network::TransportSocketPtr socket = tls->create(options);
      if (!socket) {
        // The cluster's certificate has not come (SDS) yet: the batch is dropped, not sent in the clear.
        // failConnect() reports ConnectFailed from the loop, as for a refused connection.
        failed_before_connect_ = "no TLS certificate yet";
        conn_->failConnect();
        timer_->enable(timeout_ms);
        return;
      }
      conn_->setTransportSocket(std::move(socket));
    }
    common::Buffer b;
    b.add(bytes);
    conn_->write(b, false);
    conn_->connect(timeout_ms);
    timer_->enable(timeout_ms);
  }
  ~ExportRequest() override {
    conn_->setCallbacks(nullptr);
    conn_->close(network::CloseType::NoFlush);
  }

  void onData(network::Connection&, common::Buffer& data, bool end_stream) override {
    // Only the status line matters: "HTTP/1.1 200 OK".
    if (head_.size() < 64) head_ += data.toString().substr(0, 64);
    data.drain(data.length());
    const size_t eol = head_.find("\r\n");
    if (eol != std::string::npos) {
      const bool ok = head_.size() >= 12 && head_.compare(0, 5, "HTTP/") == 0 && head_[9] == '2';
      done(ok, ok ? "" : absl::StrCat("answered '", head_.substr(0, eol), "'"));
    } else if (end_stream) {
      done(false, "closed before answering");
    }
  }
  void onEvent(network::Connection&, network::ConnectionEvent e) override {
    switch (e) {
      case network::ConnectionEvent::Connected: conn_->startReading(); break;
      case network::ConnectionEvent::ConnectFailed: done(false, "connection refused"); break;
      case network::ConnectionEvent::ConnectTimeout: done(false, "connect timed out"); break;
      default: {
        const std::string_view tls_why = conn_->transportFailureReason();
        done(false, tls_why.empty() ? std::string("connection closed") : std::string("TLS: ").append(tls_why));
        break;
      }
    }
  }

 private:
  void done(bool ok, std::string why) {
    if (finished_) return;
    if (!failed_before_connect_.empty()) why = failed_before_connect_;
    finished_ = true;
    timer_->disable();
    State& s = state();
    stats::inc(ok ? s.reports_sent : s.reports_failed);
    stats::inc(ok ? s.spans_sent : s.spans_dropped, static_cast<int64_t>(spans_));
    std::string cluster;
    {
      std::lock_guard lk(s.mu);
      Exporter& e = s.exporters[exporter_];
      --e.in_flight;
      cluster = e.settings.cluster;
    }
    if (!ok) LOG_DEBUG("tracing: export of %zu spans to cluster '%s' failed: %s", spans_, cluster.c_str(), why.c_str());
    for (auto it = s.requests.begin(); it != s.requests.end(); ++it) {
      if (it->get() == this) {
        dispatcher_.deferredDelete(std::move(*it));
        s.requests.erase(it);
        break;
      }
    }
  }

  event::Dispatcher& dispatcher_;
  uint32_t exporter_;
  size_t spans_;
  std::shared_ptr<const config::Cluster> cluster_;  // its TLS stats are counted while the request lives
  network::ConnectionPtr conn_;
  event::TimerPtr timer_;
  std::string head_;
  std::string failed_before_connect_;
  bool finished_ = false;
};

// OTLP's wire format, written directly: building the generated messages cost about 27k instructions
// per span (an object and several strings per attribute); this costs a small fraction of that. The
// field numbers are those of xds/api/opentelemetry/proto/... (which the tests decode with).
enum WireType : uint32_t { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2 };

size_t varintSize(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}
void putVarint(std::string& o, uint64_t v) {
  while (v >= 0x80) {
    o.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  o.push_back(static_cast<char>(v));
}
void putTag(std::string& o, uint32_t field, WireType t) { putVarint(o, (field << 3) | t); }
void putBytes(std::string& o, uint32_t field, std::string_view v) {
  putTag(o, field, kLengthDelimited);
  putVarint(o, v.size());
  o.append(v);
}
void putFixed64(std::string& o, uint32_t field, uint64_t v) {
  putTag(o, field, kFixed64);
  for (int i = 0; i < 8; ++i) o.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
// Trace and span ids are bytes, most significant first.
void putId(std::string& o, uint32_t field, const uint64_t* words, int n) {
  putTag(o, field, kLengthDelimited);
  putVarint(o, 8 * n);
  for (int w = 0; w < n; ++w) {
    for (int i = 7; i >= 0; --i) o.push_back(static_cast<char>((words[w] >> (8 * i)) & 0xff));
  }
}
// KeyValue{key = 1, value = 2: AnyValue{string_value = 1}} as field `field`.
void putStringAttr(std::string& o, uint32_t field, std::string_view key, std::string_view v) {
  const size_t any = 1 + varintSize(v.size()) + v.size();
  const size_t kv = 1 + varintSize(key.size()) + key.size() + 1 + varintSize(any) + any;
  putTag(o, field, kLengthDelimited);
  putVarint(o, kv);
  putBytes(o, 1, key);
  putTag(o, 2, kLengthDelimited);
  putVarint(o, any);
  putBytes(o, 1, v);
}
// KeyValue{key, AnyValue{int_value = 3}}.
void putIntAttr(std::string& o, std::string_view key, int64_t v) {
  const size_t any = 1 + varintSize(static_cast<uint64_t>(v));
  const size_t kv = 1 + varintSize(key.size()) + key.size() + 1 + varintSize(any) + any;
  putTag(o, 9, kLengthDelimited);
  putVarint(o, kv);
  putBytes(o, 1, key);
  putTag(o, 2, kLengthDelimited);
  putVarint(o, any);
  putTag(o, 3, kVarint);
  putVarint(o, static_cast<uint64_t>(v));
}

// One Span message (trace.v1.Span) into `o`.
void encodeSpan(std::string& o, const SpanRecord& r) {
  static constexpr std::string_view kProtocols[] = {"HTTP/1.0", "HTTP/1.1", "HTTP/2"};
  const uint64_t trace[2] = {r.trace_id_high, r.trace_id_low};
  putId(o, 1, trace, 2);
  putId(o, 2, &r.span_id, 1);
  if (r.parent_span_id != 0) putId(o, 4, &r.parent_span_id, 1);
  putBytes(o, 5, std::string_view(r.name, r.name_len));
  putTag(o, 6, kVarint);
  putVarint(o, r.client_kind ? 3 : 2);  // SPAN_KIND_CLIENT : SPAN_KIND_SERVER
  putFixed64(o, 7, r.start_unix_ns);
  putFixed64(o, 8, r.end_unix_ns);
  putStringAttr(o, 9, "http.method", std::string_view(r.method, r.method_len));
  putIntAttr(o, "http.status_code", r.status_code);
  putStringAttr(o, 9, "http.protocol", kProtocols[r.protocol < 3 ? r.protocol : 1]);
  putStringAttr(o, 9, "upstream_cluster", std::string_view(r.cluster, r.cluster_len));
  putStringAttr(o, 9, "guid:x-request-id", std::string_view(r.request_id, r.request_id_len));
  putStringAttr(o, 9, "response_flags", r.flags_len ? std::string_view(r.response_flags, r.flags_len) : "-");
  putStringAttr(o, 9, "component", "proxy");
  // As Envoy: 5xx (and no response at all) is an error; anything else leaves the status unset.
  if (r.status_code >= 500 || r.status_code == 0) {
    putTag(o, 15, kLengthDelimited);
    putVarint(o, 2);
    putTag(o, 3, kVarint);
    putVarint(o, 2);  // STATUS_CODE_ERROR
  }
}

// The ExportTraceServiceRequest of one batch: the spans in `idx` of `sending`, all of one exporter.
std::string encodeBatch(const ExporterSettings& settings, const std::vector<SpanRecord>& sending,
                        const std::vector<uint32_t>& idx) {
  std::string scope;  // ScopeSpans: scope = 1 {name = 1}, spans = 2
  std::string one;
  putTag(scope, 1, kLengthDelimited);
  putVarint(scope, 8);
  putBytes(scope, 1, "strait");
  for (uint32_t i : idx) {
    one.clear();
    encodeSpan(one, sending[i]);
    putBytes(scope, 2, one);
  }
  std::string resource;  // Resource: attributes = 1
  putStringAttr(resource, 1, "service.name", settings.service_name.empty() ? "unknown_service:envoy" : settings.service_name);
  std::string rs;  // ResourceSpans: resource = 1, scope_spans = 2
  putBytes(rs, 1, resource);
  putBytes(rs, 2, scope);
  std::string req;  // ExportTraceServiceRequest: resource_spans = 1
  putBytes(req, 1, rs);
  return req;
}

// Exporter thread: POSTs one batch to the next host of the collector cluster (or drops it when the
// collector is busy with kMaxInFlight requests already, or the cluster has no host yet).
void sendBatch(State& s, uint32_t id, const ExporterSettings& es, const std::vector<uint32_t>& idx) {
  std::shared_ptr<const config::Cluster> cluster;
  uint32_t turn = 0;
  {
    std::lock_guard lk(s.mu);
    Exporter& e = s.exporters[id];
    if (e.in_flight < kMaxInFlight && e.settings.cluster_version) {
      cluster = e.settings.cluster_version;
      turn = e.next_host++;
      ++e.in_flight;
    }
  }
  std::optional<network::Address> host;
  network::TransportSocketFactorySharedPtr tls;
  if (cluster) {
    const auto hosts = config::hostsInForce(*cluster);  // thread-safe: a DNS cluster's set is locked
    if (hosts && !hosts->empty()) {
      const auto& h = (*hosts)[turn % hosts->size()];
      host = h->address;
      tls = config::transportFor(*cluster, h.get());
    } else {
      std::lock_guard lk(s.mu);
      --s.exporters[id].in_flight;
    }
  }
  if (!host) {
    stats::inc(s.spans_dropped, static_cast<int64_t>(idx.size()));
    return;
  }
  const std::string body = encodeBatch(es, s.sending, idx);
  std::string req = absl::StrCat("POST ", es.path, " HTTP/1.1\r\nhost: ", es.authority,
                                 "\r\ncontent-type: application/x-protobuf\r\ncontent-length: ", body.size(),
                                 "\r\nuser-agent: strait\r\nconnection: close\r\n");
  for (const auto& [k, v] : es.headers) absl::StrAppend(&req, k, ": ", v, "\r\n");
  req += "\r\n";
  req += body;
  s.requests.push_back(std::make_unique<ExportRequest>(*s.dispatcher, id, *host, tls, cluster, req,
                                                      idx.size(), es.timeout_ms));
}

// Exporter thread: take the queue and send it, batch by batch, exporter by exporter.
void flushQueue(bool from_timer) {
  State& s = state();
  s.wake_posted.store(false, std::memory_order_relaxed);
  std::vector<ExporterSettings> settings;
  {
    std::lock_guard lk(s.mu);
    s.sending.clear();
    s.sending.swap(s.queue);
    for (const auto& e : s.exporters) settings.push_back(e.settings);
  }
  if (s.sending.empty()) return;
  if (from_timer) stats::inc(s.timer_flushed);
  // Batches per exporter, spans of one HCM in their order (a config has one exporter, mostly).
  std::vector<uint32_t> idx;
  for (uint32_t id = 0; id < settings.size(); ++id) {
    size_t next = 0;
    while (next < s.sending.size()) {
      idx.clear();
      for (; next < s.sending.size() && idx.size() < kBatchSpans; ++next) {
        if (s.sending[next].exporter == id) idx.push_back(static_cast<uint32_t>(next));
      }
      if (idx.empty()) break;
      sendBatch(s, id, settings[id], idx);
    }
  }
}

// The worker side: spans of this thread not yet handed off.
class ThreadSpans : public event::DeferredFlush {
 public:
  ~ThreadSpans() override { handOff(); }  // a worker's last spans, as its thread ends

  void record(const SpanRecord& span, event::Dispatcher& d) {
    if (spans_.capacity() == 0) spans_.reserve(64);
    spans_.push_back(span);
    if (spans_.size() >= kBatchSpans) {
      handOff();
    } else if (!queued_) {
      queued_ = true;
      d.queueFlush(this);
    }
  }
  void runDeferredFlush() override {
    queued_ = false;
    handOff();
  }

 private:
  void handOff() {
    if (spans_.empty()) return;
    State& s = state();
    size_t dropped = 0;
    bool wake = false;
    {
      std::lock_guard lk(s.mu);
      if (s.stop || s.queue.size() + spans_.size() > kMaxQueuedSpans) {
        dropped = spans_.size();
      } else {
        s.queue.insert(s.queue.end(), spans_.begin(), spans_.end());
        wake = s.queue.size() >= kBatchSpans;
      }
    }
    if (dropped > 0) stats::inc(s.spans_dropped, static_cast<int64_t>(dropped));
    spans_.clear();
    if (wake && s.dispatcher != nullptr && !s.wake_posted.exchange(true)) {
      s.dispatcher->post([] { flushQueue(false); });
    }
  }

  std::vector<SpanRecord> spans_;
  bool queued_ = false;
};

ThreadSpans& threadSpans() {
  thread_local ThreadSpans t;
  return t;
}

bool sameExporter(const ExporterSettings& a, const ExporterSettings& b) {
  return a.cluster == b.cluster && a.path == b.path && a.authority == b.authority && a.service_name == b.service_name &&
         a.timeout_ms == b.timeout_ms && a.headers == b.headers;
}

}  // namespace

SpanExporter& SpanExporter::get() {
  static auto* e = new SpanExporter;
  return *e;
}

absl::StatusOr<uint32_t> SpanExporter::add(const ExporterSettings& settings, stats::Store& store) {
  State& s = state();
  std::unique_lock lk(s.mu);
  if (s.store == nullptr) {
    s.store = &store;
    s.spans_sent = store.counter("tracing.opentelemetry.spans_sent");
    s.spans_dropped = store.counter("tracing.opentelemetry.spans_dropped");
    s.timer_flushed = store.counter("tracing.opentelemetry.timer_flushed");
    s.reports_sent = store.counter("tracing.opentelemetry.http_reports_sent");
    s.reports_failed = store.counter("tracing.opentelemetry.http_reports_failed");
  }
  uint32_t id = 0;
  for (; id < s.exporters.size(); ++id) {
    if (sameExporter(s.exporters[id].settings, settings)) break;
  }
  if (id == s.exporters.size()) {
    s.exporters.push_back(Exporter{settings});
  } else {
    s.exporters[id].settings.cluster_version = settings.cluster_version;
  }
  if (!s.thread.joinable() && !s.stop) {
    // The loop is made here so that s.dispatcher is set before any worker can post to it.
    s.dispatcher = new event::Dispatcher("tracing");
    std::mutex started_mu;
    std::condition_variable started_cv;
    bool started = false;
    s.thread = std::thread([&s, &started_mu, &started_cv, &started] {
      stats::setThreadShard(&s.store->shard(s.store->shardCount() - 1));
      s.timer = s.dispatcher->createTimer([&s] {
        flushQueue(true);
        s.timer->enable(kFlushIntervalMs);
      });
      s.timer->enable(kFlushIntervalMs);
      {
        std::lock_guard g(started_mu);
        started = true;
      }
      started_cv.notify_one();
      s.dispatcher->run();
    });
    lk.unlock();
    std::unique_lock g(started_mu);
    started_cv.wait(g, [&] { return started; });
  }
  return id;
}

void SpanExporter::record(const SpanRecord& span, event::Dispatcher& dispatcher) {
  threadSpans().record(span, dispatcher);
}

void SpanExporter::shutdown() {
  State& s = state();
  std::thread t;
  {
    std::lock_guard lk(s.mu);
    if (!s.thread.joinable()) return;
    t = std::move(s.thread);
  }
  // Send what is queued, give the requests up to their timeout, then stop the loop.
  s.dispatcher->post([&s] {
    flushQueue(false);
    uint64_t wait = 0;
    {
      std::lock_guard lk(s.mu);
      s.stop = true;
      for (const auto& e : s.exporters) wait = std::max(wait, e.settings.timeout_ms);
    }
    auto finish = [&s] {
      s.dispatcher->exit();
      s.requests.clear();
      s.timer.reset();  // last: this may be the timer's own callback
    };
    if (s.requests.empty()) {
      finish();
      return;
    }
    s.timer = s.dispatcher->createTimer(finish);
    s.timer->enable(wait);
  });
  t.join();
}

}  // namespace strait::tracing
