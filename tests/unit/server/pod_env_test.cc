#include "proxy/server/pod_env.h"

#include <catch2/catch.hpp>

#include <string>
#include <string_view>
#include <vector>

#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"

using strait::server::AppProbe;
using strait::server::nodeMetadataJson;
using strait::server::parseAppProbes;
using strait::server::parsePrometheusScrape;
using strait::server::readPodEnv;

namespace {
std::string errorOf(std::string_view json) {
  auto r = parseAppProbes(json, "STRAIT_KUBE_APP_PROBERS");
  return r.ok() ? std::string("ok") : std::string(r.status().message());
}
google::protobuf::Struct metadata(const std::vector<std::string_view>& env) {
  auto json = nodeMetadataJson(env);
  REQUIRE(json.ok());
  google::protobuf::Struct s;
  REQUIRE(google::protobuf::util::JsonStringToMessage(*json, &s).ok());
  return s;
}
}  // namespace

TEST_CASE("Pod env: Istio's app prober JSON is read into probes", "[pod_env]") {
  auto r = parseAppProbes(R"({
    "/app-health/app/readyz": {"httpGet": {"path": "ready", "port": 8080, "scheme": "HTTPS",
        "httpHeaders": [{"name": "X-A", "value": "1"}, {"name": "host", "value": "app.local"}]}, "timeoutSeconds": 3,
        "periodSeconds": 10},
    "/app-health/app/livez": {"tcpSocket": {"port": "9000", "host": "10.1.2.3"}},
    "/app-health/app/startupz": {"grpc": {"port": 9090, "service": "shop"}}})",
                          "STRAIT_KUBE_APP_PROBERS");
  REQUIRE(r.ok());
  REQUIRE(r->size() == 3);
  const AppProbe& ready = r->at("/app-health/app/readyz");
  CHECK(ready.kind == AppProbe::Kind::Http);
  CHECK(ready.https);
  CHECK(ready.http_path == "/ready");
  CHECK(ready.address.asString() == "127.0.0.1:8080");
  CHECK(ready.timeout_ms == 3000);
  CHECK(ready.host_header == "app.local");
  REQUIRE(ready.headers.size() == 1);
  CHECK(ready.headers[0] == std::make_pair(std::string("x-a"), std::string("1")));
  const AppProbe& live = r->at("/app-health/app/livez");
  CHECK(live.kind == AppProbe::Kind::Tcp);
  CHECK(live.address.asString() == "10.1.2.3:9000");
  CHECK(live.timeout_ms == 1000);
  const AppProbe& start = r->at("/app-health/app/startupz");
  CHECK(start.kind == AppProbe::Kind::Grpc);
  CHECK(start.grpc_service == "shop");
}

TEST_CASE("Pod env: malformed probes are refused naming the variable and the key", "[pod_env]") {
  CHECK(errorOf("{nope").find("STRAIT_KUBE_APP_PROBERS: not a JSON object") == 0);
  CHECK(errorOf("[]").find("STRAIT_KUBE_APP_PROBERS") == 0);
  CHECK(errorOf(R"({"/app-health/a/readyz": {"httpGet": {"path": "/"}}})") ==
        "STRAIT_KUBE_APP_PROBERS: \"/app-health/a/readyz\".httpGet.port: is required");
  CHECK(errorOf(R"({"/app-health/a/readyz": {"httpGet": {"port": "http"}}})").find(".httpGet.port: 'http' is not a port number") !=
        std::string::npos);
  CHECK(errorOf(R"({"/app-health/a/readyz": {"httpGet": {"port": 70000}}})").find("from 1 to 65535") != std::string::npos);
  CHECK(errorOf(R"({"/app-health/a/readyz": {"tcpSocket": {"port": 1}, "grpc": {"port": 2}}})").find("exactly one") !=
        std::string::npos);
  CHECK(errorOf(R"({"/app-health/a/readyz": {"exec": {}}})").find("\"/app-health/a/readyz\".exec: unknown field") !=
        std::string::npos);
  CHECK(errorOf(R"({"/ready": {"tcpSocket": {"port": 1}}})").find("must start with /app-health/") != std::string::npos);
  CHECK(errorOf(R"({"/app-health/a/readyz": {"tcpSocket": {"port": 1, "host": "db.local"}}})")
            .find(".tcpSocket.host: 'db.local' is not an IP address") != std::string::npos);
  CHECK(errorOf(R"({"/app-health/a/readyz": {"httpGet": {"port": 1, "scheme": "FTP"}}})").find(".scheme") !=
        std::string::npos);
  CHECK(errorOf(R"({"/app-health/a/readyz": {"httpGet": {"port": 1, "httpHeaders": [{"name": "a\r\nb", "value": "x"}]}}})")
            .find(".httpHeaders[0]") != std::string::npos);
  CHECK(errorOf(R"({"/app-health/a/readyz": {"tcpSocket": {"port": 1}, "timeoutSeconds": 0}})").find(".timeoutSeconds") !=
        std::string::npos);
}

TEST_CASE("Pod env: Prometheus scrape annotation", "[pod_env]") {
  auto on = parsePrometheusScrape(R"({"scrape": "true", "path": "stats", "port": "9102"})", "STRAIT_PROMETHEUS_SCRAPE");
  REQUIRE(on.ok());
  REQUIRE(on->has_value());
  CHECK((*on)->path == "/stats");
  CHECK((*on)->port == 9102);
  auto off = parsePrometheusScrape(R"({"scrape": "false", "port": "9102"})", "X");
  REQUIRE(off.ok());
  CHECK(!off->has_value());
  auto bad = parsePrometheusScrape(R"({"scrape": "true", "prot": "1"})", "ISTIO_PROMETHEUS_ANNOTATIONS");
  REQUIRE(!bad.ok());
  CHECK(bad.status().message() == "ISTIO_PROMETHEUS_ANNOTATIONS: prot: unknown field (scrape, path, port)");
}

TEST_CASE("Pod env: node metadata from STRAIT_ and ISTIO_ variables, STRAIT_ winning", "[pod_env]") {
  auto md = metadata({"PATH=/bin", "ISTIO_META_CLUSTER_ID=istio", "STRAIT_META_CLUSTER_ID=strait",
                      "ISTIO_META_MESH_ID=m1", "ISTIO_METAJSON_LABELS={\"app\":\"shop\"}", "ISTIO_META_=ignored",
                      "STRAIT_METAJSON_ANNOTATIONS={\"a\":{\"b\":1}}"});
  const auto& f = md.fields();
  CHECK(f.size() == 4);
  CHECK(f.at("CLUSTER_ID").string_value() == "strait");
  CHECK(f.at("MESH_ID").string_value() == "m1");
  CHECK(f.at("LABELS").struct_value().fields().at("app").string_value() == "shop");
  CHECK(f.at("ANNOTATIONS").struct_value().fields().at("a").struct_value().fields().at("b").number_value() == 1);
  CHECK(nodeMetadataJson({"HOME=/root"}).value().empty());
  auto bad = nodeMetadataJson({"STRAIT_METAJSON_LABELS=[1]"});
  REQUIRE(!bad.ok());
  CHECK(bad.status().message().find("STRAIT_METAJSON_LABELS: not a JSON object") == 0);
}

TEST_CASE("Pod env: the STRAIT_ name wins over Istio's alias", "[pod_env]") {
  auto env = readPodEnv({"ISTIO_KUBE_APP_PROBERS={\"/app-health/a/livez\": {\"tcpSocket\": {\"port\": 1}}}",
                         "STRAIT_KUBE_APP_PROBERS={\"/app-health/b/livez\": {\"tcpSocket\": {\"port\": 2}}}",
                         "ISTIO_PROMETHEUS_ANNOTATIONS={\"scrape\": \"true\", \"port\": \"8080\"}"});
  REQUIRE(env.ok());
  REQUIRE(env->probes.size() == 1);
  CHECK(env->probes.count("/app-health/b/livez") == 1);
  REQUIRE(env->scrape.has_value());
  CHECK(env->scrape->port == 8080);
  CHECK(env->scrape->path == "/metrics");
  auto bad = readPodEnv({"ISTIO_KUBE_APP_PROBERS={oops"});
  REQUIRE(!bad.ok());
  CHECK(bad.status().message().find("ISTIO_KUBE_APP_PROBERS") == 0);
}
