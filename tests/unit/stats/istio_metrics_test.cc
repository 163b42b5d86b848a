#include <catch2/catch.hpp>
#include <string>
#include <thread>

#include "absl/strings/escaping.h"
#include "google/protobuf/struct.pb.h"
#include "proxy/stats/istio_metrics.h"
#include "proxy/stats/stats.h"

using namespace strait::stats;
namespace im = strait::stats::istio;

namespace {

google::protobuf::Struct nodeMetadata(const std::string& workload, const std::string& ns) {
  google::protobuf::Struct md;
  auto& f = *md.mutable_fields();
  f["NAME"].set_string_value(workload + "-7d9f-abcde");
  f["NAMESPACE"].set_string_value(ns);
  f["WORKLOAD_NAME"].set_string_value(workload);
  f["CLUSTER_ID"].set_string_value("Kubernetes");
  f["MESH_ID"].set_string_value("cluster.local");
  f["PROXY_CONFIG"].mutable_struct_value();  // must not be sent to peers
  auto& labels = *f["LABELS"].mutable_struct_value()->mutable_fields();
  labels["app"].set_string_value(workload + "-app");
  labels["version"].set_string_value("v2");
  return md;
}

// The value of one sample line `name{...labels...} value` whose labels contain every `needles` entry.
long long sample(const std::string& text, const std::string& name, std::initializer_list<std::string> needles) {
  size_t pos = 0;
  while ((pos = text.find(name + "{", pos)) != std::string::npos) {
    size_t eol = text.find('\n', pos);
    std::string line = text.substr(pos, eol - pos);
    pos = eol;
    bool all = true;
    for (const auto& n : needles) all = all && line.find(n) != std::string::npos;
    if (all) return std::stoll(line.substr(line.rfind(' ') + 1));
  }
  return -1;
}

}  // namespace

TEST_CASE("Istio metrics: label derivation from node metadata, SPIFFE ids and cluster names") {
  Store store(1);
  setThreadShard(&store.shard(0));
  REQUIRE(im::configureFromNode(nodeMetadata("reviews", "bookinfo"), "sidecar~10.0.0.1~reviews-1.bookinfo~bookinfo.svc.cluster.local", &store).ok());
  const im::PeerStrings p = im::peerFromMetadata(nodeMetadata("reviews", "bookinfo"));
  CHECK(p.workload == "reviews");
  CHECK(p.ns == "bookinfo");
  CHECK(p.app == "reviews-app");
  CHECK(p.version == "v2");
  CHECK(p.cluster == "Kubernetes");

  CHECK(im::istioClusterHost("outbound|9080|v1|ratings.bookinfo.svc.cluster.local") == "ratings.bookinfo.svc.cluster.local");
  CHECK(im::istioClusterHost("outbound|9080||ratings.bookinfo.svc.cluster.local") == "ratings.bookinfo.svc.cluster.local");
  CHECK(im::istioClusterHost("inbound|9080||").empty());
  CHECK(im::istioClusterHost("backend").empty());
  CHECK(im::istioClusterHost("outbound|9080").empty());
  CHECK(im::spiffeNamespace("spiffe://cluster.local/ns/bookinfo/sa/reviews") == "bookinfo");
  CHECK(im::spiffeNamespace("spiffe://cluster.local/sa/x").empty());
  CHECK(im::spiffeNamespace("https://x/ns/y").empty());

  // The header a peer receives decodes back to this workload, and carries only Istio's exchanged keys.
  std::string bytes;
  REQUIRE(absl::Base64Unescape(im::localPeerMetadataHeader(), &bytes));
  google::protobuf::Struct sent;
  REQUIRE(sent.ParseFromString(bytes));
  CHECK(sent.fields().count("WORKLOAD_NAME") == 1);
  CHECK(sent.fields().count("PROXY_CONFIG") == 0);
  CHECK(im::localPeerIdHeader() == "sidecar~10.0.0.1~reviews-1.bookinfo~bookinfo.svc.cluster.local");
  const uint32_t self = im::peerFromHeaderCached(im::localPeerMetadataHeader());
  CHECK(self == im::localPeer());
  CHECK(im::peerFromHeaderCached("not base64 !!") == im::kUnknown);

  // A series from ids renders its labels as strings: outbound (source reporter) to an Istio cluster's
  // service, and inbound with the caller known by its SPIFFE namespace.
  im::SeriesKey out;
  out.reporter = im::Reporter::Source;
  out.response_code = 200;
  out.src_peer = im::localPeer();
  out.service = im::serviceForHost(im::istioClusterHost("outbound|9080||ratings.bookinfo.svc.cluster.local"));
  im::recordHttp(out, 1500, 10, 2000);
  im::recordHttp(out, 30000, 0, 5);
  im::SeriesKey in;
  in.reporter = im::Reporter::Destination;
  in.protocol = im::Protocol::Grpc;
  in.security = im::Security::MutualTls;
  in.response_code = 200;
  in.grpc_status = 5;
  in.flags = 1u << 5;  // UF
  in.src_principal = im::intern("spiffe://cluster.local/ns/front/sa/web");
  in.src_peer = im::peerForNamespaceCached("front");
  in.dst_peer = im::localPeer();
  in.service = im::serviceForHost("example.org");
  im::recordHttp(in, 100, 1, 1);

  const std::string text = im::renderPrometheus();
  CHECK(text.find("# TYPE istio_requests_total counter\n") != std::string::npos);
  CHECK(text.find("# HELP istio_request_duration_milliseconds ") != std::string::npos);
  CHECK(text.find("# TYPE istio_request_duration_milliseconds histogram\n") != std::string::npos);
  CHECK(sample(text, "istio_requests_total",
               {"reporter=\"source\"", "source_workload=\"reviews\"", "source_workload_namespace=\"bookinfo\"",
                "source_app=\"reviews-app\"", "source_version=\"v2\"", "source_cluster=\"Kubernetes\"",
                "destination_workload=\"unknown\"", "destination_service=\"ratings.bookinfo.svc.cluster.local\"",
                "destination_service_name=\"ratings\"", "destination_service_namespace=\"bookinfo\"",
                "request_protocol=\"http\"", "response_code=\"200\"", "grpc_response_status=\"\"",
                "response_flags=\"-\"", "connection_security_policy=\"unknown\""}) == 2);
  CHECK(sample(text, "istio_requests_total",
               {"reporter=\"destination\"", "source_workload=\"unknown\"", "source_workload_namespace=\"front\"",
                "source_principal=\"spiffe://cluster.local/ns/front/sa/web\"", "destination_workload=\"reviews\"",
                "destination_service=\"example.org\"", "destination_service_name=\"example.org\"",
                "destination_service_namespace=\"bookinfo\"", "request_protocol=\"grpc\"",
                "grpc_response_status=\"5\"", "response_flags=\"UF\"", "connection_security_policy=\"mutual_tls\""}) == 1);
  // Histograms: cumulative buckets, sum in the unit, count.
  CHECK(sample(text, "istio_request_duration_milliseconds_bucket", {"reporter=\"source\"", "le=\"1\""}) == 0);
  CHECK(sample(text, "istio_request_duration_milliseconds_bucket", {"reporter=\"source\"", "le=\"5\""}) == 1);
  CHECK(sample(text, "istio_request_duration_milliseconds_bucket", {"reporter=\"source\"", "le=\"50\""}) == 2);
  CHECK(sample(text, "istio_request_duration_milliseconds_bucket", {"reporter=\"source\"", "le=\"+Inf\""}) == 2);
  CHECK(text.find("istio_request_duration_milliseconds_sum{reporter=\"source\"") != std::string::npos);
  CHECK(sample(text, "istio_response_bytes_sum", {"reporter=\"source\""}) == 2005);
  CHECK(sample(text, "istio_response_bytes_bucket", {"reporter=\"source\"", "le=\"10\""}) == 1);
  CHECK(sample(text, "istio_response_bytes_bucket", {"reporter=\"source\"", "le=\"10000\""}) == 2);
  CHECK(sample(text, "istio_request_bytes_count", {"reporter=\"destination\""}) == 1);
  CHECK(text.find("istio_tcp_") == std::string::npos);  // no TCP series: no TCP families
}

TEST_CASE("Istio metrics: workers' series are summed at scrape") {
  Store store(3);
  setThreadShard(&store.shard(0));
  REQUIRE(im::configureFromNode(nodeMetadata("w", "ns"), "id", &store).ok());
  im::SeriesKey k;
  k.protocol = im::Protocol::Tcp;
  k.src_peer = im::localPeer();
  std::thread workers[2];
  for (int w = 0; w < 2; ++w) {
    workers[w] = std::thread([&, w] {
      setThreadShard(&store.shard(w + 1));
      for (int i = 0; i < 100; ++i) {
        im::recordTcpOpen(k);
        im::recordTcpClose(k, 10, 3);
      }
    });
  }
  for (auto& t : workers) t.join();
  const std::string text = im::renderPrometheus();
  CHECK(sample(text, "istio_tcp_connections_opened_total", {"request_protocol=\"tcp\""}) == 200);
  CHECK(sample(text, "istio_tcp_connections_closed_total", {"request_protocol=\"tcp\""}) == 200);
  CHECK(sample(text, "istio_tcp_sent_bytes_total", {"request_protocol=\"tcp\""}) == 2000);
  CHECK(sample(text, "istio_tcp_received_bytes_total", {"request_protocol=\"tcp\""}) == 600);
  CHECK(text.find("response_code") == std::string::npos);  // TCP series carry no HTTP labels
}

TEST_CASE("Istio metrics: the cap folds new label sets into one overflow series per reporter") {
  Store store(1);
  setThreadShard(&store.shard(0));
  google::protobuf::Struct md = nodeMetadata("w", "ns");
  (*md.mutable_fields())["STRAIT_ISTIO_METRICS"].set_string_value("true");
  (*md.mutable_fields())["STRAIT_ISTIO_METRICS_MAX_SERIES"].set_string_value("3");
  REQUIRE(im::configureFromNode(md, "id", &store).ok());
  CHECK(im::enabled());
  CHECK(im::maxSeries() == 3);
  for (uint16_t code = 200; code < 210; ++code) {
    im::SeriesKey k;
    k.response_code = code;
    im::recordHttp(k, 1, 0, 0);
    im::recordHttp(k, 1, 0, 0);
  }
  const std::string text = im::renderPrometheus();
  CHECK(sample(text, "istio_requests_total", {"response_code=\"200\""}) == 2);
  CHECK(sample(text, "istio_requests_total", {"response_code=\"202\""}) == 2);
  CHECK(sample(text, "istio_requests_total", {"response_code=\"203\""}) == -1);
  CHECK(sample(text, "istio_requests_total",
               {"reporter=\"source\"", "source_workload=\"overflow\"", "destination_service=\"overflow\"",
                "response_code=\"overflow\""}) == 14);
  CHECK(store.value("istio.series_overflow") == 14);
  // A family's cap leaves the other's alone.
  im::SeriesKey tcp;
  tcp.protocol = im::Protocol::Tcp;
  im::recordTcpOpen(tcp);
  CHECK(sample(im::renderPrometheus(), "istio_tcp_connections_opened_total", {"source_workload=\"unknown\""}) == 1);
  // Bad settings are refused, naming the key.
  (*md.mutable_fields())["STRAIT_ISTIO_METRICS_MAX_SERIES"].set_string_value("0");
  auto st = im::configureFromNode(md, "id", &store);
  CHECK(!st.ok());
  CHECK(std::string(st.message()).find("node.metadata.STRAIT_ISTIO_METRICS_MAX_SERIES") != std::string::npos);
  (*md.mutable_fields())["STRAIT_ISTIO_METRICS_MAX_SERIES"].set_number_value(50);
  (*md.mutable_fields())["STRAIT_ISTIO_METRICS"].set_string_value("yes");
  st = im::configureFromNode(md, "id", &store);
  CHECK(std::string(st.message()).find("node.metadata.STRAIT_ISTIO_METRICS:") != std::string::npos);
  (*md.mutable_fields())["STRAIT_ISTIO_METRICS"].set_bool_value(false);
  REQUIRE(im::configureFromNode(md, "id", &store).ok());
  CHECK(!im::enabled());
  CHECK(im::maxSeries() == 50);
  CHECK(im::renderPrometheus().empty());  // configure() starts the tables afresh
}

TEST_CASE("Istio metrics: label values are escaped and peers from headers are bounded") {
  Store store(1);
  setThreadShard(&store.shard(0));
  REQUIRE(im::configureFromNode(nodeMetadata("w", "ns"), "id", &store).ok());
  im::PeerStrings odd;
  odd.workload = "a\"b\\c\nd";
  im::SeriesKey k;
  k.dst_peer = im::peer(odd);
  im::recordHttp(k, 1, 0, 0);
  CHECK(im::renderPrometheus().find("destination_workload=\"a\\\"b\\\\c\\nd\"") != std::string::npos);
  CHECK(im::peerFromHeaderCached(std::string(9000, 'A')) == im::kUnknown);  // longer than a peer header may be
}
