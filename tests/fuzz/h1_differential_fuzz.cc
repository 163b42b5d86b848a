// A differential check of HTTP/1.1 framing across the proxy: request bytes from the fuzzer go into the
// HTTP/1.1 server codec (proxy/http/http1) in fuzzer-chosen reads; every request it delivers is forwarded
// as the router forwards it (headers, then body pieces as they arrive, then trailers, each straight into
// a fresh HTTP/1.1 client codec's encoder) and the bytes the upstream would receive are parsed again by a
// small strict RFC 9112 parser written here, independent of llhttp and of the codec's own checks.
//
// For each request the server codec delivered in full, the checks are:
//   - the upstream bytes hold exactly one request, framed without ambiguity (one Content-Length or one
//     `transfer-encoding: chunked`, never both, never a list; at most one Host), nothing left over;
//   - the upstream request has the method, the request target (the codec's origin-form path) and the
//     body bytes the server codec delivered;
//   - the downstream bytes, read by the same strict parser, hold a request at the same position with
//     that method and body (and path, for an origin-form target): the codec accepted nothing a strict
//     reader frames differently (no smuggled request, no body taken for a request or the reverse).
// Requests the strict parser refuses but the codec accepts fail the check; the reverse (the codec is
// stricter) is fine. Tunnels (CONNECT, Upgrade) are refused as a router without upgrade_configs does,
// and nothing after them is compared.
//
// Input: byte 0 the read-size seed, the rest the bytes the client sends.

#include <algorithm>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/http/http1/codec.h"
#include "tests/fuzz/fuzz_support.h"

using namespace strait;

namespace {

// ---- the strict parser ---------------------------------------------------------------------------

bool isTchar(unsigned char c) {
  if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return true;
  return std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) != std::string_view::npos;
}
bool isToken(std::string_view s) {
  if (s.empty()) return false;
  for (unsigned char c : s) {
    if (!isTchar(c)) return false;
  }
  return true;
}
char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c; }
bool sameNoCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}
std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

struct StrictRequest {
  std::string method;
  std::string target;
  bool http10 = false;
  std::string body;
  size_t consumed = 0;  // bytes of the input this request took
};

enum class Parse { Ok, NeedMore, Bad };

// One line ending in CRLF, starting at `pos`: NeedMore without a LF yet, Bad for a bare LF or a CR
// anywhere else in the line.
Parse line(std::string_view in, size_t& pos, std::string_view& out) {
  const size_t lf = in.find('\n', pos);
  if (lf == std::string_view::npos) {
    return in.find('\r', pos) != std::string_view::npos && in.back() != '\r' ? Parse::Bad : Parse::NeedMore;
  }
  if (lf == pos || in[lf - 1] != '\r') return Parse::Bad;
  out = in.substr(pos, lf - 1 - pos);
  if (out.find('\r') != std::string_view::npos) return Parse::Bad;
  pos = lf + 1;
  return Parse::Ok;
}

// Header or trailer fields up to the empty line. `each(name, value)` returns false to refuse.
template <typename F>
Parse fields(std::string_view in, size_t& pos, F&& each) {
  for (;;) {
    std::string_view l;
    if (Parse p = line(in, pos, l); p != Parse::Ok) return p;
    if (l.empty()) return Parse::Ok;
    const size_t colon = l.find(':');
    if (colon == std::string_view::npos) return Parse::Bad;
    const std::string_view name = l.substr(0, colon);  // no whitespace before the colon, no obs-fold
    if (!isToken(name)) return Parse::Bad;
    const std::string_view value = trim(l.substr(colon + 1));
    for (unsigned char c : value) {
      if ((c < 0x20 && c != '\t') || c == 0x7f) return Parse::Bad;
    }
    if (!each(name, value)) return Parse::Bad;
  }
}

// One request at the start of `in`. `upstream`: what a proxy sends, where even the tolerated shapes are
// refused (duplicate Content-Length, several Host fields, HTTP/1.0).
Parse parseRequest(std::string_view in, bool upstream, StrictRequest& r) {
  size_t pos = 0;
  std::string_view l;
  if (Parse p = line(in, pos, l); p != Parse::Ok) return p;
  // method SP request-target SP HTTP-version; downstream, a run of SP counts as one (RFC 9112 3 lets a
  // server split on whitespace; what goes upstream has single SPs).
  std::string_view parts[3];
  size_t at = 0;
  for (int i = 0; i < 3; ++i) {
    if (i > 0) {
      if (at >= l.size() || l[at] != ' ') return Parse::Bad;
      ++at;
      while (!upstream && at < l.size() && l[at] == ' ') ++at;
    }
    const size_t end = i == 2 ? l.size() : std::min(l.find(' ', at), l.size());
    parts[i] = l.substr(at, end - at);
    at = end;
  }
  const std::string_view method = parts[0], target = parts[1], version = parts[2];
  if (!isToken(method) || target.empty()) return Parse::Bad;
  // Visible ASCII, and (tolerated, as the codec and most servers do) bytes of 0x80 and above: RFC 9112
  // wants ASCII there, but such a target is passed on unchanged and frames nothing.
  for (unsigned char c : target) {
    if (c <= 0x20 || c == 0x7f) return Parse::Bad;
  }
  if (version == "HTTP/1.0" && !upstream) {
    r.http10 = true;
  } else if (version != "HTTP/1.1") {
    return Parse::Bad;
  }
  r.method.assign(method);
  r.target.assign(target);

  int te = 0, hosts = 0, cls = 0;
  bool chunked = false;
  std::string_view cl;
  Parse p = fields(in, pos, [&](std::string_view name, std::string_view value) {
    if (sameNoCase(name, "transfer-encoding")) {
      ++te;
      chunked = sameNoCase(value, "chunked");
      return chunked && te == 1 && !r.http10;
    }
    if (sameNoCase(name, "content-length")) {
      if (value.empty() || value.size() > 18) return false;
      for (char c : value) {
        if (c < '0' || c > '9') return false;
      }
      if (++cls > 1 && (upstream || value != cl)) return false;
      cl = value;
      return true;
    }
    if (sameNoCase(name, "host")) return ++hosts == 1 || !upstream;
    return true;
  });
  if (p != Parse::Ok) return p;
  if (te != 0 && cls != 0) return Parse::Bad;  // RFC 9112 6.3: both is a smuggling attempt, refused

  if (chunked) {
    for (;;) {
      std::string_view size_line;
      if (Parse q = line(in, pos, size_line); q != Parse::Ok) return q;
      size_t i = 0;
      uint64_t size = 0;
      for (; i < size_line.size(); ++i) {
        const char c = lower(size_line[i]);
        int d;
        if (c >= '0' && c <= '9') {
          d = c - '0';
        } else if (c >= 'a' && c <= 'f') {
          d = c - 'a' + 10;
        } else {
          break;
        }
        // RFC 9112's chunk-size is 1*HEXDIG: leading zeros are allowed and count for nothing. The guard
        // is on the value (2^60 and more: no real body, and no overflow here), not on the digit count.
        if ((size >> 56) != 0) return Parse::Bad;
        size = size * 16 + static_cast<uint64_t>(d);
      }
      if (i == 0) return Parse::Bad;
      // chunk-ext: BWS ";" BWS name [BWS "=" BWS value], loosely: visible bytes, SP, HTAB after a ';'.
      std::string_view ext = trim(size_line.substr(i));
      if (!ext.empty() && ext[0] != ';') return Parse::Bad;
      for (unsigned char c : ext) {
        if ((c < 0x20 && c != '\t') || c == 0x7f) return Parse::Bad;
      }
      if (size == 0) break;
      if (in.size() - pos < size + 2) return Parse::NeedMore;
      r.body.append(in.substr(pos, size));
      pos += size;
      if (in.substr(pos, 2) != "\r\n") return Parse::Bad;
      pos += 2;
    }
    if (Parse q = fields(in, pos, [](std::string_view, std::string_view) { return true; }); q != Parse::Ok) return q;
  } else if (cls != 0) {
    uint64_t size = 0;
    for (char c : cl) size = size * 10 + static_cast<uint64_t>(c - '0');
    if (in.size() - pos < size) return Parse::NeedMore;
    r.body.assign(in.substr(pos, size));
    pos += size;
  }
  r.consumed = pos;
  return Parse::Ok;
}

// ---- the proxy's side ----------------------------------------------------------------------------

// The upstream connection's bytes.
class CaptureTransport : public http::CodecTransport {
 public:
  void write(common::Buffer& data, bool) override {
    bytes += data.toString();
    data.drain(data.length());
  }
  void closeAfterFlush() override {}
  void readDisable(bool) override {}
  event::Dispatcher& dispatcher() override { return fuzz::dispatcher(); }
  std::string bytes;
};

struct Upstream : http::ResponseDecoder, http::StreamCallbacks, http::ClientConnectionCallbacks {
  void decode1xxHeaders(http::ResponseHeadersPtr) override {}
  void decodeHeaders(http::ResponseHeadersPtr, bool) override {}
  void decodeData(common::Buffer& data, bool) override { data.drain(data.length()); }
  void decodeTrailers(http::TrailerMapPtr) override {}
  void onResetStream(http::StreamResetReason) override { reset = true; }
  void onAboveWriteBufferHighWatermark() override {}
  void onBelowWriteBufferLowWatermark() override {}
  void onGoAway() override {}
  ~Upstream() override {
    if (codec) codec->onTransportClosed();  // a request the input ended in the middle of
  }

  CaptureTransport transport;
  std::unique_ptr<http::ClientConnection> codec;
  http::RequestEncoder* encoder = nullptr;
  bool reset = false;
};

struct Forwarded {
  std::string method;
  std::string path;
  bool origin_form = false;
  std::string body;
  std::string upstream_bytes;
};

class Proxy;

// One downstream request, forwarded piece by piece as it is decoded.
struct DownstreamStream : http::RequestDecoder, http::StreamCallbacks {
  DownstreamStream(Proxy& p, http::ResponseEncoder& e) : proxy(p), encoder(e) {}
  void decodeHeaders(http::RequestHeadersPtr h, bool end_stream) override;
  void decodeData(common::Buffer& data, bool end_stream) override;
  void decodeTrailers(http::TrailerMapPtr trailers) override;
  void onResetStream(http::StreamResetReason) override { reset = true; }
  void onAboveWriteBufferHighWatermark() override {}
  void onBelowWriteBufferLowWatermark() override {}
  void ended();

  Proxy& proxy;
  http::ResponseEncoder& encoder;
  Upstream up;
  Forwarded f;
  bool tunnel = false;
  bool has_headers = false;
  bool request_ended = false;
  bool answered = false;
  bool reset = false;
};

class Proxy : public http::ServerConnectionCallbacks {
 public:
  http::RequestDecoder& newStream(http::ResponseEncoder& encoder) override {
    streams_.push_back(std::make_unique<DownstreamStream>(*this, encoder));
    encoder.stream().setCallbacks(streams_.back().get());
    return *streams_.back();
  }
  // The router's way: the response once the request ended (a refusal at once for a tunnel).
  void answerPending() {
    for (auto& s : streams_) {
      if (s->answered || s->reset || !s->has_headers || !(s->request_ended || s->tunnel)) continue;
      s->answered = true;
      http::ResponseHeaders h;
      h.status = s->tunnel ? 403 : 200;
      h.add("content-length", "0");
      s->encoder.encodeHeaders(h, true);
    }
  }

  http::CodecSettings settings;
  std::vector<Forwarded> forwarded;  // complete requests, in order
  bool stop_compare = false;         // a tunnel was seen: what follows is not HTTP
  std::vector<std::unique_ptr<DownstreamStream>> streams_;
};

void DownstreamStream::decodeHeaders(http::RequestHeadersPtr h, bool end_stream) {
  has_headers = true;
  if (h->method == "CONNECT" || !h->protocol.empty()) {
    tunnel = true;
    proxy.stop_compare = true;
    return;
  }
  f.method = h->method;
  f.path = h->path;
  up.codec = http::http1::createClientConnection(up.transport, up, proxy.settings);
  up.encoder = &up.codec->newStream(up);
  up.encoder->stream().setCallbacks(&up);
  up.encoder->encodeHeaders(*h, end_stream);
  if (end_stream) ended();
}

void DownstreamStream::decodeData(common::Buffer& data, bool end_stream) {
  FUZZ_CHECK(has_headers && !request_ended && !reset, "request data out of order");
  if (tunnel) {
    data.drain(data.length());
    return;
  }
  f.body += data.toString();
  up.encoder->encodeData(data, end_stream);
  if (end_stream) ended();
}

void DownstreamStream::decodeTrailers(http::TrailerMapPtr trailers) {
  FUZZ_CHECK(has_headers && !request_ended && !reset && !tunnel, "request trailers out of order");
  up.encoder->encodeTrailers(*trailers);
  ended();
}

void DownstreamStream::ended() {
  request_ended = true;
  FUZZ_CHECK(!up.reset, "the upstream stream was reset while the request was forwarded");
  f.upstream_bytes = std::move(up.transport.bytes);
  // What the upstream received: exactly this one request, nothing before or after it.
  StrictRequest r;
  const Parse p = parseRequest(f.upstream_bytes, true, r);
  if (p != Parse::Ok) {
    std::fprintf(stderr, "upstream bytes (%s): [%s]\n", p == Parse::Bad ? "refused" : "incomplete",
                 f.upstream_bytes.c_str());
  }
  FUZZ_CHECK(p == Parse::Ok, "the upstream bytes are not one strict HTTP/1.1 request");
  FUZZ_CHECK(r.consumed == f.upstream_bytes.size(), "bytes after the forwarded request (a smuggled request)");
  FUZZ_CHECK(r.method == f.method, "the upstream got another method");
  FUZZ_CHECK(r.target == f.path || (f.path.empty() && r.target == "/"), "the upstream got another path");
  FUZZ_CHECK(r.body == f.body, "the upstream got another body");
  up.codec->onTransportClosed();
  up.encoder = nullptr;
  up.codec.reset();
  if (!proxy.stop_compare) proxy.forwarded.push_back(std::move(f));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::init();
  fuzz::Input in(data, size);
  fuzz::Splitter split(in.byte());
  const std::string_view all = in.rest();
  std::string_view bytes = all;

  Proxy proxy;
  proxy.settings.max_request_headers_kb = 8;
  proxy.settings.max_headers_count = 32;
  fuzz::FuzzTransport transport;
  {
    auto codec = http::http1::createServerConnection(transport, proxy, proxy.settings);
    auto& h1 = static_cast<http::http1::Http1ServerConnection&>(*codec);
    fuzz::dribbleHttp1Server(*codec, h1, transport, split, bytes, [&] { proxy.answerPending(); }, false);
    codec->onTransportClosed();
    fuzz::drainLoop();
  }
  proxy.streams_.clear();
  fuzz::drainLoop();

  // The same downstream bytes through the strict parser: each request the codec delivered in full is
  // there, at the same position, with the same method, body and (origin-form) path.
  std::string_view rest = all;
  // RFC 9112 2.2: empty lines before a request line are ignored.
  while (rest.substr(0, 2) == "\r\n") rest.remove_prefix(2);
  for (const Forwarded& f : proxy.forwarded) {
    StrictRequest r;
    const Parse p = parseRequest(rest, false, r);
    if (p != Parse::Ok || r.body != f.body) {
      std::fprintf(stderr, "codec: %s %s, body of %zu bytes [%s]; strict parser: %s\n", f.method.c_str(),
                   f.path.c_str(), f.body.size(), f.body.c_str(), p == Parse::Ok ? "framed" : p == Parse::Bad ? "refused" : "incomplete");
    }
    FUZZ_CHECK(p == Parse::Ok, "the codec accepted a request a strict parser does not frame the same way");
    FUZZ_CHECK(r.method == f.method, "the codec read another method than a strict parser");
    FUZZ_CHECK(r.body == f.body, "the codec read another body than a strict parser (request smuggling)");
    if (r.target[0] == '/') FUZZ_CHECK(r.target == f.path, "the codec read another path than a strict parser");
    rest.remove_prefix(r.consumed);
    while (rest.substr(0, 2) == "\r\n") rest.remove_prefix(2);
  }
  return 0;
}
