#include "proxy/server/app_prober.h"

#include "envoy/config/core/v3/base.pb.h"
#include "envoy/extensions/transport_sockets/tls/v3/tls.pb.h"
#include "proxy/common/log.h"
#include "proxy/config/translate_internal.h"
#include "proxy/upstream/health_checker.h"

namespace strait::server {

struct AppProber::Running {
  upstream::HostSharedPtr host;
  std::unique_ptr<upstream::HealthChecker> checker;
};

AppProber::AppProber(event::Dispatcher& dispatcher) : dispatcher_(dispatcher) {}

AppProber::~AppProber() {
  // Checkers stop on destruction and call nothing back.
  running_.clear();
}

namespace {

upstream::HealthCheckConfig checkConfig(const AppProbe& p) {
  upstream::HealthCheckConfig c;
  c.timeout_ms = p.timeout_ms;
  c.interval_ms = 3600 * 1000;  // one check only: the checker is gone long before a second one
  c.unhealthy_threshold = 1;
  c.healthy_threshold = 1;
  c.reuse_connection = false;
  c.always_log_health_check_failures = false;
  switch (p.kind) {
    case AppProbe::Kind::Tcp:
      c.kind = upstream::HealthCheckConfig::Kind::Tcp;  // connect only
      break;
    case AppProbe::Kind::Grpc:
      c.kind = upstream::HealthCheckConfig::Kind::Grpc;
      c.grpc.service_name = p.grpc_service;
      break;
    case AppProbe::Kind::Http: {
      c.kind = upstream::HealthCheckConfig::Kind::Http;
      c.http.path = p.http_path;
      c.http.host = p.host_header;      // empty: <ip>:<port>, as the kubelet sends
      c.http.expected_statuses = {{200, 400}};  // Kubernetes: 200 <= status < 400 passes
      c.http.request_headers_to_remove = {"user-agent"};
      bool agent = false;
      for (const auto& h : p.headers) agent = agent || h.first == "user-agent";
      if (!agent) c.http.request_headers_to_add.emplace_back("user-agent", "kube-probe/strait");
      for (const auto& h : p.headers) c.http.request_headers_to_add.push_back(h);
      break;
    }
  }
  return c;
}

}  // namespace

void AppProber::run(const AppProbe& probe, std::function<void(bool passed)> done) {
  auto host = std::make_shared<upstream::Host>();
  host->address = probe.address;
  host->locality = std::make_shared<const upstream::Locality>();
  if (probe.kind == AppProbe::Kind::Http && probe.https) {
    if (!insecure_tls_) {
      envoy::config::core::v3::TransportSocket ts;
      ts.set_name("envoy.transport_sockets.tls");
      ts.mutable_typed_config()->PackFrom(envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext());
      auto f = config::translateTransportSocket(ts, "app probe (HTTPS)", false);
      if (!f.ok() || *f == nullptr) {
        LOG_ERROR("app probe: cannot make a TLS context: %s", f.ok() ? "none" : std::string(f.status().message()).c_str());
        dispatcher_.post([done = std::move(done)] { done(false); });
        return;
      }
      insecure_tls_ = *f;
    }
    host->transport_socket = insecure_tls_;
  }
  auto running = std::make_unique<Running>();
  Running* raw = running.get();
  raw->host = host;
  raw->checker = std::make_unique<upstream::HealthChecker>(dispatcher_, checkConfig(probe), nullptr, 0);
  raw->checker->setCheckCompleteCallback(
      [this, raw, done = std::move(done)](const upstream::HostSharedPtr&, upstream::HealthTransition, bool passed) {
        // The checker may be destroyed from its own callback; `done` is ours (this lambda is a copy
        // the checker made before calling), so take it before letting the checker go.
        auto cb = done;
        for (auto it = running_.begin(); it != running_.end(); ++it) {
          if (it->get() == raw) {
            running_.erase(it);
            break;
          }
        }
        cb(passed);
      });
  raw->checker->setHosts({host});
  raw->checker->start();
  running_.push_back(std::move(running));
}

}  // namespace strait::server
