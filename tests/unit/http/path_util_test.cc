#include <catch2/catch.hpp>

#include "proxy/http/path_util.h"

using namespace strait::http;

namespace {

// Normalises with normalize_path on; returns the path, or "REJECT" / "REDIRECT:<path>".
std::string norm(std::string path, bool merge = false,
                 PathEscapedSlashesAction action = PathEscapedSlashesAction::Keep) {
  switch (normalizePath(path, merge, action)) {
    case PathNormalizeResult::Ok: return path;
    case PathNormalizeResult::Reject: return "REJECT";
    case PathNormalizeResult::Redirect: return "REDIRECT:" + path;
  }
  return "?";
}

}  // namespace

TEST_CASE("PathUtil: dot segments are removed (RFC 3986 5.2.4)") {
  CHECK(norm("/a/../b") == "/b");
  CHECK(norm("/a/./b") == "/a/b");
  CHECK(norm("/../a") == "/a");
  CHECK(norm("/..") == "/");
  CHECK(norm("/.") == "/");
  CHECK(norm("/a/b/..") == "/a/");
  CHECK(norm("/a/b/.") == "/a/b/");
  CHECK(norm("/a/b/c/./../../g") == "/a/g");
  CHECK(norm("/mid/content=5/../6") == "/mid/6");
  CHECK(norm("/a/..b/c") == "/a/..b/c");
  CHECK(norm("/a/b..") == "/a/b..");
  CHECK(norm("/../../../etc/passwd") == "/etc/passwd");
  CHECK(norm("/") == "/");
}

TEST_CASE("PathUtil: the query is never touched") {
  CHECK(norm("/a/../b?x=/../y&%2F=%41") == "/b?x=/../y&%2F=%41");
  CHECK(norm("/a//b?x=//y", true) == "/a/b?x=//y");
  CHECK(norm("/%41?%41") == "/A?%41");
  CHECK(norm("/a?") == "/a?");
}

TEST_CASE("PathUtil: a fragment is dropped") {
  CHECK(norm("/a/b#frag") == "/a/b");
  CHECK(norm("/a?q=1#frag") == "/a?q=1");
}

TEST_CASE("PathUtil: merge_slashes") {
  CHECK(norm("//a//b", true) == "/a/b");
  CHECK(norm("//a//b", false) == "//a//b");
  CHECK(norm("/a///b/", true) == "/a/b/");
  // Dot segments are resolved before slashes merge (Envoy's order).
  CHECK(norm("/a//../b", true) == "/a/b");
}

TEST_CASE("PathUtil: unreserved characters are decoded, others keep their escape in upper case") {
  CHECK(norm("/%41") == "/A");
  CHECK(norm("/%7euser/%2d%2E%5F") == "/~user/-._");
  CHECK(norm("/a%20b") == "/a%20b");
  CHECK(norm("/a%3fb") == "/a%3Fb");
  CHECK(norm("/%25") == "/%25");
  CHECK(norm("/%2541") == "/%2541");  // no double decoding
  // Encoded dots are dots once decoded, and dot segments then go.
  CHECK(norm("/a/%2e%2E/b") == "/b");
  CHECK(norm("/a/.%2e/b") == "/b");
}

TEST_CASE("PathUtil: escaped slashes per action") {
  // Keep: left escaped (hex case normalised), so "%2F.." is not a dot segment.
  CHECK(norm("/a%2fb") == "/a%2Fb");
  CHECK(norm("/a%2F..%2Fb") == "/a%2F..%2Fb");
  CHECK(norm("/a%5Cb") == "/a%5Cb");
  // Reject.
  CHECK(norm("/a%2Fb", false, PathEscapedSlashesAction::RejectRequest) == "REJECT");
  CHECK(norm("/a%5cb", false, PathEscapedSlashesAction::RejectRequest) == "REJECT");
  CHECK(norm("/a/b?x=%2F", false, PathEscapedSlashesAction::RejectRequest) == "/a/b?x=%2F");
  // Unescape and forward: then dot segments and merging see real slashes.
  CHECK(norm("/a%2Fb", false, PathEscapedSlashesAction::UnescapeAndForward) == "/a/b");
  CHECK(norm("/a%5Cb", false, PathEscapedSlashesAction::UnescapeAndForward) == "/a/b");
  CHECK(norm("/a/b%2F..%2Fc", false, PathEscapedSlashesAction::UnescapeAndForward) == "/a/c");
  CHECK(norm("/a%2F%2Fb", true, PathEscapedSlashesAction::UnescapeAndForward) == "/a/b");
  // Unescape and redirect: only when there was one.
  CHECK(norm("/a%2Fb?q", false, PathEscapedSlashesAction::UnescapeAndRedirect) == "REDIRECT:/a/b?q");
  CHECK(norm("/a/b", false, PathEscapedSlashesAction::UnescapeAndRedirect) == "/a/b");
}

TEST_CASE("PathUtil: normalising turns a backslash into a slash") {
  CHECK(norm("/a\\..\\b") == "/b");
  CHECK(norm("/a\\b/../c") == "/a/c");
  CHECK(norm("/admin\\secret") == "/admin/secret");
  PathNormalizeOptions off;
  off.normalize_path = false;
  std::string p = "/a\\b";
  REQUIRE(normalizePath(p, off) == PathNormalizeResult::Ok);
  CHECK(p == "/a\\b");
}

TEST_CASE("PathUtil: invalid paths are rejected") {
  CHECK(norm("") == "REJECT");
  CHECK(norm("a/b") == "REJECT");
  CHECK(norm("*") == "REJECT");
  CHECK(norm("?a") == "REJECT");
  CHECK(norm("/a%") == "REJECT");
  CHECK(norm("/a%4") == "REJECT");
  CHECK(norm("/a%4?x") == "REJECT");
  CHECK(norm("/a%zz") == "REJECT");
  CHECK(norm("/a%00b") == "REJECT");
  CHECK(norm(std::string("/a\0b", 4)) == "REJECT");
  CHECK(norm("/a\r\nb") == "REJECT");
  CHECK(norm("/a\x7f") == "REJECT");
  // The query is not validated.
  CHECK(norm("/a?%zz") == "/a?%zz");
}

TEST_CASE("PathUtil: with normalize_path off only the asked-for steps run") {
  PathNormalizeOptions o;
  o.normalize_path = false;
  std::string p = "/a/../%41//b";
  CHECK(normalizePath(p, o) == PathNormalizeResult::Ok);
  CHECK(p == "/a/../%41//b");
  o.merge_slashes = true;
  CHECK(normalizePath(p, o) == PathNormalizeResult::Ok);
  CHECK(p == "/a/../%41/b");
  o.escaped_slashes = PathEscapedSlashesAction::UnescapeAndForward;
  p = "/x%2f%2e%2e";
  CHECK(normalizePath(p, o) == PathNormalizeResult::Ok);
  CHECK(p == "/x/%2e%2e");
  // Validation still applies.
  p = "/%g0";
  CHECK(normalizePath(p, o) == PathNormalizeResult::Reject);
}

TEST_CASE("PathUtil: removeDotSegments") {
  CHECK(removeDotSegments("/a/b/c/./../../g") == "/a/g");
  CHECK(removeDotSegments("//a//b") == "//a//b");
  CHECK(removeDotSegments("/a//../b") == "/a/b");
}
