// The http_inspector's peek: the HTTP/2 prior-knowledge preface check, the HTTP/1 method prefix check and
// the HTTP/1.0 request-line check of the listener's ProtocolSniffer (proxy/server/worker.cc), on every
// prefix of the connection's first bytes that the reads could give (fuzzer-chosen read sizes, a byte at a
// time up to all at once), as ProtocolSniffer::onData sees them: its first 64 bytes for the two verdicts,
// the buffer for the HTTP/1.0 check.
//
// The checks live in proxy/server/protocol_sniff.h, which the sniffer calls; the target calls the same
// functions (the sniffer itself needs an accepted TCP connection to hand on).
//
// Checks: a verdict once given (Yes or No) never changes when more bytes come; HTTP/2 is found exactly
// when the 24-byte preface is there; the two never both say Yes; the HTTP/1.0 answer does not change once
// the request line is complete; and, against the HTTP/1.1 server codec on the same bytes: a request the
// codec decodes whose method is one the inspector knows is found as HTTP/1 (it could not be routed to its
// http/1.x filter chain otherwise), and, when its request line had arrived (within 2 KiB) by the read
// that decided, as HTTP/1.0 exactly when the codec reads it as HTTP/1.0.
//
// Input: byte 0 the read-size seed, the rest the first bytes of a connection.

#include <algorithm>
#include <string>
#include <string_view>

#include "proxy/common/buffer.h"
#include "proxy/http/http1/codec.h"
#include "proxy/server/protocol_sniff.h"
#include "tests/fuzz/fuzz_support.h"

using namespace strait;

namespace {

using Verdict = server::sniff::Verdict;

// What the codec made of the first request: whether it decoded its headers, its method, HTTP/1.0 or not.
struct FirstRequest : http::ServerConnectionCallbacks, http::RequestDecoder {
  http::RequestDecoder& newStream(http::ResponseEncoder&) override { return *this; }
  void decodeHeaders(http::RequestHeadersPtr h, bool) override {
    if (!decoded) method = h->method;
    decoded = true;
  }
  void decodeData(common::Buffer& data, bool) override { data.drain(data.length()); }
  void decodeTrailers(http::TrailerMapPtr) override {}
  bool decoded = false;
  std::string method;
};

bool knownMethod(std::string_view m) {
  for (std::string_view k : {"GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE"}) {
    if (m == k) return true;
  }
  return false;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::init();
  fuzz::Input in(data, size);
  fuzz::Splitter split(in.byte());
  const std::string_view bytes = in.rest();

  Verdict h2 = Verdict::NeedMore, h1 = Verdict::NeedMore;
  int http10 = -1;   // -1: the request line is not complete yet
  int decided = -1;  // HTTP/1.0 as the sniffer decides it: at the read that first shows an HTTP/1 method
  size_t seen = 0;
  while (seen < bytes.size()) {
    seen += split.next(bytes.size() - seen);
    common::Buffer buffer;  // the connection's read buffer: everything so far (the sniffer drains nothing)
    buffer.add(bytes.substr(0, seen));
    const std::string_view head = bytes.substr(0, std::min<size_t>(seen, 64));
    const Verdict h2_now = server::sniff::inspectH2(head);
    const Verdict h1_now = server::sniff::inspectH1(head);
    FUZZ_CHECK(h2 == Verdict::NeedMore || h2_now == h2, "the HTTP/2 verdict changed when more bytes came");
    FUZZ_CHECK(h1 == Verdict::NeedMore || h1_now == h1, "the HTTP/1 verdict changed when more bytes came");
    FUZZ_CHECK(!(h2_now == Verdict::Yes && h1_now == Verdict::Yes), "both HTTP/1 and HTTP/2");
    constexpr std::string_view kPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    FUZZ_CHECK((h2_now == Verdict::Yes) == (head.substr(0, kPreface.size()) == kPreface),
               "HTTP/2 found without the preface, or missed with it");
    h2 = h2_now;
    h1 = h1_now;
    const bool line_complete = bytes.substr(0, std::min<size_t>(seen, 2048)).find('\n') != std::string_view::npos;
    const bool is10 = server::sniff::isHttp10(buffer);
    if (http10 >= 0) FUZZ_CHECK(is10 == (http10 == 1), "the HTTP/1.0 answer changed after the request line");
    if (line_complete) http10 = is10 ? 1 : 0;
    // The sniffer hands the connection on at the first read where the method shows: a request line not
    // complete by then counts as HTTP/1.1 (worker.cc says so), which is not compared below.
    if (h1_now == Verdict::Yes && decided == -1) decided = line_complete ? http10 : 2;
  }

  // The same bytes through the HTTP/1 server codec, all at once.
  FirstRequest first;
  fuzz::FuzzTransport transport;
  {
    http::CodecSettings settings;
    auto codec = http::http1::createServerConnection(transport, first, settings);
    common::Buffer b;
    b.add(bytes);
    http::CodecError error;
    (void)codec->dispatch(b, error);
    const bool codec_http10 = codec->protocol() == http::Protocol::Http10;
    // The codec skips empty lines before a request line (RFC 9112 2.2); the inspector looks at byte 0.
    const bool leading_empty_line = !bytes.empty() && (bytes[0] == '\r' || bytes[0] == '\n');
    if (first.decoded && knownMethod(first.method) && !leading_empty_line) {
      FUZZ_CHECK(h1 == Verdict::Yes, "a request the codec decodes was not found as HTTP/1");
      if (decided != 2) FUZZ_CHECK((decided == 1) == codec_http10, "HTTP/1.0 told apart differently from the codec");
    }
    codec->onTransportClosed();
    fuzz::drainLoop();
  }
  fuzz::drainLoop();
  return 0;
}
