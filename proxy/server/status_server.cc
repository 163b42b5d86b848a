#include "proxy/server/status_server.h"

#include <llhttp.h>
#include <sys/socket.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "proxy/common/log.h"
#include "proxy/network/connection.h"
#include "proxy/server/admin.h"
#include "proxy/server/server.h"

namespace strait::server {

namespace {
constexpr uint64_t kScrapeTimeoutMs = 2000;
constexpr size_t kMaxScrapeBytes = 16 * 1024 * 1024;
constexpr size_t kMaxConnections = 256;
constexpr uint64_t kRequestTimeoutMs = 10000;
// Probes and scrapes in flight at once; beyond them a request gets 503 at once (each one is a
// connection to the application: a flood of requests to an open port must not become one to the app).
constexpr size_t kMaxProbesInFlight = 64;
constexpr size_t kMaxScrapesInFlight = 8;

bool hostHasIpv6() {
  int fd = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  ::close(fd);
  return true;
}
}  // namespace

// One GET of the application's metrics over HTTP/1.1 (Connection: close), parsed with llhttp; `done`
// gets the body of a 200, or nothing, within kScrapeTimeoutMs.
class MetricsFetch : public event::DeferredDeletable, public network::ConnectionCallbacks {
 public:
  using Done = std::function<void(std::optional<std::string> body, const std::string& why)>;

  MetricsFetch(StatusServer& owner, event::Dispatcher& dispatcher, const PrometheusScrape& scrape, Done done)
      : owner_(owner), done_(std::move(done)),
        conn_(std::make_unique<network::Connection>(dispatcher, *network::Address::parse("127.0.0.1", scrape.port))),
        timer_(dispatcher.createTimer([this] { finish(std::nullopt, "timed out"); })) {
    llhttp_settings_init(&settings_);
    settings_.on_body = [](llhttp_t* p, const char* at, size_t len) {
      auto* self = static_cast<MetricsFetch*>(p->data);
      if (self->body_.size() + len > kMaxScrapeBytes) return -1;
      self->body_.append(at, len);
      return 0;
    };
    settings_.on_message_complete = [](llhttp_t* p) {
      static_cast<MetricsFetch*>(p->data)->complete_ = true;
      return 0;
    };
    llhttp_init(&parser_, HTTP_RESPONSE, &settings_);
    parser_.data = this;
    conn_->setCallbacks(this);
    common::Buffer req;
    req.add(absl::StrCat("GET ", scrape.path, " HTTP/1.1\r\nhost: 127.0.0.1:", scrape.port,
                         "\r\naccept: text/plain;version=0.0.4\r\nuser-agent: strait-status\r\nconnection: close\r\n\r\n"));
    conn_->write(req, false);
    conn_->connect(kScrapeTimeoutMs);
    timer_->enable(kScrapeTimeoutMs);
  }
  ~MetricsFetch() override {
    conn_->setCallbacks(nullptr);
    conn_->close(network::CloseType::NoFlush);
  }

  void onData(network::Connection&, common::Buffer& data, bool end_stream) override {
    std::string chunk = data.toString();
    data.drain(data.length());
    if (done_ == nullptr) return;
    llhttp_errno_t err = llhttp_execute(&parser_, chunk.data(), chunk.size());
    if (err == HPE_OK && end_stream) err = llhttp_finish(&parser_);  // a close-delimited body ends here
    if (err != HPE_OK) {
      finish(std::nullopt, absl::StrCat("bad response: ", llhttp_errno_name(err)));
    } else if (complete_) {
      if (parser_.status_code != 200) {
        finish(std::nullopt, absl::StrCat("status ", parser_.status_code));
      } else {
        finish(std::move(body_), "");
      }
    } else if (end_stream) {
      finish(std::nullopt, "closed before the response ended");
    }
  }
  void onEvent(network::Connection&, network::ConnectionEvent e) override {
    if (e == network::ConnectionEvent::Connected) {
      conn_->startReading();
      return;
    }
    if (e == network::ConnectionEvent::ConnectFailed) finish(std::nullopt, "connection refused");
    else if (e == network::ConnectionEvent::ConnectTimeout) finish(std::nullopt, "connect timed out");
    else finish(std::nullopt, "connection closed");
  }

 private:
  void finish(std::optional<std::string> body, const std::string& why) {
    if (done_ == nullptr) return;
    timer_->disable();
    Done done = std::move(done_);
    done_ = nullptr;
    owner_.fetchDone(this);  // deferred: this object may be inside its connection's callback
    done(std::move(body), why);
  }

  StatusServer& owner_;
  Done done_;
  network::ConnectionPtr conn_;
  event::TimerPtr timer_;
  llhttp_t parser_;
  llhttp_settings_t settings_;
  std::string body_;
  bool complete_ = false;
};

StatusServer::StatusServer(Server& server, std::shared_ptr<const PodEnv> env)
    : server_(server),
      env_(std::move(env)),
      http_(server.dispatcher(),
            [this](const std::string& method, const std::string& url, LocalHttpServer::Respond respond) {
              handle(method, url, std::move(respond));
            }),
      prober_(server.dispatcher()) {
  // Open to the pod's network: bounded, and no connection may sit there without a request.
  http_.setLimits(kMaxConnections, kRequestTimeoutMs);
  probe_passed_ = server_.store().counter("status_server.app_probe_passed");
  probe_failed_ = server_.store().counter("status_server.app_probe_failed");
  scrape_success_ = server_.store().counter("status_server.app_scrape_success");
  scrape_failure_ = server_.store().counter("status_server.app_scrape_failure");
}

StatusServer::~StatusServer() { stop(); }

bool StatusServer::bind(const std::vector<uint16_t>& ports, std::string* error) {
  const bool v6 = hostHasIpv6();
  for (uint16_t port : ports) {
    if (!http_.bind(*network::Address::parse("0.0.0.0", port), error)) {
      *error = absl::StrCat("--status-port ", port, ": ", *error);
      return false;
    }
    // [::] with IPV6_V6ONLY beside the IPv4 socket. A host whose IPv6 is disabled (no address family,
    // or no usable address) serves IPv4 only; a port taken on IPv6 is as fatal as on IPv4.
    if (v6) {
      std::string err;
      if (!http_.bind(*network::Address::parse("::", port), &err)) {
        if (err.find("Address already in use") != std::string::npos) {
          *error = absl::StrCat("--status-port ", port, ": ", err);
          return false;
        }
        LOG_INFO("status port %u: IPv4 only (%s)", port, err.c_str());
      }
    }
  }
  for (const auto& a : http_.addresses()) LOG_INFO("status port on %s", a.asString().c_str());
  return true;
}

void StatusServer::stop() {
  http_.stop();
  fetches_.clear();
}

void StatusServer::fetchDone(MetricsFetch* f) {
  for (auto it = fetches_.begin(); it != fetches_.end(); ++it) {
    if (it->get() == f) {
      server_.dispatcher().deferredDelete(std::move(*it));
      fetches_.erase(it);
      return;
    }
  }
}

void StatusServer::handle(const std::string& method, const std::string& url, LocalHttpServer::Respond respond) {
  if (method != "GET") {
    respond(LocalHttpResponse{405, "text/plain", "use GET\n"});
    return;
  }
  const std::string path = url.substr(0, url.find('?'));
  if (path == "/healthz/ready") {
    LocalHttpResponse r;
    // The admin's /ready, and not draining: after SIGTERM this goes 503 at once, so the endpoint is
    // taken out of the Service while the drain runs.
    r.status = server_.ready(&r.body) ? 200 : 503;
    respond(r);
    return;
  }
  if (path == "/stats/prometheus") {
    serveMetrics(std::move(respond));
    return;
  }
  auto it = env_->probes.find(path);
  if (it != env_->probes.end()) {
    if (prober_.inFlight() >= kMaxProbesInFlight) {
      stats::inc(probe_failed_);
      respond(LocalHttpResponse{503, "text/plain", "too many probes in flight\n"});
      return;
    }
    prober_.run(it->second, [this, name = path, respond = std::move(respond)](bool passed) {
      stats::inc(passed ? probe_passed_ : probe_failed_);
      if (!passed) LOG_DEBUG("app probe %s failed", name.c_str());
      respond(LocalHttpResponse{passed ? 200 : 503, "text/plain", passed ? "OK\n" : "probe failed\n"});
    });
    return;
  }
  respond(LocalHttpResponse{404, "text/plain", absl::StrCat("unknown path ", path, "\n")});
}

void StatusServer::serveMetrics(LocalHttpServer::Respond respond) {
  if (!env_->scrape || fetches_.size() >= kMaxScrapesInFlight) {
    if (env_->scrape) stats::inc(scrape_failure_);  // too many at once: Strait's part only
    respond(LocalHttpResponse{200, "text/plain; version=0.0.4", prometheusStats(server_)});
    return;
  }
  auto fetch = std::make_unique<MetricsFetch>(
      *this, server_.dispatcher(), *env_->scrape,
      [this, respond = std::move(respond)](std::optional<std::string> app, const std::string& why) {
        // Strait's own lines are rendered now, after the fetch, so both halves are of the same moment.
        std::string body = prometheusStats(server_);
        if (app) {
          stats::inc(scrape_success_);
          if (!body.empty() && body.back() != '\n') body.push_back('\n');
          body += *app;
          if (!body.empty() && body.back() != '\n') body.push_back('\n');
        } else {
          stats::inc(scrape_failure_);
          LOG_WARN("status port: application metrics (127.0.0.1:%u%s): %s; serving Strait's only", env_->scrape->port,
                   env_->scrape->path.c_str(), why.c_str());
        }
        respond(LocalHttpResponse{200, "text/plain; version=0.0.4", std::move(body)});
      });
  fetches_.push_back(std::move(fetch));
}

}  // namespace strait::server
