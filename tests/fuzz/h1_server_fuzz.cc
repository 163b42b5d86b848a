// The HTTP/1.1 server codec (proxy/http/http1) on requests from the fuzzer, read in fuzzer-chosen pieces
// (a byte at a time up to all at once), answered the ways the connection manager answers: after the
// request (as the router does), from inside a decode callback (a local reply), before the body (an early
// response), or not at all (a reset); tunnels (CONNECT, Upgrade) get their 200/101.
//
// Input: byte 0 the answering mode, byte 1 the read-size seed, the rest the bytes the client sends.
// The contract checks (nothing delivered after the end of a request or after a reset) abort on failure.

#include <memory>
#include <vector>

#include "proxy/http/http1/codec.h"
#include "tests/fuzz/fuzz_support.h"
#include "tests/fuzz/http_fuzz_streams.h"

using namespace strait;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::init();
  fuzz::Input in(data, size);
  const uint8_t mode = in.byte();
  fuzz::Splitter split(in.byte());
  std::string_view bytes = in.rest();

  http::CodecSettings settings;
  settings.max_request_headers_kb = 1 + (mode >> 5);  // 1..8 KiB: the limits are reached, not just passed by
  settings.max_headers_count = 8 + (mode & 0x1f);
  fuzz::FuzzTransport transport;
  fuzz::ServerStreams streams(mode);
  {
    auto codec = http::http1::createServerConnection(transport, streams, settings);
    auto& h1 = static_cast<http::http1::Http1ServerConnection&>(*codec);
    streams.connection = codec.get();
    fuzz::dribbleHttp1Server(*codec, h1, transport, split, bytes, [&] { streams.answerPending(); }, true);
    codec->onTransportClosed();
    fuzz::drainLoop();
    streams.connection = nullptr;
  }
  fuzz::drainLoop();
  return 0;
}
