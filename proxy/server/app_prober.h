#pragma once

#include <functional>
#include <list>
#include <memory>

#include "proxy/event/dispatcher.h"
#include "proxy/network/transport_socket.h"
#include "proxy/server/pod_env.h"

namespace strait::server {

// Runs the application's Kubernetes probes (STRAIT_KUBE_APP_PROBERS) on behalf of the kubelet, on
// the main thread's loop. With capture on, the kubelet's own probe of the application's port would
// reach Strait's inbound listener instead (a tcpSocket probe would always pass); the injector points
// the kubelet at a status port instead, and Strait, whose uid is excluded from capture, probes the
// application on the pod's loopback.
//
// One probe is one check of the active health checker (upstream::HealthChecker), run once: the same
// HTTP/1.1, TCP-connect and grpc.health.v1 code that checks cluster hosts, with the kubelet's rules
// (HTTP 200-399 passes, a gRPC probe passes only on SERVING, connect and answer within timeoutSeconds).
class AppProber {
 public:
  explicit AppProber(event::Dispatcher& dispatcher);
  ~AppProber();
  AppProber(const AppProber&) = delete;
  AppProber& operator=(const AppProber&) = delete;

  // Probes once; `done(passed)` runs later on the dispatcher, within the probe's timeout (never from
  // inside run()). Nothing is called after the prober is destroyed.
  void run(const AppProbe& probe, std::function<void(bool passed)> done);
  size_t inFlight() const { return running_.size(); }

 private:
  struct Running;
  event::Dispatcher& dispatcher_;
  // HTTPS probes: TLS that verifies nothing (the kubelet does not verify either); made once.
  network::TransportSocketFactorySharedPtr insecure_tls_;
  std::list<std::unique_ptr<Running>> running_;
};

}  // namespace strait::server
