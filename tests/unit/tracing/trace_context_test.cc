#include <catch2/catch.hpp>

#include <string>

#include "proxy/http/header_map.h"
#include "proxy/stats/stats.h"
#include "proxy/tracing/trace_context.h"
#include "proxy/tracing/tracer.h"

using namespace strait::tracing;

namespace {
const std::string kTp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

// A tracing config whose stats land in a store of the test's own (startTrace counts its decisions).
TracingConfig testConfig() {
  static strait::stats::Store store(1);
  strait::stats::setThreadShard(&store.shard(0));
  TracingConfig c;
  c.stats.random_sampling = store.counter("http.t.tracing.random_sampling");
  c.stats.service_forced = store.counter("http.t.tracing.service_forced");
  c.stats.client_enabled = store.counter("http.t.tracing.client_enabled");
  c.stats.not_traceable = store.counter("http.t.tracing.not_traceable");
  return c;
}
}  // namespace

TEST_CASE("traceparent: a valid header is read", "[tracing]") {
  auto c = parseTraceparent(kTp);
  REQUIRE(c);
  CHECK(c->trace_id_high == 0x4bf92f3577b34da6ULL);
  CHECK(c->trace_id_low == 0xa3ce929d0e0e4736ULL);
  CHECK(c->span_id == 0x00f067aa0ba902b7ULL);
  CHECK(c->sampled == Sampled::Yes);
  CHECK(c->format == ContextFormat::W3c);
  auto unsampled = parseTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00");
  REQUIRE(unsampled);
  CHECK(unsampled->sampled == Sampled::No);
}

TEST_CASE("traceparent: invalid values are treated as absent", "[tracing]") {
  const char* bad[] = {
      "",
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",         // no flags
      "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",     // version 00 must end there
      "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",      // upper case
      "00-00000000000000000000000000000000-00f067aa0ba902b7-01",      // zero trace id
      "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",      // zero parent id
      "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",      // version ff
      "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",      // separator
      "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",      // not hex
      "0-4bf92f3577b34da6a3ce929d0e0e47361-00f067aa0ba902b7-01",      // fields shifted
  };
  for (const char* v : bad) {
    INFO(v);
    CHECK_FALSE(parseTraceparent(v));
  }
}

TEST_CASE("traceparent: a later version is read by its first fields", "[tracing]") {
  CHECK(parseTraceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"));
  CHECK_FALSE(parseTraceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x"));
}

TEST_CASE("traceparent: formatting round-trips", "[tracing]") {
  char buf[kTraceparentLen];
  REQUIRE(formatTraceparent(0x4bf92f3577b34da6ULL, 0xa3ce929d0e0e4736ULL, 0x00f067aa0ba902b7ULL, true, buf) == 55);
  CHECK(std::string(buf, 55) == kTp);
  formatTraceparent(0, 1, 2, false, buf);
  CHECK(std::string(buf, 55) == "00-00000000000000000000000000000001-0000000000000002-00");
}

TEST_CASE("b3 single: ids, sampling, debug and parent", "[tracing]") {
  auto c = parseB3Single("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90");
  REQUIRE(c);
  CHECK(c->trace_id_high == 0x80f198ee56343ba8ULL);
  CHECK(c->trace_id_low == 0x64fe8b2a57d3eff7ULL);
  CHECK(c->span_id == 0xe457b5a2e4d86bd1ULL);
  CHECK(c->sampled == Sampled::Yes);
  CHECK(c->format == ContextFormat::B3Single);

  auto short_id = parseB3Single("64fe8b2a57d3eff7-e457b5a2e4d86bd1");
  REQUIRE(short_id);
  CHECK(short_id->trace_id_high == 0);
  CHECK(short_id->sampled == Sampled::Deferred);

  auto debug = parseB3Single("64FE8B2A57D3EFF7-E457B5A2E4D86BD1-d");  // B3 allows upper case
  REQUIRE(debug);
  CHECK(debug->debug);
  CHECK(debug->sampled == Sampled::Yes);

  Sampled only = Sampled::Deferred;
  CHECK_FALSE(parseB3Single("0", &only));
  CHECK(only == Sampled::No);
}

TEST_CASE("b3 single: invalid values are treated as absent", "[tracing]") {
  const char* bad[] = {"", "x", "64fe8b2a57d3eff7", "64fe8b2a57d3eff7-", "64fe8b2a57d3eff-e457b5a2e4d86bd1",
                       "64fe8b2a57d3eff7-e457b5a2e4d86bd1-2", "64fe8b2a57d3eff7-0000000000000000-1",
                       "0000000000000000-e457b5a2e4d86bd1-1", "64fe8b2a57d3eff7-e457b5a2e4d86bd1-1-zz",
                       "64fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90-x"};
  for (const char* v : bad) {
    INFO(v);
    CHECK_FALSE(parseB3Single(v));
  }
}

TEST_CASE("b3 multi: headers are read, sampled and flags honoured", "[tracing]") {
  std::string t = "463ac35c9f6413ad48485a3953bb6124", s = "a2fb4a1d1a96d312", yes = "1", no = "0", flag = "1";
  auto c = parseB3Multi(&t, &s, &yes, nullptr);
  REQUIRE(c);
  CHECK(c->trace_id_high == 0x463ac35c9f6413adULL);
  CHECK(c->span_id == 0xa2fb4a1d1a96d312ULL);
  CHECK(c->sampled == Sampled::Yes);
  CHECK(parseB3Multi(&t, &s, &no, nullptr)->sampled == Sampled::No);
  CHECK(parseB3Multi(&t, &s, &no, &flag)->sampled == Sampled::Yes);
  CHECK_FALSE(parseB3Multi(&t, nullptr, &yes, nullptr));
  std::string bad = "xyz";
  CHECK_FALSE(parseB3Multi(&bad, &s, nullptr, nullptr));
}

TEST_CASE("extract: traceparent wins, then b3, then x-b3-*", "[tracing]") {
  strait::http::RequestHeaders h;
  h.add("X-B3-TraceId", "463ac35c9f6413ad48485a3953bb6124");
  h.add("x-b3-spanid", "a2fb4a1d1a96d312");
  auto c = extract(scanTraceHeaders(h), nullptr);
  REQUIRE(c);
  CHECK(c->format == ContextFormat::B3Multi);
  h.add("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1");
  CHECK(extract(scanTraceHeaders(h), nullptr)->format == ContextFormat::B3Single);
  h.add("traceparent", kTp);
  CHECK(extract(scanTraceHeaders(h), nullptr)->format == ContextFormat::W3c);
  // An invalid traceparent falls through to the next format.
  h.set("traceparent", "garbage");
  CHECK(extract(scanTraceHeaders(h), nullptr)->format == ContextFormat::B3Single);
}

TEST_CASE("sampling: Envoy's order of reasons and the overall cut", "[tracing]") {
  SamplingConfig c;
  c.random = 5000;  // 50%
  SamplingInput in;
  in.request_id_hash = 4999;
  CHECK(decideSampling(c, in).reason == TraceReason::Random);
  in.request_id_hash = 5000;
  CHECK(decideSampling(c, in).reason == TraceReason::NotTraceable);
  CHECK_FALSE(decideSampling(c, in).sampled);
  in.force_trace = true;
  CHECK(decideSampling(c, in).reason == TraceReason::Forced);
  in.force_trace = false;
  in.client_trace_id = true;
  c.client = 10000;
  CHECK(decideSampling(c, in).reason == TraceReason::Client);
  c.overall = 0;
  CHECK(decideSampling(c, in).reason == TraceReason::NotTraceable);
  c.random = 0;
  c.client = 0;
  c.overall = 10000;
  in.client_trace_id = false;
  CHECK_FALSE(decideSampling(c, in).sampled);
}

TEST_CASE("sampling: a parent's flag is honoured, force wins over its no", "[tracing]") {
  SamplingConfig none;
  none.random = 0;
  SamplingInput in;
  in.incoming = Sampled::Yes;
  CHECK(decideSampling(none, in).sampled);
  SamplingConfig all;
  in.incoming = Sampled::No;
  CHECK_FALSE(decideSampling(all, in).sampled);
  in.force_trace = true;
  CHECK(decideSampling(all, in).sampled);
}

TEST_CASE("startTrace: a new trace gets a traceparent with our span", "[tracing]") {
  TracingConfig cfg = testConfig();
  strait::http::RequestHeaders h;
  h.add("x-request-id", "abc");
  ActiveTrace t = startTrace(cfg, h, 0x1111, 0x2222, 0x3333, 0);
  CHECK(t.sampled);
  CHECK(t.parent_span_id == 0);
  REQUIRE(h.get("traceparent"));
  CHECK(*h.get("traceparent") == "00-00000000000022220000000000003333-0000000000001111-01");
  CHECK(h.get("b3") == nullptr);
  CHECK(h.get("x-b3-spanid") == nullptr);
}

TEST_CASE("startTrace: an incoming context keeps its trace id and becomes our parent", "[tracing]") {
  TracingConfig cfg = testConfig();
  cfg.sampling.random = 0;  // the parent's sampled flag decides
  strait::http::RequestHeaders h;
  h.add("traceparent", kTp);
  h.add("tracestate", "congo=t61rcWkgMzE");
  ActiveTrace t = startTrace(cfg, h, 0xabcdef, 1, 2, 3);
  CHECK(t.sampled);
  CHECK(t.parent_span_id == 0x00f067aa0ba902b7ULL);
  CHECK(*h.get("traceparent") == "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000abcdef-01");
  CHECK(*h.get("tracestate") == "congo=t61rcWkgMzE");  // passed on untouched
}

TEST_CASE("startTrace: B3 goes upstream in the shape it came in", "[tracing]") {
  TracingConfig cfg = testConfig();
  strait::http::RequestHeaders multi;
  multi.add("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124");
  multi.add("x-b3-spanid", "a2fb4a1d1a96d312");
  multi.add("x-b3-sampled", "0");
  ActiveTrace t = startTrace(cfg, multi, 0x77, 1, 2, 3);
  CHECK_FALSE(t.sampled);
  CHECK(*multi.get("x-b3-traceid") == "463ac35c9f6413ad48485a3953bb6124");
  CHECK(*multi.get("x-b3-spanid") == "0000000000000077");
  CHECK(*multi.get("x-b3-parentspanid") == "a2fb4a1d1a96d312");
  CHECK(*multi.get("x-b3-sampled") == "0");
  CHECK(*multi.get("traceparent") == "00-463ac35c9f6413ad48485a3953bb6124-0000000000000077-00");

  strait::http::RequestHeaders single;
  single.add("b3", "64fe8b2a57d3eff7-e457b5a2e4d86bd1-1");
  startTrace(cfg, single, 0x88, 1, 2, 3);
  CHECK(*single.get("b3") == "64fe8b2a57d3eff7-0000000000000088-1-e457b5a2e4d86bd1");
  CHECK(*single.get("traceparent") == "00-000000000000000064fe8b2a57d3eff7-0000000000000088-01");
}

TEST_CASE("requestIdHash: stable for the same id", "[tracing]") {
  CHECK(requestIdHash("3f6a8f4e-1c1b-4b5a-9d4e-2a8b7c6d5e4f") == requestIdHash("3f6a8f4e-1c1b-4b5a-9d4e-2a8b7c6d5e4f"));
  CHECK(requestIdHash("a") != requestIdHash("b"));
}
