// The tls_inspector's peek (certs::parseClientHello) on the first bytes of a connection from the fuzzer,
// given as the listener gives them: every prefix the reads could have produced (the parser keeps no
// state, so a NeedMore is followed by a call on the longer prefix). A prefix of a Done hello must not
// be Malformed or NotTls, and a verdict of NotTls/Malformed/Done must not change as bytes are added.
// The SNI it returns is then matched against a few server_names patterns (certs::serverNameMatches).

#include <string_view>

#include "certs/client_hello.h"
#include "tests/fuzz/fuzz_support.h"
#include "tests/fuzz/http_fuzz_streams.h"

using namespace strait;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::init();
  fuzz::Input in(data, size);
  fuzz::Splitter split(in.byte());
  const std::string_view bytes = in.rest();
  certs::ClientHelloResult last = certs::ClientHelloResult::NeedMore;
  certs::ClientHelloInfo info;
  size_t seen = 0;
  while (seen < bytes.size()) {
    seen += split.next(bytes.size() - seen);
    certs::ClientHelloInfo now;
    const certs::ClientHelloResult r = certs::parseClientHello(bytes.substr(0, seen), &now);
    if (last != certs::ClientHelloResult::NeedMore) {
      FUZZ_CHECK(r == last, "a ClientHello verdict changed when more bytes came");
      FUZZ_CHECK(r != certs::ClientHelloResult::Done || (now.server_name == info.server_name && now.alpn == info.alpn),
                 "a complete ClientHello read differently with more bytes after it");
    }
    if (r == certs::ClientHelloResult::Done && last != certs::ClientHelloResult::Done) info = now;
    last = r;
  }
  if (last == certs::ClientHelloResult::Done) {
    for (const std::string_view pattern : {"*.example.com", "example.com", "*", "*.com", "a.b.example.com"}) {
      (void)certs::serverNameMatches(pattern, info.server_name);
      (void)certs::serverNameMatches(info.server_name, pattern);
    }
    for (const auto& p : info.alpn) (void)certs::serverNameMatches(p, info.server_name);
  }
  return 0;
}
