#pragma once

// The byte checks of the listener's protocol sniffer (worker.cc's ProtocolSniffer, Envoy's
// http_inspector): pure functions of the bytes seen so far, kept apart so the fuzz target
// (tests/fuzz/http_inspector_fuzz.cc) drives exactly what the listener runs.

#include <algorithm>
#include <cstddef>
#include <string_view>

#include "proxy/common/buffer.h"

namespace strait::server::sniff {

// No: not this protocol; Yes: this protocol; NeedMore: the bytes so far are a prefix of it.
enum class Verdict { No, Yes, NeedMore };

// The HTTP/2 connection preface (prior knowledge), on the first bytes.
inline Verdict inspectH2(std::string_view v) {
  constexpr std::string_view preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  const size_t n = std::min(v.size(), preface.size());
  if (v.substr(0, n) != preface.substr(0, n)) return Verdict::No;
  return n == preface.size() ? Verdict::Yes : Verdict::NeedMore;
}

// An HTTP/1 request: one of the methods http_inspector knows, followed by a space.
inline Verdict inspectH1(std::string_view v) {
  static constexpr std::string_view kMethods[] = {"GET ",     "POST ",    "PUT ",   "DELETE ", "HEAD ",
                                                  "OPTIONS ", "PATCH ",   "CONNECT ", "TRACE "};
  bool prefix = false;
  for (auto m : kMethods) {
    const size_t n = std::min(v.size(), m.size());
    if (v.substr(0, n) != m.substr(0, n)) continue;
    if (n == m.size()) return Verdict::Yes;
    prefix = true;
  }
  return prefix ? Verdict::NeedMore : Verdict::No;
}

// Whether the request line (as far as it has arrived, up to 2 KiB) ends in HTTP/1.0; an HTTP/1 request
// whose line is not complete yet counts as HTTP/1.1.
inline bool isHttp10(const common::Buffer& data) {
  char line[2048];
  const size_t n = std::min<size_t>(data.length(), sizeof(line));
  data.copyOut(0, n, line);
  const std::string_view v(line, n);
  size_t end = v.find('\n');
  if (end == std::string_view::npos) return false;
  if (end > 0 && v[end - 1] == '\r') --end;
  return end >= 9 && v.substr(end - 9, 9) == " HTTP/1.0";
}

}  // namespace strait::server::sniff
