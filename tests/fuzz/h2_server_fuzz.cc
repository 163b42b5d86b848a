// The HTTP/2 server codec (proxy/http/http2, on nghttp2) on frames from the fuzzer: HEADERS with HPACK,
// CONTINUATION, DATA, RST_STREAM, SETTINGS, PING, PRIORITY, WINDOW_UPDATE, GOAWAY. The client preface
// and an empty SETTINGS frame are sent first, so every input starts inside a live connection; requests
// are answered as in h1_server_fuzz (the same ServerStreams modes).
//
// Input: byte 0 the answering mode, byte 1 the read-size seed, the rest the frames the client sends.

#include "proxy/http/http2/codec.h"
#include "tests/fuzz/fuzz_support.h"
#include "tests/fuzz/http_fuzz_streams.h"

using namespace strait;

namespace {

// "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" then SETTINGS (length 0, type 4, flags 0, stream 0).
constexpr char kClientStart[] =
    "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    "\x00\x00\x00\x04\x00\x00\x00\x00\x00";
constexpr size_t kClientStartSize = sizeof(kClientStart) - 1;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::init();
  fuzz::Input in(data, size);
  const uint8_t mode = in.byte();
  fuzz::Splitter split(in.byte());
  std::string bytes(kClientStart, kClientStartSize);
  bytes.append(in.rest());

  http::CodecSettings settings;
  // Small limits, so that the fuzzer reaches them: header list size, streams, windows, queued frames.
  settings.max_request_headers_kb = 1 + (mode >> 6);
  settings.max_headers_count = 16;
  settings.max_concurrent_streams = 4;
  settings.initial_stream_window_size = 65535;
  settings.initial_connection_window_size = 65535 * 2;
  settings.max_outbound_frames = 64;
  settings.max_outbound_control_frames = 16;
  fuzz::FuzzTransport transport;
  fuzz::ServerStreams streams(mode);
  {
    auto codec = http::http2::createServerConnection(transport, streams, settings);
    streams.connection = codec.get();
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
      streams.answerPending();
      fuzz::dispatcher().runDeferredFlushes();
      fuzz::drainLoop();
    }
    if (!transport.closed) {
      codec->goAway();
      fuzz::dispatcher().runDeferredFlushes();
    }
    codec->onTransportClosed();
    fuzz::drainLoop();
    streams.connection = nullptr;
  }
  fuzz::drainLoop();
  return 0;
}
