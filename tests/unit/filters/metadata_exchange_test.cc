// Istio's TCP metadata exchange (filters/network/metadata_exchange.h): the frame's encoding, reading it
// off a byte stream split anywhere, what happens to bytes that are not a frame, the peer it names, and
// the filter's config in a chain and on a cluster.
#include <catch2/catch.hpp>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "filters/network/istio_noop.h"
#include "filters/network/metadata_exchange.h"
#include "filters/network/tcp_proxy.h"
#include "google/protobuf/any.pb.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/message_differencer.h"
#include "proxy/common/buffer.h"
#include "proxy/config/bootstrap.h"
#include "proxy/stats/istio_metrics.h"

using namespace strait;
using filters::network::PeerExchange;
using filters::network::PeerExchangeConfig;
using filters::network::PeerExchangeReader;
using Status = PeerExchangeReader::Status;
namespace im = strait::stats::istio;

namespace {

stats::Store& testStore() {
  static auto* store = new stats::Store(1);
  stats::setThreadShard(&store->shard(0));
  return *store;
}

google::protobuf::Struct peerMetadata() {
  google::protobuf::Struct md;
  auto& f = *md.mutable_fields();
  f["NAME"].set_string_value("ratings-v2-5d8f7-x2x9z");
  f["NAMESPACE"].set_string_value("bookinfo");
  f["WORKLOAD_NAME"].set_string_value("ratings-v2");
  f["CLUSTER_ID"].set_string_value("Kubernetes");
  auto& labels = *f["LABELS"].mutable_struct_value()->mutable_fields();
  labels["app"].set_string_value("ratings");
  labels["version"].set_string_value("v2");
  return md;
}

const std::string kPeerId = "sidecar~10.0.0.7~ratings-v2-5d8f7-x2x9z.bookinfo~bookinfo.svc.cluster.local";

std::string peerFrame() { return filters::network::encodePeerExchangeFrame(peerMetadata().SerializeAsString(), kPeerId); }

std::string header(uint32_t magic, uint32_t length) {
  std::string h(8, '\0');
  for (int i = 0; i < 4; ++i) {
    h[i] = static_cast<char>(magic >> (24 - 8 * i));
    h[4 + i] = static_cast<char>(length >> (24 - 8 * i));
  }
  return h;
}

// Feeds `pieces` to a reader as successive reads (the last with `end_stream`); returns the final status
// and, in `forwarded`, every byte the reader left in the buffers to be forwarded, in order.
Status feed(PeerExchangeReader& r, const std::vector<std::string>& pieces, std::string* forwarded, bool end_stream = false) {
  Status st = Status::NeedMore;
  for (size_t i = 0; i < pieces.size(); ++i) {
    common::Buffer data;
    data.add(pieces[i]);
    const bool last = i + 1 == pieces.size();
    if (!r.finished()) st = r.onData(data, last && end_stream);  // once finished, bytes just go on
    if (!r.finished()) REQUIRE(data.empty());                   // NeedMore takes everything
    *forwarded += data.toString();
  }
  return st;
}

}  // namespace

TEST_CASE("Metadata exchange: the frame is Istio's header and an Any of a Struct naming the node") {
  const std::string frame = peerFrame();
  REQUIRE(frame.size() > 8);
  CHECK(static_cast<unsigned char>(frame[0]) == 0x3D);
  CHECK(static_cast<unsigned char>(frame[1]) == 0x23);
  CHECK(static_cast<unsigned char>(frame[2]) == 0x04);
  CHECK(static_cast<unsigned char>(frame[3]) == 0x67);
  const uint32_t len = (uint32_t{static_cast<unsigned char>(frame[4])} << 24) |
                       (uint32_t{static_cast<unsigned char>(frame[5])} << 16) |
                       (uint32_t{static_cast<unsigned char>(frame[6])} << 8) | static_cast<unsigned char>(frame[7]);
  REQUIRE(len == frame.size() - 8);
  google::protobuf::Any any;
  REQUIRE(any.ParseFromString(frame.substr(8)));
  CHECK(any.type_url() == "type.googleapis.com/google.protobuf.Struct");
  google::protobuf::Struct data;
  REQUIRE(any.UnpackTo(&data));
  REQUIRE(data.fields().at("x-envoy-peer-metadata-id").string_value() == kPeerId);
  const auto& md = data.fields().at("x-envoy-peer-metadata").struct_value();
  CHECK(md.fields().at("WORKLOAD_NAME").string_value() == "ratings-v2");
  CHECK(md.fields().at("LABELS").struct_value().fields().at("app").string_value() == "ratings");

  google::protobuf::Struct decoded;
  std::string id;
  REQUIRE(filters::network::decodePeerExchangePayload(frame.substr(8), &decoded, &id));
  CHECK(id == kPeerId);
  CHECK(google::protobuf::util::MessageDifferencer::Equals(decoded, md));
  CHECK_FALSE(filters::network::decodePeerExchangePayload("\x0a\x03" "abc\xff", &decoded, &id));
}

TEST_CASE("Metadata exchange: a whole frame followed by application bytes in the same read") {
  const std::string frame = peerFrame();
  PeerExchangeReader r;
  std::string forwarded;
  const std::string app("GET / app bytes\x00\x01", 17);
  REQUIRE(feed(r, {frame + app}, &forwarded) == Status::Done);
  CHECK(forwarded == app);
  CHECK(r.payload() == frame.substr(8));
  // Finished: later reads are left alone.
  common::Buffer more;
  more.add("more");
  CHECK(r.onData(more, false) == Status::Done);
  CHECK(more.toString() == "more");
}

TEST_CASE("Metadata exchange: the frame split at every byte, and a byte at a time") {
  const std::string app = "hello after the frame";
  const std::string stream = peerFrame() + app;
  const size_t frame_len = stream.size() - app.size();
  for (size_t cut = 0; cut <= stream.size(); ++cut) {
    INFO("cut at " << cut);
    PeerExchangeReader r;
    std::string forwarded;
    const Status st = feed(r, {stream.substr(0, cut), stream.substr(cut)}, &forwarded);
    REQUIRE(st == Status::Done);
    CHECK(forwarded == app);
    CHECK(r.payload() == stream.substr(8, frame_len - 8));
  }
  PeerExchangeReader r;
  std::vector<std::string> bytes;
  for (char c : stream) bytes.emplace_back(1, c);
  std::string forwarded;
  REQUIRE(feed(r, bytes, &forwarded) == Status::Done);
  CHECK(forwarded == app);
}

TEST_CASE("Metadata exchange: bytes that are not a frame go on untouched, in order, however split") {
  const std::string stream = "SSH-2.0-OpenSSH_9.2\r\nnot a metadata exchange at all";
  for (size_t cut = 0; cut <= 12; ++cut) {
    INFO("cut at " << cut);
    PeerExchangeReader r;
    std::string forwarded;
    const Status st = feed(r, {stream.substr(0, cut), stream.substr(cut)}, &forwarded);
    CHECK(st == Status::NotFrame);
    CHECK(forwarded == stream);
  }
  // The right magic in the wrong place is no frame either.
  PeerExchangeReader r;
  std::string forwarded;
  const std::string shifted = "x" + peerFrame();
  CHECK(feed(r, {shifted}, &forwarded) == Status::NotFrame);
  CHECK(forwarded == shifted);
}

TEST_CASE("Metadata exchange: a length over 64 KiB is not a frame; 64 KiB is") {
  {
    const std::string stream = header(0x3D230467, 64 * 1024 + 1) + "payload...";
    PeerExchangeReader r;
    std::string forwarded;
    CHECK(feed(r, {stream.substr(0, 5), stream.substr(5)}, &forwarded) == Status::NotFrame);
    CHECK(forwarded == stream);
  }
  {
    const std::string stream = header(0x3D230467, 0xFFFFFFFFu);
    PeerExchangeReader r;
    std::string forwarded;
    CHECK(feed(r, {stream}, &forwarded) == Status::NotFrame);
    CHECK(forwarded == stream);
  }
  {
    // The bound itself is allowed: a (meaningless) Any of exactly 64 KiB is read whole.
    google::protobuf::Any any;
    any.set_type_url("t");
    any.set_value(std::string(64 * 1024 - 7, 'v'));  // 1 + 1 + 1 (url) + 1 + 3 (varint 65529) + value
    std::string payload = any.SerializeAsString();
    REQUIRE(payload.size() == 64 * 1024);
    PeerExchangeReader r;
    std::string forwarded;
    CHECK(feed(r, {header(0x3D230467, 64 * 1024) + payload + "tail"}, &forwarded) == Status::Done);
    CHECK(forwarded == "tail");
  }
}

TEST_CASE("Metadata exchange: a stream that ends early") {
  const std::string frame = peerFrame();
  {
    // Inside the header: the bytes go on, then the end.
    PeerExchangeReader r;
    std::string forwarded;
    CHECK(feed(r, {frame.substr(0, 3), frame.substr(3, 2)}, &forwarded, true) == Status::NotFrame);
    CHECK(forwarded == frame.substr(0, 5));
  }
  {
    // Inside the payload: the partial frame is dropped.
    PeerExchangeReader r;
    std::string forwarded;
    CHECK(feed(r, {frame.substr(0, 10), frame.substr(10, 20)}, &forwarded, true) == Status::Dropped);
    CHECK(forwarded.empty());
  }
}

TEST_CASE("Metadata exchange: a payload that is not an Any loses its header and goes on (Istio's way)") {
  const std::string junk = "\xff\xff\xff\xff junk";
  PeerExchangeReader r;
  std::string forwarded;
  CHECK(feed(r, {header(0x3D230467, static_cast<uint32_t>(junk.size())) + junk + "after"}, &forwarded) ==
        Status::BadPayload);
  CHECK(forwarded == junk + "after");
}

TEST_CASE("Metadata exchange: the peer it reads names Istio's labels; stats count each outcome") {
  stats::Store& store = testStore();
  google::protobuf::Struct local;
  (*local.mutable_fields())["WORKLOAD_NAME"].set_string_value("productpage-v1");
  (*local.mutable_fields())["NAMESPACE"].set_string_value("front");
  im::configure(local, "sidecar~10.0.0.1~productpage.front~front.svc.cluster.local", &store, 0, true);
  google::protobuf::Any any;
  any.set_type_url("type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange");
  auto cfg = filters::network::peerExchangeConfig(any, "f", store);
  REQUIRE(cfg.ok());
  REQUIRE(*cfg == nullptr);  // no protocol: inert
  // MetadataExchange { protocol (1) }
  const std::string direct = std::string("\x0a\x13") + "istio-peer-exchange";
  any.set_value(direct);
  cfg = filters::network::peerExchangeConfig(any, "f", store);
  REQUIRE(cfg.ok());
  REQUIRE(*cfg != nullptr);
  CHECK((*cfg)->protocol == "istio-peer-exchange");

  const int64_t bad_before = store.value("metadata_exchange.initial_header_not_found");
  const im::PeerStrings want = im::peerFromMetadata(peerMetadata());
  for (size_t cut : {size_t{0}, size_t{3}, size_t{8}, size_t{40}}) {
    PeerExchange mx(**cfg);
    common::Buffer a, b;
    const std::string stream = peerFrame() + "app";
    a.add(stream.substr(0, cut));
    b.add(stream.substr(cut));
    CHECK_FALSE(mx.onData(a, false));
    CHECK(mx.reading());
    CHECK(mx.onData(b, false));
    CHECK_FALSE(mx.reading());
    CHECK(b.toString() == "app");
    CHECK(mx.peer() == im::peer(want));
    CHECK(mx.peer() != im::kUnknown);
  }

  PeerExchange other(**cfg);
  common::Buffer plain;
  plain.add("plain bytes, no frame");
  CHECK(other.onData(plain, false));
  CHECK(plain.toString() == "plain bytes, no frame");
  CHECK(other.peer() == im::kUnknown);
  CHECK(store.value("metadata_exchange.initial_header_not_found") == bad_before + 1);

  // With Istio's metrics off nothing is decoded (the frame is still stripped).
  im::configure(local, "id", &store, 0, false);
  PeerExchange off(**cfg);
  common::Buffer whole;
  whole.add(peerFrame() + "x");
  CHECK(off.onData(whole, false));
  CHECK(whole.toString() == "x");
  CHECK(off.peer() == im::kUnknown);
}

TEST_CASE("Metadata exchange: config forms, in a chain and on a cluster") {
  stats::Store& store = testStore();
  filters::network::registerTcpProxy();
  filters::network::registerIstioNoopFilters();
  auto load = [&](const std::string& yaml) {
    static int n = 0;
    config::LoadOptions o;
    o.path = "/tmp/strait_mx_test_" + std::to_string(getpid()) + "_" + std::to_string(n++) + ".yaml";
    std::ofstream(o.path) << yaml;
    auto r = config::loadBootstrap(o, store);
    std::remove(o.path.c_str());
    return r;
  };
  auto yaml = [](const std::string& chain_mx, const std::string& cluster_mx) {
    return R"(
static_resources:
  listeners:
  - name: l
    address: {socket_address: {address: 127.0.0.1, port_value: 0}}
    filter_chains:
    - filters:
      - name: istio.metadata_exchange
        typed_config: )" + chain_mx + R"(
      - {name: t, typed_config: {"@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy, stat_prefix: t, cluster: c}}
  clusters:
  - name: c
    connect_timeout: 1s
    filters:
    - name: istio.metadata_exchange
      typed_config: )" + cluster_mx + R"(
    load_assignment: {cluster_name: c, endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 9}}}}]}]}
)";
  };
  const std::string direct =
      R"({"@type": type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange, protocol: istio-peer-exchange, enable_discovery: true})";
  // What istiod sends: a TypedStruct (udpa) of the same type.
  const std::string typed_struct =
      R"({"@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange, value: {protocol: istio-peer-exchange, enable_discovery: true, additional_labels: [role]}})";
  for (const auto& [chain, cluster] : {std::pair{direct, typed_struct}, std::pair{typed_struct, direct}}) {
    auto snap = load(yaml(chain, cluster));
    INFO((snap.ok() ? "" : std::string(snap.status().message())));
    REQUIRE(snap.ok());
    const auto* c = (*snap)->clusters_by_name.get("c");
    REQUIRE(c != nullptr);
    REQUIRE((*c)->peer_exchange != nullptr);
    CHECK((*c)->peer_exchange->protocol == "istio-peer-exchange");
    CHECK((*snap)->listeners[0]->filter_chains[0].read_filters.size() == 1);
  }
  // Without a protocol the cluster's filter is inert.
  auto inert = load(yaml(direct, R"({"@type": type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange})"));
  REQUIRE(inert.ok());
  CHECK((*(*inert)->clusters_by_name.get("c"))->peer_exchange == nullptr);
  // A protocol that is not a string is refused, naming the field.
  auto bad = load(yaml(direct, R"({"@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange, value: {protocol: {a: 1}}})"));
  REQUIRE_FALSE(bad.ok());
  CHECK(std::string(bad.status().message()).find("clusters[0].filters[0].typed_config.value.protocol") != std::string::npos);
  auto bad_chain = load(yaml(R"({"@type": type.googleapis.com/udpa.type.v1.TypedStruct, type_url: type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange, value: {protocol: [x]}})", direct));
  REQUIRE_FALSE(bad_chain.ok());
  CHECK(std::string(bad_chain.status().message()).find("value.protocol: must be a string") != std::string::npos);
}
