#include "proxy/http/matchers.h"

#include <re2/re2.h>

#include <charconv>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "envoy/config/route/v3/route_components.pb.h"
#include "envoy/type/matcher/v3/string.pb.h"

namespace strait::http {

namespace route_v3 = envoy::config::route::v3;
namespace matcher_v3 = envoy::type::matcher::v3;

// HeaderMatcher's deprecated forms (prefix_match, suffix_match, safe_regex_match) are still honoured.
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

std::string lowerString(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = lowerChar(c);
  return out;
}

bool equalsLower(std::string_view lower, std::string_view s) {
  if (lower.size() != s.size()) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    if (lower[i] != lowerChar(s[i])) return false;
  }
  return true;
}

namespace {

absl::Status fieldError(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

bool endsWithLower(std::string_view s, std::string_view lower_suffix) {
  return s.size() >= lower_suffix.size() && equalsLower(lower_suffix, s.substr(s.size() - lower_suffix.size()));
}

bool containsLower(std::string_view s, std::string_view lower_needle) {
  if (lower_needle.size() > s.size()) return false;
  for (size_t i = 0; i + lower_needle.size() <= s.size(); ++i) {
    if (equalsLower(lower_needle, s.substr(i, lower_needle.size()))) return true;
  }
  return false;
}

// RFC 9110 token characters.
bool isTokenChar(unsigned char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
  switch (c) {
    case '!': case '#': case '$': case '%': case '&': case '\'': case '*': case '+': case '-': case '.':
    case '^': case '_': case '`': case '|': case '~':
      return true;
    default:
      return false;
  }
}

// The value of header `name` in the map for matching: repeated headers are joined with "," as Envoy
// does (in a per-thread buffer that only grows, so steady state does not allocate). False when absent.
bool mapValue(const HeaderMap& headers, const std::string& name, std::string_view& out) {
  thread_local std::string joined;
  const std::string* first = nullptr;
  bool multiple = false;
  for (const auto& e : headers.entries()) {
    if (!equalsLower(name, e.name)) continue;
    if (first == nullptr) {
      first = &e.value;
    } else {
      if (!multiple) {
        joined.assign(*first);
        multiple = true;
      }
      joined.push_back(',');
      joined.append(e.value);
    }
  }
  if (first == nullptr) return false;
  out = multiple ? std::string_view(joined) : std::string_view(*first);
  return true;
}

bool pseudoValue(const std::string& v, std::string_view& out) {
  if (v.empty()) return false;
  out = v;
  return true;
}

// A request's value for the matcher (pseudo-header fields, else the map). A request has no :status.
bool headerValue(const RequestHeaders& headers, const HeaderMatch& m, std::string_view& out) {
  switch (m.source) {
    case HeaderMatch::Source::Method: return pseudoValue(headers.method, out);
    case HeaderMatch::Source::Path: return pseudoValue(headers.path, out);
    case HeaderMatch::Source::Authority: return pseudoValue(headers.authority, out);
    case HeaderMatch::Source::Scheme: return pseudoValue(headers.scheme, out);
    case HeaderMatch::Source::Protocol: return pseudoValue(headers.protocol, out);
    case HeaderMatch::Source::Status: return false;
    case HeaderMatch::Source::Map: break;
  }
  return mapValue(headers, m.name, out);
}

// A response's value: :status as digits (in a per-thread buffer), else the map; it has no request
// pseudo-headers.
bool headerValue(const ResponseHeaders& headers, const HeaderMatch& m, std::string_view& out) {
  if (m.source == HeaderMatch::Source::Status) {
    thread_local char digits[16];
    const auto r = std::to_chars(digits, digits + sizeof(digits), headers.status);
    out = std::string_view(digits, static_cast<size_t>(r.ptr - digits));
    return headers.status != 0;
  }
  if (m.source != HeaderMatch::Source::Map) return false;
  return mapValue(headers, m.name, out);
}

}  // namespace

absl::StatusOr<std::shared_ptr<const re2::RE2>> compileRegex(const std::string& pattern, const std::string& path) {
  if (pattern.empty()) return fieldError(path, "regex must not be empty");
  re2::RE2::Options opts;
  opts.set_log_errors(false);
  auto re = std::make_shared<const re2::RE2>(pattern, opts);
  if (!re->ok()) return fieldError(path, absl::StrCat("invalid regex: ", re->error()));
  if (re->ProgramSize() > kMaxRegexProgramSize) {
    return fieldError(path, absl::StrCat("regex program size ", re->ProgramSize(), " is over the limit of ",
                                         kMaxRegexProgramSize));
  }
  return re;
}

bool isValidHeaderName(std::string_view name) {
  if (name.empty()) return false;
  size_t i = name[0] == ':' ? 1 : 0;  // pseudo-header
  if (i == name.size()) return false;
  for (; i < name.size(); ++i) {
    if (!isTokenChar(static_cast<unsigned char>(name[i]))) return false;
  }
  return true;
}

bool StringMatch::match(std::string_view v) const {
  switch (type) {
    case Type::Exact:
      return ignore_case ? equalsLower(value, v) : v == value;
    case Type::Prefix:
      return ignore_case ? startsWithLower(v, value) : v.starts_with(value);
    case Type::Suffix:
      return ignore_case ? endsWithLower(v, value) : v.ends_with(value);
    case Type::Contains:
      return ignore_case ? containsLower(v, value) : v.find(value) != std::string_view::npos;
    case Type::Regex:
      return re2::RE2::FullMatch(re2::StringPiece(v.data(), v.size()), *regex);
  }
  return false;
}

absl::Status buildStringMatch(const matcher_v3::StringMatcher& m, const std::string& path, StringMatch& out) {
  out.ignore_case = m.ignore_case();
  auto literal = [&](StringMatch::Type type, const std::string& value, const char* field,
                     bool allow_empty) -> absl::Status {
    if (value.empty() && !allow_empty) return fieldError(absl::StrCat(path, ".", field), "must not be empty");
    out.type = type;
    out.value = out.ignore_case ? lowerString(value) : value;
    return absl::OkStatus();
  };
  switch (m.match_pattern_case()) {
    case matcher_v3::StringMatcher::kExact:
      return literal(StringMatch::Type::Exact, m.exact(), "exact", true);
    case matcher_v3::StringMatcher::kPrefix:
      return literal(StringMatch::Type::Prefix, m.prefix(), "prefix", false);
    case matcher_v3::StringMatcher::kSuffix:
      return literal(StringMatch::Type::Suffix, m.suffix(), "suffix", false);
    case matcher_v3::StringMatcher::kContains:
      return literal(StringMatch::Type::Contains, m.contains(), "contains", false);
    case matcher_v3::StringMatcher::kSafeRegex: {
      auto re = compileRegex(m.safe_regex().regex(), path + ".safe_regex.regex");
      if (!re.ok()) return re.status();
      out.type = StringMatch::Type::Regex;
      out.regex = *std::move(re);
      out.ignore_case = false;  // Envoy: ignore_case does not apply to safe_regex
      return absl::OkStatus();
    }
    case matcher_v3::StringMatcher::MATCH_PATTERN_NOT_SET:
      break;
  }
  return fieldError(path, "one of exact, prefix, suffix, contains, safe_regex is required");
}

bool HeaderMatch::matchValue(bool found, std::string_view value) const {
  if (!found) {
    if (!treat_missing_as_empty) {
      // Envoy: a missing header only satisfies "present_match: false" (or an inverted "present_match: true").
      return type == Type::Present && (invert ? present : !present);
    }
    value = {};
  }
  bool result = false;
  switch (type) {
    case Type::Present:
      result = present;
      break;
    case Type::Range: {
      int64_t v = 0;
      result = absl::SimpleAtoi(absl::string_view(value.data(), value.size()), &v) && v >= range_start &&
               v < range_end;
      break;
    }
    case Type::String:
      result = string_match.match(value);
      break;
  }
  return result != invert;
}

bool HeaderMatch::match(const RequestHeaders& headers) const {
  std::string_view value;
  const bool found = headerValue(headers, *this, value);
  return matchValue(found, value);
}

bool HeaderMatch::match(const ResponseHeaders& headers) const {
  std::string_view value;
  const bool found = headerValue(headers, *this, value);
  return matchValue(found, value);
}

absl::Status buildHeaderMatch(const route_v3::HeaderMatcher& hm, const std::string& hp, HeaderMatch& out) {
  if (!isValidHeaderName(hm.name())) {
    return fieldError(hp + ".name", absl::StrCat("'", hm.name(), "' is not a valid header name"));
  }
  out = HeaderMatch{};
  out.name = lowerString(hm.name());
  if (out.name == ":method") out.source = HeaderMatch::Source::Method;
  else if (out.name == ":path") out.source = HeaderMatch::Source::Path;
  else if (out.name == ":authority" || out.name == "host") out.source = HeaderMatch::Source::Authority;
  else if (out.name == ":scheme") out.source = HeaderMatch::Source::Scheme;
  else if (out.name == ":protocol") out.source = HeaderMatch::Source::Protocol;
  else if (out.name == ":status") out.source = HeaderMatch::Source::Status;
  else if (out.name[0] == ':') return fieldError(hp + ".name", absl::StrCat("unknown pseudo-header '", hm.name(), "'"));
  out.invert = hm.invert_match();
  out.treat_missing_as_empty = hm.treat_missing_header_as_empty();
  auto legacy = [&](StringMatch::Type type, const std::string& v, const char* field) -> absl::Status {
    if (v.empty()) return fieldError(absl::StrCat(hp, ".", field), "must not be empty");
    out.type = HeaderMatch::Type::String;
    out.string_match.type = type;
    out.string_match.value = v;
    return absl::OkStatus();
  };
  switch (hm.header_match_specifier_case()) {
    case route_v3::HeaderMatcher::kRangeMatch:
      out.type = HeaderMatch::Type::Range;
      out.range_start = hm.range_match().start();
      out.range_end = hm.range_match().end();
      return absl::OkStatus();
    case route_v3::HeaderMatcher::kPresentMatch:
      out.type = HeaderMatch::Type::Present;
      out.present = hm.present_match();
      return absl::OkStatus();
    case route_v3::HeaderMatcher::kPrefixMatch:
      return legacy(StringMatch::Type::Prefix, hm.prefix_match(), "prefix_match");
    case route_v3::HeaderMatcher::kSuffixMatch:
      return legacy(StringMatch::Type::Suffix, hm.suffix_match(), "suffix_match");
    case route_v3::HeaderMatcher::kSafeRegexMatch: {
      auto re = compileRegex(hm.safe_regex_match().regex(), hp + ".safe_regex_match.regex");
      if (!re.ok()) return re.status();
      out.type = HeaderMatch::Type::String;
      out.string_match.type = StringMatch::Type::Regex;
      out.string_match.regex = *std::move(re);
      return absl::OkStatus();
    }
    case route_v3::HeaderMatcher::kStringMatch:
      out.type = HeaderMatch::Type::String;
      return buildStringMatch(hm.string_match(), hp + ".string_match", out.string_match);
    case route_v3::HeaderMatcher::HEADER_MATCH_SPECIFIER_NOT_SET:
      break;
  }
  out.type = HeaderMatch::Type::Present;  // Envoy: no specifier means "present"
  out.present = true;
  return absl::OkStatus();
}

}  // namespace strait::http
