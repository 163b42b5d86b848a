#include "proxy/server/overload.h"

#include <malloc.h>

#include "absl/strings/str_cat.h"
#include "envoy/config/bootstrap/v3/bootstrap.pb.h"
#include "envoy/extensions/resource_monitors/fixed_heap/v3/fixed_heap.pb.h"
#include "proxy/common/log.h"
#include "proxy/common/overload_state.h"
#include "proxy/config/bootstrap.h"

namespace strait::server {

namespace {

constexpr const char* kFixedHeapType = "type.googleapis.com/envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig";

absl::Status fieldError(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

}  // namespace

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
    const auto& rm = om.resource_monitors(i);
    const std::string p = absl::StrCat("overload_manager.resource_monitors[", i, "]");
    if (rm.typed_config().type_url() != kFixedHeapType) {
      // Other monitors (downstream connections, CPU) are not implemented: accepted, inert, named.
      LOG_WARN("%s: resource monitor '%s' (%s) is not implemented; it never reports pressure", p.c_str(),
               rm.name().c_str(), rm.typed_config().type_url().c_str());
      continue;
    }
    envoy::extensions::resource_monitors::fixed_heap::v3::FixedHeapConfig fh;
    if (!rm.typed_config().UnpackTo(&fh)) return fieldError(p + ".typed_config", "cannot decode FixedHeapConfig");
    if (fh.max_heap_size_bytes() == 0) return fieldError(p + ".typed_config.max_heap_size_bytes", "must be positive");
    out->max_heap_bytes = fh.max_heap_size_bytes();
    out->monitor_name = rm.name();
  }
  for (int i = 0; i < om.actions_size(); ++i) {
    const auto& a = om.actions(i);
    const std::string p = absl::StrCat("overload_manager.actions[", i, "]");
    OverloadConfig::Action act;
    act.name = a.name();
    if (a.name() == "envoy.overload_actions.stop_accepting_requests") {
      act.kind = OverloadConfig::Action::Kind::StopRequests;
    } else if (a.name() == "envoy.overload_actions.stop_accepting_connections") {
      act.kind = OverloadConfig::Action::Kind::StopConnections;
    } else if (a.name() == "envoy.overload_actions.shrink_heap") {
      act.kind = OverloadConfig::Action::Kind::ShrinkHeap;
    } else {
      LOG_WARN("%s: overload action '%s' is not implemented; it never fires", p.c_str(), a.name().c_str());
    }
    for (int t = 0; t < a.triggers_size(); ++t) {
      const auto& tr = a.triggers(t);
      const std::string tp = absl::StrCat(p, ".triggers[", t, "]");
      double v = tr.has_threshold() ? tr.threshold().value() : tr.has_scaled() ? tr.scaled().saturation_threshold() : 1.0;
      if (v < 0.0 || v > 1.0) return fieldError(tp, "a threshold is a pressure between 0 and 1");
      if (tr.name() == out->monitor_name) act.threshold = v;
    }
    out->actions.push_back(act);
  }
  return std::shared_ptr<const OverloadConfig>(out);
}

OverloadManager::OverloadManager(std::shared_ptr<const OverloadConfig> config, event::Dispatcher& dispatcher,
                                 stats::Store& store)
    : config_(std::move(config)), dispatcher_(dispatcher), store_(store) {
  // Envoy's names: overload.<monitor>.pressure (percent), overload.<action>.active.
  pressure_ = store_.gauge(absl::StrCat("overload.", config_->monitor_name.empty() ? "fixed_heap" : config_->monitor_name, ".pressure"));
  for (const auto& a : config_->actions) active_.push_back(store_.gauge(absl::StrCat("overload.", a.name, ".active")));
}

void OverloadManager::start() {
  sample();
  timer_ = dispatcher_.createTimer([this] {
    sample();
    timer_->enable(config_->refresh_ms);
  });
  timer_->enable(config_->refresh_ms);
}

void OverloadManager::sample() {
  if (config_->max_heap_bytes == 0) return;
  const struct mallinfo2 mi = mallinfo2();
  const double used = static_cast<double>(mi.uordblks + mi.hblkhd);
  const double pressure = used / static_cast<double>(config_->max_heap_bytes);
  stats::set(store_, pressure_, static_cast<int64_t>(pressure * 100));
  bool stop_requests = false, stop_connections = false;
  for (size_t i = 0; i < config_->actions.size(); ++i) {
    const auto& a = config_->actions[i];
    const bool on = a.kind != OverloadConfig::Action::Kind::Inert && pressure >= a.threshold;
    stats::set(store_, active_[i], on ? 1 : 0);
    if (!on) continue;
    if (a.kind == OverloadConfig::Action::Kind::StopRequests) stop_requests = true;
    if (a.kind == OverloadConfig::Action::Kind::StopConnections) stop_connections = true;
    if (a.kind == OverloadConfig::Action::Kind::ShrinkHeap) malloc_trim(0);
  }
  if (stop_requests != common::overloadState().stop_requests.load(std::memory_order_relaxed) ||
      stop_connections != common::overloadState().stop_connections.load(std::memory_order_relaxed)) {
    LOG_WARN("overload: heap %.0f of %llu bytes (%.0f%%): %s requests, %s connections", used,
             static_cast<unsigned long long>(config_->max_heap_bytes), pressure * 100,
             stop_requests ? "refusing" : "accepting", stop_connections ? "refusing" : "accepting");
  }
  common::overloadState().stop_requests.store(stop_requests, std::memory_order_relaxed);
  common::overloadState().stop_connections.store(stop_connections, std::memory_order_relaxed);
}

}  // namespace strait::server
