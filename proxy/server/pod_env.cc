#include "proxy/server/pod_env.h"

#include <cmath>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/json_util.h"

namespace strait::server {

namespace {

using google::protobuf::Struct;
using google::protobuf::Value;

absl::Status envError(const std::string& var, const std::string& key, const std::string& what) {
  return absl::InvalidArgumentError(
      key.empty() ? absl::StrCat(var, ": ", what) : absl::StrCat(var, ": ", key, ": ", what));
}

absl::StatusOr<Struct> parseObject(std::string_view json, const std::string& var) {
  Struct out;
  auto st = google::protobuf::util::JsonStringToMessage(std::string(json), &out);
  if (!st.ok()) return envError(var, "", absl::StrCat("not a JSON object: ", std::string(st.message())));
  return out;
}

// Kubernetes' IntOrString port: a number, or digits in a string. A named port must have been resolved
// to its number by whoever wrote the variable (the injector knows the container's ports; we do not).
absl::StatusOr<uint16_t> portOf(const Value& v, const std::string& var, const std::string& key) {
  double d = -1;
  if (v.kind_case() == Value::kNumberValue) {
    d = v.number_value();
  } else if (v.kind_case() == Value::kStringValue) {
    uint32_t n = 0;
    if (!absl::SimpleAtoi(v.string_value(), &n)) {
      return envError(var, key, absl::StrCat("'", v.string_value(), "' is not a port number (a named port must be resolved to its number)"));
    }
    d = n;
  }
  if (d < 1 || d > 65535 || std::floor(d) != d) return envError(var, key, "must be a port number from 1 to 65535");
  return static_cast<uint16_t>(d);
}

absl::StatusOr<std::string> stringOf(const Value& v, const std::string& var, const std::string& key) {
  if (v.kind_case() != Value::kStringValue) return envError(var, key, "must be a string");
  return v.string_value();
}

// A request path for an HTTP request line: no spaces, CR or LF; a leading '/' added; empty: `empty`.
absl::StatusOr<std::string> pathOf(const Value& v, const std::string& var, const std::string& key, const char* empty) {
  auto s = stringOf(v, var, key);
  if (!s.ok()) return s.status();
  if (s->find_first_of("\r\n ") != std::string::npos) return envError(var, key, "must not hold spaces, CR or LF");
  return s->empty() ? std::string(empty) : (s->front() == '/' ? *s : "/" + *s);
}

// The probe's target: 127.0.0.1 (the pod's loopback: Strait shares the application's network
// namespace), or the handler's host, which must be an IP address (no name lookups on the main loop).
absl::StatusOr<network::Address> target(const Struct& handler, uint16_t port, const std::string& var,
                                        const std::string& key) {
  std::string host = "127.0.0.1";
  if (auto it = handler.fields().find("host"); it != handler.fields().end()) {
    auto h = stringOf(it->second, var, key + ".host");
    if (!h.ok()) return h.status();
    if (!h->empty() && *h != "localhost") host = *h;
  }
  auto a = network::Address::parse(host, port);
  if (!a) return envError(var, key + ".host", absl::StrCat("'", host, "' is not an IP address"));
  return *a;
}

// The probe's address from its (required) port and optional host.
absl::Status setTarget(const Struct& h, std::optional<uint16_t> port, AppProbe& p, const std::string& var,
                       const std::string& key) {
  if (!port) return envError(var, key + ".port", "is required");
  auto a = target(h, *port, var, key);
  if (!a.ok()) return a.status();
  p.address = *a;
  return absl::OkStatus();
}

absl::Status parseHttpGet(const Struct& h, AppProbe& p, const std::string& var, const std::string& key) {
  p.kind = AppProbe::Kind::Http;
  std::optional<uint16_t> port;
  for (const auto& [name, v] : h.fields()) {
    const std::string k = key + "." + name;
    if (name == "port") {
      auto n = portOf(v, var, k);
      if (!n.ok()) return n.status();
      port = *n;
    } else if (name == "path") {
      auto path = pathOf(v, var, k, "/");
      if (!path.ok()) return path.status();
      p.http_path = *path;
    } else if (name == "scheme") {
      auto s = stringOf(v, var, k);
      if (!s.ok()) return s.status();
      const std::string u = absl::AsciiStrToUpper(*s);
      if (u != "HTTP" && u != "HTTPS") return envError(var, k, absl::StrCat("'", *s, "' is not HTTP or HTTPS"));
      p.https = u == "HTTPS";
    } else if (name == "httpHeaders") {
      if (v.kind_case() != Value::kListValue) return envError(var, k, "must be a list of {name, value}");
      for (int i = 0; i < v.list_value().values_size(); ++i) {
        const std::string hk = absl::StrCat(k, "[", i, "]");
        const Value& e = v.list_value().values(i);
        if (e.kind_case() != Value::kStructValue) return envError(var, hk, "must be an object {name, value}");
        const auto& f = e.struct_value().fields();
        auto n = f.find("name");
        auto val = f.find("value");
        if (n == f.end() || n->second.kind_case() != Value::kStringValue || n->second.string_value().empty()) {
          return envError(var, hk + ".name", "is required (a non-empty string)");
        }
        std::string value;
        if (val != f.end()) {
          auto s = stringOf(val->second, var, hk + ".value");
          if (!s.ok()) return s.status();
          value = *s;
        }
        const std::string& hn = n->second.string_value();
        if (hn.find_first_of("\r\n: ") != std::string::npos || value.find_first_of("\r\n") != std::string::npos) {
          return envError(var, hk, "CR, LF, space or ':' in a header");
        }
        if (absl::EqualsIgnoreCase(hn, "host")) {
          p.host_header = value;
        } else {
          p.headers.emplace_back(absl::AsciiStrToLower(hn), value);
        }
      }
    } else if (name != "host") {
      return envError(var, k, "unknown field (httpGet has path, port, scheme, host, httpHeaders)");
    }
  }
  return setTarget(h, port, p, var, key);
}

absl::Status parsePortOnly(const Struct& h, AppProbe& p, const std::string& var, const std::string& key,
                           const std::set<std::string>& allowed) {
  std::optional<uint16_t> port;
  for (const auto& [name, v] : h.fields()) {
    const std::string k = key + "." + name;
    if (name == "port") {
      auto n = portOf(v, var, k);
      if (!n.ok()) return n.status();
      port = *n;
    } else if (name == "service" && allowed.count(name)) {
      auto s = stringOf(v, var, k);
      if (!s.ok()) return s.status();
      p.grpc_service = *s;
    } else if (!allowed.count(name)) {
      return envError(var, k, "unknown field");
    }
  }
  return setTarget(h, port, p, var, key);
}

// Fields of a Kubernetes probe that are the kubelet's business (it schedules and counts), passed
// along harmlessly when an injector copies the whole probe.
const std::set<std::string>& kubeletFields() {
  static const auto* s = new std::set<std::string>{"initialDelaySeconds", "periodSeconds", "successThreshold",
                                                   "failureThreshold", "terminationGracePeriodSeconds"};
  return *s;
}

bool envTruthy(const Value& v) {
  if (v.kind_case() == Value::kBoolValue) return v.bool_value();
  return v.kind_case() == Value::kStringValue && absl::EqualsIgnoreCase(v.string_value(), "true");
}

}  // namespace

absl::StatusOr<AppProbes> parseAppProbes(std::string_view json, const std::string& var) {
  auto root = parseObject(json, var);
  if (!root.ok()) return root.status();
  AppProbes out;
  for (const auto& [path, v] : root->fields()) {
    const std::string key = absl::StrCat("\"", path, "\"");
    if (!absl::StartsWith(path, "/app-health/") || path.find_first_of("?# \r\n") != std::string::npos) {
      return envError(var, key, "a probe path must start with /app-health/ (and have no query)");
    }
    if (v.kind_case() != Value::kStructValue) return envError(var, key, "must be an object (a probe handler)");
    AppProbe p;
    int handlers = 0;
    for (const auto& [name, f] : v.struct_value().fields()) {
      const std::string k = key + "." + name;
      absl::Status st;
      if (name == "httpGet" || name == "tcpSocket" || name == "grpc") {
        ++handlers;
        if (f.kind_case() != Value::kStructValue) return envError(var, k, "must be an object");
        if (name == "httpGet") {
          st = parseHttpGet(f.struct_value(), p, var, k);
        } else if (name == "tcpSocket") {
          p.kind = AppProbe::Kind::Tcp;
          st = parsePortOnly(f.struct_value(), p, var, k, {"port", "host"});
        } else {
          p.kind = AppProbe::Kind::Grpc;
          st = parsePortOnly(f.struct_value(), p, var, k, {"port", "service"});
        }
      } else if (name == "timeoutSeconds") {
        if (f.kind_case() != Value::kNumberValue || f.number_value() < 1 || f.number_value() > 3600 ||
            std::floor(f.number_value()) != f.number_value()) {
          return envError(var, k, "must be a whole number of seconds from 1 to 3600");
        }
        p.timeout_ms = static_cast<uint64_t>(f.number_value()) * 1000;
      } else if (!kubeletFields().count(name)) {
        return envError(var, k, "unknown field (a probe has httpGet, tcpSocket or grpc, and timeoutSeconds)");
      }
      if (!st.ok()) return st;
    }
    if (handlers != 1) return envError(var, key, "needs exactly one of httpGet, tcpSocket, grpc");
    out.emplace(path, std::move(p));
  }
  return out;
}

absl::StatusOr<std::optional<PrometheusScrape>> parsePrometheusScrape(std::string_view json, const std::string& var) {
  auto root = parseObject(json, var);
  if (!root.ok()) return root.status();
  PrometheusScrape s;
  bool scrape = false;
  for (const auto& [name, v] : root->fields()) {
    if (name == "scrape") {
      scrape = envTruthy(v);
    } else if (name == "path") {
      auto path = pathOf(v, var, name, "/metrics");
      if (!path.ok()) return path.status();
      s.path = *path;
    } else if (name == "port") {
      auto n = portOf(v, var, name);
      if (!n.ok()) return n.status();
      s.port = *n;
    } else {
      return envError(var, name, "unknown field (scrape, path, port)");
    }
  }
  if (!scrape) return std::optional<PrometheusScrape>();
  return std::optional<PrometheusScrape>(s);
}

absl::StatusOr<std::string> nodeMetadataJson(const std::vector<std::string_view>& environ) {
  // Applied in this order, so later families win: ISTIO_META_, ISTIO_METAJSON_, STRAIT_META_, STRAIT_METAJSON_.
  static constexpr std::string_view kPrefixes[] = {"ISTIO_META_", "ISTIO_METAJSON_", "STRAIT_META_", "STRAIT_METAJSON_"};
  Struct md;
  bool any = false;
  for (std::string_view prefix : kPrefixes) {
    const bool json = prefix.find("JSON") != std::string_view::npos;
    for (std::string_view e : environ) {
      if (!e.starts_with(prefix)) continue;
      const size_t eq = e.find('=');
      if (eq == std::string_view::npos || eq == prefix.size()) continue;
      const std::string var(e.substr(0, eq));
      const std::string key(e.substr(prefix.size(), eq - prefix.size()));
      const std::string_view value = e.substr(eq + 1);
      Value v;
      if (json) {
        auto obj = parseObject(value, var);
        if (!obj.ok()) return obj.status();
        *v.mutable_struct_value() = std::move(*obj);
      } else {
        v.set_string_value(std::string(value));
      }
      (*md.mutable_fields())[key] = std::move(v);
      any = true;
    }
  }
  if (!any) return std::string();
  std::string out;
  auto st = google::protobuf::util::MessageToJsonString(md, &out);
  if (!st.ok()) return absl::InternalError(std::string(st.message()));
  return out;
}

absl::StatusOr<PodEnv> readPodEnv(const std::vector<std::string_view>& environ) {
  PodEnv env;
  // The Strait name wins over Istio's when both are set.
  auto lookup = [&](std::string_view strait_name, std::string_view istio_name) -> std::optional<std::pair<std::string, std::string_view>> {
    std::optional<std::pair<std::string, std::string_view>> found;
    for (std::string_view name : {istio_name, strait_name}) {
      for (std::string_view e : environ) {
        if (e.size() > name.size() && e.starts_with(name) && e[name.size()] == '=') {
          found = std::make_pair(std::string(name), e.substr(name.size() + 1));
        }
      }
    }
    return found;
  };
  if (auto v = lookup("STRAIT_KUBE_APP_PROBERS", "ISTIO_KUBE_APP_PROBERS"); v && !v->second.empty()) {
    auto p = parseAppProbes(v->second, v->first);
    if (!p.ok()) return p.status();
    env.probes = std::move(*p);
  }
  if (auto v = lookup("STRAIT_PROMETHEUS_SCRAPE", "ISTIO_PROMETHEUS_ANNOTATIONS"); v && !v->second.empty()) {
    auto s = parsePrometheusScrape(v->second, v->first);
    if (!s.ok()) return s.status();
    env.scrape = *s;
  }
  auto md = nodeMetadataJson(environ);
  if (!md.ok()) return md.status();
  env.node_metadata_json = std::move(*md);
  return env;
}

}  // namespace strait::server
