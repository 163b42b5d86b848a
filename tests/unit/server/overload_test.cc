#include "proxy/server/overload.h"

#include <catch2/catch.hpp>

#include <string>
#include <string_view>

#include "envoy/config/bootstrap/v3/bootstrap.pb.h"
#include "google/protobuf/util/json_util.h"
#include "proxy/common/overload_state.h"
#include "proxy/event/dispatcher.h"
#include "proxy/stats/stats.h"

using strait::common::overloadDraw;
using strait::common::overloadState;
using strait::common::OverloadState;
using strait::common::scaledTimeoutMs;
using strait::server::OverloadConfig;
using strait::server::translateOverload;

namespace {

constexpr std::string_view kHeap =
    R"({"name": "heap", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig", "max_heap_size_bytes": 1000}})";
constexpr std::string_view kConns =
    R"({"name": "conns", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig", "max_active_downstream_connections": 10}})";

// translateOverload on {"overload_manager": {...}}: "ok" or the error.
std::string load(const std::string& overload_json, std::shared_ptr<const OverloadConfig>* out = nullptr) {
  envoy::config::bootstrap::v3::Bootstrap b;
  auto s = google::protobuf::util::JsonStringToMessage("{\"overload_manager\": " + overload_json + "}", &b);
  REQUIRE(s.ok());
  auto r = translateOverload(b);
  if (!r.ok()) return std::string(r.status().message());
  if (out) *out = *r;
  return "ok";
}

std::string withActions(const std::string& actions) {
  return std::string(R"({"refresh_interval": "0.1s", "resource_monitors": [)") + std::string(kHeap) + ", " +
         std::string(kConns) + "], \"actions\": [" + actions + "]}";
}

}  // namespace

TEST_CASE("Overload: a threshold trigger is off below its value and saturated at it", "[overload]") {
  OverloadConfig::Trigger t;
  t.saturation = 0.8;
  CHECK(t.scale(0.79) == 0.0);
  CHECK(t.scale(0.8) == 1.0);
  CHECK(t.scale(1.5) == 1.0);
}

TEST_CASE("Overload: a scaled trigger rises linearly between its thresholds", "[overload]") {
  OverloadConfig::Trigger t;
  t.scaled = true;
  t.scaling = 0.5;
  t.saturation = 0.9;
  CHECK(t.scale(0.0) == 0.0);
  CHECK(t.scale(0.5) == 0.0);
  CHECK(t.scale(0.7) == Approx(0.5));
  CHECK(t.scale(0.8) == Approx(0.75));
  CHECK(t.scale(0.9) == 1.0);
  CHECK(t.scale(2.0) == 1.0);
}

TEST_CASE("Overload: an action takes the largest of its triggers' scales", "[overload]") {
  OverloadConfig::Action a;
  OverloadConfig::Trigger heap;  // monitor 0, threshold 0.95
  heap.saturation = 0.95;
  OverloadConfig::Trigger conns;  // monitor 1, scaled 0.5..1
  conns.monitor = 1;
  conns.scaled = true;
  conns.scaling = 0.5;
  a.triggers = {heap, conns};
  CHECK(a.scale({0.1, 0.75}) == Approx(0.5));
  CHECK(a.scale({0.96, 0.75}) == 1.0);
  CHECK(a.scale({0.1, 0.2}) == 0.0);
}

TEST_CASE("Overload: reduce_timeouts shrinks a timer toward its floor with the scale", "[overload]") {
  auto& s = overloadState();
  auto& f = s.timers[OverloadState::kConnectionIdle];
  f.scaled = true;
  f.min_scale = -1.0;
  f.min_ms = 1000;
  s.timer_scale = 0.0;
  CHECK(scaledTimeoutMs(OverloadState::kConnectionIdle, 10000) == 10000);
  s.timer_scale = 0.5;
  CHECK(scaledTimeoutMs(OverloadState::kConnectionIdle, 10000) == 5500);  // 1000 + 9000 / 2
  s.timer_scale = 1.0;
  CHECK(scaledTimeoutMs(OverloadState::kConnectionIdle, 10000) == 1000);
  CHECK(scaledTimeoutMs(OverloadState::kConnectionIdle, 500) == 500);  // a floor above the timer: unchanged
  CHECK(scaledTimeoutMs(OverloadState::kConnectionIdle, 0) == 0);      // disabled stays disabled
  f.min_scale = 0.2;  // min_scale 20%
  CHECK(scaledTimeoutMs(OverloadState::kConnectionIdle, 10000) == 2000);
  CHECK(scaledTimeoutMs(OverloadState::kStreamIdle, 10000) == 10000);  // not named by the action
  s.timer_scale = 0.0;
  f.scaled = false;
}

TEST_CASE("Overload: a scaled action applies to about its share of requests", "[overload]") {
  CHECK_FALSE(overloadDraw(0.0));
  CHECK(overloadDraw(1.0));
  int hits = 0;
  for (int i = 0; i < 20000; ++i) hits += overloadDraw(0.25) ? 1 : 0;
  CHECK(hits > 4500);
  CHECK(hits < 5500);
}

TEST_CASE("Overload: a full config translates", "[overload]") {
  std::shared_ptr<const OverloadConfig> c;
  REQUIRE(load(withActions(R"(
    {"name": "envoy.overload_actions.stop_accepting_requests", "triggers": [{"name": "heap", "threshold": {"value": 0.95}}]},
    {"name": "envoy.overload_actions.disable_http_keepalive", "triggers": [
        {"name": "heap", "scaled": {"scaling_threshold": 0.8, "saturation_threshold": 0.95}},
        {"name": "conns", "threshold": {"value": 0.9}}]},
    {"name": "envoy.overload_actions.reduce_timeouts", "triggers": [{"name": "heap", "scaled": {"scaling_threshold": 0.5, "saturation_threshold": 0.9}}],
     "typed_config": {"@type": "type.googleapis.com/envoy.config.overload.v3.ScaleTimersOverloadActionConfig",
       "timer_scale_factors": [{"timer": "HTTP_DOWNSTREAM_CONNECTION_IDLE", "min_timeout": "2s"},
                               {"timer": "HTTP_DOWNSTREAM_STREAM_IDLE", "min_scale": {"value": 25}}]}},
    {"name": "envoy.overload_actions.shrink_heap", "triggers": [{"name": "heap", "threshold": {"value": 0.9}}]},
    {"name": "envoy.overload_actions.stop_accepting_connections", "triggers": [{"name": "conns", "threshold": {"value": 1}}]})"),
               &c) == "ok");
  REQUIRE(c->refresh_ms == 100);
  REQUIRE(c->monitors.size() == 2);
  CHECK(c->monitors[1].kind == OverloadConfig::Monitor::Kind::DownstreamConnections);
  CHECK(c->monitors[1].max == 10);
  REQUIRE(c->actions.size() == 5);
  CHECK(c->actions[1].triggers[1].monitor == 1);
  CHECK(c->actions[1].triggers[0].scaled);
  REQUIRE(c->actions[2].timers.size() == 2);
  CHECK(c->actions[2].timers[0].min_ms == 2000);
  CHECK(c->actions[2].timers[1].timer == OverloadState::kStreamIdle);
  CHECK(c->actions[2].timers[1].min_scale == Approx(0.25));
}

TEST_CASE("Overload: bad configs are refused naming the field", "[overload]") {
  const std::string trig = R"("triggers": [{"name": "heap", "threshold": {"value": 0.9}}])";
  CHECK(load(withActions(R"({"name": "envoy.overload_actions.make_coffee", )" + trig + "}")) ==
        "overload_manager.actions[0].name: unknown overload action 'envoy.overload_actions.make_coffee' (supported: "
        "stop_accepting_requests, stop_accepting_connections, disable_http_keepalive, reduce_timeouts, shrink_heap)");
  CHECK(load(R"({"resource_monitors": [{"name": "cpu", "typed_config": {"@type": "type.googleapis.com/google.protobuf.Empty"}}]})") ==
        "overload_manager.resource_monitors[0].typed_config: unsupported resource monitor type "
        "'type.googleapis.com/google.protobuf.Empty' (supported: fixed_heap, global_downstream_max_connections)");
  CHECK(load(R"({"resource_monitors": [{"name": "heap"}]})") == "overload_manager.resource_monitors[0].typed_config: is required");
  CHECK(load(R"({"resource_monitors": [{"name": "c", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig"}}]})") ==
        "overload_manager.resource_monitors[0].typed_config.max_active_downstream_connections: must be positive");
  CHECK(load(std::string(R"({"resource_monitors": [)") + std::string(kHeap) + ", " + std::string(kHeap) + "]}") ==
        "overload_manager.resource_monitors[1].name: 'heap' is named twice");
  CHECK(load(withActions(R"({"name": "envoy.overload_actions.shrink_heap", "triggers": [{"name": "disk", "threshold": {"value": 0.9}}]})")) ==
        "overload_manager.actions[0].triggers[0].name: 'disk' is not a resource monitor of overload_manager");
  CHECK(load(withActions(R"({"name": "envoy.overload_actions.shrink_heap", "triggers": [{"name": "heap", "threshold": {"value": 1.5}}]})")) ==
        "overload_manager.actions[0].triggers[0].threshold.value: a threshold is a pressure between 0 and 1");
  CHECK(load(withActions(R"({"name": "envoy.overload_actions.shrink_heap", "triggers": [{"name": "heap", "scaled": {"scaling_threshold": 0.9, "saturation_threshold": 0.8}}]})")) ==
        "overload_manager.actions[0].triggers[0].scaled: scaling_threshold must be below saturation_threshold");
  CHECK(load(withActions(R"({"name": "envoy.overload_actions.shrink_heap", "triggers": [{"name": "heap"}]})")) ==
        "overload_manager.actions[0].triggers[0]: needs threshold or scaled");
  CHECK(load(withActions(R"({"name": "envoy.overload_actions.shrink_heap"})")) ==
        "overload_manager.actions[0].triggers: needs at least one trigger");
  CHECK(load(withActions(R"({"name": "envoy.overload_actions.shrink_heap", "triggers": [{"name": "heap", "threshold": {"value": 0.9}}, {"name": "heap", "threshold": {"value": 0.5}}]})")) ==
        "overload_manager.actions[0].triggers[1].name: the action has a trigger on this monitor already");
  CHECK(load(withActions(R"({"name": "envoy.overload_actions.shrink_heap", )" + trig + R"(}, {"name": "envoy.overload_actions.shrink_heap", )" + trig + "}")) ==
        "overload_manager.actions[1].name: 'envoy.overload_actions.shrink_heap' is configured twice");
  CHECK(load(withActions(R"({"name": "envoy.overload_actions.reduce_timeouts", )" + trig + "}")) ==
        "overload_manager.actions[0].typed_config: is required (ScaleTimersOverloadActionConfig)");
  const std::string timers = R"(, "typed_config": {"@type": "type.googleapis.com/envoy.config.overload.v3.ScaleTimersOverloadActionConfig", "timer_scale_factors": )";
  CHECK(load(withActions(R"({"name": "envoy.overload_actions.reduce_timeouts", )" + trig + timers + R"([{"timer": "HTTP_DOWNSTREAM_CONNECTION_IDLE"}]}})")) ==
        "overload_manager.actions[0].typed_config.timer_scale_factors[0]: needs min_timeout or min_scale");
  CHECK(load(withActions(R"({"name": "envoy.overload_actions.reduce_timeouts", )" + trig + timers + R"([{"min_timeout": "1s"}]}})")) ==
        "overload_manager.actions[0].typed_config.timer_scale_factors[0].timer: must name a timer "
        "(HTTP_DOWNSTREAM_CONNECTION_IDLE, HTTP_DOWNSTREAM_STREAM_IDLE, TRANSPORT_SOCKET_CONNECT)");
  CHECK(load(withActions(R"({"name": "envoy.overload_actions.reduce_timeouts", )" + trig + timers + R"([{"timer": "HTTP_DOWNSTREAM_STREAM_IDLE", "min_scale": {"value": 150}}]}})")) ==
        "overload_manager.actions[0].typed_config.timer_scale_factors[0].min_scale.value: is a percentage between 0 and 100");
  CHECK(load(R"({"refresh_interval": "0s"})") == "overload_manager.refresh_interval: must be positive");
}

TEST_CASE("Overload: the manager turns pressures into published scales and Envoy's stats", "[overload]") {
  std::shared_ptr<const OverloadConfig> c;
  REQUIRE(load(withActions(R"(
    {"name": "envoy.overload_actions.disable_http_keepalive", "triggers": [{"name": "conns", "scaled": {"scaling_threshold": 0.5, "saturation_threshold": 0.9}}]},
    {"name": "envoy.overload_actions.stop_accepting_connections", "triggers": [{"name": "conns", "threshold": {"value": 0.9}}]})"),
               &c) == "ok");
  strait::event::Dispatcher d("test");
  strait::stats::Store store(1);
  auto& s = overloadState();
  const int64_t before = s.downstream_connections->load();
  {
    strait::server::OverloadManager m(c, d, store);
    s.downstream_connections->store(7);  // of 10
    m.start();
    CHECK(s.max_downstream_connections.load() == 10);
    CHECK(s.disable_keepalive.load() == Approx(0.5));
    CHECK_FALSE(s.stop_connections.load());
    CHECK(store.value("overload.conns.pressure") == 70);
    CHECK(store.value("overload.conns.failed_updates") == 0);
    CHECK(store.value("overload.conns.skipped_updates") == 0);
    CHECK(store.value("overload.envoy.overload_actions.disable_http_keepalive.scale_percent") == 50);
    CHECK(store.value("overload.envoy.overload_actions.disable_http_keepalive.active") == 0);
    s.downstream_connections->store(9);
    m.sample();
    CHECK(s.stop_connections.load());
    CHECK(store.value("overload.envoy.overload_actions.disable_http_keepalive.active") == 1);
    CHECK(store.value("overload.envoy.overload_actions.stop_accepting_connections.active") == 1);
  }
  // Gone: nothing it published stays in force.
  CHECK(s.max_downstream_connections.load() == 0);
  CHECK_FALSE(s.stop_connections.load());
  CHECK(s.disable_keepalive.load() == 0.0);
  s.downstream_connections->store(before);
}
