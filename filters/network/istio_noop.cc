#include "filters/network/istio_noop.h"

#include <mutex>
#include <set>

#include "absl/strings/str_cat.h"
#include "filters/network/metadata_exchange.h"
#include "google/protobuf/any.pb.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/unknown_field_set.h"
#include "proxy/common/log.h"
#include "proxy/config/typed_struct.h"
#include "proxy/network/connection.h"
#include "proxy/stats/istio_metrics.h"

namespace strait::filters::network {

namespace {

constexpr std::string_view kPrefix = "type.googleapis.com/";
constexpr const char* kMetadataExchange = "type.googleapis.com/envoy.tcp.metadataexchange.config.MetadataExchange";
constexpr const char* kStats = "type.googleapis.com/stats.PluginConfig";
constexpr const char* kAuthn = "type.googleapis.com/io.istio.network.authn.Config";
constexpr const char* kWasm = "type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm";

// Admits every connection and counts it; never reads or writes a byte.
class InertFilter : public config::NetworkReadFilter {
 public:
  InertFilter(stats::Counter seen, bool istio_stats) : seen_(seen), istio_stats_(istio_stats) {}
  bool admit(const strait::network::Connection& conn) const override {
    stats::inc(seen_);
    // Istio's stats filter: with telemetry on, the tcp_proxy after it records Istio's TCP metrics
    // (istio_tcp_stats.h).
    if (istio_stats_ && stats::istio::enabled()) stats::istio::markTcpStats(conn.id());
    return true;
  }

 private:
  stats::Counter seen_;
  bool istio_stats_;
};

// "metadata_exchange", "stats" or "authn" for a type URL this file stands in for, else empty.
std::string_view kindOfType(std::string_view type_url) {
  if (type_url == kMetadataExchange) return "metadata_exchange";
  if (type_url == kStats) return "stats";
  if (type_url == kAuthn) return "authn";
  return {};
}

// Istio's Wasm plugins, by PluginConfig.root_id or name.
// A plugin naming neither (Istio's metadata exchange) is known by the null VM's built-in code instead.
std::string_view kindOfWasmPlugin(std::string_view root_id, std::string_view name, std::string_view runtime,
                                  std::string_view code) {
  for (std::string_view id : {root_id, name}) {
    if (id == "stats_inbound" || id == "stats_outbound" || id == "istio.stats") return "stats";
    if (id == "envoy.wasm.metadata_exchange" || id == "istio.metadata_exchange") return "metadata_exchange";
  }
  if (root_id.empty() && name.empty() && runtime == "envoy.wasm.runtime.null") {
    if (code == "envoy.wasm.stats") return "stats";
    if (code == "envoy.wasm.metadata_exchange") return "metadata_exchange";
  }
  return {};
}

// The length-delimited fields `number` of a serialized message (the last one wins, as protobuf
// merges), without a generated class: Strait declares no TypedStruct/Wasm C++ types of its own here.
bool lengthDelimited(const std::string& bytes, int number, std::string* out) {
  google::protobuf::UnknownFieldSet fields;
  if (!fields.ParseFromString(bytes)) return false;
  bool found = false;
  for (int i = 0; i < fields.field_count(); ++i) {
    const auto& f = fields.field(i);
    if (f.number() == number && f.type() == google::protobuf::UnknownField::TYPE_LENGTH_DELIMITED) {
      *out = f.length_delimited();
      found = true;
    }
  }
  return found;
}

std::string structString(const google::protobuf::Struct& s, const std::string& key) {
  auto it = s.fields().find(key);
  return it != s.fields().end() && it->second.kind_case() == google::protobuf::Value::kStringValue
             ? it->second.string_value()
             : std::string();
}

// The Struct at s.<key>, or null.
const google::protobuf::Struct* structAt(const google::protobuf::Struct& s, const std::string& key) {
  auto it = s.fields().find(key);
  return it != s.fields().end() && it->second.kind_case() == google::protobuf::Value::kStructValue
             ? &it->second.struct_value()
             : nullptr;
}

void logInertOnce(std::string_view kind, const std::string& type_url) {
  static std::mutex mu;
  static std::set<std::string, std::less<>> logged;
  std::lock_guard<std::mutex> lock(mu);
  if (!logged.emplace(kind).second) return;
  LOG_INFO("network filter %s (Istio's %s) is inert in Strait: connections pass through untouched, counted in "
           "istio_inert.%s.cx_total",
           type_url.c_str(), std::string(kind).c_str(), std::string(kind).c_str());
}

}  // namespace

absl::StatusOr<config::NetworkReadFilterConstSharedPtr> createIstioNoopFilter(const google::protobuf::Any& any,
                                                                              const std::string& path,
                                                                              config::TranslationContext& ctx) {
  std::string type_url = any.type_url();
  std::string_view kind = kindOfType(type_url);
  std::string plugin_root_id, plugin_name, plugin_runtime, plugin_code;
  bool wasm = false;
  if (kind.empty() && config::isTypedStruct(any)) {
    auto ts = config::readTypedStruct(any);
    if (!ts) return absl::InvalidArgumentError(path + ".value: cannot decode the TypedStruct");
    const std::string& inner_url = ts->type_url;
    const google::protobuf::Struct& value = ts->value;
    kind = kindOfType(inner_url);
    if (kind.empty() && inner_url == kWasm) {
      wasm = true;
      auto it = value.fields().find("config");
      if (it != value.fields().end() && it->second.kind_case() == google::protobuf::Value::kStructValue) {
        const google::protobuf::Struct& plugin = it->second.struct_value();
        plugin_root_id = structString(plugin, "root_id");
        plugin_name = structString(plugin, "name");
        if (const auto* vm = structAt(plugin, "vm_config")) {
          plugin_runtime = structString(*vm, "runtime");
          const auto* code = structAt(*vm, "code");
          const auto* local = code ? structAt(*code, "local") : nullptr;
          if (local) plugin_code = structString(*local, "inline_string");
        }
      }
    } else if (kind.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ".type_url: unsupported network filter type '", inner_url,
                                                     "' (in a ", type_url.substr(kPrefix.size()), ")"));
    }
    type_url = inner_url;
  } else if (kind.empty() && type_url == kWasm) {
    // Wasm: config = 1 (PluginConfig: name = 1, root_id = 2, vm_config = 3 (VmConfig: runtime = 2,
    // code = 3 (AsyncDataSource: local = 1 (DataSource: inline_string = 3)))).
    wasm = true;
    std::string plugin, vm, code, local;
    if (lengthDelimited(any.value(), 1, &plugin)) {
      lengthDelimited(plugin, 1, &plugin_name);
      lengthDelimited(plugin, 2, &plugin_root_id);
      if (lengthDelimited(plugin, 3, &vm)) {
        lengthDelimited(vm, 2, &plugin_runtime);
        if (lengthDelimited(vm, 3, &code) && lengthDelimited(code, 1, &local)) {
          lengthDelimited(local, 3, &plugin_code);
        }
      }
    }
  }
  if (wasm) {
    kind = kindOfWasmPlugin(plugin_root_id, plugin_name, plugin_runtime, plugin_code);
    if (kind.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ".config: Wasm plugin (root_id '", plugin_root_id, "', name '", plugin_name,
          "') is not supported: Strait runs no Wasm, and stands in only for Istio's stats and metadata exchange plugins"));
    }
  }
  if (kind.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": unsupported network filter type '", type_url, "'"));
  }
  if (kind == "metadata_exchange" && !wasm) {
    // With a protocol it is Istio's TCP metadata exchange itself (metadata_exchange.h); the connections
    // it leaves alone (that ALPN not negotiated) still count as inert.
    auto exchange = peerExchangeConfig(any, path, ctx.store);
    if (!exchange.ok()) return exchange.status();
    if (*exchange) {
      return createPeerExchangeFilter(std::move(*exchange), ctx.store.counter("istio_inert.metadata_exchange.cx_total"));
    }
  }
  logInertOnce(kind, wasm ? absl::StrCat(type_url, " (root_id '", plugin_root_id.empty() ? plugin_code : plugin_root_id, "')")
                          : type_url);
  return config::NetworkReadFilterConstSharedPtr(
      std::make_shared<InertFilter>(ctx.store.counter("istio_inert." + std::string(kind) + ".cx_total"), kind == "stats"));
}

void registerIstioNoopFilters() {
  registerClusterPeerExchange();
  for (std::string_view t : {std::string_view(kMetadataExchange), std::string_view(kStats), std::string_view(kAuthn),
                             config::kUdpaTypedStructType, config::kXdsTypedStructType, std::string_view(kWasm)}) {
    config::registerNetworkReadFilter(std::string(t), createIstioNoopFilter);
  }
}

}  // namespace strait::filters::network
