#include "proxy/server/overload.h"

#include <malloc.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "absl/strings/str_cat.h"
#include "envoy/config/bootstrap/v3/bootstrap.pb.h"
#include "envoy/config/overload/v3/overload.pb.h"
#include "envoy/extensions/resource_monitors/downstream_connections/v3/downstream_connections.pb.h"
#include "envoy/extensions/resource_monitors/fixed_heap/v3/fixed_heap.pb.h"
#include "proxy/common/log.h"
#include "proxy/common/overload_state.h"
#include "proxy/config/bootstrap.h"

namespace strait::server {

namespace {

constexpr const char* kFixedHeapType = "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig";
constexpr const char* kDownstreamConnectionsType =
    "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig";
constexpr const char* kScaleTimersType = "type.googleapis.com/envoy.config.overload.v3.ScaleTimersOverloadActionConfig";
// Envoy's shrink_heap trims this often while the action is saturated (a trim walks the whole heap).
constexpr uint64_t kTrimIntervalMs = 10000;

using ScaleTimers = envoy::config::overload::v3::ScaleTimersOverloadActionConfig;
using Kind = OverloadConfig::Action::Kind;

absl::Status fieldError(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

const std::map<std::string, Kind>& actionKinds() {
  static const auto* kinds = new std::map<std::string, Kind>{
      {"envoy.overload_actions.stop_accepting_requests", Kind::StopRequests},
      {"envoy.overload_actions.stop_accepting_connections", Kind::StopConnections},
      {"envoy.overload_actions.disable_http_keepalive", Kind::DisableKeepalive},
      {"envoy.overload_actions.reduce_timeouts", Kind::ReduceTimeouts},
      {"envoy.overload_actions.shrink_heap", Kind::ShrinkHeap},
  };
  return *kinds;
}

absl::Status translateMonitor(const envoy::config::overload::v3::ResourceMonitor& rm, const std::string& p,
                              OverloadConfig::Monitor& out) {
  if (rm.name().empty()) return fieldError(p + ".name", "is required");
  out.name = rm.name();
  if (!rm.has_typed_config()) return fieldError(p + ".typed_config", "is required");
  const std::string& type = rm.typed_config().type_url();
  if (type == kFixedHeapType) {
    envoy::extensions::resource_monitors::fixed_heap::v3::FixedHeapConfig fh;
    if (!rm.typed_config().UnpackTo(&fh)) return fieldError(p + ".typed_config", "cannot decode FixedHeapConfig");
    if (fh.max_heap_size_bytes() == 0) return fieldError(p + ".typed_config.max_heap_size_bytes", "must be positive");
    out.kind = OverloadConfig::Monitor::Kind::FixedHeap;
    out.max = fh.max_heap_size_bytes();
    return absl::OkStatus();
  }
  if (type == kDownstreamConnectionsType) {
    envoy::extensions::resource_monitors::downstream_connections::v3::DownstreamConnectionsConfig dc;
    if (!rm.typed_config().UnpackTo(&dc)) {
      return fieldError(p + ".typed_config", "cannot decode DownstreamConnectionsConfig");
    }
    if (dc.max_active_downstream_connections() <= 0) {
      return fieldError(p + ".typed_config.max_active_downstream_connections", "must be positive");
    }
    out.kind = OverloadConfig::Monitor::Kind::DownstreamConnections;
    out.max = static_cast<uint64_t>(dc.max_active_downstream_connections());
    return absl::OkStatus();
  }
  return fieldError(p + ".typed_config",
                    absl::StrCat("unsupported resource monitor type '", type, "' (supported: fixed_heap, ",
                                 "global_downstream_max_connections)"));
}

absl::Status translateTimers(const envoy::config::overload::v3::OverloadAction& a, const std::string& p,
                             std::vector<OverloadConfig::TimerScale>& out) {
  if (!a.has_typed_config()) return fieldError(p + ".typed_config", "is required (ScaleTimersOverloadActionConfig)");
  if (a.typed_config().type_url() != kScaleTimersType) {
    return fieldError(p + ".typed_config", absl::StrCat("must be a ScaleTimersOverloadActionConfig, not '",
                                                        a.typed_config().type_url(), "'"));
  }
  ScaleTimers st;
  if (!a.typed_config().UnpackTo(&st)) return fieldError(p + ".typed_config", "cannot decode ScaleTimersOverloadActionConfig");
  if (st.timer_scale_factors_size() == 0) return fieldError(p + ".typed_config.timer_scale_factors", "needs at least one timer");
  for (int i = 0; i < st.timer_scale_factors_size(); ++i) {
    const auto& f = st.timer_scale_factors(i);
    const std::string fp = absl::StrCat(p, ".typed_config.timer_scale_factors[", i, "]");
    OverloadConfig::TimerScale t;
    switch (f.timer()) {
      case ScaleTimers::HTTP_DOWNSTREAM_CONNECTION_IDLE: t.timer = common::OverloadState::kConnectionIdle; break;
      case ScaleTimers::HTTP_DOWNSTREAM_STREAM_IDLE: t.timer = common::OverloadState::kStreamIdle; break;
      case ScaleTimers::TRANSPORT_SOCKET_CONNECT: t.timer = common::OverloadState::kTransportSocketConnect; break;
      default:
        return fieldError(fp + ".timer", "must name a timer (HTTP_DOWNSTREAM_CONNECTION_IDLE, "
                                         "HTTP_DOWNSTREAM_STREAM_IDLE, TRANSPORT_SOCKET_CONNECT)");
    }
    for (const auto& seen : out) {
      if (seen.timer == t.timer) return fieldError(fp + ".timer", "names a timer twice");
    }
    if (f.has_min_timeout()) {
      t.min_ms = config::durationMs(f.min_timeout());
    } else if (f.has_min_scale()) {
      const double v = f.min_scale().value();
      if (!(v >= 0.0 && v <= 100.0)) return fieldError(fp + ".min_scale.value", "is a percentage between 0 and 100");
      t.min_scale = v / 100.0;
    } else {
      return fieldError(fp, "needs min_timeout or min_scale");
    }
    out.push_back(t);
  }
  return absl::OkStatus();
}

absl::Status translateTrigger(const envoy::config::overload::v3::Trigger& tr, const std::string& tp,
                              const std::vector<OverloadConfig::Monitor>& monitors, OverloadConfig::Trigger& out) {
  auto m = std::find_if(monitors.begin(), monitors.end(), [&](const auto& x) { return x.name == tr.name(); });
  if (m == monitors.end()) {
    return fieldError(tp + ".name", absl::StrCat("'", tr.name(), "' is not a resource monitor of overload_manager"));
  }
  out.monitor = static_cast<size_t>(m - monitors.begin());
  auto inRange = [](double v) { return v >= 0.0 && v <= 1.0; };  // false for NaN too
  if (tr.has_threshold()) {
    if (!inRange(tr.threshold().value())) return fieldError(tp + ".threshold.value", "a threshold is a pressure between 0 and 1");
    out.saturation = tr.threshold().value();
    return absl::OkStatus();
  }
  if (tr.has_scaled()) {
    const auto& s = tr.scaled();
    if (!inRange(s.scaling_threshold())) return fieldError(tp + ".scaled.scaling_threshold", "is a pressure between 0 and 1");
    if (!inRange(s.saturation_threshold())) {
      return fieldError(tp + ".scaled.saturation_threshold", "is a pressure between 0 and 1");
    }
    if (!(s.scaling_threshold() < s.saturation_threshold())) {
      return fieldError(tp + ".scaled", "scaling_threshold must be below saturation_threshold");
    }
    out.scaled = true;
    out.scaling = s.scaling_threshold();
    out.saturation = s.saturation_threshold();
    return absl::OkStatus();
  }
  return fieldError(tp, "needs threshold or scaled");
}

}  // namespace

double OverloadConfig::Trigger::scale(double pressure) const {
  if (!scaled) return pressure >= saturation ? 1.0 : 0.0;
  if (pressure >= saturation) return 1.0;
  if (pressure <= scaling) return 0.0;
  return (pressure - scaling) / (saturation - scaling);
}

double OverloadConfig::Action::scale(const std::vector<double>& pressures) const {
  double s = 0.0;
  for (const auto& t : triggers) s = std::max(s, t.scale(pressures[t.monitor]));
  return s;
}

absl::StatusOr<std::shared_ptr<const OverloadConfig>> translateOverload(const google::protobuf::Message& m) {
  const auto& b = static_cast<const envoy::config::bootstrap::v3::Bootstrap&>(m);
  if (!b.has_overload_manager()) return std::shared_ptr<const OverloadConfig>();
  const auto& om = b.overload_manager();
  auto out = std::make_shared<OverloadConfig>();
  if (om.has_refresh_interval()) {
    out->refresh_ms = config::durationMs(om.refresh_interval());
    if (out->refresh_ms == 0) return fieldError("overload_manager.refresh_interval", "must be positive");
  }
  for (int i = 0; i < om.resource_monitors_size(); ++i) {
    const std::string p = absl::StrCat("overload_manager.resource_monitors[", i, "]");
    OverloadConfig::Monitor mon;
    if (auto s = translateMonitor(om.resource_monitors(i), p, mon); !s.ok()) return s;
    for (const auto& seen : out->monitors) {
      if (seen.name == mon.name) return fieldError(p + ".name", absl::StrCat("'", mon.name, "' is named twice"));
      if (seen.kind == mon.kind) return fieldError(p + ".typed_config", "a monitor of this type is configured twice");
    }
    out->monitors.push_back(std::move(mon));
  }
  for (int i = 0; i < om.actions_size(); ++i) {
    const auto& a = om.actions(i);
    const std::string p = absl::StrCat("overload_manager.actions[", i, "]");
    OverloadConfig::Action act;
    act.name = a.name();
    auto kind = actionKinds().find(a.name());
    if (kind == actionKinds().end()) {
      return fieldError(p + ".name", absl::StrCat("unknown overload action '", a.name(),
                                                  "' (supported: stop_accepting_requests, stop_accepting_connections, "
                                                  "disable_http_keepalive, reduce_timeouts, shrink_heap)"));
    }
    act.kind = kind->second;
    for (const auto& seen : out->actions) {
      if (seen.name == act.name) return fieldError(p + ".name", absl::StrCat("'", act.name, "' is configured twice"));
    }
    if (a.triggers_size() == 0) return fieldError(p + ".triggers", "needs at least one trigger");
    for (int t = 0; t < a.triggers_size(); ++t) {
      const std::string tp = absl::StrCat(p, ".triggers[", t, "]");
      OverloadConfig::Trigger tr;
      if (auto s = translateTrigger(a.triggers(t), tp, out->monitors, tr); !s.ok()) return s;
      for (const auto& seen : act.triggers) {
        if (seen.monitor == tr.monitor) return fieldError(tp + ".name", "the action has a trigger on this monitor already");
      }
      act.triggers.push_back(tr);
    }
    if (act.kind == Kind::ReduceTimeouts) {
      if (auto s = translateTimers(a, p, act.timers); !s.ok()) return s;
    }
    out->actions.push_back(std::move(act));
  }
  return std::shared_ptr<const OverloadConfig>(out);
}

OverloadManager::OverloadManager(std::shared_ptr<const OverloadConfig> config, event::Dispatcher& dispatcher,
                                 stats::Store& store)
    : config_(std::move(config)), dispatcher_(dispatcher), store_(store) {
  // Envoy's names: overload.<monitor>.{pressure (percent), failed_updates, skipped_updates},
  // overload.<action>.{active (1: saturated), scale_percent}.
  for (const auto& m : config_->monitors) {
    const std::string p = absl::StrCat("overload.", m.name, ".");
    monitor_stats_.push_back({store_.gauge(p + "pressure"), store_.counter(p + "failed_updates"),
                              store_.counter(p + "skipped_updates")});
  }
  for (const auto& a : config_->actions) {
    const std::string p = absl::StrCat("overload.", a.name, ".");
    action_stats_.push_back({store_.gauge(p + "active"), store_.gauge(p + "scale_percent")});
  }
  pressures_.assign(config_->monitors.size(), 0.0);
  scales_.assign(config_->actions.size(), 0.0);
}

OverloadManager::~OverloadManager() {
  auto& s = common::overloadState();
  s.stop_requests.store(0.0, std::memory_order_relaxed);
  s.stop_connections.store(false, std::memory_order_relaxed);
  s.disable_keepalive.store(0.0, std::memory_order_relaxed);
  s.timer_scale.store(0.0, std::memory_order_relaxed);
  for (auto& t : s.timers) t.scaled.store(false, std::memory_order_relaxed);
  s.max_downstream_connections.store(0, std::memory_order_relaxed);
}

void OverloadManager::start() {
  auto& s = common::overloadState();
  for (const auto& m : config_->monitors) {
    if (m.kind == OverloadConfig::Monitor::Kind::DownstreamConnections) {
      s.max_downstream_connections.store(static_cast<int64_t>(m.max), std::memory_order_relaxed);
    }
  }
  for (const auto& a : config_->actions) {
    for (const auto& t : a.timers) {
      s.timers[t.timer].min_ms.store(t.min_ms, std::memory_order_relaxed);
      s.timers[t.timer].min_scale.store(t.min_scale, std::memory_order_relaxed);
      s.timers[t.timer].scaled.store(true, std::memory_order_relaxed);
    }
  }
  sample();
  timer_ = dispatcher_.createTimer([this] {
    sample();
    timer_->enable(config_->refresh_ms);
  });
  timer_->enable(config_->refresh_ms);
}

double OverloadManager::read(const OverloadConfig::Monitor& m) const {
  double used = 0.0;
  if (m.kind == OverloadConfig::Monitor::Kind::FixedHeap) {
    // In use: small blocks of every arena plus mmapped chunks (freed memory glibc keeps does not count).
    const struct mallinfo2 mi = mallinfo2();
    used = static_cast<double>(mi.uordblks + mi.hblkhd);
  } else {
    used = static_cast<double>(common::overloadState().downstream_connections->load(std::memory_order_relaxed));
  }
  return used / static_cast<double>(m.max);
}

void OverloadManager::sample() {
  // Both monitors read synchronously and cannot fail: failed_updates and skipped_updates exist for
  // Envoy's dashboards and stay 0.
  for (size_t i = 0; i < config_->monitors.size(); ++i) {
    pressures_[i] = read(config_->monitors[i]);
    stats::set(store_, monitor_stats_[i].pressure, static_cast<int64_t>(pressures_[i] * 100));
  }
  double stop_requests = 0.0, disable_keepalive = 0.0, timer_scale = 0.0;
  bool stop_connections = false;
  for (size_t i = 0; i < config_->actions.size(); ++i) {
    const auto& a = config_->actions[i];
    const double scale = a.scale(pressures_);
    stats::set(store_, action_stats_[i].active, scale >= 1.0 ? 1 : 0);
    // Rounded, but 100 only when saturated (as `active` says).
    stats::set(store_, action_stats_[i].scale_percent, scale >= 1.0 ? 100 : std::min<int64_t>(99, std::llround(scale * 100)));
    if ((scale > 0.0) != (scales_[i] > 0.0) || (scale >= 1.0) != (scales_[i] >= 1.0)) {
      std::string why;
      for (size_t m = 0; m < config_->monitors.size(); ++m) {
        absl::StrAppend(&why, m ? ", " : "", config_->monitors[m].name, " ", static_cast<int>(pressures_[m] * 100), "%");
      }
      LOG_WARN("overload: %s at %d%% (%s)", a.name.c_str(), static_cast<int>(scale * 100), why.c_str());
    }
    scales_[i] = scale;
    switch (a.kind) {
      case Kind::StopRequests: stop_requests = scale; break;
      case Kind::StopConnections: stop_connections = scale >= 1.0; break;
      case Kind::DisableKeepalive: disable_keepalive = scale; break;
      case Kind::ReduceTimeouts: timer_scale = scale; break;
      case Kind::ShrinkHeap:
        if (scale >= 1.0) {
          const uint64_t now = dispatcher_.nowMs();
          if (!trimmed_ || now - last_trim_ms_ >= kTrimIntervalMs) {
            malloc_trim(0);
            trimmed_ = true;
            last_trim_ms_ = now;
          }
        }
        break;
    }
  }
  auto& s = common::overloadState();
  s.stop_requests.store(stop_requests, std::memory_order_relaxed);
  s.stop_connections.store(stop_connections, std::memory_order_relaxed);
  s.disable_keepalive.store(disable_keepalive, std::memory_order_relaxed);
  s.timer_scale.store(timer_scale, std::memory_order_relaxed);
}

}  // namespace strait::server
