#pragma once

#include <string>

namespace strait::http {

// What to do with %2F and %5C (escaped '/' and '\') in the path; Envoy's HCM
// path_with_escaped_slashes_action (IMPLEMENTATION_SPECIFIC_DEFAULT maps to Keep).
enum class PathEscapedSlashesAction {
  Keep,                 // leave them escaped
  RejectRequest,        // 400 when the path has one
  UnescapeAndRedirect,  // unescape; when there was one, answer a redirect to the normalised path
  UnescapeAndForward,   // unescape and carry on
};

enum class PathNormalizeResult {
  Ok,        // `path` is normalised (maybe unchanged): route it
  Reject,    // invalid path, or an escaped slash under RejectRequest: answer 400
  Redirect,  // UnescapeAndRedirect found an escaped slash: `path` is the normalised path; answer
             // 307 with `Location: <path>` (Envoy's answer) instead of routing
};

struct PathNormalizeOptions {
  bool normalize_path = true;  // HCM normalize_path (Strait's default: true)
  bool merge_slashes = false;  // HCM merge_slashes
  PathEscapedSlashesAction escaped_slashes = PathEscapedSlashesAction::Keep;
};

// Normalises an origin-form request target in place, before routing and authorization, in Envoy's order:
//  1. a fragment ("#...") is dropped; the query ("?...") is never changed, only carried over;
//  2. the path part is checked: it must start with '/', hold no control character (NUL, CR, LF, ...)
//     and no invalid or NUL percent-encoding ("%zz", "%4", "%00") -> Reject;
//  3. escaped slashes (%2F, %5C, either hex case) per `escaped_slashes`; unescaping turns %2F into '/'
//     and %5C into '\';
//  4. when normalize_path: percent-encoded unreserved characters (ALPHA DIGIT - . _ ~) are decoded,
//     other escapes get upper-case hex ("%2f" -> "%2F"), and RFC 3986 remove_dot_segments runs
//     ("/a/../b" -> "/b", "/a/./b" -> "/a/b", "/../a" -> "/a"); a backslash becomes a slash;
//  5. when merge_slashes: runs of '/' become one.
// The caller does not pass "*" (OPTIONS *) or a CONNECT authority: they are not paths (they give Reject).
PathNormalizeResult normalizePath(std::string& path, const PathNormalizeOptions& options);

// The same with normalize_path on.
PathNormalizeResult normalizePath(std::string& path, bool merge_slashes, PathEscapedSlashesAction action);

// RFC 3986 section 5.2.4 on a path that starts with '/' (no query).
std::string removeDotSegments(const std::string& path);

}  // namespace strait::http
