// The HTTP/2 client codec (proxy/http/http2, on nghttp2) on frames from the fuzzer: the upstream's side
// of a connection pool's connection. One to three requests (GET, HEAD, POST with a body or trailers,
// CONNECT, an extended-CONNECT WebSocket) are open before the server's first byte; the server's SETTINGS
// (empty) is sent first, then the fuzzer's frames. When every stream is done another opens, up to 8.
//
// Input: byte 0 the request shapes (3 bits per request) and how many start at once, byte 1 the
// read-size seed, the rest the frames the server sends.

#include "proxy/http/http2/codec.h"
#include "tests/fuzz/fuzz_support.h"
#include "tests/fuzz/http_fuzz_streams.h"

using namespace strait;

namespace {

// SETTINGS (length 0, type 4, flags 0, stream 0): the server's preface.
constexpr char kServerStart[] = "\x00\x00\x00\x04\x00\x00\x00\x00\x00";
constexpr size_t kServerStartSize = sizeof(kServerStart) - 1;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::init();
  fuzz::Input in(data, size);
  const uint8_t shapes = in.byte();
  fuzz::Splitter split(in.byte());
  std::string bytes(kServerStart, kServerStartSize);
  bytes.append(in.rest());

  http::CodecSettings settings;
  settings.max_request_headers_kb = 2;
  settings.max_headers_count = 16;
  settings.initial_stream_window_size = 65535;
  settings.initial_connection_window_size = 65535 * 2;
  settings.max_outbound_frames = 64;
  settings.max_outbound_control_frames = 16;
  fuzz::FuzzTransport transport;
  fuzz::ClientStreams streams;
  {
    auto codec = http::http2::createClientConnection(transport, streams, settings);
    auto next = [&] {
      const uint8_t kind = static_cast<uint8_t>(shapes >> (3 * (streams.opened() % 2)));
      return streams.open(*codec, kind);
    };
    for (int i = 0; i <= (shapes >> 6) % 3; ++i) next();
    fuzz::dispatcher().runDeferredFlushes();
    std::string_view left = bytes;
    while (!left.empty() && !transport.closed && transport.read_disabled == 0) {
      const size_t n = split.next(left.size());
      common::Buffer b;
      b.add(left.substr(0, n));
      left.remove_prefix(n);
      http::CodecError error;
      const bool ok = codec->dispatch(b, error);
      if (!ok) break;
      FUZZ_CHECK(b.empty(), "dispatch left bytes behind");
      streams.progress();
      if (streams.allDone() && streams.opened() < 8) next();
      fuzz::dispatcher().runDeferredFlushes();
      fuzz::drainLoop();
    }
    codec->onTransportClosed();
    fuzz::drainLoop();
  }
  fuzz::drainLoop();
  return 0;
}
