// AdsClient against an in-process gRPC ADS server whose answers each test scripts.

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>
#include <grpcpp/server_context.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

#include "envoy/config/cluster/v3/cluster.pb.h"
#include "envoy/config/endpoint/v3/endpoint.pb.h"
#include "envoy/config/listener/v3/listener.pb.h"
#include "envoy/config/route/v3/route.pb.h"
#include "envoy/extensions/transport_sockets/tls/v3/secret.pb.h"
#include "envoy/service/discovery/v3/ads.grpc.pb.h"
#include "xds/client/ads_client.h"
#include "xds/client/backoff.h"
#include "xds/client/token_bucket.h"

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using envoy::service::discovery::v3::AggregatedDiscoveryService;
using envoy::service::discovery::v3::DeltaDiscoveryRequest;
using envoy::service::discovery::v3::DeltaDiscoveryResponse;
using envoy::service::discovery::v3::DiscoveryRequest;
using envoy::service::discovery::v3::DiscoveryResponse;
using strait::xds::AdsClient;
using strait::xds::AdsConfig;
using strait::xds::kClusterType;
using strait::xds::kEndpointType;
using strait::xds::kListenerType;
using strait::xds::kRouteType;
using strait::xds::kSecretType;

// Polls `pred` until it holds or `timeout` passes.
bool eventually(const std::function<bool()>& pred, std::chrono::milliseconds timeout = 5000ms) {
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (pred()) return true;
    std::this_thread::sleep_for(2ms);
  }
  return pred();
}

// One side of the fake control plane (SotW or delta): records every request with the stream it came
// on, lets the test write responses on the current stream, and drops the stream on demand.
template <class Req, class Resp>
class Hub {
 public:
  struct Recorded {
    int stream;
    Req req;
    Clock::time_point at;
  };

  grpc::Status serve(grpc::ServerContext* ctx, grpc::ServerReaderWriter<Resp, Req>* stream) {
    int id;
    {
      std::lock_guard<std::mutex> lk(write_mu_);
      std::lock_guard<std::mutex> lk2(mu_);
      id = ++streams_;
      current_ = stream;
      ctx_ = ctx;
    }
    Req req;
    while (stream->Read(&req)) {
      std::function<void(const Req&)> hook;
      {
        std::lock_guard<std::mutex> lk(mu_);
        requests_.push_back({id, req, Clock::now()});
        hook = on_request_;
      }
      if (hook) hook(req);
    }
    std::lock_guard<std::mutex> lk(write_mu_);
    std::lock_guard<std::mutex> lk2(mu_);
    if (ctx_ == ctx) {
      current_ = nullptr;
      ctx_ = nullptr;
    }
    return grpc::Status::OK;
  }

  bool send(const Resp& resp) {
    std::lock_guard<std::mutex> lk(write_mu_);
    grpc::ServerReaderWriter<Resp, Req>* stream;
    {
      std::lock_guard<std::mutex> lk2(mu_);
      stream = current_;
    }
    return stream != nullptr && stream->Write(resp);
  }

  void drop() {
    std::lock_guard<std::mutex> lk(mu_);
    if (ctx_ != nullptr) ctx_->TryCancel();
  }

  // Called on the server's reader thread for every request (after it is recorded).
  void onRequest(std::function<void(const Req&)> hook) {
    std::lock_guard<std::mutex> lk(mu_);
    on_request_ = std::move(hook);
  }

  std::vector<Recorded> requests() const {
    std::lock_guard<std::mutex> lk(mu_);
    return requests_;
  }
  size_t count() const {
    std::lock_guard<std::mutex> lk(mu_);
    return requests_.size();
  }
  int streams() const {
    std::lock_guard<std::mutex> lk(mu_);
    return streams_;
  }
  bool active() const {
    std::lock_guard<std::mutex> lk(mu_);
    return current_ != nullptr;
  }

  // Waits for request number `index` (0-based) and returns it.
  Req waitRequest(size_t index, std::chrono::milliseconds timeout = 5000ms) {
    INFO("waiting for request #" << index);
    REQUIRE(eventually([&] { return count() > index; }, timeout));
    std::lock_guard<std::mutex> lk(mu_);
    return requests_[index].req;
  }

 private:
  mutable std::mutex mu_;
  std::mutex write_mu_;  // one Write at a time; held while the stream pointer is used
  std::vector<Recorded> requests_;
  std::function<void(const Req&)> on_request_;
  grpc::ServerReaderWriter<Resp, Req>* current_ = nullptr;
  grpc::ServerContext* ctx_ = nullptr;
  int streams_ = 0;
};

class FakeAds final : public AggregatedDiscoveryService::Service {
 public:
  grpc::Status StreamAggregatedResources(
      grpc::ServerContext* ctx, grpc::ServerReaderWriter<DiscoveryResponse, DiscoveryRequest>* stream) override {
    return sotw.serve(ctx, stream);
  }
  grpc::Status DeltaAggregatedResources(
      grpc::ServerContext* ctx,
      grpc::ServerReaderWriter<DeltaDiscoveryResponse, DeltaDiscoveryRequest>* stream) override {
    return delta.serve(ctx, stream);
  }
  Hub<DiscoveryRequest, DiscoveryResponse> sotw;
  Hub<DeltaDiscoveryRequest, DeltaDiscoveryResponse> delta;
};

class Server {
 public:
  explicit Server(const std::string& address = "127.0.0.1:0") {
    grpc::ServerBuilder builder;
    builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(&ads);
    server_ = builder.BuildAndStart();
    REQUIRE(server_ != nullptr);
    target_ = address.rfind("unix:", 0) == 0 ? address : "127.0.0.1:" + std::to_string(port_);
  }
  ~Server() { server_->Shutdown(std::chrono::system_clock::now() + 1s); }
  const std::string& target() const { return target_; }
  FakeAds ads;

 private:
  int port_ = 0;
  std::string target_;
  std::unique_ptr<grpc::Server> server_;
};

// ---- resources -----------------------------------------------------------------------------------

google::protobuf::Any makeAny(const std::string& type, const std::string& name) {
  google::protobuf::Any any;
  if (type == kClusterType) {
    envoy::config::cluster::v3::Cluster m;
    m.set_name(name);
    any.PackFrom(m);
  } else if (type == kListenerType) {
    envoy::config::listener::v3::Listener m;
    m.set_name(name);
    any.PackFrom(m);
  } else if (type == kRouteType) {
    envoy::config::route::v3::RouteConfiguration m;
    m.set_name(name);
    any.PackFrom(m);
  } else if (type == kEndpointType) {
    envoy::config::endpoint::v3::ClusterLoadAssignment m;
    m.set_cluster_name(name);
    any.PackFrom(m);
  } else if (type == kSecretType) {
    envoy::extensions::transport_sockets::tls::v3::Secret m;
    m.set_name(name);
    any.PackFrom(m);
  } else {
    FAIL("unknown type " << type);
  }
  return any;
}

DiscoveryResponse sotwResponse(const std::string& type, const std::string& version, const std::string& nonce,
                               const std::vector<std::string>& names) {
  DiscoveryResponse resp;
  resp.set_type_url(type);
  resp.set_version_info(version);
  resp.set_nonce(nonce);
  for (const auto& n : names) *resp.add_resources() = makeAny(type, n);
  return resp;
}

DeltaDiscoveryResponse deltaResponse(const std::string& type, const std::string& nonce,
                                     const std::vector<std::pair<std::string, std::string>>& added,
                                     const std::vector<std::string>& removed = {}) {
  DeltaDiscoveryResponse resp;
  resp.set_type_url(type);
  resp.set_nonce(nonce);
  resp.set_system_version_info("sys-" + nonce);
  for (const auto& [name, version] : added) {
    auto* r = resp.add_resources();
    r->set_name(name);
    r->set_version(version);
    *r->mutable_resource() = makeAny(type, name);
  }
  for (const auto& n : removed) resp.add_removed_resources(n);
  return resp;
}

std::vector<std::string> names(const google::protobuf::RepeatedPtrField<std::string>& field) {
  return {field.begin(), field.end()};
}

// ---- subscriber ----------------------------------------------------------------------------------

class FakeSubscriber : public strait::xds::XdsSubscriber {
 public:
  struct Update {
    std::string type;
    std::vector<std::string> names;
    std::vector<std::string> removed;
    std::string version;
    bool sotw;
  };

  absl::Status onResources(const std::string& type_url, const std::vector<strait::xds::Resource>& resources,
                           const std::vector<std::string>& removed, const std::string& version,
                           bool sotw) override {
    Update u{type_url, {}, removed, version, sotw};
    for (const auto& r : resources) {
      u.names.push_back(r.name);
      CHECK(r.resource.type_url() == type_url);
    }
    std::function<absl::Status(const Update&)> decide;
    {
      std::lock_guard<std::mutex> lk(mu_);
      updates_.push_back(u);
      decide = decide_;
    }
    return decide ? decide(u) : absl::OkStatus();
  }
  void onResourceDoesNotExist(const std::string& type_url, const std::string& name) override {
    std::lock_guard<std::mutex> lk(mu_);
    missing_.push_back({type_url, name, Clock::now()});
  }
  void onStreamState(bool connected) override {
    std::lock_guard<std::mutex> lk(mu_);
    stream_states_.push_back(connected);
  }
  void onInitialFetchDone(const std::string& type_url, bool timed_out) override {
    std::lock_guard<std::mutex> lk(mu_);
    initial_.push_back({type_url, timed_out});
  }

  void decide(std::function<absl::Status(const Update&)> fn) {
    std::lock_guard<std::mutex> lk(mu_);
    decide_ = std::move(fn);
  }
  std::vector<Update> updates() const {
    std::lock_guard<std::mutex> lk(mu_);
    return updates_;
  }
  std::vector<Update> updatesOf(const std::string& type) const {
    std::vector<Update> out;
    for (auto& u : updates()) {
      if (u.type == type) out.push_back(u);
    }
    return out;
  }
  struct Missing {
    std::string type, name;
    Clock::time_point at;
  };
  std::vector<Missing> missing() const {
    std::lock_guard<std::mutex> lk(mu_);
    return missing_;
  }
  std::vector<bool> streamStates() const {
    std::lock_guard<std::mutex> lk(mu_);
    return stream_states_;
  }
  std::vector<std::pair<std::string, bool>> initial() const {
    std::lock_guard<std::mutex> lk(mu_);
    return initial_;
  }

 private:
  mutable std::mutex mu_;
  std::vector<Update> updates_;
  std::vector<Missing> missing_;
  std::vector<bool> stream_states_;
  std::vector<std::pair<std::string, bool>> initial_;
  std::function<absl::Status(const Update&)> decide_;
};

AdsConfig config(const Server& server, bool delta = false) {
  AdsConfig c;
  c.target = server.target();
  c.delta = delta;
  c.node.set_id("sidecar~10.0.0.5~pod.ns~ns.svc.cluster.local");
  c.node.set_cluster("reviews.default");
  if (getenv("STRAIT_XDS_TEST_LOG") != nullptr) {
    c.log = [](int level, const std::string& msg) { fprintf(stderr, "[%d] %s\n", level, msg.c_str()); };
  }
  return c;
}

// Accepts CDS and LDS (one resource each) so later steps start from a known state.
void acceptCdsLds(Server& server, size_t& next) {
  auto& hub = server.ads.sotw;
  hub.waitRequest(next + 1);
  REQUIRE(hub.send(sotwResponse(kClusterType, "c1", "cn1", {"cluster-a"})));
  REQUIRE(hub.waitRequest(next + 2).response_nonce() == "cn1");
  REQUIRE(hub.send(sotwResponse(kListenerType, "l1", "ln1", {"listener-a"})));
  REQUIRE(hub.waitRequest(next + 3).response_nonce() == "ln1");
  next += 4;
}

}  // namespace

// ---- helpers -------------------------------------------------------------------------------------

TEST_CASE("AdsClient: token bucket allows a burst then refills at its rate") {
  const auto t0 = Clock::now();
  strait::xds::TokenBucket bucket(100, 10.0, t0);
  int taken = 0;
  while (bucket.tryConsume(t0)) ++taken;
  REQUIRE(taken == 100);
  REQUIRE(bucket.nextTokenAt(t0) >= t0 + 99ms);
  REQUIRE_FALSE(bucket.tryConsume(t0 + 50ms));
  REQUIRE(bucket.tryConsume(t0 + 101ms));
  REQUIRE_FALSE(bucket.tryConsume(t0 + 150ms));
  // Never more than the burst, however long it rested.
  taken = 0;
  while (bucket.tryConsume(t0 + 1h)) ++taken;
  REQUIRE(taken == 100);
}

TEST_CASE("AdsClient: backoff grows to its ceiling with full jitter and resets") {
  strait::xds::JitteredBackoff backoff(500, 30000, 42);
  REQUIRE(backoff.nextCeilingMs() == 500);
  uint64_t ceilings[] = {500, 1000, 2000, 4000, 8000, 16000, 30000, 30000};
  for (uint64_t ceiling : ceilings) {
    REQUIRE(backoff.nextCeilingMs() == ceiling);
    REQUIRE(backoff.nextDelayMs() <= ceiling);
  }
  backoff.reset();
  REQUIRE(backoff.nextCeilingMs() == 500);
}

// ---- state of the world ----------------------------------------------------------------------------

TEST_CASE("AdsClient: node only on the first request; CDS then LDS wildcard") {
  Server server;
  FakeSubscriber sub;
  AdsClient client(config(server), sub);
  client.start();
  auto& hub = server.ads.sotw;
  const DiscoveryRequest cds = hub.waitRequest(0);
  const DiscoveryRequest lds = hub.waitRequest(1);
  CHECK(cds.type_url() == kClusterType);
  CHECK(cds.has_node());
  CHECK(cds.node().id() == "sidecar~10.0.0.5~pod.ns~ns.svc.cluster.local");
  CHECK(cds.node().cluster() == "reviews.default");
  CHECK(cds.resource_names_size() == 0);  // SotW wildcard: the empty list
  CHECK(cds.version_info().empty());
  CHECK(cds.response_nonce().empty());
  CHECK(lds.type_url() == kListenerType);
  CHECK_FALSE(lds.has_node());
  CHECK(lds.resource_names_size() == 0);
  REQUIRE(eventually([&] { return client.connected(); }));
  CHECK(sub.streamStates() == std::vector<bool>{true});
  // Nothing else is sent: no RDS/EDS before they have names.
  std::this_thread::sleep_for(100ms);
  CHECK(hub.count() == 2);
  client.stop();
  CHECK_FALSE(client.connected());
}

TEST_CASE("AdsClient: ACK echoes version_info and nonce") {
  Server server;
  FakeSubscriber sub;
  AdsClient client(config(server), sub);
  client.start();
  auto& hub = server.ads.sotw;
  hub.waitRequest(1);
  REQUIRE(hub.send(sotwResponse(kClusterType, "v1", "nonce-1", {"a", "b"})));
  const DiscoveryRequest ack = hub.waitRequest(2);
  CHECK(ack.type_url() == kClusterType);
  CHECK(ack.version_info() == "v1");
  CHECK(ack.response_nonce() == "nonce-1");
  CHECK_FALSE(ack.has_error_detail());
  CHECK_FALSE(ack.has_node());
  CHECK(ack.resource_names_size() == 0);
  auto updates = sub.updatesOf(kClusterType);
  REQUIRE(updates.size() == 1);
  CHECK(updates[0].names == std::vector<std::string>{"a", "b"});
  CHECK(updates[0].removed.empty());
  CHECK(updates[0].version == "v1");
  CHECK(updates[0].sotw);
  REQUIRE(eventually([&] { return client.state()[kClusterType].update_success == 1; }));
  auto st = client.state()[kClusterType];
  CHECK(st.version == "v1");
  CHECK(st.nonce == "nonce-1");
  CHECK(st.update_attempt == 1);
  CHECK(st.resource_count == 2);
  CHECK(st.initial_fetch_done);
  CHECK(sub.initial() == std::vector<std::pair<std::string, bool>>{{kClusterType, false}});
}

TEST_CASE("AdsClient: NACK carries the last good version, the newest nonce and the error") {
  Server server;
  FakeSubscriber sub;
  AdsClient client(config(server), sub);
  client.start();
  auto& hub = server.ads.sotw;
  hub.waitRequest(1);
  REQUIRE(hub.send(sotwResponse(kClusterType, "v1", "n1", {"a", "b"})));
  REQUIRE(hub.waitRequest(2).version_info() == "v1");

  sub.decide([](const FakeSubscriber::Update& u) {
    if (u.version == "v2") return absl::InvalidArgumentError("cluster 'c': lb_policy: MAGLEV is not supported");
    return absl::OkStatus();
  });
  REQUIRE(hub.send(sotwResponse(kClusterType, "v2", "n2", {"a", "b", "c"})));
  const DiscoveryRequest nack = hub.waitRequest(3);
  CHECK(nack.type_url() == kClusterType);
  CHECK(nack.version_info() == "v1");
  CHECK(nack.response_nonce() == "n2");
  REQUIRE(nack.has_error_detail());
  CHECK(nack.error_detail().code() == 3);  // INVALID_ARGUMENT
  CHECK(nack.error_detail().message() == "cluster 'c': lb_policy: MAGLEV is not supported");
  REQUIRE(eventually([&] { return client.state()[kClusterType].update_rejected == 1; }));
  auto st = client.state()[kClusterType];
  CHECK(st.version == "v1");
  CHECK(st.last_error == "cluster 'c': lb_policy: MAGLEV is not supported");

  // Removal is computed against the last accepted set ({a, b}), not the rejected one.
  REQUIRE(hub.send(sotwResponse(kClusterType, "v3", "n3", {"a"})));
  const DiscoveryRequest ack = hub.waitRequest(4);
  CHECK(ack.version_info() == "v3");
  CHECK(ack.response_nonce() == "n3");
  CHECK_FALSE(ack.has_error_detail());
  auto updates = sub.updatesOf(kClusterType);
  REQUIRE(updates.size() == 3);
  CHECK(updates[2].removed == std::vector<std::string>{"b"});
  REQUIRE(eventually([&] { return client.state()[kClusterType].update_success == 2; }));
  CHECK(client.state()[kClusterType].last_error.empty());

  // An empty response removes everything of a wildcard type.
  REQUIRE(hub.send(sotwResponse(kClusterType, "v4", "n4", {})));
  hub.waitRequest(5);
  updates = sub.updatesOf(kClusterType);
  REQUIRE(updates.size() == 4);
  CHECK(updates[3].names.empty());
  CHECK(updates[3].removed == std::vector<std::string>{"a"});
}

TEST_CASE("AdsClient: a response naming a resource twice is NACKed without calling the subscriber") {
  Server server;
  FakeSubscriber sub;
  AdsClient client(config(server), sub);
  client.start();
  auto& hub = server.ads.sotw;
  hub.waitRequest(1);
  REQUIRE(hub.send(sotwResponse(kListenerType, "v1", "n1", {"l1", "l2", "l1"})));
  const DiscoveryRequest nack = hub.waitRequest(2);
  CHECK(nack.type_url() == kListenerType);
  CHECK(nack.version_info().empty());
  CHECK(nack.response_nonce() == "n1");
  REQUIRE(nack.has_error_detail());
  CHECK(nack.error_detail().code() == 3);
  CHECK_THAT(nack.error_detail().message(), Catch::Contains("duplicate resource name 'l1'"));
  CHECK(sub.updates().empty());

  // A resource of another type inside the response is refused the same way.
  DiscoveryResponse mixed = sotwResponse(kListenerType, "v2", "n2", {"l1"});
  *mixed.add_resources() = makeAny(kClusterType, "c1");
  REQUIRE(hub.send(mixed));
  const DiscoveryRequest nack2 = hub.waitRequest(3);
  CHECK(nack2.response_nonce() == "n2");
  CHECK_THAT(nack2.error_detail().message(), Catch::Contains("does not match"));
  CHECK(sub.updates().empty());

  // Resources wrapped in discovery.v3.Resource are unwrapped (name and version from the wrapper).
  DiscoveryResponse wrapped;
  wrapped.set_type_url(kListenerType);
  wrapped.set_version_info("v3");
  wrapped.set_nonce("n3");
  envoy::service::discovery::v3::Resource r;
  r.set_name("l9");
  r.set_version("rv9");
  *r.mutable_resource() = makeAny(kListenerType, "l9");
  wrapped.add_resources()->PackFrom(r);
  REQUIRE(hub.send(wrapped));
  const DiscoveryRequest ack = hub.waitRequest(4);
  CHECK_FALSE(ack.has_error_detail());
  CHECK(ack.version_info() == "v3");
  auto updates = sub.updatesOf(kListenerType);
  REQUIRE(updates.size() == 1);
  CHECK(updates[0].names == std::vector<std::string>{"l9"});
}

TEST_CASE("AdsClient: RDS names go out after setResourceNames, after the LDS ACK, with the newest nonce") {
  Server server;
  FakeSubscriber sub;
  AdsClient client(config(server), sub);
  // The server's usual shape: the LDS callback names the routes it needs.
  sub.decide([&](const FakeSubscriber::Update& u) {
    if (u.type == kListenerType) client.setResourceNames(kRouteType, {"route-1"});
    return absl::OkStatus();
  });
  client.start();
  auto& hub = server.ads.sotw;
  hub.waitRequest(1);
  REQUIRE(hub.send(sotwResponse(kListenerType, "l1", "ln1", {"listener-a"})));
  const DiscoveryRequest lds_ack = hub.waitRequest(2);
  CHECK(lds_ack.type_url() == kListenerType);
  CHECK(lds_ack.response_nonce() == "ln1");
  const DiscoveryRequest rds = hub.waitRequest(3);
  CHECK(rds.type_url() == kRouteType);
  CHECK(names(rds.resource_names()) == std::vector<std::string>{"route-1"});
  CHECK(rds.version_info().empty());
  CHECK(rds.response_nonce().empty());  // no RDS response yet: nonces are per type
  CHECK_FALSE(rds.has_node());

  // Two RDS responses in a row, then a change of names: the request echoes the second nonce.
  sub.decide(nullptr);
  REQUIRE(hub.send(sotwResponse(kRouteType, "r1", "rn1", {"route-1"})));
  REQUIRE(hub.send(sotwResponse(kRouteType, "r2", "rn2", {"route-1"})));
  REQUIRE(eventually([&] { return client.state()[kRouteType].update_success == 2; }));
  REQUIRE(eventually([&] {
    auto reqs = hub.requests();
    return !reqs.empty() && reqs.back().req.response_nonce() == "rn2";
  }));
  const size_t before = hub.count();
  client.setResourceNames(kRouteType, {"route-1", "route-2"});
  const DiscoveryRequest change = hub.waitRequest(before);
  CHECK(change.type_url() == kRouteType);
  CHECK(names(change.resource_names()) == std::vector<std::string>{"route-1", "route-2"});
  CHECK(change.version_info() == "r2");
  CHECK(change.response_nonce() == "rn2");
  // The same set again sends nothing.
  client.setResourceNames(kRouteType, {"route-2", "route-1"});
  std::this_thread::sleep_for(100ms);
  CHECK(hub.count() == before + 1);
  // RDS absence deletes nothing.
  REQUIRE(hub.send(sotwResponse(kRouteType, "r3", "rn3", {"route-2"})));
  hub.waitRequest(before + 1);
  auto rds_updates = sub.updatesOf(kRouteType);
  REQUIRE(rds_updates.size() == 3);
  CHECK(rds_updates[2].removed.empty());
  // Dropping every name unsubscribes with an empty list (allowed once names were sent on the stream).
  client.setResourceNames(kRouteType, {});
  const DiscoveryRequest none = hub.waitRequest(before + 2);
  CHECK(none.type_url() == kRouteType);
  CHECK(none.resource_names_size() == 0);
  CHECK(none.response_nonce() == "rn3");
}

TEST_CASE("AdsClient: reconnect re-sends every subscription and reports no removal") {
  Server server;
  FakeSubscriber sub;
  AdsConfig cfg = config(server);
  AdsClient client(cfg, sub);
  client.start();
  auto& hub = server.ads.sotw;
  size_t next = 0;
  acceptCdsLds(server, next);
  client.setResourceNames(kRouteType, {"route-1"});
  REQUIRE(hub.waitRequest(next).type_url() == kRouteType);
  REQUIRE(hub.send(sotwResponse(kRouteType, "r1", "rn1", {"route-1"})));
  hub.waitRequest(next + 1);
  next += 2;
  const size_t updates_before = sub.updates().size();

  hub.drop();
  REQUIRE(eventually([&] { return hub.streams() == 2 && hub.count() >= next + 3; }));
  auto reqs = hub.requests();
  REQUIRE(reqs.size() == next + 3);
  CHECK(reqs[next].stream == 2);
  const DiscoveryRequest& cds = reqs[next].req;
  const DiscoveryRequest& lds = reqs[next + 1].req;
  const DiscoveryRequest& rds = reqs[next + 2].req;
  CHECK(cds.type_url() == kClusterType);
  CHECK(cds.has_node());  // the first request of every stream
  CHECK(cds.version_info() == "c1");  // the last accepted version, so the server may skip a resend
  CHECK(cds.response_nonce().empty());  // nonces do not survive the stream
  CHECK(lds.type_url() == kListenerType);
  CHECK_FALSE(lds.has_node());
  CHECK(lds.version_info() == "l1");
  CHECK(rds.type_url() == kRouteType);
  CHECK(names(rds.resource_names()) == std::vector<std::string>{"route-1"});
  CHECK(rds.version_info() == "r1");
  CHECK(rds.response_nonce().empty());
  REQUIRE(eventually([&] { return sub.streamStates() == std::vector<bool>{true, false, true}; }));

  // The new stream has not resent anything: nothing was removed, the state is kept.
  CHECK(sub.updates().size() == updates_before);
  auto st = client.state();
  CHECK(st[kClusterType].version == "c1");
  CHECK(st[kClusterType].resource_count == 1);
  CHECK(st[kRouteType].resource_count == 1);

  // A resend that drops a listener is a removal again (computed from the set held across streams).
  REQUIRE(hub.send(sotwResponse(kListenerType, "l2", "ln9", {})));
  REQUIRE(hub.waitRequest(next + 3).response_nonce() == "ln9");
  auto lds_updates = sub.updatesOf(kListenerType);
  CHECK(lds_updates.back().removed == std::vector<std::string>{"listener-a"});
}

TEST_CASE("AdsClient: reconnect attempts back off while the server keeps dropping the stream") {
  Server server;
  FakeSubscriber sub;
  auto& hub = server.ads.sotw;
  // Drop every stream as soon as it asks for anything, without answering.
  hub.onRequest([&](const DiscoveryRequest&) { hub.drop(); });
  AdsClient client(config(server), sub);
  client.start();
  std::this_thread::sleep_for(2s);
  const int streams = hub.streams();
  client.stop();
  INFO("streams in 2 s: " << streams);
  // Ceilings 500, 1000, 2000 ms (full jitter): a handful, where a client without backoff makes hundreds.
  CHECK(streams >= 2);
  CHECK(streams <= 9);
  // Attempts as the client counts them (one may have been under way when stop() came).
  CHECK(client.stats().streams_started >= static_cast<uint64_t>(streams));
  CHECK(client.stats().streams_started <= static_cast<uint64_t>(streams) + 1);
}

TEST_CASE("AdsClient: a server resending a rejected response cannot drive a NACK loop") {
  Server server;
  FakeSubscriber sub;
  sub.decide([](const FakeSubscriber::Update&) { return absl::InvalidArgumentError("listener 'l': bad"); });
  auto& hub = server.ads.sotw;
  std::atomic<int> nonce{0};
  std::atomic<bool> echo{false};
  // Answer every NACK at once with the same rejected config (a fresh nonce each time).
  hub.onRequest([&](const DiscoveryRequest& req) {
    if (echo && req.type_url() == kListenerType && req.has_error_detail()) {
      hub.send(sotwResponse(kListenerType, "bad", "e" + std::to_string(++nonce), {"l"}));
    }
  });
  AdsClient client(config(server), sub);
  client.start();
  hub.waitRequest(1);
  const size_t base = hub.count();

  SECTION("1000 resends in a tight loop") {
    const auto t0 = Clock::now();
    std::thread flood([&] {
      for (int i = 0; i < 1000; ++i) hub.send(sotwResponse(kListenerType, "bad", "f" + std::to_string(i), {"l"}));
    });
    std::this_thread::sleep_for(1s - (Clock::now() - t0));
    const size_t in_first_second = hub.count() - base;
    flood.join();
    INFO("requests in the first second: " << in_first_second);
    CHECK(in_first_second >= 1);
    CHECK(in_first_second <= 110);
    // The newest nonce gets its NACK in the end.
    REQUIRE(eventually([&] {
      auto reqs = hub.requests();
      return reqs.back().req.response_nonce() == "f999" && reqs.back().req.has_error_detail();
    }));
  }
  SECTION("a resend for every NACK") {
    echo = true;
    const auto t0 = Clock::now();
    REQUIRE(hub.send(sotwResponse(kListenerType, "bad", "e0", {"l"})));
    std::this_thread::sleep_for(1s - (Clock::now() - t0));
    const size_t in_first_second = hub.count() - base;
    INFO("requests in the first second: " << in_first_second);
    CHECK(in_first_second >= 20);  // the burst is used (~100 on an idle machine)...
    CHECK(in_first_second <= 112);  // ...then 10 per second
    std::this_thread::sleep_for(1s);
    const size_t in_two_seconds = hub.count() - base;
    INFO("requests in two seconds: " << in_two_seconds);
    CHECK(in_two_seconds <= 122);
    CHECK(client.stats().rate_limit_enforced >= 1);
    echo = false;
  }
  client.stop();
}

TEST_CASE("AdsClient: the does-not-exist timer fires for a missing name, once, and dies with the stream") {
  Server server;
  FakeSubscriber sub;
  AdsConfig cfg = config(server);
  cfg.resource_does_not_exist_timeout_ms = 300;
  AdsClient client(cfg, sub);
  client.start();
  auto& hub = server.ads.sotw;
  size_t next = 0;
  acceptCdsLds(server, next);

  SECTION("a missing name is reported; a received one is not") {
    client.setResourceNames(kEndpointType, {"a", "b"});
    REQUIRE(hub.waitRequest(next).type_url() == kEndpointType);
    REQUIRE(hub.send(sotwResponse(kEndpointType, "e1", "en1", {"a"})));
    REQUIRE(eventually([&] { return !sub.missing().empty(); }, 2000ms));
    std::this_thread::sleep_for(500ms);
    auto missing = sub.missing();
    REQUIRE(missing.size() == 1);
    CHECK(missing[0].type == kEndpointType);
    CHECK(missing[0].name == "b");
    // The subscription goes on: a later response still brings it.
    REQUIRE(hub.send(sotwResponse(kEndpointType, "e2", "en2", {"a", "b"})));
    REQUIRE(eventually([&] { return sub.updatesOf(kEndpointType).size() == 2; }));

    // After a reconnect, names already held get no timer; still-missing ones get a new one.
    client.setResourceNames(kEndpointType, {"a", "b", "c"});
    hub.drop();
    REQUIRE(eventually([&] { return sub.missing().size() == 2; }, 3000ms));
    std::this_thread::sleep_for(500ms);
    missing = sub.missing();
    REQUIRE(missing.size() == 2);
    CHECK(missing[1].name == "c");
  }
  SECTION("the timer is cancelled when the stream dies and restarts with the new subscription") {
    client.setResourceNames(kEndpointType, {"x"});
    REQUIRE(hub.waitRequest(next).type_url() == kEndpointType);
    std::this_thread::sleep_for(100ms);
    hub.drop();
    // The new stream re-subscribes x; the timer counts from there.
    REQUIRE(eventually([&] {
      for (const auto& r : hub.requests()) {
        if (r.stream == 2 && r.req.type_url() == kEndpointType) return true;
      }
      return false;
    }));
    Clock::time_point resent;
    for (const auto& r : hub.requests()) {
      if (r.stream == 2 && r.req.type_url() == kEndpointType) resent = r.at;
    }
    REQUIRE(eventually([&] { return !sub.missing().empty(); }, 2000ms));
    auto missing = sub.missing();
    REQUIRE(missing.size() == 1);
    CHECK(missing[0].name == "x");
    CHECK(missing[0].at - resent >= 250ms);
  }
}

TEST_CASE("AdsClient: initial fetch timeout reports a type that never answers") {
  Server server;
  FakeSubscriber sub;
  AdsConfig cfg = config(server);
  cfg.initial_fetch_timeout_ms = 300;
  AdsClient client(cfg, sub);
  client.start();
  auto& hub = server.ads.sotw;
  hub.waitRequest(1);
  REQUIRE(hub.send(sotwResponse(kClusterType, "c1", "cn1", {"a"})));
  REQUIRE(eventually([&] { return sub.initial().size() == 2; }, 2000ms));
  auto initial = sub.initial();
  CHECK(initial[0] == std::pair<std::string, bool>{kClusterType, false});
  CHECK(initial[1] == std::pair<std::string, bool>{kListenerType, true});
  CHECK(client.state()[kListenerType].initial_fetch_done);
  // Reported once per client, not again when the answer finally comes.
  REQUIRE(hub.send(sotwResponse(kListenerType, "l1", "ln1", {"l"})));
  REQUIRE(eventually([&] { return sub.updatesOf(kListenerType).size() == 1; }));
  std::this_thread::sleep_for(50ms);
  CHECK(sub.initial().size() == 2);
}

TEST_CASE("AdsClient: a control plane that never answers the handshake delays neither timers nor stop()") {
  // A socket that listens and never accepts: TCP connects, HTTP/2 never starts (gRPC would wait 20 s).
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  REQUIRE(listen(fd, 16) == 0);
  socklen_t len = sizeof(addr);
  REQUIRE(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);

  FakeSubscriber sub;
  AdsConfig cfg;
  cfg.target = "127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  cfg.node.set_id("n");
  cfg.initial_fetch_timeout_ms = 300;
  AdsClient client(cfg, sub);
  const auto t0 = Clock::now();
  client.start();
  REQUIRE(eventually([&] { return sub.initial().size() == 2; }, 3000ms));
  CHECK(Clock::now() - t0 < 1500ms);
  CHECK(sub.initial()[0] == std::pair<std::string, bool>{kClusterType, true});
  CHECK(sub.initial()[1] == std::pair<std::string, bool>{kListenerType, true});
  CHECK_FALSE(client.connected());
  const auto t1 = Clock::now();
  client.stop();
  CHECK(Clock::now() - t1 < 1s);
  close(fd);
}

TEST_CASE("AdsClient: responses for a type never subscribed are ignored") {
  Server server;
  FakeSubscriber sub;
  AdsClient client(config(server), sub);
  client.start();
  auto& hub = server.ads.sotw;
  hub.waitRequest(1);
  REQUIRE(hub.send(sotwResponse(kSecretType, "s1", "sn1", {"cert"})));
  REQUIRE(eventually([&] { return client.stats().ignored_responses == 1; }));
  CHECK(hub.count() == 2);
  CHECK(sub.updates().empty());
}

TEST_CASE("AdsClient: unix socket target, and stop() is prompt") {
  char dir_template[] = "/tmp/strait-xds-test-XXXXXX";
  REQUIRE(mkdtemp(dir_template) != nullptr);
  const std::string path = std::string(dir_template) + "/xds.sock";
  {
    Server server("unix:" + path);
    FakeSubscriber sub;
    AdsClient client(config(server), sub);
    client.start();
    server.ads.sotw.waitRequest(1);
    REQUIRE(eventually([&] { return client.connected(); }));
    const auto t0 = Clock::now();
    client.stop();
    CHECK(Clock::now() - t0 < 1s);
    CHECK(sub.streamStates() == std::vector<bool>{true, false});
    // The server saw the stream end.
    REQUIRE(eventually([&] { return !server.ads.sotw.active(); }));
  }
  unlink(path.c_str());
  rmdir(dir_template);

  // Nobody listening: the client keeps retrying and still stops at once.
  FakeSubscriber sub;
  AdsConfig cfg;
  cfg.target = "unix:" + path;
  cfg.node.set_id("n");
  AdsClient client(cfg, sub);
  client.start();
  std::this_thread::sleep_for(300ms);
  CHECK_FALSE(client.connected());
  const auto t0 = Clock::now();
  client.stop();
  CHECK(Clock::now() - t0 < 1s);
  CHECK(client.stats().streams_started >= 1);
  CHECK(sub.streamStates().empty());
}

// ---- delta -----------------------------------------------------------------------------------------

TEST_CASE("AdsClient: delta wildcard, ACKs, removals and initial_resource_versions on reconnect") {
  Server server;
  FakeSubscriber sub;
  AdsClient client(config(server, true), sub);
  client.start();
  auto& hub = server.ads.delta;
  const DeltaDiscoveryRequest cds = hub.waitRequest(0);
  const DeltaDiscoveryRequest lds = hub.waitRequest(1);
  CHECK(cds.type_url() == kClusterType);
  CHECK(cds.has_node());
  CHECK(cds.node().id() == "sidecar~10.0.0.5~pod.ns~ns.svc.cluster.local");
  CHECK(names(cds.resource_names_subscribe()) == std::vector<std::string>{"*"});
  CHECK(cds.initial_resource_versions().empty());
  CHECK(cds.response_nonce().empty());
  CHECK(lds.type_url() == kListenerType);
  CHECK_FALSE(lds.has_node());
  CHECK(names(lds.resource_names_subscribe()) == std::vector<std::string>{"*"});

  REQUIRE(hub.send(deltaResponse(kClusterType, "d1", {{"a", "va1"}, {"b", "vb1"}})));
  const DeltaDiscoveryRequest ack = hub.waitRequest(2);
  CHECK(ack.type_url() == kClusterType);
  CHECK(ack.response_nonce() == "d1");
  CHECK(ack.resource_names_subscribe_size() == 0);
  CHECK_FALSE(ack.has_error_detail());
  auto updates = sub.updatesOf(kClusterType);
  REQUIRE(updates.size() == 1);
  CHECK_FALSE(updates[0].sotw);
  CHECK(updates[0].names == std::vector<std::string>{"a", "b"});
  CHECK(updates[0].version == "sys-d1");

  REQUIRE(hub.send(deltaResponse(kClusterType, "d2", {{"a", "va2"}}, {"b"})));
  REQUIRE(hub.waitRequest(3).response_nonce() == "d2");
  updates = sub.updatesOf(kClusterType);
  REQUIRE(updates.size() == 2);
  CHECK(updates[1].names == std::vector<std::string>{"a"});
  CHECK(updates[1].removed == std::vector<std::string>{"b"});

  // A rejected update: NACK with the nonce and the error; the versions held stay.
  sub.decide([](const FakeSubscriber::Update& u) {
    return u.version == "sys-d3" ? absl::InvalidArgumentError("cluster 'a': bad") : absl::OkStatus();
  });
  REQUIRE(hub.send(deltaResponse(kClusterType, "d3", {{"a", "va3"}})));
  const DeltaDiscoveryRequest nack = hub.waitRequest(4);
  CHECK(nack.response_nonce() == "d3");
  REQUIRE(nack.has_error_detail());
  CHECK(nack.error_detail().message() == "cluster 'a': bad");

  // Named EDS: a subscription change alone carries no nonce.
  client.setResourceNames(kEndpointType, {"a", "z"});
  const DeltaDiscoveryRequest eds = hub.waitRequest(5);
  CHECK(eds.type_url() == kEndpointType);
  CHECK(names(eds.resource_names_subscribe()) == std::vector<std::string>{"a", "z"});
  CHECK(eds.response_nonce().empty());
  REQUIRE(hub.send(deltaResponse(kEndpointType, "e1", {{"a", "ea1"}, {"z", "ez1"}})));
  REQUIRE(hub.waitRequest(6).response_nonce() == "e1");
  // A removal of a subscribed name does not end the subscription.
  REQUIRE(hub.send(deltaResponse(kEndpointType, "e2", {}, {"z"})));
  const DeltaDiscoveryRequest eds_ack = hub.waitRequest(7);
  CHECK(eds_ack.response_nonce() == "e2");
  CHECK(eds_ack.resource_names_unsubscribe_size() == 0);
  // Unsubscribing sends the diff.
  client.setResourceNames(kEndpointType, {"z"});
  const DeltaDiscoveryRequest unsub = hub.waitRequest(8);
  CHECK(names(unsub.resource_names_unsubscribe()) == std::vector<std::string>{"a"});
  CHECK(unsub.resource_names_subscribe_size() == 0);
  client.setResourceNames(kEndpointType, {"z", "y"});
  hub.waitRequest(9);
  REQUIRE(hub.send(deltaResponse(kEndpointType, "e3", {{"y", "ey1"}})));
  hub.waitRequest(10);

  // Reconnect: every type re-lists its names and tells the versions it holds.
  hub.drop();
  REQUIRE(eventually([&] { return hub.streams() == 2 && hub.count() >= 14; }));
  auto reqs = hub.requests();
  REQUIRE(reqs.size() == 14);
  const auto& cds2 = reqs[11].req;
  const auto& lds2 = reqs[12].req;
  const auto& eds2 = reqs[13].req;
  CHECK(cds2.type_url() == kClusterType);
  CHECK(cds2.has_node());
  CHECK(names(cds2.resource_names_subscribe()) == std::vector<std::string>{"*"});
  REQUIRE(cds2.initial_resource_versions().size() == 1);
  CHECK(cds2.initial_resource_versions().at("a") == "va2");  // not the rejected va3, not the removed b
  CHECK(cds2.response_nonce().empty());
  CHECK(lds2.type_url() == kListenerType);
  CHECK(lds2.initial_resource_versions().empty());
  CHECK(eds2.type_url() == kEndpointType);
  CHECK(names(eds2.resource_names_subscribe()) == std::vector<std::string>{"y", "z"});  // z still wanted
  REQUIRE(eds2.initial_resource_versions().size() == 1);
  CHECK(eds2.initial_resource_versions().at("y") == "ey1");
  CHECK_FALSE(eds2.has_node());
  CHECK(sub.updatesOf(kClusterType).size() == 3);  // nothing reported for the reconnect
}

TEST_CASE("AdsClient: a partly accepted response is NACKed, yet the client holds what was applied") {
  Server server;
  FakeSubscriber sub;
  AdsClient client(config(server, true), sub);
  client.start();
  auto& hub = server.ads.delta;
  hub.waitRequest(0);
  hub.waitRequest(1);
  REQUIRE(hub.send(deltaResponse(kClusterType, "d1", {{"a", "va1"}, {"b", "vb1"}})));
  REQUIRE(hub.waitRequest(2).response_nonce() == "d1");
  // "b" is refused, "a" and the new "c" are applied.
  sub.decide([](const FakeSubscriber::Update& u) {
    return u.version == "sys-d2"
               ? strait::xds::partiallyAccepted(absl::InvalidArgumentError("1 of 3 refused: cluster 'b': bad"), {"b"})
               : absl::OkStatus();
  });
  REQUIRE(hub.send(deltaResponse(kClusterType, "d2", {{"a", "va2"}, {"b", "vb2"}, {"c", "vc2"}})));
  const DeltaDiscoveryRequest nack = hub.waitRequest(3);
  CHECK(nack.response_nonce() == "d2");
  REQUIRE(nack.has_error_detail());
  CHECK(nack.error_detail().message() == "1 of 3 refused: cluster 'b': bad");
  // Reconnect: the versions held are the applied ones, and the refused resource's earlier one.
  hub.drop();
  REQUIRE(eventually([&] { return hub.streams() == 2 && hub.count() >= 6; }));
  const auto reqs = hub.requests();
  const DeltaDiscoveryRequest cds2 = reqs[4].req;
  REQUIRE(cds2.type_url() == kClusterType);
  REQUIRE(cds2.initial_resource_versions().size() == 3);
  CHECK(cds2.initial_resource_versions().at("a") == "va2");
  CHECK(cds2.initial_resource_versions().at("b") == "vb1");
  CHECK(cds2.initial_resource_versions().at("c") == "vc2");
}

TEST_CASE("AdsClient: partiallyAccepted marks its names; other errors carry none") {
  const auto st = strait::xds::partiallyAccepted(absl::InvalidArgumentError("x"), {"l1", "l2"});
  CHECK(st.code() == absl::StatusCode::kInvalidArgument);
  CHECK(st.message() == "x");
  REQUIRE(strait::xds::refusedNames(st).has_value());
  CHECK(*strait::xds::refusedNames(st) == std::set<std::string>{"l1", "l2"});
  CHECK_FALSE(strait::xds::refusedNames(absl::InvalidArgumentError("x")).has_value());
  CHECK_FALSE(strait::xds::refusedNames(absl::OkStatus()).has_value());
}

TEST_CASE("AdsClient: delta duplicate names are NACKed by the client") {
  Server server;
  FakeSubscriber sub;
  AdsClient client(config(server, true), sub);
  client.start();
  auto& hub = server.ads.delta;
  hub.waitRequest(1);
  REQUIRE(hub.send(deltaResponse(kListenerType, "x1", {{"l", "1"}, {"l", "2"}})));
  const DeltaDiscoveryRequest nack = hub.waitRequest(2);
  CHECK(nack.response_nonce() == "x1");
  REQUIRE(nack.has_error_detail());
  CHECK(nack.error_detail().code() == 3);
  CHECK_THAT(nack.error_detail().message(), Catch::Contains("duplicate resource name 'l'"));
  CHECK(sub.updates().empty());
}
