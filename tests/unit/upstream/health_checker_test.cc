// Active health checking against small servers running on the test's own dispatcher on 127.0.0.1:
// raw TCP peers, an HTTP/1 origin written by hand, and HTTP/2 / gRPC origins on the project's own
// HTTP/2 server codec. Intervals are tens of milliseconds and every wait has a deadline.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "certs/tls_context.h"
#include "certs/tls_socket.h"
#include "proxy/common/log.h"
#include "proxy/event/dispatcher.h"
#include "proxy/http/codec.h"
#include "proxy/http/http2/codec.h"
#include "proxy/network/connection.h"
#include "proxy/network/listener.h"
#include "proxy/upstream/health_checker.h"
#include "tests/unit/support/loop.h"

using namespace strait;
using namespace strait::upstream;
using network::ConnectionEvent;

namespace {

// Host transitions log at info; keep the test output readable.
struct QuietLogs : testing::QuietLogs {
  QuietLogs() : testing::QuietLogs(common::LogLevel::Warning) {}
};

// Health checks run longer than the default limit of a loop run.
bool runUntil(event::Dispatcher& d, const std::function<bool()>& done, uint64_t limit_ms = 3000) {
  return testing::runUntil(d, done, limit_ms);
}
using testing::runFor;

// ---- servers ----

// One accepted connection of a test server.
struct Peer : network::ConnectionCallbacks {
  explicit Peer(network::ConnectionPtr c) : conn(std::move(c)) { conn->setCallbacks(this); }
  void onEvent(network::Connection&, ConnectionEvent e) override {
    if (e == ConnectionEvent::RemoteClose || e == ConnectionEvent::LocalClose) closed = true;
  }
  network::ConnectionPtr conn;
  bool closed = false;
};

// Bytes in, and whatever the test's hook writes back.
struct RawPeer : Peer {
  using Peer::Peer;
  std::string received;
  bool eof = false;  // the client closed its side
  std::function<void(RawPeer&)> on_data;
  void onData(network::Connection&, common::Buffer& data, bool end_stream) override {
    received += data.toString();
    data.drain(data.length());
    if (end_stream) eof = true;
    if (on_data) on_data(*this);
  }
  void send(std::string_view s) {
    common::Buffer b;
    b.add(s);
    conn->write(b, false);
  }
};

// A listener on 127.0.0.1:<ephemeral> that hands each connection to `make_peer`.
struct Server {
  using MakePeer = std::function<std::unique_ptr<Peer>(network::ConnectionPtr)>;
  Server(event::Dispatcher& d, MakePeer make, std::function<void(network::Connection&)> prepare = nullptr)
      : make_peer(std::move(make)), prepare_conn(std::move(prepare)) {
    std::string err;
    auto a = network::Address::parse("127.0.0.1", 0);
    int fd = network::bindReusePortSocket(*a, &err, false);
    REQUIRE(fd >= 0);
    address = network::boundAddress(fd);
    listener = std::make_unique<network::TcpListener>(d, fd, 64, [this](network::ConnectionPtr c) {
      ++accepted;
      if (prepare_conn) prepare_conn(*c);
      peers.push_back(make_peer(std::move(c)));
      peers.back()->conn->startReading();
    });
    REQUIRE(listener->ok());
  }
  MakePeer make_peer;
  std::function<void(network::Connection&)> prepare_conn;
  std::unique_ptr<network::TcpListener> listener;
  network::Address address;
  std::vector<std::unique_ptr<Peer>> peers;
  size_t accepted = 0;
};

// An HTTP/1.1 origin, by hand: GET requests without bodies; `respond` gets the request number and head
// and returns the raw response (empty: never answer).
struct Http1Origin {
  std::vector<std::string> requests;
  std::function<std::string(size_t, const std::string&)> respond;
  std::unique_ptr<Server> server;

  explicit Http1Origin(event::Dispatcher& d, std::function<void(network::Connection&)> prepare = nullptr) {
    server = std::make_unique<Server>(
        d,
        [this](network::ConnectionPtr c) {
          auto p = std::make_unique<RawPeer>(std::move(c));
          p->on_data = [this](RawPeer& peer) {
            size_t end;
            while ((end = peer.received.find("\r\n\r\n")) != std::string::npos) {
              std::string head = peer.received.substr(0, end + 4);
              peer.received.erase(0, end + 4);
              requests.push_back(head);
              std::string out = respond ? respond(requests.size(), head) : std::string();
              if (!out.empty()) peer.send(out);
            }
          };
          return p;
        },
        std::move(prepare));
  }
  static std::string status(uint32_t code, const std::string& extra_headers = "", const std::string& body = "ok") {
    if (code == 204) return "HTTP/1.1 204 X\r\n" + extra_headers + "\r\n";  // no body allowed
    return "HTTP/1.1 " + std::to_string(code) + " X\r\ncontent-length: " + std::to_string(body.size()) + "\r\n" +
           extra_headers + "\r\n" + body;
  }
};

// An HTTP/2 origin on the project's server codec; `handler` answers each complete request.
struct H2Peer;
struct H2Stream : http::RequestDecoder {
  H2Stream(H2Peer& p, http::ResponseEncoder& e) : peer(p), encoder(e) {}
  void decodeHeaders(http::RequestHeadersPtr h, bool end_stream) override {
    headers = std::move(h);
    if (end_stream) done();
  }
  void decodeData(common::Buffer& data, bool end_stream) override {
    body += data.toString();
    data.drain(data.length());
    if (end_stream) done();
  }
  void decodeTrailers(http::TrailerMapPtr) override { done(); }
  void done();
  H2Peer& peer;
  http::ResponseEncoder& encoder;
  http::RequestHeadersPtr headers;
  std::string body;
};

using H2Handler = std::function<void(const http::RequestHeaders&, const std::string& body, http::ResponseEncoder&)>;

struct H2Peer : Peer, http::CodecTransport, http::ServerConnectionCallbacks {
  H2Peer(network::ConnectionPtr c, H2Handler h) : Peer(std::move(c)), handler(std::move(h)) {
    codec = http::http2::createServerConnection(*this, *this, http::CodecSettings{});
  }
  ~H2Peer() override { codec.reset(); }
  void onData(network::Connection&, common::Buffer& data, bool) override {
    http::CodecError err;
    if (!codec->dispatch(data, err)) conn->close(network::CloseType::NoFlush);
  }
  void onEvent(network::Connection& c, ConnectionEvent e) override {
    Peer::onEvent(c, e);
    if (closed && codec) codec->onTransportClosed();
  }
  void write(common::Buffer& data, bool end_stream) override { conn->write(data, end_stream); }
  void closeAfterFlush() override { conn->close(network::CloseType::FlushWrite); }
  void readDisable(bool disable) override { conn->readDisable(disable); }
  event::Dispatcher& dispatcher() override { return conn->dispatcher(); }
  http::RequestDecoder& newStream(http::ResponseEncoder& encoder) override {
    streams.push_back(std::make_unique<H2Stream>(*this, encoder));
    return *streams.back();
  }
  H2Handler handler;
  std::unique_ptr<http::ServerConnection> codec;
  std::vector<std::unique_ptr<H2Stream>> streams;
};

void H2Stream::done() { peer.handler(*headers, body, encoder); }

std::unique_ptr<Server> h2Server(event::Dispatcher& d, H2Handler handler) {
  return std::make_unique<Server>(d, [handler](network::ConnectionPtr c) {
    return std::make_unique<H2Peer>(std::move(c), handler);
  });
}

// ---- gRPC health protocol, server side, by hand ----

std::string grpcFrame(const std::string& msg) {
  std::string f(5, '\0');
  f[1] = static_cast<char>(msg.size() >> 24);
  f[2] = static_cast<char>(msg.size() >> 16);
  f[3] = static_cast<char>(msg.size() >> 8);
  f[4] = static_cast<char>(msg.size());
  return f + msg;
}
// HealthCheckResponse{status}: field 1, varint (all statuses fit one byte).
std::string healthResponse(uint8_t status) { return grpcFrame(std::string("\x08", 1) + static_cast<char>(status)); }
// The service name out of a framed HealthCheckRequest (short names: one-byte lengths).
std::string requestedService(const std::string& body) {
  if (body.size() < 5) return "<bad frame>";
  std::string msg = body.substr(5);
  if (msg.empty()) return "";
  if (msg.size() < 2 || msg[0] != 0x0a) return "<bad message>";
  return msg.substr(2, static_cast<uint8_t>(msg[1]));
}

struct GrpcOrigin {
  enum class Mode { Serving, NotServing, TrailersOnlyUnimplemented, BadStatusInTrailers, Http503, NotGrpc, Silent };
  Mode mode = Mode::Serving;
  std::vector<std::string> services;
  std::vector<std::string> paths, authorities, content_types, tes, timeouts;
  std::unique_ptr<Server> server;

  explicit GrpcOrigin(event::Dispatcher& d) {
    server = h2Server(d, [this](const http::RequestHeaders& h, const std::string& body, http::ResponseEncoder& enc) {
      services.push_back(requestedService(body));
      paths.push_back(h.path);
      authorities.push_back(h.authority);
      content_types.push_back(h.get("content-type") ? *h.get("content-type") : "");
      tes.push_back(h.get("te") ? *h.get("te") : "");
      timeouts.push_back(h.get("grpc-timeout") ? *h.get("grpc-timeout") : "");
      http::ResponseHeaders rh;
      switch (mode) {
        case Mode::Silent: return;
        case Mode::Http503:
          rh.status = 503;
          enc.encodeHeaders(rh, true);
          return;
        case Mode::NotGrpc: {
          // A plain HTTP answer, left open: the checker judges it on the headers and resets the stream.
          rh.status = 200;
          rh.add("content-type", "text/plain");
          enc.encodeHeaders(rh, false);
          common::Buffer b;
          b.add("hello");
          enc.encodeData(b, false);
          return;
        }
        case Mode::TrailersOnlyUnimplemented:
          rh.status = 200;
          rh.add("content-type", "application/grpc");
          rh.add("grpc-status", "12");
          enc.encodeHeaders(rh, true);
          return;
        default: break;
      }
      rh.status = 200;
      rh.add("content-type", "application/grpc");
      enc.encodeHeaders(rh, false);
      common::Buffer b;
      b.add(healthResponse(mode == Mode::NotServing ? 2 : 1));
      enc.encodeData(b, false);
      http::TrailerMap t;
      t.add("grpc-status", mode == Mode::BadStatusInTrailers ? "14" : "0");
      enc.encodeTrailers(t);
    });
  }
};

// ---- the checker under test ----

struct Event {
  HealthTransition transition;
  bool passed;
  uint32_t flags;       // the host's flags when the callback ran
  uint64_t generation;  // *health_generation then
  uint64_t attempts;    // the attempt counter then
};

HostSharedPtr makeHost(const network::Address& a) {
  auto h = std::make_shared<Host>();
  h->address = a;
  return h;
}

network::Address closedPort() {
  std::string err;
  auto a = network::Address::parse("127.0.0.1", 0);
  int fd = network::bindReusePortSocket(*a, &err, false);
  REQUIRE(fd >= 0);
  network::Address addr = network::boundAddress(fd);
  ::close(fd);
  return addr;
}

HealthCheckConfig baseConfig(HealthCheckConfig::Kind kind) {
  HealthCheckConfig c;
  c.kind = kind;
  c.cluster_name = "backend";
  c.timeout_ms = 500;
  c.interval_ms = 40;
  c.unhealthy_threshold = 1;
  c.healthy_threshold = 1;
  c.http.path = "/healthz";
  return c;
}

struct Fixture {
  QuietLogs quiet;
  event::Dispatcher d{"hc-test"};
  std::atomic<uint64_t> generation{0};
  std::vector<Event> events;
  std::unique_ptr<HealthChecker> hc;  // after `d`: destroyed first, its sessions deferred into `d`

  HealthChecker& make(const HealthCheckConfig& config, std::vector<HostSharedPtr> hosts, uint64_t seed = 1) {
    REQUIRE(healthCheckConfigError(config).empty());
    hc = std::make_unique<HealthChecker>(d, config, &generation, seed);
    hc->setCheckCompleteCallback([this](const HostSharedPtr& h, HealthTransition t, bool passed) {
      events.push_back({t, passed, h->healthFlags(), generation.load(), hc->stats().attempt.load()});
    });
    hc->setHosts(std::move(hosts));
    hc->start();
    return *hc;
  }
  bool until(const std::function<bool()>& done, uint64_t limit_ms = 3000) { return runUntil(d, done, limit_ms); }
  size_t passes() const {
    size_t n = 0;
    for (const auto& e : events) n += e.passed ? 1 : 0;
    return n;
  }
  size_t failures() const { return events.size() - passes(); }
};

constexpr uint32_t kHcFlags = kFailedActiveHc | kPendingActiveHc;
bool failed(const HostSharedPtr& h) { return (h->healthFlags() & kFailedActiveHc) != 0; }

}  // namespace

// ------------------------------------------------------------------------------------------------

TEST_CASE("HC HTTP: a new host is pending until its first check, which passes on 200 and sends path, host and headers",
          "[hc]") {
  Fixture f;
  Http1Origin origin(f.d);
  origin.respond = [](size_t, const std::string&) { return Http1Origin::status(200); };
  auto host = makeHost(origin.server->address);
  auto config = baseConfig(HealthCheckConfig::Kind::Http);
  config.http.host = "health.example";
  config.http.request_headers_to_add = {{"x-check", "yes"}};
  f.make(config, {host});
  // Before any check: unhealthy and pending, the balancers told once.
  CHECK((host->healthFlags() & kHcFlags) == kHcFlags);
  CHECK(f.generation.load() == 1);
  CHECK(f.hc->stats().healthy.load() == 0);

  REQUIRE(f.until([&] { return !f.events.empty(); }));
  CHECK((host->healthFlags() & kHcFlags) == 0);
  CHECK(f.events[0].transition == HealthTransition::Changed);
  CHECK(f.events[0].passed);
  CHECK(f.generation.load() == 2);
  CHECK(f.hc->stats().healthy.load() == 1);
  CHECK(f.hc->stats().success.load() >= 1);
  CHECK(f.events[0].attempts == 1);

  const std::string& req = origin.requests.at(0);
  CHECK(req.rfind("GET /healthz HTTP/1.1\r\n", 0) == 0);
  CHECK(req.find("host: health.example\r\n") != std::string::npos);
  CHECK(req.find("user-agent: Envoy/HC\r\n") != std::string::npos);
  CHECK(req.find("x-check: yes\r\n") != std::string::npos);

  // More passes reuse the one connection and change nothing.
  REQUIRE(f.until([&] { return f.events.size() >= 4; }));
  CHECK(origin.server->accepted == 1);
  CHECK(f.generation.load() == 2);
  CHECK(f.events[3].transition == HealthTransition::Unchanged);
}

TEST_CASE("HC HTTP: the Host header defaults to the cluster name; reuse_connection false reconnects", "[hc]") {
  Fixture f;
  Http1Origin origin(f.d);
  origin.respond = [](size_t, const std::string&) { return Http1Origin::status(200); };
  auto host = makeHost(origin.server->address);
  auto config = baseConfig(HealthCheckConfig::Kind::Http);
  config.reuse_connection = false;
  f.make(config, {host});
  REQUIRE(f.until([&] { return f.events.size() >= 3; }));
  CHECK(origin.requests.at(0).find("host: backend\r\n") != std::string::npos);
  CHECK(origin.server->accepted >= 3);
}

TEST_CASE("HC HTTP: a response with connection: close is judged, then the next check reconnects", "[hc]") {
  Fixture f;
  Http1Origin origin(f.d);
  origin.respond = [](size_t, const std::string&) { return Http1Origin::status(200, "connection: close\r\n"); };
  auto host = makeHost(origin.server->address);
  f.make(baseConfig(HealthCheckConfig::Kind::Http), {host});
  REQUIRE(f.until([&] { return f.events.size() >= 3; }));
  CHECK(f.passes() == 3);
  CHECK(origin.server->accepted >= 3);
  CHECK(f.hc->stats().failure.load() == 0);
}

TEST_CASE("HC: config validation follows the proto's rules", "[hc]") {
  auto c = baseConfig(HealthCheckConfig::Kind::Http);
  CHECK(healthCheckConfigError(c).empty());
  auto t = c;
  t.timeout_ms = 0;
  CHECK_FALSE(healthCheckConfigError(t).empty());
  t = c;
  t.interval_ms = 0;
  CHECK_FALSE(healthCheckConfigError(t).empty());
  t = c;
  t.http.path.clear();
  CHECK_FALSE(healthCheckConfigError(t).empty());
  t = c;
  t.http.method = "CONNECT";
  CHECK_FALSE(healthCheckConfigError(t).empty());
  t = c;
  t.http.retriable_statuses = {{500, 500}};
  CHECK_FALSE(healthCheckConfigError(t).empty());
  t = c;
  t.http.receive = {std::string(2000, 'x')};
  CHECK_FALSE(healthCheckConfigError(t).empty());  // longer than response_buffer_size (1024)
  t.http.response_buffer_size = 0;
  CHECK(healthCheckConfigError(t).empty());
  // TCP and gRPC checks ignore the HTTP block.
  t = c;
  t.kind = HealthCheckConfig::Kind::Tcp;
  t.http.path.clear();
  CHECK(healthCheckConfigError(t).empty());
}

TEST_CASE("HC HTTP: retriable 503s make a healthy host unhealthy only after unhealthy_threshold", "[hc]") {
  Fixture f;
  Http1Origin origin(f.d);
  origin.respond = [](size_t n, const std::string&) { return Http1Origin::status(n == 1 ? 200 : 503); };
  auto host = makeHost(origin.server->address);
  auto config = baseConfig(HealthCheckConfig::Kind::Http);
  config.unhealthy_threshold = 3;
  config.http.retriable_statuses = {{503, 504}};
  f.make(config, {host});
  REQUIRE(f.until([&] { return f.events.size() >= 4; }));
  CHECK(f.events[0].transition == HealthTransition::Changed);
  CHECK(f.events[1].transition == HealthTransition::ChangePending);
  CHECK((f.events[1].flags & kFailedActiveHc) == 0);
  CHECK(f.events[2].transition == HealthTransition::ChangePending);
  CHECK((f.events[2].flags & kFailedActiveHc) == 0);
  CHECK(f.events[3].transition == HealthTransition::Changed);
  CHECK_FALSE(f.events[3].passed);
  CHECK((f.events[3].flags & kFailedActiveHc) != 0);
  // Generations: new host, first pass, the transition to unhealthy; pending results bump nothing.
  CHECK(f.events[2].generation == 2);
  CHECK(f.events[3].generation == 3);
  CHECK(f.hc->stats().failure.load() >= 3);
  CHECK(f.hc->stats().network_failure.load() == 0);
  CHECK(f.hc->stats().healthy.load() == 0);
}

TEST_CASE("HC HTTP: a non-retriable 503 makes the host unhealthy at once, as in Envoy", "[hc]") {
  Fixture f;
  Http1Origin origin(f.d);
  origin.respond = [](size_t n, const std::string&) { return Http1Origin::status(n == 1 ? 200 : 503); };
  auto host = makeHost(origin.server->address);
  auto config = baseConfig(HealthCheckConfig::Kind::Http);
  config.unhealthy_threshold = 3;
  f.make(config, {host});
  REQUIRE(f.until([&] { return f.events.size() >= 2; }));
  CHECK(f.events[1].transition == HealthTransition::Changed);
  CHECK_FALSE(f.events[1].passed);
  CHECK(failed(host));
  CHECK(f.hc->stats().network_failure.load() == 0);
}

TEST_CASE("HC HTTP: expected_statuses ranges decide what passes", "[hc]") {
  struct Case {
    std::vector<StatusRange> expected;
    uint32_t status;
    bool pass;
  };
  const std::vector<Case> cases = {
      {{}, 200, true},   {{}, 204, false},  {{{200, 300}}, 204, true}, {{{200, 300}}, 300, false},
      {{{200, 201}, {404, 405}}, 404, true}, {{{200, 201}, {404, 405}}, 500, false},
  };
  for (const auto& c : cases) {
    Fixture f;
    Http1Origin origin(f.d);
    const uint32_t status = c.status;
    origin.respond = [status](size_t, const std::string&) { return Http1Origin::status(status); };
    auto host = makeHost(origin.server->address);
    auto config = baseConfig(HealthCheckConfig::Kind::Http);
    config.http.expected_statuses = c.expected;
    f.make(config, {host});
    INFO("status " << status);
    REQUIRE(f.until([&] { return !f.events.empty(); }));
    CHECK(f.events[0].passed == c.pass);
    CHECK(failed(host) == !c.pass);
  }
  HealthCheckConfig bad = baseConfig(HealthCheckConfig::Kind::Http);
  bad.http.expected_statuses = {{300, 200}};
  CHECK_FALSE(healthCheckConfigError(bad).empty());
  bad.http.expected_statuses = {{99, 200}};
  CHECK_FALSE(healthCheckConfigError(bad).empty());
  bad.http.expected_statuses = {{200, 601}};
  CHECK_FALSE(healthCheckConfigError(bad).empty());
}

TEST_CASE("HC HTTP: the response body must contain the receive blocks in order", "[hc]") {
  for (bool in_order : {true, false}) {
    Fixture f;
    Http1Origin origin(f.d);
    origin.respond = [](size_t, const std::string&) { return Http1Origin::status(200, "", "status: all good"); };
    auto host = makeHost(origin.server->address);
    auto config = baseConfig(HealthCheckConfig::Kind::Http);
    config.http.receive =
        in_order ? std::vector<std::string>{"status", "good"} : std::vector<std::string>{"good", "status"};
    f.make(config, {host});
    REQUIRE(f.until([&] { return !f.events.empty(); }));
    CHECK(f.events[0].passed == in_order);
  }
}

TEST_CASE("HC HTTP: a check the host never answers times out and counts as a network failure", "[hc]") {
  Fixture f;
  Http1Origin origin(f.d);
  // Answers the first check, then goes silent (the connection stays open).
  origin.respond = [](size_t n, const std::string&) { return n == 1 ? Http1Origin::status(200) : std::string(); };
  auto host = makeHost(origin.server->address);
  auto config = baseConfig(HealthCheckConfig::Kind::Http);
  config.timeout_ms = 100;
  config.unhealthy_threshold = 2;
  f.make(config, {host});
  REQUIRE(f.until([&] { return f.events.size() >= 3; }));
  CHECK(f.events[0].passed);
  CHECK(f.events[1].transition == HealthTransition::ChangePending);
  CHECK(f.events[2].transition == HealthTransition::Changed);
  CHECK(failed(host));
  CHECK(f.hc->stats().failure.load() >= 2);
  CHECK(f.hc->stats().network_failure.load() == f.hc->stats().failure.load());
  // A timed-out check takes its connection with it.
  CHECK(origin.server->accepted >= 2);
}

TEST_CASE("HC HTTP: healthy_threshold passes bring an unhealthy host back; generations follow transitions", "[hc]") {
  Fixture f;
  Http1Origin origin(f.d);
  // pass, fail (non-retriable: unhealthy at once), then passes.
  origin.respond = [](size_t n, const std::string&) { return Http1Origin::status(n == 2 ? 500 : 200); };
  auto host = makeHost(origin.server->address);
  auto config = baseConfig(HealthCheckConfig::Kind::Http);
  config.healthy_threshold = 3;
  f.make(config, {host});
  REQUIRE(f.until([&] { return f.events.size() >= 5; }));
  // The very first pass makes a new host healthy at once, whatever healthy_threshold.
  CHECK(f.events[0].transition == HealthTransition::Changed);
  CHECK(f.events[0].generation == 2);
  CHECK(f.events[1].transition == HealthTransition::Changed);
  CHECK(f.events[1].generation == 3);
  CHECK(f.events[2].transition == HealthTransition::ChangePending);
  CHECK(f.events[3].transition == HealthTransition::ChangePending);
  CHECK((f.events[3].flags & kFailedActiveHc) != 0);
  CHECK(f.events[3].generation == 3);
  CHECK(f.events[4].transition == HealthTransition::Changed);
  CHECK((f.events[4].flags & kFailedActiveHc) == 0);
  CHECK(f.events[4].generation == 4);
  CHECK(f.hc->stats().healthy.load() == 1);
}

TEST_CASE("HC HTTP/2: a check over the HTTP/2 codec sends :path and :authority", "[hc]") {
  Fixture f;
  std::vector<std::string> seen;
  auto server = h2Server(f.d, [&](const http::RequestHeaders& h, const std::string&, http::ResponseEncoder& enc) {
    const std::string* ua = h.get("user-agent");
    seen.push_back(h.method + " " + h.path + " " + h.authority + " " + (ua != nullptr ? *ua : ""));
    http::ResponseHeaders rh;
    rh.status = 200;
    enc.encodeHeaders(rh, true);
  });
  auto host = makeHost(server->address);
  auto config = baseConfig(HealthCheckConfig::Kind::Http);
  config.http.http2 = true;
  f.make(config, {host});
  REQUIRE(f.until([&] { return f.events.size() >= 3; }));
  CHECK(f.passes() == 3);
  CHECK_FALSE(failed(host));
  REQUIRE(!seen.empty());
  CHECK(seen[0] == "GET /healthz backend Envoy/HC");
  CHECK(server->accepted == 1);  // streams on one connection
}

TEST_CASE("HC TCP: connect-only checks pass on an open port and fail on a closed one", "[hc]") {
  Fixture f;
  Server open(f.d, [](network::ConnectionPtr c) { return std::make_unique<RawPeer>(std::move(c)); });
  auto up = makeHost(open.address);
  auto down = makeHost(closedPort());
  std::vector<std::pair<Host*, bool>> results;
  f.make(baseConfig(HealthCheckConfig::Kind::Tcp), {up, down});
  f.hc->setCheckCompleteCallback([&](const HostSharedPtr& h, HealthTransition, bool passed) {
    results.emplace_back(h.get(), passed);
  });
  REQUIRE(f.until([&] {
    size_t u = 0, dn = 0;
    for (auto& [h, p] : results) (h == up.get() ? u : dn) += 1;
    return u >= 2 && dn >= 2;
  }));
  for (auto& [h, passed] : results) CHECK(passed == (h == up.get()));
  CHECK((up->healthFlags() & kHcFlags) == 0);
  // The failing host stays unhealthy but is no longer pending once checked.
  CHECK((down->healthFlags() & kHcFlags) == kFailedActiveHc);
  CHECK(f.hc->stats().network_failure.load() >= 2);
  CHECK(f.hc->stats().healthy.load() == 1);
  // Connect-only checks do not keep their connections.
  CHECK(open.accepted >= 2);
}

TEST_CASE("HC TCP: send bytes and match the answer; a mismatch fails", "[hc]") {
  SECTION("blocks found in order pass, the connection is kept") {
    Fixture f;
    Server srv(f.d, [](network::ConnectionPtr c) {
      auto p = std::make_unique<RawPeer>(std::move(c));
      p->on_data = [](RawPeer& peer) {
        if (peer.received.size() >= 4) {
          peer.received.erase(0, 4);
          peer.send("PONG and then OK");
        }
      };
      return p;
    });
    auto host = makeHost(srv.address);
    auto config = baseConfig(HealthCheckConfig::Kind::Tcp);
    config.tcp.send = "PING";
    config.tcp.receive = {"PONG", "OK"};
    f.make(config, {host});
    REQUIRE(f.until([&] { return f.events.size() >= 3; }));
    CHECK(f.passes() == 3);
    CHECK(srv.accepted == 1);
  }
  SECTION("blocks out of order never match: the check times out") {
    Fixture f;
    std::string got;
    Server srv(f.d, [&](network::ConnectionPtr c) {
      auto p = std::make_unique<RawPeer>(std::move(c));
      p->on_data = [&](RawPeer& peer) {
        got = peer.received;
        peer.send("PONG and then OK");
      };
      return p;
    });
    auto host = makeHost(srv.address);
    auto config = baseConfig(HealthCheckConfig::Kind::Tcp);
    config.timeout_ms = 100;
    config.tcp.send = "PING";
    config.tcp.receive = {"OK", "PONG"};
    f.make(config, {host});
    REQUIRE(f.until([&] { return !f.events.empty(); }));
    CHECK_FALSE(f.events[0].passed);
    CHECK(got == "PING");
    CHECK(f.hc->stats().network_failure.load() == 1);
  }
  SECTION("a host that closes without the expected answer fails at once") {
    Fixture f;
    Server srv(f.d, [](network::ConnectionPtr c) {
      auto p = std::make_unique<RawPeer>(std::move(c));
      p->on_data = [](RawPeer& peer) {
        common::Buffer b;
        b.add("NOPE");
        peer.conn->write(b, true);
      };
      return p;
    });
    auto host = makeHost(srv.address);
    auto config = baseConfig(HealthCheckConfig::Kind::Tcp);
    config.timeout_ms = 2000;
    config.tcp.send = "PING";
    config.tcp.receive = {"PONG"};
    f.make(config, {host});
    REQUIRE(f.until([&] { return !f.events.empty(); }, 1000));
    CHECK_FALSE(f.events[0].passed);
    CHECK(failed(host));
  }
}

TEST_CASE("HC gRPC: grpc.health.v1 Check over HTTP/2; SERVING passes, anything else fails at once", "[hc]") {
  Fixture f;
  GrpcOrigin origin(f.d);
  auto host = makeHost(origin.server->address);
  auto config = baseConfig(HealthCheckConfig::Kind::Grpc);
  config.unhealthy_threshold = 5;  // gRPC answers that are not SERVING ignore it (Envoy)
  config.grpc.service_name = "svc.Foo";
  config.grpc.authority = "grpc.example";
  f.make(config, {host});
  REQUIRE(f.until([&] { return f.events.size() >= 2; }));
  CHECK(f.passes() == 2);
  CHECK_FALSE(failed(host));
  CHECK(origin.services.at(0) == "svc.Foo");
  CHECK(origin.paths.at(0) == "/grpc.health.v1.Health/Check");
  CHECK(origin.authorities.at(0) == "grpc.example");
  CHECK(origin.content_types.at(0) == "application/grpc");
  CHECK(origin.tes.at(0) == "trailers");
  CHECK(origin.timeouts.at(0) == "500m");

  using Mode = GrpcOrigin::Mode;
  for (Mode bad :
       {Mode::NotServing, Mode::TrailersOnlyUnimplemented, Mode::BadStatusInTrailers, Mode::Http503, Mode::NotGrpc}) {
    INFO("mode " << static_cast<int>(bad));
    // Healthy again first, then one bad answer is enough.
    origin.mode = Mode::Serving;
    REQUIRE(f.until([&] { return !failed(host); }));
    origin.mode = bad;
    const size_t before = f.events.size();
    REQUIRE(f.until([&] { return f.events.size() > before && !f.events.back().passed; }));
    CHECK(f.events.back().transition == HealthTransition::Changed);
    CHECK(failed(host));
  }
  CHECK(f.hc->stats().network_failure.load() == 0);
  CHECK(origin.server->accepted == 1);  // judged calls (even reset ones) keep the connection
}

TEST_CASE("HC gRPC: an unanswered call times out and only its stream is reset", "[hc]") {
  Fixture f;
  GrpcOrigin origin(f.d);
  origin.mode = GrpcOrigin::Mode::Silent;
  auto host = makeHost(origin.server->address);
  auto config = baseConfig(HealthCheckConfig::Kind::Grpc);
  config.timeout_ms = 80;
  f.make(config, {host});
  REQUIRE(f.until([&] { return f.events.size() >= 2; }));
  CHECK(f.failures() == f.events.size());
  CHECK(f.hc->stats().network_failure.load() >= 2);
  CHECK(f.hc->stats().network_failure.load() == f.hc->stats().failure.load());
  origin.mode = GrpcOrigin::Mode::Serving;
  REQUIRE(f.until([&] { return !failed(host); }));
  CHECK(origin.server->accepted == 1);
}

TEST_CASE("HC: setHosts keeps the state of kept hosts, checks new ones and stops removed ones", "[hc]") {
  Fixture f;
  Http1Origin a(f.d), b(f.d);
  a.respond = b.respond = [](size_t, const std::string&) { return Http1Origin::status(200); };
  auto ha = makeHost(a.server->address);
  auto hb = makeHost(b.server->address);
  f.make(baseConfig(HealthCheckConfig::Kind::Http), {ha});
  REQUIRE(f.until([&] { return !failed(ha); }));
  const uint64_t gen = f.generation.load();

  f.hc->setHosts({ha, hb});
  CHECK_FALSE(failed(ha));                              // kept: still healthy
  CHECK((hb->healthFlags() & kHcFlags) == kHcFlags);    // new: pending
  CHECK(f.generation.load() == gen + 1);
  CHECK(f.hc->stats().healthy.load() == 1);
  REQUIRE(f.until([&] { return (hb->healthFlags() & kHcFlags) == 0; }));
  CHECK(f.hc->stats().healthy.load() == 2);

  f.hc->setHosts({hb});
  CHECK(f.hc->hostCount() == 1);
  CHECK(f.hc->stats().healthy.load() == 1);
  runFor(f.d, 30);  // a request in flight when `ha` left may still land
  const size_t a_requests = a.requests.size();
  runFor(f.d, 200);
  CHECK(a.requests.size() == a_requests);
  CHECK(b.requests.size() >= 3);
}

TEST_CASE("HC: mark_new_hosts_pending false sets only kFailedActiveHc on new hosts", "[hc]") {
  Fixture f;
  auto host = makeHost(closedPort());
  auto config = baseConfig(HealthCheckConfig::Kind::Tcp);
  config.mark_new_hosts_pending = false;
  f.make(config, {host});
  CHECK((host->healthFlags() & kHcFlags) == kFailedActiveHc);
  REQUIRE(f.until([&] { return !f.events.empty(); }));
  // Already unhealthy and nothing pending: the failed first check changes nothing.
  CHECK(f.events[0].transition == HealthTransition::Unchanged);
  CHECK(f.generation.load() == 1);
}

TEST_CASE("HC: edge intervals apply while a transition is pending, unhealthy_interval after it", "[hc]") {
  Fixture f;
  auto open =
      std::make_unique<Server>(f.d, [](network::ConnectionPtr c) { return std::make_unique<RawPeer>(std::move(c)); });
  auto host = makeHost(open->address);
  auto config = baseConfig(HealthCheckConfig::Kind::Tcp);
  config.interval_ms = 20;
  config.unhealthy_threshold = 3;
  config.unhealthy_interval_ms = 60000;
  config.unhealthy_edge_interval_ms = 20;
  f.make(config, {host});
  REQUIRE(f.until([&] { return f.passes() >= 2; }));
  open.reset();  // the port now refuses connections
  REQUIRE(f.until([&] { return failed(host); }, 2000));
  const uint64_t attempts = f.hc->stats().attempt.load();
  CHECK(f.failures() == 3);  // two pending failures at the edge interval, then the transition
  runFor(f.d, 250);
  CHECK(f.hc->stats().attempt.load() == attempts);  // now a minute away
}

TEST_CASE("HC: without traffic the no_traffic intervals apply", "[hc]") {
  Fixture f;
  Server open(f.d, [](network::ConnectionPtr c) { return std::make_unique<RawPeer>(std::move(c)); });
  auto host = makeHost(open.address);
  auto config = baseConfig(HealthCheckConfig::Kind::Tcp);
  config.interval_ms = 20;
  config.no_traffic_interval_ms = 60000;
  bool traffic = false;
  f.make(config, {host});
  f.hc->setHasTrafficHook([&] { return traffic; });
  REQUIRE(f.until([&] { return !f.events.empty(); }));
  runFor(f.d, 200);
  CHECK(f.hc->stats().attempt.load() == 1);
  // Traffic arrives: updateConfig restarts the schedule (keeping the host's state), now at `interval`.
  traffic = true;
  f.hc->updateConfig(config);
  CHECK_FALSE(failed(host));
  REQUIRE(f.until([&] { return f.hc->stats().attempt.load() >= 4; }));
}

TEST_CASE("HC: jitter stays within its bounds and initial_jitter delays the first check", "[hc]") {
  Fixture f;
  Server open(f.d, [](network::ConnectionPtr c) { return std::make_unique<RawPeer>(std::move(c)); });
  std::vector<HostSharedPtr> hosts;
  for (int i = 0; i < 4; ++i) hosts.push_back(makeHost(open.address));
  auto config = baseConfig(HealthCheckConfig::Kind::Tcp);
  config.initial_jitter_ms = 150;
  config.interval_ms = 1000;  // the next round is at least a second away
  config.interval_jitter_percent = 50;
  config.interval_jitter_ms = 10;
  f.make(config, hosts, 42);
  f.d.updateTime();
  const uint64_t t0 = f.d.nowMs();
  std::vector<uint64_t> first;
  f.hc->setCheckCompleteCallback(
      [&](const HostSharedPtr&, HealthTransition, bool) { first.push_back(f.d.nowMs() - t0); });
  REQUIRE(f.until([&] { return first.size() >= 4; }, 1000));
  for (uint64_t t : first) CHECK(t < 400);
  // Jitter only adds: no second round before `interval` has passed.
  runFor(f.d, 700);
  CHECK(first.size() == 4);
}

TEST_CASE("HC: destroying the checker with checks in flight is safe and returns its hosts", "[hc]") {
  Fixture f;
  Http1Origin silent(f.d);  // accepts and reads, never answers
  auto host = makeHost(silent.server->address);
  auto h2 = makeHost(closedPort());
  f.make(baseConfig(HealthCheckConfig::Kind::Http), {host, h2});
  REQUIRE(f.until([&] { return silent.requests.size() == 1; }));
  const uint64_t gen = f.generation.load();
  f.hc.reset();
  CHECK((host->healthFlags() & kHcFlags) == 0);
  CHECK((h2->healthFlags() & kHcFlags) == 0);
  CHECK(f.generation.load() == gen + 1);
  runFor(f.d, 100);
  // The abandoned connection was closed.
  REQUIRE(silent.server->peers.size() == 1);
  auto* peer = static_cast<RawPeer*>(silent.server->peers[0].get());
  CHECK(f.until([&] { return peer->eof || peer->closed; }, 500));
}

TEST_CASE("HC: stop() halts checks and keeps state; the callback may remove its own host", "[hc]") {
  Fixture f;
  Http1Origin origin(f.d);
  origin.respond = [](size_t, const std::string&) { return Http1Origin::status(200); };
  auto host = makeHost(origin.server->address);
  f.make(baseConfig(HealthCheckConfig::Kind::Http), {host});
  REQUIRE(f.until([&] { return f.events.size() >= 2; }));
  f.hc->stop();
  const size_t n = origin.requests.size();
  runFor(f.d, 150);
  CHECK(origin.requests.size() <= n + 1);  // at most the one in flight
  CHECK_FALSE(failed(host));
  f.hc->start();
  REQUIRE(f.until([&] { return origin.requests.size() >= n + 3; }));

  // Removing the host from inside its own completion callback (a cluster update triggered by it).
  f.hc->setCheckCompleteCallback([&](const HostSharedPtr&, HealthTransition, bool) { f.hc->setHosts({}); });
  REQUIRE(f.until([&] { return f.hc->hostCount() == 0; }));
  runFor(f.d, 100);
}

TEST_CASE("HC: passive failures reported from another thread make the host unhealthy at once", "[hc]") {
  Fixture f;
  Http1Origin origin(f.d);
  origin.respond = [](size_t, const std::string&) { return Http1Origin::status(200); };
  auto host = makeHost(origin.server->address);
  auto config = baseConfig(HealthCheckConfig::Kind::Http);
  config.interval_ms = 60000;
  config.unhealthy_threshold = 5;
  f.make(config, {host});
  REQUIRE(f.until([&] { return !f.events.empty(); }));
  REQUIRE_FALSE(failed(host));
  auto reporter = f.hc->passiveFailureReporter();
  std::thread worker([&] { reporter.report(host); });
  worker.join();
  REQUIRE(f.until([&] { return failed(host); }));
  CHECK(f.hc->stats().passive_failure.load() == 1);
  CHECK(f.events.back().transition == HealthTransition::Changed);
  // After the checker is gone a late report does nothing.
  f.hc.reset();
  reporter.report(host);
  runFor(f.d, 20);
  CHECK_FALSE(failed(host));
}

// ---- TLS: the checks use the host's transport socket factory ----

namespace {

std::string readFile(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A CA with a server and a client identity, from the project's CA tool (made once).
struct HcPki {
  std::filesystem::path dir;
  certs::CertificatePair server, client;
  std::string root;
  HcPki() {
    dir = std::filesystem::temp_directory_path() / ("strait-hc-test-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    const std::string tool = std::string(STRAIT_SOURCE_DIR) + "/certs/strait-ca.sh";
    auto run = [&](const std::string& args) {
      std::string cmd = "bash " + tool + " " + args + " >/dev/null 2>&1";
      REQUIRE(std::system(cmd.c_str()) == 0);
    };
    const std::string d = dir.string();
    run("root --dir " + d + "/ca");
    run("workload --dir " + d + "/ca --out " + d + "/server --ns default --sa server");
    run("workload --dir " + d + "/ca --out " + d + "/client --ns default --sa client");
    auto pair = [&](const std::string& who) {
      return certs::CertificatePair{readFile(dir / who / "cert-chain.pem"), readFile(dir / who / "key.pem"), who};
    };
    server = pair("server");
    client = pair("client");
    root = readFile(dir / "ca" / "root-cert.pem");
  }
  ~HcPki() { std::filesystem::remove_all(dir); }
};
HcPki& hcPki() {
  static HcPki p;
  return p;
}

certs::SslContextConstSharedPtr tlsContext(bool server, const certs::CertificatePair* identity) {
  certs::TlsSettings s;
  s.server = server;
  s.require_client_certificate = server;
  certs::ValidationSettings v;
  v.ca_pem = hcPki().root;
  v.ca_source = "root";
  std::vector<certs::CertificatePair> pairs;
  if (identity != nullptr) pairs.push_back(*identity);
  auto ctx = certs::SslContext::create(s, pairs, v);
  REQUIRE(ctx.ok());
  return *ctx;
}

// What a cluster's TLS transport_socket gives the health checker.
struct ClientTlsFactory : network::TransportSocketFactory {
  explicit ClientTlsFactory(certs::SslContextConstSharedPtr c) : ctx(std::move(c)) {}
  network::TransportSocketPtr create(const network::TransportSocketOptions& options) const override {
    return std::make_unique<certs::TlsSocket>(ctx, options);
  }
  bool implementsSecureTransport() const override { return true; }
  uint64_t hashKey() const override { return 1; }
  const std::vector<std::string>& alpnProtocols() const override { return alpn; }
  bool ready() const override { return true; }
  certs::SslContextConstSharedPtr ctx;
  std::vector<std::string> alpn;
};

}  // namespace

TEST_CASE("HC TLS: HTTP checks speak mTLS through the host's transport socket factory", "[hc]") {
  Fixture f;
  auto server_ctx = tlsContext(true, &hcPki().server);
  std::vector<std::string> peer_ids;
  Http1Origin origin(f.d, [&](network::Connection& c) {
    c.setTransportSocket(std::make_unique<certs::TlsSocket>(server_ctx, network::TransportSocketOptions{}));
  });
  origin.respond = [&](size_t n, const std::string&) {
    const auto& conn = origin.server->peers.back()->conn;
    if (conn->ssl() != nullptr && !conn->ssl()->uriSanPeerCertificate().empty()) {
      peer_ids.push_back(conn->ssl()->uriSanPeerCertificate()[0]);
    }
    return Http1Origin::status(200);
  };

  auto good = makeHost(origin.server->address);
  good->transport_socket = std::make_shared<ClientTlsFactory>(tlsContext(false, &hcPki().client));
  auto config = baseConfig(HealthCheckConfig::Kind::Http);
  config.timeout_ms = 3000;  // handshakes under valgrind are slow
  f.make(config, {good});
  REQUIRE(f.until([&] { return f.events.size() >= 2; }, 5000));
  CHECK(f.passes() == 2);
  REQUIRE(!peer_ids.empty());
  CHECK(peer_ids[0] == "spiffe://cluster.local/ns/default/sa/client");
  CHECK(origin.requests.at(0).find("GET /healthz") == 0);

  // Without a client certificate the server refuses the handshake: the check fails.
  f.hc.reset();
  f.events.clear();
  auto anonymous = makeHost(origin.server->address);
  anonymous->transport_socket = std::make_shared<ClientTlsFactory>(tlsContext(false, nullptr));
  f.make(config, {anonymous});
  REQUIRE(f.until([&] { return !f.events.empty(); }, 5000));
  CHECK_FALSE(f.events[0].passed);
  CHECK(failed(anonymous));
}
