#include "proxy/server/hot_restart.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "proxy/network/listener.h"
#include "proxy/server/hot_restart_message.h"

namespace hr = strait::server::hot_restart;
using strait::server::HotRestart;

namespace {

hr::Message roundTrip(const hr::Message& m) {
  auto frame = hr::encode(m);
  REQUIRE(frame.ok());
  auto back = hr::decode(*frame);
  REQUIRE(back.ok());
  return *back;
}

std::string decodeError(std::string_view frame) {
  auto m = hr::decode(frame);
  return m.ok() ? std::string("ok") : std::string(m.status().message());
}

std::string frameOf(const hr::Message& m) {
  auto f = hr::encode(m);
  REQUIRE(f.ok());
  return *f;
}

// A base id no other test run uses at the same time.
uint32_t testBaseId() { return 500000 + static_cast<uint32_t>(::getpid()) % 400000; }

}  // namespace

TEST_CASE("hot restart messages round-trip", "[hot_restart]") {
  hr::Message hello;
  hello.type = hr::Type::Hello;
  hello.epoch = 7;
  CHECK(roundTrip(hello).epoch == 7);

  hr::Message reply;
  reply.type = hr::Type::HelloReply;
  reply.epoch = 6;
  reply.pid = 123456;
  auto r = roundTrip(reply);
  CHECK(r.type == hr::Type::HelloReply);
  CHECK(r.epoch == 6);
  CHECK(r.pid == 123456);

  hr::Message get;
  get.type = hr::Type::GetSockets;
  get.kind = hr::SocketKind::Local;
  get.address = "[::1]:15000";
  get.name = "virtualInbound";
  auto g = roundTrip(get);
  CHECK(g.kind == hr::SocketKind::Local);
  CHECK(g.address == "[::1]:15000");
  CHECK(g.name == "virtualInbound");

  hr::Message socks;
  socks.type = hr::Type::Sockets;
  socks.flags = hr::kMore;
  socks.count = 3;
  auto s = roundTrip(socks);
  CHECK(s.count == 3);
  CHECK(s.flags == hr::kMore);

  hr::Message st;
  st.type = hr::Type::Stats;
  st.flags = hr::kFinal;
  st.counters = {{"http.ingress.downstream_rq_total", 1ull << 40}, {"a", 0}, {"", 5}};
  auto t = roundTrip(st);
  CHECK(t.flags == hr::kFinal);
  CHECK(t.counters == st.counters);

  for (hr::Type type : {hr::Type::GetStats, hr::Type::Drain, hr::Type::DrainReply}) {
    hr::Message empty;
    empty.type = type;
    auto frame = frameOf(empty);
    CHECK(frame.size() == hr::kHeaderSize);
    CHECK(roundTrip(empty).type == type);
  }
}

TEST_CASE("hot restart frames that are bad are errors, never read past the end", "[hot_restart]") {
  hr::Message get;
  get.type = hr::Type::GetSockets;
  get.address = "127.0.0.1:10000";
  get.name = "listener";
  const std::string good = frameOf(get);
  // Every truncation (of the header or the payload) is refused.
  for (size_t n = 0; n < good.size(); ++n) {
    CHECK(decodeError(std::string_view(good.data(), n)) != "ok");
  }
  CHECK(decodeError(good + "x").find("follow the header") != std::string::npos);

  std::string bad = good;
  bad[0] = 'X';
  CHECK(decodeError(bad).find("magic") != std::string::npos);
  bad = good;
  bad[4] = 2;
  CHECK(decodeError(bad).find("version 2") != std::string::npos);
  bad = good;
  bad[5] = 42;
  CHECK(decodeError(bad).find("unknown message type 42") != std::string::npos);
  bad = good;
  bad[5] = 0;
  CHECK(decodeError(bad).find("unknown message type 0") != std::string::npos);
  bad = good;
  bad[6] = 1;
  CHECK(decodeError(bad).find("reserved") != std::string::npos);
  bad = good;
  bad[hr::kHeaderSize] = 9;  // socket kind
  CHECK(decodeError(bad).find("unknown socket kind") != std::string::npos);

  // A string length that runs past the payload (the payload length itself is consistent).
  bad = good;
  bad[hr::kHeaderSize + 1] = static_cast<char>(0xff);
  bad[hr::kHeaderSize + 2] = static_cast<char>(0x7f);
  CHECK(decodeError(bad).find("runs past the payload") != std::string::npos);

  // A payload length larger than any frame may carry.
  bad = good;
  bad[8] = bad[9] = bad[10] = bad[11] = static_cast<char>(0xff);
  CHECK(decodeError(bad).find("too large") != std::string::npos);

  // Bytes left after the last field (a Drain carries nothing).
  hr::Message drain;
  drain.type = hr::Type::Drain;
  std::string d = frameOf(drain);
  d[8] = 1;
  d += "z";
  CHECK(decodeError(d).find("left after") != std::string::npos);

  // A Sockets message announcing more descriptors than one message may carry.
  hr::Message socks;
  socks.type = hr::Type::Sockets;
  socks.count = hr::kMaxFdsPerMessage + 1;
  CHECK(!hr::encode(socks).ok());
  socks.count = 1;
  std::string f = frameOf(socks);
  f[hr::kHeaderSize + 1] = static_cast<char>(0xff);
  CHECK(decodeError(f).find("too many") != std::string::npos);

  // A Stats entry cut inside its value.
  hr::Message st;
  st.type = hr::Type::Stats;
  st.counters = {{"x", 1}};
  std::string sf = frameOf(st);
  sf.resize(sf.size() - 3);
  sf[8] = static_cast<char>(sf.size() - hr::kHeaderSize);
  CHECK(decodeError(sf).find("runs past the payload") != std::string::npos);
}

TEST_CASE("hot restart counters are split into messages that fit", "[hot_restart]") {
  std::vector<std::pair<std::string, uint64_t>> counters;
  for (int i = 0; i < 5000; ++i) counters.emplace_back("cluster.outbound|8080||svc-" + std::to_string(i) + ".upstream_rq_total", i);
  auto msgs = hr::statsMessages(counters, true);
  REQUIRE(msgs.size() > 1);
  std::vector<std::pair<std::string, uint64_t>> back;
  for (size_t i = 0; i < msgs.size(); ++i) {
    auto frame = hr::encode(msgs[i]);
    REQUIRE(frame.ok());
    CHECK(frame->size() <= hr::kMaxFrame);
    auto m = hr::decode(*frame);
    REQUIRE(m.ok());
    CHECK(((m->flags & hr::kMore) != 0) == (i + 1 < msgs.size()));
    CHECK((m->flags & hr::kFinal) != 0);
    back.insert(back.end(), m->counters.begin(), m->counters.end());
  }
  CHECK(back == counters);
  CHECK(hr::statsMessages({}, false).size() == 1);
}

TEST_CASE("hot restart hands sockets and counters to the next epoch over the unix socket", "[hot_restart]") {
  const uint32_t base = testBaseId();
  strait::stats::Store parent_store(1);
  strait::stats::setThreadShard(&parent_store.shard(0));
  strait::stats::inc(parent_store.counter("http.in.downstream_rq_total"), 41);
  strait::stats::inc(parent_store.counter("only.in_parent"), 3);

  auto parent = HotRestart::create(base, 0);
  REQUIRE(parent.ok());
  // Epoch 0 again, same base id: refused, naming the flags.
  auto twin = HotRestart::create(base, 0);
  REQUIRE(!twin.ok());
  CHECK(std::string(twin.status().message()).find("--base-id") != std::string::npos);

  std::string err;
  auto addr = strait::network::Address::parse("127.0.0.1", 0);
  int listen_fd = strait::network::bindReusePortSocket(*addr, &err);
  REQUIRE(listen_fd >= 0);
  REQUIRE(::listen(listen_fd, 16) == 0);
  const auto bound = strait::network::boundAddress(listen_fd);
  std::atomic<int> drains{0}, gone{0};
  HotRestart::ParentCallbacks cb;
  cb.sockets = [&](hr::SocketKind kind, const strait::network::Address& configured, const std::string& name) {
    std::vector<int> out;
    if (kind == hr::SocketKind::Listener && configured == bound && name == "l") out.push_back(::dup(listen_fd));
    return out;
  };
  cb.drain = [&] { ++drains; };
  cb.child_gone = [&] { ++gone; };
  (*parent)->startServing(cb, parent_store);

  SECTION("a bad message closes the connection and the parent serves the next one") {
    int raw = ::socket(AF_UNIX, SOCK_SEQPACKET, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    const std::string name = HotRestart::socketName(base, 0);
    std::memcpy(a.sun_path + 1, name.data(), name.size());
    REQUIRE(::connect(raw, reinterpret_cast<sockaddr*>(&a),
                      static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size())) == 0);
    const char junk[] = "STHR\x01\x03\x00\x00\xff\x00\x00\x00 not a frame";
    REQUIRE(::send(raw, junk, sizeof(junk) - 1, 0) > 0);
    char buf[16];
    CHECK(::recv(raw, buf, sizeof(buf), 0) == 0);  // closed by the parent
    ::close(raw);
    for (int i = 0; i < 100 && gone.load() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    CHECK(gone.load() == 1);
  }

  auto child = HotRestart::create(base, 1);
  REQUIRE(child.ok());
  REQUIRE((*child)->hasParent());

  auto fds = (*child)->takeParentSockets(hr::SocketKind::Listener, bound, "l");
  REQUIRE(fds.size() == 1);
  CHECK(strait::network::boundAddress(fds[0]) == bound);
  // The very same socket: a connection queued before is accepted through the child's descriptor.
  int client = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(::connect(client, bound.sockAddr(), bound.sockLen()) == 0);
  ::close(listen_fd);  // the parent's copies go
  int accepted = -1;
  for (int i = 0; i < 100 && accepted < 0; ++i) {
    accepted = ::accept(fds[0], nullptr, nullptr);
    if (accepted < 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  CHECK(accepted >= 0);
  if (accepted >= 0) ::close(accepted);
  ::close(client);
  ::close(fds[0]);
  CHECK((*child)->takeParentSockets(hr::SocketKind::Listener, bound, "other").empty());

  strait::stats::Store child_store(1);
  strait::stats::setThreadShard(&child_store.shard(0));
  auto rq = child_store.counter("http.in.downstream_rq_total");
  strait::stats::inc(rq, 2);
  (*child)->syncParentStats(child_store);
  CHECK(child_store.value(rq) == 43);
  CHECK(child_store.snapshot().size() == 1);  // the parent's other counter is not made here
  (*child)->syncParentStats(child_store);     // nothing grew: nothing added twice
  CHECK(child_store.value(rq) == 43);

  std::vector<std::function<void()>> posted;
  std::mutex posted_mu;
  (*child)->startParentDrain(
      [&](std::function<void()> f) {
        std::lock_guard<std::mutex> lock(posted_mu);
        posted.push_back(std::move(f));
      },
      child_store);
  CHECK(drains.load() == 1);
  // The parent counts on while it drains, then hands over its final counters as it exits.
  strait::stats::setThreadShard(&parent_store.shard(0));
  strait::stats::inc(parent_store.counter("http.in.downstream_rq_total"), 7);
  std::thread finisher([&] { (*parent)->handOverFinalStats(); });
  finisher.join();
  parent->reset();
  child->reset();  // joins the thread that followed the parent
  strait::stats::setThreadShard(&child_store.shard(0));
  for (auto& f : posted) f();
  CHECK(child_store.value(rq) == 50);
}

TEST_CASE("hot restart: the parent's final counts reach a counter made since the last listing", "[hot_restart]") {
  strait::stats::Store store(1);
  strait::stats::setThreadShard(&store.shard(0));
  auto early = store.counter("server.early");
  HotRestart::CounterMerge merge;
  merge.apply(store, {{"server.early", 2}});  // lists this process's counters
  CHECK(store.value(early) == 2);
  // An LDS listener comes to the child after that listing: its counter is not looked up again within
  // 2 s of it...
  auto later = store.counter("listener.x.downstream_cx_total");
  merge.apply(store, {{"listener.x.downstream_cx_total", 5}});
  CHECK(store.value(later) == 0);
  // ...except for the parent's final counts, which would otherwise never reach it.
  merge.apply(store, {{"listener.x.downstream_cx_total", 9}}, true);
  CHECK(store.value(later) == 9);
}
