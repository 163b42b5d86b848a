#include <catch2/catch.hpp>
#include <string>
#include <sys/socket.h>
#include <unistd.h>

#include "proxy/event/dispatcher.h"
#include "proxy/network/connection.h"
#include "proxy/network/listener.h"

using namespace strait;
using network::Connection;
using network::ConnectionEvent;

namespace {

// A bound (not yet listening) socket on a free loopback port, and the address it got.
int boundLoopbackSocket(network::Address* bound) {
  std::string err;
  auto a = network::Address::parse("127.0.0.1", 0);
  int fd = network::bindReusePortSocket(*a, &err);
  REQUIRE(fd >= 0);
  *bound = network::boundAddress(fd);
  return fd;
}

// Records what a connection tells its owner.
struct Recorder : network::ConnectionCallbacks {
  std::string data;
  bool eof = false;
  std::vector<ConnectionEvent> events;
  int above = 0, below = 0;
  std::function<void()> on_data;
  void onData(Connection&, common::Buffer& b, bool end_stream) override {
    data += b.toString();
    b.drain(b.length());
    if (end_stream) eof = true;
    if (on_data) on_data();
  }
  void onEvent(Connection&, ConnectionEvent e) override { events.push_back(e); }
  void onAboveWriteBufferHighWatermark(Connection&) override { ++above; }
  void onBelowWriteBufferLowWatermark(Connection&) override { ++below; }
};

struct Fixture {
  event::Dispatcher d{"test"};
  std::unique_ptr<network::TcpListener> listener;
  network::Address address;
  network::ConnectionPtr accepted;
  Recorder server_rec;

  Fixture() {
    int fd = boundLoopbackSocket(&address);
    listener = std::make_unique<network::TcpListener>(d, fd, 16, [this](network::ConnectionPtr c) {
      accepted = std::move(c);
      accepted->setCallbacks(&server_rec);
      accepted->startReading();
    });
    REQUIRE(listener->ok());
  }
  // Runs the loop until `done` is true or the time limit passes.
  bool runUntil(const std::function<bool()>& done, uint64_t limit_ms = 3000) {
    auto guard = d.createTimer([this] { d.exit(); });
    guard->enable(limit_ms);
    auto poll = d.createTimer([] {});
    std::function<void()> tick;
    tick = [&] {
      if (done()) {
        d.exit();
      } else {
        poll->enable(1);
      }
    };
    poll = d.createTimer([&] { tick(); });
    poll->enable(0);
    d.run();
    return done();
  }
};

}  // namespace

TEST_CASE("TcpListener: opened without listening, it accepts nothing until listen()") {
  // A hot restart child holds its sockets this way until it is initialised.
  event::Dispatcher d{"test"};
  network::Address address;
  int fd = boundLoopbackSocket(&address);
  network::ConnectionPtr accepted;
  network::TcpListener l(d, fd, 16, [&](network::ConnectionPtr c) {
    accepted = std::move(c);
    d.exit();
  }, false);
  REQUIRE(l.ok());
  int c = ::socket(AF_INET, SOCK_STREAM, 0);
  CHECK(::connect(c, address.sockAddr(), address.sockLen()) != 0);  // not listening: refused
  ::close(c);
  REQUIRE(l.listen());
  CHECK(l.listen());  // a second call changes nothing
  c = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(::connect(c, address.sockAddr(), address.sockLen()) == 0);
  auto guard = d.createTimer([&] { d.exit(); });
  guard->enable(3000);
  d.run();
  CHECK(accepted != nullptr);
  ::close(c);
}

TEST_CASE("TcpListener: acceptPending takes the connections queued on the socket before it closes") {
  // A listener removed by LDS: without this, closing its socket resets connections the kernel had
  // already completed, and a request their client sent on one is lost.
  event::Dispatcher d{"test"};
  network::Address address;
  int fd = boundLoopbackSocket(&address);
  std::vector<network::ConnectionPtr> accepted;
  Recorder rec;
  auto l = std::make_unique<network::TcpListener>(d, fd, 16, [&](network::ConnectionPtr c) {
    c->setCallbacks(&rec);
    c->startReading();
    accepted.push_back(std::move(c));
  });
  REQUIRE(l->ok());
  CHECK(l->acceptPending() == 0);  // nothing queued
  // Three clients complete their handshakes in the kernel; the loop never runs, so nothing is accepted.
  std::vector<int> clients;
  for (int i = 0; i < 3; ++i) {
    int c = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(::connect(c, address.sockAddr(), address.sockLen()) == 0);
    REQUIRE(::send(c, "hi", 2, 0) == 2);
    clients.push_back(c);
  }
  CHECK(accepted.empty());
  CHECK(l->acceptPending() == 3);
  REQUIRE(accepted.size() == 3);
  l.reset();  // the listening socket closes
  // The taken connections live on: what their clients sent arrives.
  auto guard = d.createTimer([&] { d.exit(); });
  auto poll = d.createTimer([] {});
  poll = d.createTimer([&] {
    if (rec.data.size() >= 6) {
      d.exit();
    } else {
      poll->enable(1);
    }
  });
  poll->enable(0);
  guard->enable(3000);
  d.run();
  CHECK(rec.data == "hihihi");
  for (auto& c : accepted) CHECK(c->state() == Connection::State::Open);
  for (int c : clients) ::close(c);
}

TEST_CASE("Connection: bytes written by a client arrive at the server intact") {
  Fixture f;
  Recorder client_rec;
  Connection client(f.d, f.address);
  client.setCallbacks(&client_rec);
  client.connect(1000);
  client.startReading();
  common::Buffer out;
  std::string payload(200000, 'a');
  for (size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<char>(i * 7);
  out.add(payload);
  client.write(out, true);
  REQUIRE(f.runUntil([&] { return f.server_rec.eof; }));
  REQUIRE(f.server_rec.data == payload);
  REQUIRE(client_rec.events.front() == ConnectionEvent::Connected);
}

TEST_CASE("Connection: half-close lets the server answer after the client's FIN") {
  Fixture f;
  Recorder client_rec;
  Connection client(f.d, f.address);
  client.setCallbacks(&client_rec);
  client.connect(1000);
  client.startReading();
  f.server_rec.on_data = [&] {
    if (f.server_rec.eof) {
      common::Buffer reply;
      reply.add("got:" + f.server_rec.data);
      f.accepted->write(reply, true);
    }
  };
  common::Buffer out;
  out.add("ping");
  client.write(out, true);
  REQUIRE(f.runUntil([&] { return client_rec.eof; }));
  REQUIRE(client_rec.data == "got:ping");
}

TEST_CASE("Connection: connect to a closed port reports ConnectFailed") {
  event::Dispatcher d("test");
  network::Address closed;
  int fd = boundLoopbackSocket(&closed);
  ::close(fd);
  Recorder rec;
  Connection c(d, closed);
  c.setCallbacks(&rec);
  c.connect(1000);
  auto guard = d.createTimer([&] { d.exit(); });
  guard->enable(2000);
  auto poll = d.createTimer([] {});
  std::function<void()> tick = [&] {
    if (!rec.events.empty()) d.exit(); else poll->enable(1);
  };
  poll = d.createTimer([&] { tick(); });
  poll->enable(0);
  d.run();
  REQUIRE(rec.events.size() == 1);
  REQUIRE(rec.events[0] == ConnectionEvent::ConnectFailed);
  REQUIRE(c.state() == Connection::State::Closed);
}

TEST_CASE("Connection: write buffer watermarks fire when the peer does not read") {
  Fixture f;
  Recorder client_rec;
  Connection client(f.d, f.address);
  client.setCallbacks(&client_rec);
  client.setBufferLimits(64 * 1024);
  client.connect(1000);
  REQUIRE(f.runUntil([&] { return f.accepted != nullptr && !client_rec.events.empty(); }));
  f.accepted->readDisable(true);  // the server stops reading: kernel buffers fill, then ours
  std::string chunk(64 * 1024, 'w');
  for (int i = 0; i < 200 && client_rec.above == 0; ++i) {
    common::Buffer out;
    out.add(chunk);
    client.write(out, false);
    f.runUntil([] { return false; }, 2);
  }
  REQUIRE(client_rec.above == 1);
  f.accepted->readDisable(false);
  REQUIRE(f.runUntil([&] { return client_rec.below == 1; }));
}

TEST_CASE("Address: parse and format IPv4 and IPv6 with Envoy's stat names") {
  auto v4 = network::Address::parse("127.0.0.1", 8080);
  REQUIRE(v4);
  REQUIRE(v4->asString() == "127.0.0.1:8080");
  REQUIRE(v4->statName() == "127.0.0.1_8080");
  auto v6 = network::Address::parseHostPort("[::1]:443");
  REQUIRE(v6);
  REQUIRE(v6->isV6());
  REQUIRE(v6->asString() == "[::1]:443");
  REQUIRE(v6->statName() == "[__1]_443");
  REQUIRE_FALSE(network::Address::parse("not-an-ip", 1));
  REQUIRE_FALSE(network::Address::parse("1.2.3.4", 70000));
}
