#include "proxy/tracing/trace_context.h"

#include "proxy/http/header_map.h"

namespace strait::tracing {

namespace {

constexpr char kHex[] = "0123456789abcdef";

// -1 unless `c` is a hex digit (upper case only when `any_case`).
int hexDigit(char c, bool any_case) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (any_case && c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Up to 16 hex digits into `out`.
bool parseHex64(std::string_view v, bool any_case, uint64_t& out) {
  if (v.empty() || v.size() > 16) return false;
  uint64_t x = 0;
  for (char c : v) {
    const int d = hexDigit(c, any_case);
    if (d < 0) return false;
    x = (x << 4) | static_cast<uint64_t>(d);
  }
  out = x;
  return true;
}

// A B3 trace id: 16 or 32 hex digits, not all zero.
bool parseB3TraceId(std::string_view v, uint64_t& high, uint64_t& low) {
  if (v.size() == 32) {
    if (!parseHex64(v.substr(0, 16), true, high) || !parseHex64(v.substr(16), true, low)) return false;
  } else if (v.size() == 16) {
    high = 0;
    if (!parseHex64(v, true, low)) return false;
  } else {
    return false;
  }
  return (high | low) != 0;
}

bool parseB3SpanId(std::string_view v, uint64_t& id) { return v.size() == 16 && parseHex64(v, true, id) && id != 0; }

// b3 sampling states: 0, 1, d (debug, which implies sampled).
bool parseB3Sampling(std::string_view v, Sampled& s, bool& debug) {
  if (v == "1") s = Sampled::Yes;
  else if (v == "0") s = Sampled::No;
  else if (v == "d") { s = Sampled::Yes; debug = true; }
  else return false;
  return true;
}

void putHex64(uint64_t v, char* out) {
  for (int i = 0; i < 16; ++i) out[i] = kHex[(v >> (60 - 4 * i)) & 0xf];
}

bool nameIs(const std::string& name, std::string_view want) { return http::headerNameEquals(name, want); }

}  // namespace

std::optional<SpanContext> parseTraceparent(std::string_view v) {
  // version "-" trace-id "-" parent-id "-" flags: 2 + 1 + 32 + 1 + 16 + 1 + 2.
  if (v.size() < kTraceparentLen) return std::nullopt;
  uint64_t version = 0;
  if (!parseHex64(v.substr(0, 2), false, version) || version == 0xff) return std::nullopt;
  if (version == 0 && v.size() != kTraceparentLen) return std::nullopt;
  if (v.size() > kTraceparentLen && v[kTraceparentLen] != '-') return std::nullopt;
  if (v[2] != '-' || v[35] != '-' || v[52] != '-') return std::nullopt;
  SpanContext c;
  uint64_t flags = 0;
  if (!parseHex64(v.substr(3, 16), false, c.trace_id_high) || !parseHex64(v.substr(19, 16), false, c.trace_id_low) ||
      !parseHex64(v.substr(36, 16), false, c.span_id) || !parseHex64(v.substr(53, 2), false, flags)) {
    return std::nullopt;
  }
  if (!c.valid()) return std::nullopt;  // an all-zero trace id or parent id is invalid
  c.sampled = (flags & 1) ? Sampled::Yes : Sampled::No;
  c.format = ContextFormat::W3c;
  return c;
}

std::optional<SpanContext> parseB3Single(std::string_view v, Sampled* sampling_only) {
  if (v.size() == 1) {
    Sampled s;
    bool debug = false;
    if (sampling_only != nullptr && parseB3Sampling(v, s, debug)) *sampling_only = s;
    return std::nullopt;
  }
  std::string_view parts[4];
  size_t n = 0;
  while (true) {
    const size_t dash = v.find('-');
    if (n == 4) return std::nullopt;
    parts[n++] = v.substr(0, dash);
    if (dash == std::string_view::npos) break;
    v.remove_prefix(dash + 1);
  }
  if (n < 2) return std::nullopt;
  SpanContext c;
  if (!parseB3TraceId(parts[0], c.trace_id_high, c.trace_id_low) || !parseB3SpanId(parts[1], c.span_id)) {
    return std::nullopt;
  }
  if (n >= 3 && !parseB3Sampling(parts[2], c.sampled, c.debug)) return std::nullopt;
  uint64_t parent = 0;
  if (n == 4 && !parseB3SpanId(parts[3], parent)) return std::nullopt;
  c.format = ContextFormat::B3Single;
  return c;
}

std::optional<SpanContext> parseB3Multi(const std::string* trace_id, const std::string* span_id,
                                        const std::string* sampled, const std::string* flags) {
  if (trace_id == nullptr || span_id == nullptr) return std::nullopt;
  SpanContext c;
  if (!parseB3TraceId(*trace_id, c.trace_id_high, c.trace_id_low) || !parseB3SpanId(*span_id, c.span_id)) {
    return std::nullopt;
  }
  if (sampled != nullptr) {
    // "true"/"false" are what early B3 senders wrote.
    if (*sampled == "1" || *sampled == "true") c.sampled = Sampled::Yes;
    else if (*sampled == "0" || *sampled == "false") c.sampled = Sampled::No;
  }
  if (flags != nullptr && *flags == "1") {
    c.debug = true;
    c.sampled = Sampled::Yes;
  }
  c.format = ContextFormat::B3Multi;
  return c;
}

TraceHeaders scanTraceHeaders(const http::RequestHeaders& h) {
  TraceHeaders t;
  for (const auto& e : h.entries()) {
    const std::string& n = e.name;
    switch (n.size()) {
      case 2: if (nameIs(n, "b3")) t.b3 = &e.value; break;
      case 10: if (nameIs(n, "x-b3-flags")) t.b3_flags = &e.value; break;
      case 11:
        if (nameIs(n, "traceparent")) t.traceparent = &e.value;
        else if (nameIs(n, "x-b3-spanid")) t.b3_span_id = &e.value;
        break;
      case 12:
        if (nameIs(n, "x-b3-traceid")) t.b3_trace_id = &e.value;
        else if (nameIs(n, "x-b3-sampled")) t.b3_sampled = &e.value;
        else if (nameIs(n, "x-request-id")) t.request_id = &e.value;
        break;
      case 17:
        if (nameIs(n, "x-b3-parentspanid")) t.b3_parent_span_id = &e.value;
        else if (nameIs(n, "x-client-trace-id")) t.client_trace_id = true;
        break;
      case 19: if (nameIs(n, "x-envoy-force-trace")) t.force_trace = true; break;
      default: break;
    }
  }
  return t;
}

std::optional<SpanContext> extract(const TraceHeaders& t, Sampled* sampling_only) {
  if (t.traceparent != nullptr) {
    if (auto c = parseTraceparent(*t.traceparent)) return c;
  }
  if (t.b3 != nullptr) {
    if (auto c = parseB3Single(*t.b3, sampling_only)) return c;
  }
  if (auto c = parseB3Multi(t.b3_trace_id, t.b3_span_id, t.b3_sampled, t.b3_flags)) return c;
  if (sampling_only != nullptr && t.b3_trace_id == nullptr && t.b3_sampled != nullptr) {
    if (*t.b3_sampled == "1") *sampling_only = Sampled::Yes;
    if (*t.b3_sampled == "0") *sampling_only = Sampled::No;
  }
  return std::nullopt;
}

size_t formatHexId(uint64_t high, uint64_t low, bool force128, char* out) {
  if (high != 0 || force128) {
    putHex64(high, out);
    putHex64(low, out + 16);
    return 32;
  }
  putHex64(low, out);
  return 16;
}

size_t formatTraceparent(uint64_t trace_high, uint64_t trace_low, uint64_t span_id, bool sampled, char* out) {
  out[0] = '0';
  out[1] = '0';
  out[2] = '-';
  formatHexId(trace_high, trace_low, true, out + 3);
  out[35] = '-';
  putHex64(span_id, out + 36);
  out[52] = '-';
  out[53] = '0';
  out[54] = sampled ? '1' : '0';
  return kTraceparentLen;
}

uint64_t requestIdHash(std::string_view request_id) {
  uint64_t h = 14695981039346656037ULL;
  for (unsigned char c : request_id) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

SamplingDecision decideSampling(const SamplingConfig& c, const SamplingInput& in) {
  SamplingDecision d;
  if (in.force_trace) {
    d.reason = TraceReason::Forced;
  } else if (in.client_trace_id && (in.overall_random / 10000) % 10000 < c.client) {
    d.reason = TraceReason::Client;
  } else if (in.request_id_hash % 10000 < c.random) {
    d.reason = TraceReason::Random;
  }
  if (d.reason != TraceReason::NotTraceable && in.overall_random % 10000 >= c.overall) {
    d.reason = TraceReason::NotTraceable;
  }
  switch (in.incoming) {
    case Sampled::Yes: d.sampled = true; break;
    case Sampled::No: d.sampled = d.reason == TraceReason::Forced; break;
    case Sampled::Deferred: d.sampled = d.reason != TraceReason::NotTraceable; break;
  }
  return d;
}

}  // namespace strait::tracing
