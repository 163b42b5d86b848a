#include <catch2/catch.hpp>

#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"
#include "proxy/accesslog/access_log.h"
#include "proxy/common/response_flags.h"
#include "proxy/http/header_map.h"

using strait::accesslog::Formatter;
using strait::accesslog::LogContext;
using strait::accesslog::LogFilter;

namespace {

std::string format(std::string_view fmt, const LogContext& c, bool omit_empty = false) {
  auto f = Formatter::text(fmt, omit_empty, "log_format.text_format");
  REQUIRE(f.ok());
  std::string out;
  (*f)->format(c, out);
  return out;
}

std::string formatJson(const std::string& json, const LogContext& c, bool omit_empty = false) {
  google::protobuf::Struct s;
  REQUIRE(google::protobuf::util::JsonStringToMessage(json, &s).ok());
  auto f = Formatter::json(s, omit_empty, "log_format.json_format");
  REQUIRE(f.ok());
  std::string out;
  (*f)->format(c, out);
  return out;
}

struct Request {
  strait::http::RequestHeaders req;
  strait::http::ResponseHeaders resp;
  LogContext ctx;
  Request() {
    req.method = "GET";
    req.path = "/a/b?c=1";
    req.authority = "svc.ns";
    req.add("User-Agent", "curl/8.0");
    req.add("x-quote", "say \"hi\"\\ \n\t\x01");
    resp.status = 503;
    resp.add("x-envoy-upstream-service-time", "12");
    ctx.request = &req;
    ctx.response = &resp;
    ctx.response_code = 503;
    ctx.bytes_received = 10;
    ctx.bytes_sent = 20;
    ctx.protocol = "HTTP/2";
    ctx.start = std::chrono::steady_clock::time_point(std::chrono::seconds(100));
    ctx.end = ctx.start + std::chrono::milliseconds(42);
    // 2026-12-07T00:50:01.123456789Z
    ctx.start_time = std::chrono::system_clock::time_point(std::chrono::seconds(1796604601)) +
                     std::chrono::duration_cast<std::chrono::system_clock::duration>(std::chrono::nanoseconds(123456789));
    ctx.upstream_cluster = "backend";
    ctx.response_flags = strait::common::kUpstreamConnectionFailure | strait::common::kUpstreamRetryLimitExceeded;
  }
};

}  // namespace

TEST_CASE("Access log formatter: operators, literals and %%") {
  Request r;
  CHECK(format("%REQ(:METHOD)% %REQ(:PATH)% %PROTOCOL% %RESPONSE_CODE% 100%%\n", r.ctx) ==
        "GET /a/b?c=1 HTTP/2 503 100%\n");
  CHECK(format("%BYTES_RECEIVED%/%BYTES_SENT%/%DURATION%/%UPSTREAM_CLUSTER%", r.ctx) == "10/20/42/backend");
  CHECK(format("%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% %RESP(:status)% %REQ(host)%", r.ctx) == "12 503 svc.ns");
}

TEST_CASE("Access log formatter: alternates, max length and missing values") {
  Request r;
  CHECK(format("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", r.ctx) == "/a/b?c=1");
  r.req.add("x-envoy-original-path", "/orig");
  CHECK(format("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", r.ctx) == "/orig");
  CHECK(format("%REQ(USER-AGENT):4%", r.ctx) == "curl");
  CHECK(format("[%REQ(X-NONE)%][%UPSTREAM_HOST%][%ROUTE_NAME%][%REQUESTED_SERVER_NAME%]", r.ctx) == "[-][-][-][-]");
  CHECK(format("[%REQ(X-NONE)%]", r.ctx, true) == "[]");
  r.ctx.request = nullptr;  // a TCP session
  CHECK(format("%REQ(:METHOD)% %PROTOCOL%", r.ctx) == "- HTTP/2");
}

TEST_CASE("Access log formatter: response flags in Envoy's order") {
  Request r;
  CHECK(format("%RESPONSE_FLAGS%", r.ctx) == "UF,URX");
  CHECK(format("%RESPONSE_FLAGS_LONG%", r.ctx) == "UpstreamConnectionFailure,UpstreamRetryLimitExceeded");
  r.ctx.response_flags = 0;
  CHECK(format("%RESPONSE_FLAGS%", r.ctx) == "-");
  CHECK(strait::common::responseFlagByName("UO") == strait::common::kUpstreamOverflow);
  CHECK(strait::common::responseFlagByName("XX") == 0);
}

TEST_CASE("Access log formatter: START_TIME default and strftime with fractions") {
  Request r;
  CHECK(format("%START_TIME%", r.ctx) == "2026-12-07T00:50:01.123Z");
  CHECK(format("%START_TIME(%Y/%m/%d %H:%M:%S.%3f)%", r.ctx) == "2026/12/07 00:50:01.123");
  CHECK(format("%START_TIME(%s.%6f)%", r.ctx) == "1796604601.123456");
  CHECK(format("%START_TIME(%f)%", r.ctx) == "123456789");
}

TEST_CASE("Access log formatter: bad formats are refused naming the field") {
  auto f = Formatter::text("%START_TIME% %NOPE%", false, "access_log[0].typed_config.log_format.text_format");
  REQUIRE_FALSE(f.ok());
  CHECK(std::string(f.status().message()) ==
        "access_log[0].typed_config.log_format.text_format: unknown command operator %NOPE%");
  CHECK_FALSE(Formatter::text("%REQ(A)", false, "f").ok());       // unterminated
  CHECK_FALSE(Formatter::text("%REQ()%", false, "f").ok());       // no header
  CHECK_FALSE(Formatter::text("%REQ(A):x%", false, "f").ok());    // bad length
  CHECK_FALSE(Formatter::text("%DURATION(x)%", false, "f").ok());  // takes no argument
  CHECK_FALSE(Formatter::text("%REQ(A?B?C)%", false, "f").ok());
}

TEST_CASE("Access log formatter: JSON values typed, escaped, null and omitted") {
  Request r;
  const std::string out = formatJson(
      R"({"code":"%RESPONSE_CODE%","q":"%REQ(X-QUOTE)%","none":"%REQ(X-NONE)%","mix":"c=%RESPONSE_CODE% n=%REQ(X-NONE)%",
          "n":3.5,"b":false,"nested":{"bytes":"%BYTES_SENT%"}})",
      r.ctx);
  CHECK(out ==
        "{\"b\":false,\"code\":503,\"mix\":\"c=503 n=-\",\"n\":3.5,\"nested\":{\"bytes\":20},\"none\":null,"
        "\"q\":\"say \\\"hi\\\"\\\\ \\n\\t\\u0001\"}\n");
  CHECK(formatJson(R"({"a":"%REQ(X-NONE)%","m":"%REQ(:METHOD)%","z":"%REQ(X-NONE)%"})", r.ctx, true) == "{\"m\":\"GET\"}\n");
  google::protobuf::Struct bad;
  REQUIRE(google::protobuf::util::JsonStringToMessage(R"({"x":"%BOGUS%"})", &bad).ok());
  auto f = Formatter::json(bad, false, "log_format.json_format");
  REQUIRE_FALSE(f.ok());
  CHECK(std::string(f.status().message()) == "log_format.json_format.x: unknown command operator %BOGUS%");
}

TEST_CASE("Access log filters: comparisons, flags, and/or") {
  Request r;
  LogFilter status;
  status.kind = LogFilter::Kind::StatusCode;
  status.op = LogFilter::Op::Ge;
  status.value = 500;
  CHECK(status.evaluate(r.ctx));
  r.ctx.response_code = 200;
  CHECK_FALSE(status.evaluate(r.ctx));
  LogFilter dur;
  dur.kind = LogFilter::Kind::Duration;
  dur.op = LogFilter::Op::Le;
  dur.value = 42;
  CHECK(dur.evaluate(r.ctx));
  LogFilter flags;
  flags.kind = LogFilter::Kind::ResponseFlag;
  flags.flag_mask = strait::common::kUpstreamOverflow;
  CHECK_FALSE(flags.evaluate(r.ctx));
  flags.flag_mask |= strait::common::kUpstreamConnectionFailure;
  CHECK(flags.evaluate(r.ctx));
  LogFilter any_of;
  any_of.kind = LogFilter::Kind::Or;
  any_of.children = {status, dur};
  CHECK(any_of.evaluate(r.ctx));
  LogFilter all_of;
  all_of.kind = LogFilter::Kind::And;
  all_of.children = {status, dur};
  CHECK_FALSE(all_of.evaluate(r.ctx));
  LogFilter hc;
  hc.kind = LogFilter::Kind::NotHealthCheck;
  CHECK(hc.evaluate(r.ctx));
  r.req.set("user-agent", "Envoy/HC");
  CHECK_FALSE(hc.evaluate(r.ctx));
}
