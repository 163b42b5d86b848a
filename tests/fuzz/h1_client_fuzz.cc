// The HTTP/1.1 client codec (proxy/http/http1) on responses from the fuzzer: the connection pool's side.
// A request goes out (GET, HEAD, POST with a body or chunked with trailers, CONNECT, a WebSocket
// upgrade), the fuzzer's bytes come back in fuzzer-chosen pieces, and whenever the connection can take
// another request (keep-alive) the next one goes, up to 8. The input ends with the upstream's half-close
// (which ends a close-delimited body) and the connection's close.
//
// Input: byte 0 the request shapes (3 bits per request, cycling), byte 1 the read-size seed, the rest
// the bytes the upstream sends.

#include "proxy/http/http1/codec.h"
#include "tests/fuzz/fuzz_support.h"
#include "tests/fuzz/http_fuzz_streams.h"

using namespace strait;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::init();
  fuzz::Input in(data, size);
  const uint8_t shapes = in.byte();
  fuzz::Splitter split(in.byte());
  std::string_view bytes = in.rest();

  http::CodecSettings settings;
  settings.max_request_headers_kb = 4;
  settings.max_headers_count = 32;
  fuzz::FuzzTransport transport;
  fuzz::ClientStreams streams;
  {
    auto codec = http::http1::createClientConnection(transport, streams, settings);
    auto& h1 = static_cast<http::http1::Http1ClientConnection&>(*codec);
    auto next = [&] {
      const uint8_t kind = static_cast<uint8_t>(shapes >> (3 * (streams.opened() % 3)));
      return streams.open(*codec, kind);
    };
    next();
    while (!bytes.empty() && !transport.closed && transport.read_disabled == 0) {
      const size_t n = split.next(bytes.size());
      common::Buffer b;
      b.add(bytes.substr(0, n));
      bytes.remove_prefix(n);
      http::CodecError error;
      const bool ok = codec->dispatch(b, error);
      if (!ok) break;
      FUZZ_CHECK(b.empty(), "dispatch left bytes behind");  // the pool closes the connection
      streams.progress();
      fuzz::drainLoop();
      if (streams.allDone() && streams.opened() < 8) next();  // keep-alive: the next request
    }
    if (!transport.closed) {
      h1.onRemoteHalfClose();
      fuzz::drainLoop();
    }
    codec->onTransportClosed();
    fuzz::drainLoop();
  }
  fuzz::drainLoop();
  return 0;
}
