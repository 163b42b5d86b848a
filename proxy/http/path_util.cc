#include "proxy/http/path_util.h"

#include <string_view>

namespace strait::http {

namespace {

int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

char upperHex(char c) { return (c >= 'a' && c <= 'f') ? static_cast<char>(c - 'a' + 'A') : c; }

// RFC 3986 section 2.3.
bool isUnreserved(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
         c == '_' || c == '~';
}

// Drops the last segment of `out` and the '/' before it.
void popSegment(std::string& out) {
  const size_t pos = out.rfind('/');
  out.resize(pos == std::string::npos ? 0 : pos);
}

void mergeSlashes(std::string& p) {
  size_t w = 0;
  for (size_t r = 0; r < p.size(); ++r) {
    if (p[r] == '/' && w > 0 && p[w - 1] == '/') continue;
    p[w++] = p[r];
  }
  p.resize(w);
}

}  // namespace

std::string removeDotSegments(const std::string& in) {
  std::string out;
  out.reserve(in.size());
  const size_t n = in.size();
  size_t i = 0;
  while (i < n) {
    const std::string_view rest(in.data() + i, n - i);
    if (rest.starts_with("../")) {  // A
      i += 3;
    } else if (rest.starts_with("./")) {
      i += 2;
    } else if (rest.starts_with("/./")) {  // B: "/./" -> "/"
      i += 2;
    } else if (rest == "/.") {
      out.push_back('/');
      break;
    } else if (rest.starts_with("/../")) {  // C: "/../" -> "/" and drop the last output segment
      i += 3;
      popSegment(out);
    } else if (rest == "/..") {
      popSegment(out);
      out.push_back('/');
      break;
    } else if (rest == "." || rest == "..") {  // D
      break;
    } else {  // E: move the first segment (with its leading '/') to the output
      const size_t start = i;
      if (in[i] == '/') ++i;
      size_t next = in.find('/', i);
      if (next == std::string::npos) next = n;
      out.append(in, start, next - start);
      i = next;
    }
  }
  return out;
}

PathNormalizeResult normalizePath(std::string& path, const PathNormalizeOptions& options) {
  // 1. A fragment is never sent to an upstream.
  if (const size_t hash = path.find('#'); hash != std::string::npos) path.resize(hash);
  const size_t qpos = path.find('?');
  const size_t plen = qpos == std::string::npos ? path.size() : qpos;
  if (plen == 0 || path[0] != '/') return PathNormalizeResult::Reject;

  // 2. Validate the path part and see what work there is.
  bool has_percent = false;
  bool has_escaped_slash = false;
  for (size_t i = 0; i < plen; ++i) {
    const unsigned char c = static_cast<unsigned char>(path[i]);
    if (c < 0x20 || c == 0x7f) return PathNormalizeResult::Reject;
    if (c != '%') continue;
    if (i + 2 >= plen) return PathNormalizeResult::Reject;  // "%" or "%4" at the end
    const int hi = hexValue(path[i + 1]);
    const int lo = hexValue(path[i + 2]);
    if (hi < 0 || lo < 0) return PathNormalizeResult::Reject;
    const int v = hi * 16 + lo;
    if (v == 0) return PathNormalizeResult::Reject;
    has_percent = true;
    if (v == '/' || v == '\\') has_escaped_slash = true;
    i += 2;
  }

  const bool may_have_dots = path.find("/.") < plen;
  const bool may_have_double_slash = options.merge_slashes && path.find("//") < plen;
  const bool unescape_slashes = has_escaped_slash && options.escaped_slashes != PathEscapedSlashesAction::Keep;
  if (has_escaped_slash && options.escaped_slashes == PathEscapedSlashesAction::RejectRequest) {
    return PathNormalizeResult::Reject;
  }
  const PathNormalizeResult ok =
      (has_escaped_slash && options.escaped_slashes == PathEscapedSlashesAction::UnescapeAndRedirect)
          ? PathNormalizeResult::Redirect
          : PathNormalizeResult::Ok;
  const bool has_backslash = options.normalize_path && path.find('\\') < plen;
  if (!unescape_slashes && !may_have_double_slash && !has_backslash &&
      !(options.normalize_path && (has_percent || may_have_dots))) {
    return ok;  // nothing would change
  }

  std::string p;
  p.reserve(plen);
  // 3 and 4 (decoding) in one pass.
  for (size_t i = 0; i < plen; ++i) {
    const char c = path[i];
    if (c != '%') {
      // Normalising treats a backslash as a slash (as browsers and Envoy's canonicaliser do), so
      // "/admin\\x" cannot slip past a "/admin/" route.
      p.push_back(c == '\\' && options.normalize_path ? '/' : c);
      continue;
    }
    const char decoded = static_cast<char>(hexValue(path[i + 1]) * 16 + hexValue(path[i + 2]));
    if (unescape_slashes && (decoded == '/' || decoded == '\\')) {
      p.push_back(decoded == '\\' && options.normalize_path ? '/' : decoded);
    } else if (options.normalize_path && isUnreserved(static_cast<unsigned char>(decoded))) {
      p.push_back(decoded);
    } else if (options.normalize_path) {
      p.push_back('%');
      p.push_back(upperHex(path[i + 1]));
      p.push_back(upperHex(path[i + 2]));
    } else {
      p.append(path, i, 3);
    }
    i += 2;
  }
  if (options.normalize_path) p = removeDotSegments(p);
  if (options.merge_slashes) mergeSlashes(p);
  if (qpos != std::string::npos) p.append(path, qpos, std::string::npos);
  path = std::move(p);
  return ok;
}

PathNormalizeResult normalizePath(std::string& path, bool merge_slashes, PathEscapedSlashesAction action) {
  PathNormalizeOptions o;
  o.normalize_path = true;
  o.merge_slashes = merge_slashes;
  o.escaped_slashes = action;
  return normalizePath(path, o);
}

}  // namespace strait::http
