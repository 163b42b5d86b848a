// The access log formatter: Envoy's command operators, parsed once at config time into pieces.
#include <arpa/inet.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/struct.pb.h"
#include "proxy/accesslog/access_log.h"
#include "proxy/common/json.h"
#include "proxy/common/response_flags.h"
#include "proxy/network/address.h"
#include "proxy/network/connection.h"
#include "proxy/network/transport_socket.h"

namespace strait::accesslog {

namespace {

enum class Op : uint8_t {
  Literal,
  StartTime,
  Req,
  Resp,
  Trailer,
  ResponseCode,
  ResponseFlags,
  ResponseFlagsLong,
  ResponseCodeDetails,
  ConnectionTerminationDetails,
  Duration,
  RequestDuration,
  ResponseDuration,
  BytesReceived,
  BytesSent,
  Protocol,
  UpstreamHost,
  UpstreamCluster,
  UpstreamLocalAddress,
  UpstreamTransportFailureReason,
  DownstreamRemoteAddress,
  DownstreamRemoteAddressWithoutPort,
  DownstreamLocalAddress,
  DownstreamLocalAddressWithoutPort,
  DownstreamPeerUriSan,
  DownstreamLocalUriSan,
  RequestedServerName,
  RouteName,
  Hostname,
};

// Operators without an argument, by name.
struct PlainOp {
  std::string_view name;
  Op op;
  bool numeric;  // a JSON value of only this operator is a number
};
constexpr PlainOp kPlainOps[] = {
    {"RESPONSE_CODE", Op::ResponseCode, true},
    {"RESPONSE_FLAGS", Op::ResponseFlags, false},
    {"RESPONSE_FLAGS_LONG", Op::ResponseFlagsLong, false},
    {"RESPONSE_CODE_DETAILS", Op::ResponseCodeDetails, false},
    {"CONNECTION_TERMINATION_DETAILS", Op::ConnectionTerminationDetails, false},
    {"DURATION", Op::Duration, true},
    {"REQUEST_DURATION", Op::RequestDuration, true},
    {"RESPONSE_DURATION", Op::ResponseDuration, true},
    {"BYTES_RECEIVED", Op::BytesReceived, true},
    {"BYTES_SENT", Op::BytesSent, true},
    {"PROTOCOL", Op::Protocol, false},
    {"UPSTREAM_HOST", Op::UpstreamHost, false},
    {"UPSTREAM_CLUSTER", Op::UpstreamCluster, false},
    {"UPSTREAM_CLUSTER_RAW", Op::UpstreamCluster, false},
    {"UPSTREAM_LOCAL_ADDRESS", Op::UpstreamLocalAddress, false},
    {"UPSTREAM_TRANSPORT_FAILURE_REASON", Op::UpstreamTransportFailureReason, false},
    {"DOWNSTREAM_REMOTE_ADDRESS", Op::DownstreamRemoteAddress, false},
    {"DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", Op::DownstreamRemoteAddressWithoutPort, false},
    {"DOWNSTREAM_DIRECT_REMOTE_ADDRESS", Op::DownstreamRemoteAddress, false},
    {"DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT", Op::DownstreamRemoteAddressWithoutPort, false},
    {"DOWNSTREAM_LOCAL_ADDRESS", Op::DownstreamLocalAddress, false},
    {"DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT", Op::DownstreamLocalAddressWithoutPort, false},
    {"DOWNSTREAM_PEER_URI_SAN", Op::DownstreamPeerUriSan, false},
    {"DOWNSTREAM_LOCAL_URI_SAN", Op::DownstreamLocalUriSan, false},
    {"REQUESTED_SERVER_NAME", Op::RequestedServerName, false},
    {"ROUTE_NAME", Op::RouteName, false},
    {"HOSTNAME", Op::Hostname, false},
};

// Where a header operator reads: a pseudo-header field, or the map by (lower-case) name.
enum class HeaderSource : uint8_t { Map, Method, Path, Authority, Scheme, Protocol, Status };

struct HeaderRef {
  HeaderSource source = HeaderSource::Map;
  std::string name;
};

HeaderRef headerRef(std::string_view name) {
  HeaderRef r;
  r.name = absl::AsciiStrToLower(std::string(name));
  if (r.name == ":method") r.source = HeaderSource::Method;
  else if (r.name == ":path") r.source = HeaderSource::Path;
  else if (r.name == ":authority" || r.name == "host") r.source = HeaderSource::Authority;
  else if (r.name == ":scheme") r.source = HeaderSource::Scheme;
  else if (r.name == ":protocol") r.source = HeaderSource::Protocol;
  else if (r.name == ":status") r.source = HeaderSource::Status;
  return r;
}

// A strftime format split at Envoy's fractional-second specifiers (%f = 9 digits, %1f..%9f).
struct TimeSegment {
  std::string strftime_text;  // may be empty
  int frac_digits = 0;        // after the text; 0: none
};

std::string& scratch() {
  thread_local std::string s;
  return s;
}

const std::string& hostName() {
  static const std::string* h = [] {
    char buf[256] = {0};
    if (::gethostname(buf, sizeof(buf) - 1) != 0) buf[0] = '\0';
    return new std::string(buf[0] ? buf : "-");
  }();
  return *h;
}

void appendUint(std::string& out, uint64_t v) {
  char buf[24];
  int n = std::snprintf(buf, sizeof(buf), "%" PRIu64, v);
  out.append(buf, static_cast<size_t>(n));
}

// "1.2.3.4:80", "[::1]:80" (or the IP alone), without a temporary string.
void appendAddress(std::string& out, const network::Address& a, bool with_port) {
  char buf[INET6_ADDRSTRLEN] = {0};
  const void* ip = a.isV6() ? static_cast<const void*>(&reinterpret_cast<const sockaddr_in6*>(a.sockAddr())->sin6_addr)
                            : static_cast<const void*>(&reinterpret_cast<const sockaddr_in*>(a.sockAddr())->sin_addr);
  if (inet_ntop(a.family(), ip, buf, sizeof(buf)) == nullptr) return;
  const bool bracket = with_port && a.isV6();
  if (bracket) out.push_back('[');
  out.append(buf);
  if (bracket) out.push_back(']');
  if (with_port) {
    out.push_back(':');
    appendUint(out, a.port());
  }
}

void appendJoined(std::string& out, const std::vector<std::string>& v) {
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) out.push_back(',');
    out.append(v[i]);
  }
}

// Milliseconds from `from` to `to`, or nothing when `to` is unset.
bool durationMs(std::chrono::steady_clock::time_point from, std::chrono::steady_clock::time_point to, uint64_t& ms) {
  if (to.time_since_epoch().count() == 0 || to < from) return false;
  ms = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(to - from).count());
  return true;
}

}  // namespace

struct Formatter::Piece {
  Op op = Op::Literal;
  bool numeric = false;
  std::string text;  // Literal
  HeaderRef header;  // Req / Resp / Trailer
  HeaderRef alt;     // X?Y
  bool has_alt = false;
  size_t max_len = 0;  // :N (0: no limit)
  std::vector<TimeSegment> time;  // StartTime with a format (empty: Envoy's default)
};

struct Formatter::JsonNode {
  enum class Kind { Raw, Value, Object };
  Kind kind = Kind::Raw;
  std::string key;          // `"key":` already escaped (empty at the root)
  std::string raw;          // Raw: a number, true, false or null
  std::vector<Piece> value;  // Value
  bool typed = false;        // Value: one operator alone; a number where it is numeric, null when absent
  std::vector<JsonNode> children;  // Object
};

namespace {

bool headerValue(const HeaderRef& h, const http::HeaderMap* map, const http::RequestHeaders* req,
                 const http::ResponseHeaders* resp, std::string& out) {
  switch (h.source) {
    case HeaderSource::Map: {
      if (map == nullptr) return false;
      const std::string* v = map->get(h.name);
      if (v == nullptr) return false;
      out.append(*v);
      return true;
    }
    case HeaderSource::Status:
      if (resp == nullptr || resp->status == 0) return false;
      appendUint(out, resp->status);
      return true;
    default: break;
  }
  if (req == nullptr) return false;
  const std::string* f = h.source == HeaderSource::Method      ? &req->method
                         : h.source == HeaderSource::Path      ? &req->path
                         : h.source == HeaderSource::Authority ? &req->authority
                         : h.source == HeaderSource::Scheme    ? &req->scheme
                                                               : &req->protocol;
  if (f->empty()) return false;
  out.append(*f);
  return true;
}

void appendStartTime(std::string& out, const Formatter::Piece& p, std::chrono::system_clock::time_point t) {
  const auto since = t.time_since_epoch();
  const auto secs = std::chrono::duration_cast<std::chrono::seconds>(since);
  const uint64_t nanos = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(since - secs).count());
  const time_t tt = static_cast<time_t>(secs.count());
  // The date part changes once a second: each thread keeps its last one.
  struct Cached {
    time_t sec = -1;
    struct tm tm {};
  };
  thread_local Cached cache;
  if (cache.sec != tt) {
    gmtime_r(&tt, &cache.tm);
    cache.sec = tt;
  }
  if (p.time.empty()) {
    // Envoy's default: 2026-12-07T00:50:01.123Z (the part up to the second made once a second)
    thread_local time_t text_sec = -1;
    thread_local char text[32];
    thread_local size_t text_len = 0;
    if (text_sec != tt) {
      text_len = std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%S", &cache.tm);
      text_sec = tt;
    }
    out.append(text, text_len);
    const unsigned ms = static_cast<unsigned>(nanos / 1000000);
    const char frac[] = {'.', static_cast<char>('0' + ms / 100), static_cast<char>('0' + ms / 10 % 10),
                         static_cast<char>('0' + ms % 10), 'Z'};
    out.append(frac, sizeof(frac));
    return;
  }
  for (const auto& seg : p.time) {
    if (!seg.strftime_text.empty()) {
      char buf[256];
      size_t n = std::strftime(buf, sizeof(buf), seg.strftime_text.c_str(), &cache.tm);
      out.append(buf, n);
    }
    if (seg.frac_digits > 0) {
      char buf[16];
      std::snprintf(buf, sizeof(buf), "%09" PRIu64, nanos);
      out.append(buf, static_cast<size_t>(seg.frac_digits));
    }
  }
}

// Appends the piece's value; false (nothing appended) when it has none.
bool appendValue(const Formatter::Piece& p, const LogContext& c, std::string& out) {
  const size_t before = out.size();
  bool ok = true;
  switch (p.op) {
    case Op::Literal: out.append(p.text); break;
    case Op::StartTime: appendStartTime(out, p, c.start_time); break;
    case Op::Req:
    case Op::Resp:
    case Op::Trailer: {
      const http::HeaderMap* map = p.op == Op::Req    ? static_cast<const http::HeaderMap*>(c.request)
                                   : p.op == Op::Resp ? static_cast<const http::HeaderMap*>(c.response)
                                                      : c.response_trailers;
      const http::ResponseHeaders* resp = p.op == Op::Resp ? c.response : nullptr;
      const http::RequestHeaders* req = p.op == Op::Req ? c.request : nullptr;
      ok = headerValue(p.header, map, req, resp, out) || (p.has_alt && headerValue(p.alt, map, req, resp, out));
      break;
    }
    case Op::ResponseCode: appendUint(out, c.response_code); break;
    case Op::ResponseFlags: common::appendResponseFlags(out, c.response_flags); break;
    case Op::ResponseFlagsLong: common::appendResponseFlags(out, c.response_flags, true); break;
    case Op::ResponseCodeDetails:
      ok = !c.response_code_details.empty();
      out.append(c.response_code_details);
      break;
    case Op::ConnectionTerminationDetails:
      ok = !c.termination_details.empty();
      out.append(c.termination_details);
      break;
    case Op::Duration: {
      uint64_t ms = 0;
      ok = durationMs(c.start, c.end, ms);
      if (ok) appendUint(out, ms);
      break;
    }
    case Op::RequestDuration: {
      uint64_t ms = 0;
      ok = durationMs(c.start, c.request_end, ms);
      if (ok) appendUint(out, ms);
      break;
    }
    case Op::ResponseDuration: {
      uint64_t ms = 0;
      ok = durationMs(c.start, c.response_start, ms);
      if (ok) appendUint(out, ms);
      break;
    }
    case Op::BytesReceived: appendUint(out, c.bytes_received); break;
    case Op::BytesSent: appendUint(out, c.bytes_sent); break;
    case Op::Protocol:
      ok = c.protocol != nullptr;
      if (ok) out.append(c.protocol);
      break;
    case Op::UpstreamHost:
      ok = c.upstream_host != nullptr;
      if (ok) appendAddress(out, *c.upstream_host, true);
      break;
    case Op::UpstreamCluster:
      ok = !c.upstream_cluster.empty();
      out.append(c.upstream_cluster);
      break;
    case Op::UpstreamLocalAddress:
      ok = c.upstream_local != nullptr;
      if (ok) appendAddress(out, *c.upstream_local, true);
      break;
    case Op::UpstreamTransportFailureReason:
      ok = !c.upstream_transport_failure.empty();
      out.append(c.upstream_transport_failure);
      break;
    case Op::DownstreamRemoteAddress:
    case Op::DownstreamRemoteAddressWithoutPort:
      ok = c.downstream != nullptr;
      if (ok) appendAddress(out, c.downstream->remoteAddress(), p.op == Op::DownstreamRemoteAddress);
      break;
    case Op::DownstreamLocalAddress:
    case Op::DownstreamLocalAddressWithoutPort:
      ok = c.downstream != nullptr;
      if (ok) appendAddress(out, c.downstream->localAddress(), p.op == Op::DownstreamLocalAddress);
      break;
    case Op::DownstreamPeerUriSan:
    case Op::DownstreamLocalUriSan: {
      const network::SslInfo* ssl = c.downstream != nullptr ? c.downstream->ssl() : nullptr;
      const std::vector<std::string>* sans = nullptr;
      if (ssl != nullptr) sans = p.op == Op::DownstreamPeerUriSan ? &ssl->uriSanPeerCertificate() : &ssl->uriSanLocalCertificate();
      ok = sans != nullptr && !sans->empty();
      if (ok) appendJoined(out, *sans);
      break;
    }
    case Op::RequestedServerName: {
      const network::SslInfo* ssl = c.downstream != nullptr ? c.downstream->ssl() : nullptr;
      ok = ssl != nullptr && !ssl->sni().empty();
      if (ok) out.append(ssl->sni());
      break;
    }
    case Op::RouteName:
      ok = !c.route_name.empty();
      out.append(c.route_name);
      break;
    case Op::Hostname: out.append(hostName()); break;
  }
  if (!ok) {
    out.resize(before);
    return false;
  }
  if (p.max_len > 0 && out.size() - before > p.max_len) out.resize(before + p.max_len);
  return true;
}

void appendPieces(const std::vector<Formatter::Piece>& pieces, const LogContext& c, bool omit_empty, std::string& out) {
  for (const auto& p : pieces) {
    if (!appendValue(p, c, out) && !omit_empty) out.push_back('-');
  }
}

absl::Status parseTimeFormat(std::string_view fmt, std::vector<TimeSegment>& out) {
  TimeSegment cur;
  for (size_t i = 0; i < fmt.size(); ++i) {
    if (fmt[i] == '%' && i + 1 < fmt.size()) {
      size_t j = i + 1;
      int digits = 9;
      if (fmt[j] >= '1' && fmt[j] <= '9' && j + 1 < fmt.size() && fmt[j + 1] == 'f') {
        digits = fmt[j] - '0';
        ++j;
      }
      if (fmt[j] == 'f') {
        cur.frac_digits = digits;
        out.push_back(std::move(cur));
        cur = TimeSegment{};
        i = j;
        continue;
      }
      cur.strftime_text.push_back('%');
      cur.strftime_text.push_back(fmt[i + 1]);
      ++i;
      continue;
    }
    cur.strftime_text.push_back(fmt[i]);
  }
  if (!cur.strftime_text.empty()) out.push_back(std::move(cur));
  if (out.empty()) out.push_back(TimeSegment{});
  return absl::OkStatus();
}

// One "%NAME%", "%NAME(arg)%" or "%NAME(arg):N%" (without the percent signs).
absl::StatusOr<Formatter::Piece> parseOperator(std::string_view body, const std::string& path) {
  Formatter::Piece p;
  std::string_view name = body, arg;
  bool has_arg = false;
  const size_t open = body.find('(');
  if (open != std::string_view::npos) {
    const size_t close = body.rfind(')');
    if (close == std::string_view::npos || close < open) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": operator %", std::string(body), "% has no closing ')'"));
    }
    name = body.substr(0, open);
    arg = body.substr(open + 1, close - open - 1);
    has_arg = true;
    std::string_view rest = body.substr(close + 1);
    if (!rest.empty()) {
      if (rest[0] != ':' || !absl::SimpleAtoi(std::string(rest.substr(1)), &p.max_len) || p.max_len == 0) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": operator %", std::string(body), "%: the length after ':' must be a positive number"));
      }
    }
  }
  if (name == "REQ" || name == "RESP" || name == "TRAILER") {
    if (!has_arg || arg.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": %", std::string(name), "% needs a header name"));
    p.op = name == "REQ" ? Op::Req : name == "RESP" ? Op::Resp : Op::Trailer;
    const size_t q = arg.find('?');
    if (q != std::string_view::npos) {
      if (q == 0 || q + 1 == arg.size() || arg.find('?', q + 1) != std::string_view::npos) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": %", std::string(body), "%: expected HEADER?ALTERNATIVE"));
      }
      p.header = headerRef(arg.substr(0, q));
      p.alt = headerRef(arg.substr(q + 1));
      p.has_alt = true;
    } else {
      p.header = headerRef(arg);
    }
    return p;
  }
  if (name == "START_TIME") {
    p.op = Op::StartTime;
    if (has_arg && !arg.empty()) {
      if (auto st = parseTimeFormat(arg, p.time); !st.ok()) return st;
    }
    return p;
  }
  if (has_arg) {
    for (const auto& o : kPlainOps) {
      if (o.name == name) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": operator %", std::string(name), "% takes no argument"));
      }
    }
  }
  for (const auto& o : kPlainOps) {
    if (o.name == name) {
      p.op = o.op;
      p.numeric = o.numeric;
      return p;
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(path, ": unknown command operator %", std::string(name), "%"));
}

absl::StatusOr<std::vector<Formatter::Piece>> parseText(std::string_view fmt, const std::string& path) {
  std::vector<Formatter::Piece> out;
  std::string literal;
  auto flush = [&] {
    if (literal.empty()) return;
    Formatter::Piece p;
    p.text = std::move(literal);
    literal.clear();
    out.push_back(std::move(p));
  };
  for (size_t i = 0; i < fmt.size();) {
    if (fmt[i] != '%') {
      literal.push_back(fmt[i++]);
      continue;
    }
    if (i + 1 < fmt.size() && fmt[i + 1] == '%') {  // %% is a percent sign
      literal.push_back('%');
      i += 2;
      continue;
    }
    // The operator ends at the next '%' outside parentheses (START_TIME formats hold '%').
    size_t j = i + 1;
    int depth = 0;
    while (j < fmt.size() && !(fmt[j] == '%' && depth == 0)) {
      if (fmt[j] == '(') ++depth;
      if (fmt[j] == ')' && depth > 0) --depth;
      ++j;
    }
    if (j >= fmt.size()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": unterminated command operator at offset ", i));
    }
    auto p = parseOperator(fmt.substr(i + 1, j - i - 1), path);
    if (!p.ok()) return p.status();
    flush();
    out.push_back(std::move(*p));
    i = j + 1;
  }
  flush();
  return out;
}

std::string numberText(double d) {
  char buf[32];
  if (d == static_cast<double>(static_cast<int64_t>(d)) && std::abs(d) < 1e15) {
    std::snprintf(buf, sizeof(buf), "%" PRId64, static_cast<int64_t>(d));
  } else {
    std::snprintf(buf, sizeof(buf), "%.17g", d);
  }
  return buf;
}

absl::Status buildJson(const google::protobuf::Struct& s, const std::string& path, Formatter::JsonNode& node, int depth) {
  if (depth > 8) return absl::InvalidArgumentError(path + ": nested too deeply");
  node.kind = Formatter::JsonNode::Kind::Object;
  std::vector<std::string> keys;
  for (const auto& [k, v] : s.fields()) keys.push_back(k);
  std::sort(keys.begin(), keys.end());  // a stable order (a Struct's map has none)
  for (const auto& k : keys) {
    const auto& v = s.fields().at(k);
    const std::string vp = absl::StrCat(path, ".", k);
    Formatter::JsonNode child;
    child.key = common::jsonString(k) + ":";
    switch (v.kind_case()) {
      case google::protobuf::Value::kStringValue: {
        auto pieces = parseText(v.string_value(), vp);
        if (!pieces.ok()) return pieces.status();
        child.kind = Formatter::JsonNode::Kind::Value;
        child.value = std::move(*pieces);
        child.typed = child.value.size() == 1 && child.value[0].op != Op::Literal;
        break;
      }
      case google::protobuf::Value::kNumberValue: child.raw = numberText(v.number_value()); break;
      case google::protobuf::Value::kBoolValue: child.raw = v.bool_value() ? "true" : "false"; break;
      case google::protobuf::Value::kNullValue: child.raw = "null"; break;
      case google::protobuf::Value::kStructValue:
        if (auto st = buildJson(v.struct_value(), vp, child, depth + 1); !st.ok()) return st;
        break;
      default: return absl::InvalidArgumentError(vp + ": lists are not supported in json_format");
    }
    node.children.push_back(std::move(child));
  }
  return absl::OkStatus();
}

// Appends the node's value; false when it is absent (a lone operator with no value).
bool appendJson(const Formatter::JsonNode& n, const LogContext& c, bool omit_empty, std::string& out) {
  switch (n.kind) {
    case Formatter::JsonNode::Kind::Raw: out.append(n.raw); return true;
    case Formatter::JsonNode::Kind::Value: {
      if (n.typed) {
        const Formatter::Piece& p = n.value[0];
        if (p.numeric) {
          const size_t before = out.size();
          if (appendValue(p, c, out)) return true;
          out.resize(before);
          out.append("null");
          return false;
        }
        std::string& s = scratch();
        s.clear();
        if (!appendValue(p, c, s)) {
          out.append("null");
          return false;
        }
        common::appendJsonString(out, s);
        return true;
      }
      std::string& s = scratch();
      s.clear();
      appendPieces(n.value, c, false, s);
      common::appendJsonString(out, s);
      return true;
    }
    case Formatter::JsonNode::Kind::Object: {
      out.push_back('{');
      bool first = true;
      for (const auto& child : n.children) {
        const size_t mark = out.size();
        if (!first) out.push_back(',');
        out.append(child.key);
        if (!appendJson(child, c, omit_empty, out) && omit_empty) {
          out.resize(mark);
          continue;
        }
        first = false;
      }
      out.push_back('}');
      return true;
    }
  }
  return true;
}

}  // namespace

Formatter::Formatter() = default;
Formatter::~Formatter() = default;

absl::StatusOr<std::unique_ptr<Formatter>> Formatter::text(std::string_view format, bool omit_empty,
                                                           const std::string& path) {
  auto pieces = parseText(format, path);
  if (!pieces.ok()) return pieces.status();
  std::unique_ptr<Formatter> f(new Formatter);
  f->pieces_ = std::move(*pieces);
  f->omit_empty_ = omit_empty;
  return f;
}

absl::StatusOr<std::unique_ptr<Formatter>> Formatter::json(const google::protobuf::Struct& format, bool omit_empty,
                                                           const std::string& path) {
  std::unique_ptr<Formatter> f(new Formatter);
  f->json_ = std::make_unique<JsonNode>();
  if (auto st = buildJson(format, path, *f->json_, 0); !st.ok()) return st;
  f->omit_empty_ = omit_empty;
  return f;
}

std::unique_ptr<Formatter> Formatter::envoyDefault() {
  static constexpr std::string_view kDefault =
      "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% "
      "%RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "
      "\"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" "
      "\"%UPSTREAM_HOST%\"\n";
  return std::move(*text(kDefault, false, "default format"));
}

void Formatter::format(const LogContext& ctx, std::string& out) const {
  if (json_) {
    appendJson(*json_, ctx, omit_empty_, out);
    out.push_back('\n');
    return;
  }
  appendPieces(pieces_, ctx, omit_empty_, out);
}

}  // namespace strait::accesslog
