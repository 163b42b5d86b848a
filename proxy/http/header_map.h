#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/common/pooled.h"

namespace strait::http {

// ASCII lowercase of every byte value (other bytes map to themselves).
struct LowerTable {
  char map[256];
  constexpr LowerTable() : map() {
    for (int c = 0; c < 256; ++c) map[c] = static_cast<char>(c >= 'A' && c <= 'Z' ? c + 32 : c);
  }
};
inline constexpr LowerTable kLowerTable;
inline char lowerAscii(char c) { return kLowerTable.map[static_cast<unsigned char>(c)]; }

// Case-insensitive ASCII comparison of header names. Inline: it sits on the per-header path of both codecs.
inline bool headerNameEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i] != b[i] && lowerAscii(a[i]) != lowerAscii(b[i])) return false;
  }
  return true;
}
std::string toLower(std::string_view s);

// A gRPC content type: application/grpc, or application/grpc+<codec> / application/grpc;<parameters>,
// in any case (the one definition the connection manager, routes, router and health checker share).
inline bool isGrpcContentType(std::string_view ct) {
  constexpr std::string_view kGrpc = "application/grpc";
  if (ct.size() < kGrpc.size() || !headerNameEquals(ct.substr(0, kGrpc.size()), kGrpc)) return false;
  return ct.size() == kGrpc.size() || ct[kGrpc.size()] == '+' || ct[kGrpc.size()] == ';';
}

// An ordered list of headers. Names keep the case they arrived with (HTTP/1 peers that care about case
// get it back when forwarding HTTP/1 to HTTP/1); lookups ignore case; the HTTP/2 codec lowercases on
// output. Pseudo-headers are not stored here: they are fields of RequestHeaders / ResponseHeaders.
class HeaderMap {
 public:
  struct Entry {
    std::string name;
    std::string value;
  };

  void add(std::string_view name, std::string_view value);
  // Replaces every header of that name with one value.
  void set(std::string_view name, std::string_view value);
  // The first value of `name`, or nullptr.
  const std::string* get(std::string_view name) const;
  // Every value of `name` joined with ", " (RFC 9110 list semantics); empty if absent.
  std::string getJoined(std::string_view name) const;
  size_t count(std::string_view name) const;
  // Removes every header of that name; returns how many were removed.
  size_t remove(std::string_view name);
  bool empty() const { return entries_.empty(); }
  size_t size() const { return entries_.size(); }
  // Bytes of names and values (what the header limit counts).
  size_t byteSize() const;
  const std::vector<Entry>& entries() const { return entries_; }
  std::vector<Entry>& entries() { return entries_; }
  void clear() { entries_.clear(); }

 private:
  std::vector<Entry> entries_;
};

// A request: pseudo-headers as fields, the rest in the map. For HTTP/1, `authority` is the Host header
// (which is then not kept in the map) and `scheme` is "http" unless the transport says otherwise.
struct RequestHeaders : HeaderMap, common::Pooled<RequestHeaders> {
  std::string method;     // :method
  std::string path;       // :path (origin-form; absolute-form is split into authority + path)
  std::string authority;  // :authority / Host
  std::string scheme;     // :scheme
  std::string protocol;   // :protocol (extended CONNECT); for HTTP/1 Upgrade requests, the Upgrade token
};
using RequestHeadersPtr = std::unique_ptr<RequestHeaders>;

struct ResponseHeaders : HeaderMap, common::Pooled<ResponseHeaders> {
  uint32_t status = 0;  // :status
};
using ResponseHeadersPtr = std::unique_ptr<ResponseHeaders>;

using TrailerMap = HeaderMap;
using TrailerMapPtr = std::unique_ptr<TrailerMap>;

// The reason phrase HTTP/1 puts after a status code.
const char* statusReason(uint32_t status);

}  // namespace strait::http
