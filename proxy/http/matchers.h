#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "proxy/http/header_map.h"

namespace envoy::type::matcher::v3 {
class StringMatcher;
}
namespace envoy::config::route::v3 {
class HeaderMatcher;
}
namespace re2 {
class RE2;
}

namespace strait::http {

// Envoy's string and header matchers, translated once at config time (route tables, RBAC). Matching
// never allocates and never reads the proto.

// ASCII case folding for header names, schemes and route paths (no locale).
inline char lowerChar(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }
std::string lowerString(std::string_view s);
// `lower` is already lower case.
bool equalsLower(std::string_view lower, std::string_view s);
inline bool startsWithLower(std::string_view s, std::string_view lower_prefix) {
  return s.size() >= lower_prefix.size() && equalsLower(lower_prefix, s.substr(0, lower_prefix.size()));
}

// RE2 program size above which a regex is rejected (Istio raises Envoy's limit to this value).
inline constexpr int kMaxRegexProgramSize = 32768;

// Compiles a safe_regex. Errors name `path`: "<path>: invalid regex: ...".
absl::StatusOr<std::shared_ptr<const re2::RE2>> compileRegex(const std::string& pattern, const std::string& path);

// True when `name` is an RFC 9110 token, or ':' followed by one (a pseudo-header).
bool isValidHeaderName(std::string_view name);

// envoy.type.matcher.v3.StringMatcher.
struct StringMatch {
  enum class Type { Exact, Prefix, Suffix, Contains, Regex };
  Type type = Type::Exact;
  std::string value;  // lower case when ignore_case
  bool ignore_case = false;
  std::shared_ptr<const re2::RE2> regex;  // Type::Regex: a full match is needed

  bool match(std::string_view v) const;
};

// Errors name the field: "<path>.safe_regex.regex: invalid regex: ...", "<path>.prefix: must not be empty".
absl::Status buildStringMatch(const envoy::type::matcher::v3::StringMatcher& m, const std::string& path,
                              StringMatch& out);

// envoy.config.route.v3.HeaderMatcher. Names ignore case; ":method", ":path", ":authority" (also
// "host"), ":scheme" and ":protocol" read a request's pseudo-header fields, ":status" a response's; repeated headers are joined with ","
// (Envoy); no specifier means "present"; a missing header fails every matcher except present_match:
// false (or an inverted present_match: true) unless treat_missing_header_as_empty.
struct HeaderMatch {
  enum class Source { Map, Method, Path, Authority, Scheme, Protocol, Status };
  enum class Type { Present, Range, String };
  std::string name;  // lower case
  Source source = Source::Map;
  Type type = Type::Present;
  bool present = true;  // Type::Present: true matches a present header, false an absent one
  int64_t range_start = 0;
  int64_t range_end = 0;
  StringMatch string_match;
  bool invert = false;
  bool treat_missing_as_empty = false;

  bool match(const RequestHeaders& headers) const;
  // A response (route retry_policy.retriable_headers): ":status" and the headers; request pseudo-headers
  // are absent.
  bool match(const ResponseHeaders& headers) const;

 private:
  bool matchValue(bool found, std::string_view value) const;
};

// `path` is the HeaderMatcher's own path ("...headers[0]"); errors name its fields.
absl::Status buildHeaderMatch(const envoy::config::route::v3::HeaderMatcher& m, const std::string& path,
                              HeaderMatch& out);

}  // namespace strait::http
