// The TLS transport socket's state machine, driven without a network: two sockets whose ciphertext is
// pumped between them in chunks of chosen sizes (partial records, one byte at a time), plus the
// connection-level rules (Connected only after the handshake, a peer that leaves mid-handshake, a peer
// that sends garbage instead of a ClientHello) over loopback.
#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <algorithm>
#include <functional>
#include <random>
#include <sstream>
#include <string>

#include "certs/tls_context.h"
#include "certs/tls_socket.h"
#include "proxy/event/dispatcher.h"
#include "proxy/network/connection.h"
#include "proxy/network/listener.h"
#include "tests/unit/support/loop.h"

using namespace strait;

namespace {

std::string readFile(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// A mesh CA with a server and a client identity, made once with the project's CA tool.
struct Pki {
  std::filesystem::path dir;
  certs::CertificatePair server, client, stranger;
  std::string root;
  Pki() {
    dir = std::filesystem::temp_directory_path() / ("strait-tls-test-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    const std::string tool = std::string(STRAIT_SOURCE_DIR) + "/certs/strait-ca.sh";
    auto run = [&](const std::string& args) {
      std::string cmd = "bash " + tool + " " + args + " >/dev/null 2>&1";
      REQUIRE(std::system(cmd.c_str()) == 0);
    };
    const std::string d = dir.string();
    run("root --dir " + d + "/ca");
    run("root --dir " + d + "/other --trust-domain other.local");
    run("workload --dir " + d + "/ca --out " + d + "/server --ns default --sa server");
    run("workload --dir " + d + "/ca --out " + d + "/client --ns default --sa client");
    run("workload --dir " + d + "/other --out " + d + "/stranger --ns default --sa client");
    auto pair = [&](const std::string& who) {
      return certs::CertificatePair{readFile(dir / who / "cert-chain.pem"), readFile(dir / who / "key.pem"), who};
    };
    server = pair("server");
    client = pair("client");
    stranger = pair("stranger");
    root = readFile(dir / "ca" / "root-cert.pem");
  }
  ~Pki() { std::filesystem::remove_all(dir); }
};

Pki& pki() {
  static Pki p;
  return p;
}

certs::SanMatcher uriExact(const std::string& want) {
  certs::SanMatcher m;
  m.type = certs::SanMatcher::Type::Uri;
  m.match = [want](std::string_view v) { return v == want; };
  return m;
}

certs::SslContextConstSharedPtr serverCtx(bool require_client, std::vector<std::string> alpn = {}) {
  certs::TlsSettings s;
  s.server = true;
  s.require_client_certificate = require_client;
  s.alpn = std::move(alpn);
  certs::ValidationSettings v;
  v.ca_pem = pki().root;
  v.ca_source = "root";
  auto ctx = certs::SslContext::create(s, {pki().server}, v);
  REQUIRE(ctx.ok());
  return *ctx;
}

certs::SslContextConstSharedPtr clientCtx(const certs::CertificatePair* identity, std::vector<certs::SanMatcher> sans = {},
                                          std::vector<std::string> alpn = {}) {
  certs::TlsSettings s;
  s.alpn = std::move(alpn);
  certs::ValidationSettings v;
  v.ca_pem = pki().root;
  v.ca_source = "root";
  v.san_matchers = std::move(sans);
  std::vector<certs::CertificatePair> certs;
  if (identity) certs.push_back(*identity);
  auto ctx = certs::SslContext::create(s, certs, v);
  REQUIRE(ctx.ok());
  return *ctx;
}

struct Callbacks : network::TransportSocketCallbacks {
  int ready = 0;
  int flushes = 0;
  void onTransportReady() override { ++ready; }
  void onTransportWantsFlush() override { ++flushes; }
};

// Two sockets and the wire between them.
struct Pair {
  network::SslStats client_stats{}, server_stats{};
  Callbacks ccb, scb;
  std::unique_ptr<certs::TlsSocket> client, server;
  common::Buffer client_plain, server_plain;
  bool client_closed = false, server_closed = false;

  Pair(certs::SslContextConstSharedPtr cctx, certs::SslContextConstSharedPtr sctx) {
    network::TransportSocketOptions co, so;
    client = std::make_unique<certs::TlsSocket>(std::move(cctx), co);
    server = std::make_unique<certs::TlsSocket>(std::move(sctx), so);
    client->setCallbacks(ccb);
    server->setCallbacks(scb);
  }
  // Moves up to `chunk` bytes at a time from one side's out buffer to the other's input, running the
  // receiver after each piece, until nothing moves. Returns false if a side asked to close.
  bool pump(size_t chunk) {
    for (int round = 0; round < 4000000; ++round) {
      bool moved = false;
      auto step = [&](certs::TlsSocket& from, certs::TlsSocket& to, common::Buffer& plain, bool& closed) {
        if (closed || from.outBuffer().empty()) return;
        size_t n = std::min(chunk, from.outBuffer().length());
        to.readBuffer().move(from.outBuffer(), n);
        moved = true;
        if (to.onRead(plain, false) == network::PostIoAction::Close) closed = true;
      };
      step(*client, *server, server_plain, server_closed);
      step(*server, *client, client_plain, client_closed);
      if (client_closed || server_closed) return false;
      if (!moved) return true;
    }
    return false;
  }
  bool handshake(size_t chunk) {
    client->onConnected();
    return pump(chunk) && client->handshakeComplete() && server->handshakeComplete();
  }
};

}  // namespace

TEST_CASE("TLS socket: handshake and data survive one-byte and odd-sized chunks", "[tls]") {
  for (size_t chunk : {size_t(1), size_t(7), size_t(1000), size_t(1) << 20}) {
    Pair p(clientCtx(&pki().client, {uriExact("spiffe://cluster.local/ns/default/sa/server")}, {"h2"}),
           serverCtx(true, {"h2", "http/1.1"}));
    REQUIRE(p.handshake(chunk));
    CHECK(p.ccb.ready == 1);
    CHECK(p.scb.ready == 1);
    // Identities, ALPN and version as each side sees them.
    REQUIRE(p.server->ssl() != nullptr);
    CHECK(p.server->ssl()->uriSanPeerCertificate() ==
          std::vector<std::string>{"spiffe://cluster.local/ns/default/sa/client"});
    CHECK(p.server->ssl()->peerCertificateValidated());
    CHECK(p.client->ssl()->uriSanPeerCertificate() ==
          std::vector<std::string>{"spiffe://cluster.local/ns/default/sa/server"});
    CHECK(p.client->ssl()->alpn() == "h2");
    CHECK(p.server->ssl()->alpn() == "h2");
    CHECK(p.client->ssl()->tlsVersion() == "TLSv1.3");
    // 200 KB each way, in slices of mixed sizes.
    std::string up(200 * 1024, 'u'), down(200 * 1024, 'd');
    std::mt19937 rng(static_cast<unsigned>(chunk));
    for (auto& c : up) c = static_cast<char>('a' + rng() % 26);
    common::Buffer b1, b2;
    b1.add(up.substr(0, 10));
    b1.add(up.substr(10));
    b2.add(down);
    REQUIRE(p.client->encrypt(b1, false) == network::PostIoAction::KeepOpen);
    REQUIRE(p.server->encrypt(b2, false) == network::PostIoAction::KeepOpen);
    CHECK(b1.empty());
    CHECK(b2.empty());
    REQUIRE(p.pump(chunk));
    CHECK(p.server_plain.toString() == up);
    CHECK(p.client_plain.toString() == down);
  }
}

TEST_CASE("TLS socket: plaintext written before the handshake waits for it", "[tls]") {
  Pair p(clientCtx(&pki().client), serverCtx(false));
  common::Buffer early;
  early.add("early bytes");
  REQUIRE(p.client->encrypt(early, false) == network::PostIoAction::KeepOpen);
  CHECK(early.length() == 11);  // kept: nothing can be encrypted yet
  REQUIRE(p.handshake(64));
  REQUIRE(p.client->encrypt(early, false) == network::PostIoAction::KeepOpen);
  CHECK(early.empty());
  REQUIRE(p.pump(64));
  CHECK(p.server_plain.toString() == "early bytes");
}

TEST_CASE("TLS socket: a server certificate whose SAN does not match fails the client and is counted", "[tls]") {
  Pair p(clientCtx(&pki().client, {uriExact("spiffe://cluster.local/ns/default/sa/someone-else")}), serverCtx(false));
  network::TransportSocketOptions o;
  o.stats = &p.client_stats;
  stats::Store store(1);
  stats::setThreadShard(&store.shard(0));
  p.client_stats = network::makeSslStats(store, "cluster.c.");
  p.client = std::make_unique<certs::TlsSocket>(clientCtx(&pki().client, {uriExact("spiffe://x/other")}), o);
  p.client->setCallbacks(p.ccb);
  CHECK_FALSE(p.handshake(512));
  CHECK(p.client_closed);
  CHECK(p.ccb.ready == 0);
  CHECK(std::string(p.client->failureReason()).find("subject alternative name") != std::string::npos);
  CHECK(store.value("cluster.c.ssl.fail_verify_san") == 1);
  CHECK(store.value("cluster.c.ssl.connection_error") == 1);
  stats::setThreadShard(nullptr);
}

TEST_CASE("TLS socket: a client from another trust domain or without a certificate is refused", "[tls]") {
  stats::Store store(1);
  stats::setThreadShard(&store.shard(0));
  network::SslStats st = network::makeSslStats(store, "listener.l.");
  network::TransportSocketOptions so;
  so.stats = &st;
  SECTION("foreign trust domain") {
    Pair p(clientCtx(&pki().stranger), serverCtx(true));
    p.server = std::make_unique<certs::TlsSocket>(serverCtx(true), so);
    p.server->setCallbacks(p.scb);
    CHECK_FALSE(p.handshake(4096));
    CHECK(p.scb.ready == 0);
    CHECK(store.value("listener.l.ssl.fail_verify_error") == 1);
  }
  SECTION("no certificate") {
    Pair p(clientCtx(nullptr), serverCtx(true));
    p.server = std::make_unique<certs::TlsSocket>(serverCtx(true), so);
    p.server->setCallbacks(p.scb);
    CHECK_FALSE(p.handshake(4096));
    CHECK(p.scb.ready == 0);
    CHECK(store.value("listener.l.ssl.fail_verify_no_cert") == 1);
  }
  stats::setThreadShard(nullptr);
}

TEST_CASE("TLS socket: garbage instead of a ClientHello closes the server side", "[tls]") {
  network::TransportSocketOptions o;
  certs::TlsSocket server(serverCtx(false), o);
  Callbacks cb;
  server.setCallbacks(cb);
  common::Buffer plain;
  server.readBuffer().add("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  CHECK(server.onRead(plain, false) == network::PostIoAction::Close);
  CHECK_FALSE(server.handshakeComplete());
  CHECK(plain.empty());
  CHECK(cb.ready == 0);
  CHECK_FALSE(server.failureReason().empty());
  // Once failed, it stays failed.
  CHECK(server.encrypt(plain, false) == network::PostIoAction::Close);
}

TEST_CASE("TLS socket: close_notify after the data on end_stream", "[tls]") {
  Pair p(clientCtx(&pki().client), serverCtx(false));
  REQUIRE(p.handshake(1 << 16));
  common::Buffer last;
  last.add("bye");
  REQUIRE(p.client->encrypt(last, true) == network::PostIoAction::KeepOpen);
  size_t with_alert = p.client->outBuffer().length();
  REQUIRE(p.pump(1 << 16));
  CHECK(p.server_plain.toString() == "bye");
  CHECK(with_alert > 3 + 22);  // the data record and the close_notify alert
  // A second end_stream does not send another alert.
  common::Buffer none;
  REQUIRE(p.client->encrypt(none, true) == network::PostIoAction::KeepOpen);
  CHECK(p.client->outBuffer().empty());
}

TEST_CASE("TLS socket: client sessions resume on the next connection", "[tls]") {
  auto cctx = clientCtx(&pki().client);
  auto sctx = serverCtx(true);
  {
    Pair p(cctx, sctx);
    REQUIRE(p.handshake(1 << 16));
    CHECK_FALSE(p.client->ssl()->sessionReused());
    // TLS 1.3 tickets arrive after the handshake: the client reads them with application data.
    common::Buffer ping;
    ping.add("x");
    REQUIRE(p.server->encrypt(ping, false) == network::PostIoAction::KeepOpen);
    REQUIRE(p.pump(1 << 16));
  }
  Pair again(cctx, sctx);
  REQUIRE(again.handshake(1 << 16));
  CHECK(again.server->ssl()->sessionReused());
  CHECK(again.client->ssl()->sessionReused());
  CHECK(again.server->ssl()->uriSanPeerCertificate().size() == 1);
}

// ---- over loopback, through network::Connection ------------------------------------------------------

namespace {
struct Events : network::ConnectionCallbacks {
  std::vector<network::ConnectionEvent> events;
  std::string data;
  bool eof = false;
  void onData(network::Connection&, common::Buffer& b, bool end_stream) override {
    data += b.toString();
    b.drain(b.length());
    eof = eof || end_stream;
  }
  void onEvent(network::Connection&, network::ConnectionEvent e) override { events.push_back(e); }
  bool saw(network::ConnectionEvent e) const { return std::find(events.begin(), events.end(), e) != events.end(); }
};

// TLS handshakes with fresh certificates may take a while on a busy machine.
bool runUntil(event::Dispatcher& d, const std::function<bool()>& done, uint64_t limit_ms = 5000) {
  return strait::testing::runUntil(d, done, limit_ms);
}
}  // namespace

TEST_CASE("TLS connection: Connected is raised only after the handshake; bytes flow as plaintext", "[tls]") {
  event::Dispatcher d("tls-test");
  std::string err;
  int fd = network::bindReusePortSocket(*network::Address::parse("127.0.0.1", 0), &err);
  REQUIRE(fd >= 0);
  auto addr = network::boundAddress(fd);
  Events server_events;
  network::ConnectionPtr accepted;
  auto sctx = serverCtx(true);
  network::TcpListener listener(d, fd, 16, [&](network::ConnectionPtr c) {
    accepted = std::move(c);
    accepted->setCallbacks(&server_events);
    accepted->setTransportSocket(std::make_unique<certs::TlsSocket>(sctx, network::TransportSocketOptions{}));
    accepted->startReading();
  });
  Events client_events;
  network::Connection client(d, addr);
  client.setCallbacks(&client_events);
  client.setTransportSocket(std::make_unique<certs::TlsSocket>(clientCtx(&pki().client), network::TransportSocketOptions{}));
  common::Buffer hello;
  hello.add("hello through tls");
  client.write(hello, false);  // before Connected: held until the handshake is done
  d.updateTime();  // the loop's clock dates from before the test PKI was made (seconds on a busy machine)
  client.connect(2000);
  REQUIRE(runUntil(d, [&] { return client_events.saw(network::ConnectionEvent::Connected) && server_events.data.size() >= 17; }));
  CHECK(server_events.data == "hello through tls");
  CHECK(server_events.saw(network::ConnectionEvent::Connected));
  REQUIRE(accepted->ssl() != nullptr);
  CHECK(accepted->ssl()->uriSanPeerCertificate().front() == "spiffe://cluster.local/ns/default/sa/client");
  CHECK(client.transportProtocol() == "tls");
  // The client's close (close_notify, then FIN) reads as the end of the stream on the server.
  client.close(network::CloseType::FlushWrite);
  REQUIRE(runUntil(d, [&] { return server_events.eof; }));
}

TEST_CASE("TLS connection: a peer that leaves mid-handshake closes the client with ConnectFailed", "[tls]") {
  event::Dispatcher d("tls-test");
  std::string err;
  int fd = network::bindReusePortSocket(*network::Address::parse("127.0.0.1", 0), &err);
  REQUIRE(fd >= 0);
  auto addr = network::boundAddress(fd);
  network::ConnectionPtr accepted;
  Events server_events;
  network::TcpListener listener(d, fd, 16, [&](network::ConnectionPtr c) {
    // A plaintext server that closes as soon as it reads the ClientHello.
    accepted = std::move(c);
    accepted->setCallbacks(&server_events);
    accepted->startReading();
  });
  Events client_events;
  network::Connection client(d, addr);
  client.setCallbacks(&client_events);
  client.setTransportSocket(std::make_unique<certs::TlsSocket>(clientCtx(&pki().client), network::TransportSocketOptions{}));
  d.updateTime();  // the loop's clock dates from before the test PKI was made (seconds on a busy machine)
  client.connect(2000);
  REQUIRE(runUntil(d, [&] { return accepted != nullptr && accepted->bytesRead() > 0; }));
  accepted->close(network::CloseType::NoFlush);
  REQUIRE(runUntil(d, [&] { return !client_events.events.empty(); }));
  CHECK(client_events.events.front() == network::ConnectionEvent::ConnectFailed);
  CHECK_FALSE(client_events.saw(network::ConnectionEvent::Connected));
}
