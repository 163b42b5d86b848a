// The path normaliser (proxy/http/path_util) on request targets from the fuzzer, under every option
// combination the connection manager can be configured with, with its promises checked: a path it lets
// through starts with '/', holds no control byte and no invalid %-escape; normalising it again changes
// nothing (so authorization and routing, which both see the normalised path, agree); removeDotSegments
// leaves no "." or ".." segment.
//
// Input: byte 0 the options (bit 0 normalize_path, bit 1 merge_slashes, bits 2-3 the escaped-slash action),
// the rest the :path.

#include <string>

#include "proxy/http/path_util.h"
#include "tests/fuzz/fuzz_support.h"
#include "tests/fuzz/http_fuzz_streams.h"

using namespace strait;

namespace {

bool isHex(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

void checkClean(const std::string& path) {
  FUZZ_CHECK(!path.empty() && path[0] == '/', "a normalised path does not start with '/'");
  const size_t end = std::min(path.find('?'), path.size());
  for (size_t i = 0; i < end; ++i) {
    const auto c = static_cast<unsigned char>(path[i]);
    FUZZ_CHECK(c >= 0x20 && c != 0x7f, "a control byte in a normalised path");
    FUZZ_CHECK(c != '#', "a fragment left in a normalised path");
    if (c == '%') {
      FUZZ_CHECK(i + 2 < end, "a truncated %-escape in a normalised path");
      FUZZ_CHECK(isHex(path[i + 1]) && isHex(path[i + 2]), "an invalid %-escape in a normalised path");
    }
  }
}

void checkNoDotSegments(const std::string& p) {
  FUZZ_CHECK(!p.empty() && p[0] == '/', "removeDotSegments lost the leading '/'");
  size_t start = 1;
  while (start <= p.size()) {
    size_t slash = p.find('/', start);
    if (slash == std::string::npos) slash = p.size();
    const std::string_view seg(p.data() + start, slash - start);
    FUZZ_CHECK(seg != "." && seg != "..", "a dot segment survived removeDotSegments");
    start = slash + 1;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Input in(data, size);
  const uint8_t flags = in.byte();
  http::PathNormalizeOptions options;
  options.normalize_path = (flags & 1) != 0;
  options.merge_slashes = (flags & 2) != 0;
  options.escaped_slashes = static_cast<http::PathEscapedSlashesAction>((flags >> 2) & 3);
  const std::string original(in.rest());

  std::string path = original;
  const http::PathNormalizeResult r = http::normalizePath(path, options);
  if (r != http::PathNormalizeResult::Reject) {
    checkClean(path);
    std::string again = path;
    const http::PathNormalizeResult r2 = http::normalizePath(again, options);
    FUZZ_CHECK(r2 == http::PathNormalizeResult::Ok, "a normalised path is not accepted as it is");
    FUZZ_CHECK(again == path, "normalising a normalised path changed it");
  }
  if (!original.empty() && original[0] == '/') {
    const std::string p = original.substr(0, std::min(original.find('?'), original.size()));
    checkNoDotSegments(http::removeDotSegments(p));
  }
  return 0;
}
