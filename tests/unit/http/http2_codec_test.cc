#include "proxy/http/http2/codec.h"

#include <nghttp2/nghttp2.h>

#include <catch2/catch.hpp>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "proxy/event/dispatcher.h"

// The HTTP/2 codec, client and server back to back through two in-memory transports; attacks are
// played by a raw nghttp2 client (optionally with its HTTP messaging checks off, to send what a
// conforming client never would).

namespace {

using namespace strait;
using namespace strait::http;
using common::Buffer;

std::string pattern(size_t size, unsigned seed) {
  std::string s(size, '\0');
  for (size_t i = 0; i < size; ++i) s[i] = static_cast<char>((i * 7 + i / 1024 + seed) & 0xff);
  return s;
}

class FakeTransport : public CodecTransport {
 public:
  explicit FakeTransport(event::Dispatcher& dispatcher) : dispatcher_(dispatcher) {}
  void write(Buffer& data, bool) override {
    ++writes;
    out.move(data);
  }
  void closeAfterFlush() override {
    ++close_calls;
    if (on_close) on_close();  // a real connection with nothing left to write closes at once
  }
  std::function<void()> on_close;
  void readDisable(bool disable) override { read_disabled += disable ? 1 : -1; }
  event::Dispatcher& dispatcher() override { return dispatcher_; }

  Buffer out;
  int writes = 0;
  int close_calls = 0;
  int read_disabled = 0;

 private:
  event::Dispatcher& dispatcher_;
};

// ---- server side ----------------------------------------------------------------------------------

struct ServerStreamHandler : public RequestDecoder, public StreamCallbacks {
  ResponseEncoder* encoder = nullptr;
  RequestHeadersPtr headers;
  std::string body;
  TrailerMapPtr trailers;
  bool complete = false;
  int data_calls = 0;
  std::optional<StreamResetReason> reset;
  int above = 0;
  int below = 0;
  std::function<void(ServerStreamHandler&)> on_headers;
  std::function<void(ServerStreamHandler&)> on_complete;

  void decodeHeaders(RequestHeadersPtr h, bool end_stream) override {
    headers = std::move(h);
    if (on_headers) on_headers(*this);
    if (end_stream) done();
  }
  void decodeData(Buffer& data, bool end_stream) override {
    ++data_calls;
    body += data.toString();
    data.drain(data.length());
    if (end_stream) done();
  }
  void decodeTrailers(TrailerMapPtr t) override {
    trailers = std::move(t);
    done();
  }
  void done() {
    complete = true;
    if (on_complete && encoder != nullptr) on_complete(*this);
  }
  void onResetStream(StreamResetReason reason) override {
    reset = reason;
    encoder = nullptr;
  }
  void onAboveWriteBufferHighWatermark() override { ++above; }
  void onBelowWriteBufferLowWatermark() override { ++below; }

  void respond(uint32_t status, const std::string& response_body, bool with_trailers = false) {
    ResponseHeaders h;
    h.status = status;
    h.add("x-served-by", "strait");
    h.add("Content-Type", "text/plain");
    bool end = response_body.empty() && !with_trailers;
    encoder->encodeHeaders(h, end);
    if (end) return;
    if (!response_body.empty()) {
      Buffer b;
      b.add(response_body);
      encoder->encodeData(b, !with_trailers);
    }
    if (with_trailers) {
      TrailerMap t;
      t.add("grpc-status", "0");
      t.add("grpc-message", "ok");
      encoder->encodeTrailers(t);
    }
  }
};

struct TestServerCallbacks : public ServerConnectionCallbacks {
  std::vector<std::unique_ptr<ServerStreamHandler>> streams;
  std::function<void(ServerStreamHandler&)> on_headers;
  std::function<void(ServerStreamHandler&)> on_complete;

  RequestDecoder& newStream(ResponseEncoder& encoder) override {
    auto h = std::make_unique<ServerStreamHandler>();
    h->encoder = &encoder;
    h->on_headers = on_headers;
    h->on_complete = on_complete;
    encoder.stream().setCallbacks(h.get());
    streams.push_back(std::move(h));
    return *streams.back();
  }
};

// ---- client side ----------------------------------------------------------------------------------

struct ClientStreamHandler : public ResponseDecoder, public StreamCallbacks {
  RequestEncoder* encoder = nullptr;
  ResponseHeadersPtr headers;
  std::vector<uint32_t> informational;
  std::string body;
  TrailerMapPtr trailers;
  bool complete = false;
  std::optional<StreamResetReason> reset;
  int above = 0;
  int below = 0;

  void decode1xxHeaders(ResponseHeadersPtr h) override { informational.push_back(h->status); }
  void decodeHeaders(ResponseHeadersPtr h, bool end_stream) override {
    headers = std::move(h);
    if (end_stream) complete = true;
  }
  void decodeData(Buffer& data, bool end_stream) override {
    body += data.toString();
    data.drain(data.length());
    if (end_stream) complete = true;
  }
  void decodeTrailers(TrailerMapPtr t) override {
    trailers = std::move(t);
    complete = true;
  }
  void onResetStream(StreamResetReason reason) override {
    reset = reason;
    encoder = nullptr;
  }
  void onAboveWriteBufferHighWatermark() override { ++above; }
  void onBelowWriteBufferLowWatermark() override { ++below; }
};

struct TestClientCallbacks : public ClientConnectionCallbacks {
  int goaways = 0;
  std::vector<uint32_t> max_streams;
  void onGoAway() override { ++goaways; }
  void onMaxConcurrentStreamsChanged(uint32_t max) override { max_streams.push_back(max); }
};

// Client codec <-> server codec.
struct Pair {
  event::Dispatcher dispatcher{"http2-test"};  // first: destroyed last (deferred deletes run then)
  FakeTransport client_transport{dispatcher};
  FakeTransport server_transport{dispatcher};
  TestServerCallbacks server_callbacks;
  TestClientCallbacks client_callbacks;
  std::unique_ptr<ServerConnection> server;
  std::unique_ptr<ClientConnection> client;
  std::vector<std::unique_ptr<ClientStreamHandler>> requests;
  bool server_ok = true;
  bool client_ok = true;
  CodecError server_error;
  CodecError client_error;

  explicit Pair(const CodecSettings& server_settings = {}, const CodecSettings& client_settings = {}) {
    server = http2::createServerConnection(server_transport, server_callbacks, server_settings);
    client = http2::createClientConnection(client_transport, client_callbacks, client_settings);
  }

  // Moves bytes both ways until neither side has anything more to say.
  void pump() {
    for (int i = 0; i < 100000; ++i) {
      // Stream-level encodes only queue a flush for the end of the loop iteration: play that part.
      dispatcher.runDeferredFlushes();
      bool moved = false;
      if (!client_transport.out.empty()) {
        moved = true;
        if (server_ok) {
          server_ok = server->dispatch(client_transport.out, server_error);
        } else {
          client_transport.out.drain(client_transport.out.length());
        }
      }
      if (!server_transport.out.empty()) {
        moved = true;
        if (client_ok) {
          client_ok = client->dispatch(server_transport.out, client_error);
        } else {
          server_transport.out.drain(server_transport.out.length());
        }
      }
      if (!moved) return;
    }
    FAIL("pump never went quiet");
  }

  ClientStreamHandler& start(RequestHeaders headers, bool end_stream) {
    auto h = std::make_unique<ClientStreamHandler>();
    RequestEncoder& encoder = client->newStream(*h);
    h->encoder = &encoder;
    encoder.stream().setCallbacks(h.get());
    encoder.encodeHeaders(headers, end_stream);
    requests.push_back(std::move(h));
    return *requests.back();
  }

  static RequestHeaders get(const std::string& path) {
    RequestHeaders h;
    h.method = "GET";
    h.path = path;
    h.authority = "example.com";
    h.scheme = "http";
    return h;
  }
  static RequestHeaders post(const std::string& path) {
    RequestHeaders h = get(path);
    h.method = "POST";
    return h;
  }
};

void sendBody(RequestEncoder& encoder, const std::string& body, bool end_stream, size_t piece = 64 * 1024) {
  for (size_t off = 0; off < body.size(); off += piece) {
    Buffer b;
    b.add(body.data() + off, std::min(piece, body.size() - off));
    encoder.encodeData(b, end_stream && off + piece >= body.size());
  }
}

// ---- a raw nghttp2 client (for what our own client codec would never send) ------------------------

struct RawClient {
  event::Dispatcher dispatcher{"http2-raw"};
  FakeTransport server_transport{dispatcher};
  TestServerCallbacks server_callbacks;
  std::unique_ptr<ServerConnection> server;
  nghttp2_session* session = nullptr;
  Buffer to_server;
  std::map<int32_t, uint32_t> closed;  // stream -> error code
  std::map<int32_t, std::string> status;
  bool goaway = false;
  uint32_t goaway_code = 0;
  int ping_acks = 0;
  bool server_ok = true;
  CodecError server_error;
  std::deque<std::string> names;

  explicit RawClient(bool http_messaging, const CodecSettings& settings = {}) {
    server = http2::createServerConnection(server_transport, server_callbacks, settings);
    nghttp2_session_callbacks* cbs;
    nghttp2_session_callbacks_new(&cbs);
    nghttp2_session_callbacks_set_on_stream_close_callback(
        cbs, [](nghttp2_session*, int32_t id, uint32_t code, void* ud) {
          static_cast<RawClient*>(ud)->closed[id] = code;
          return 0;
        });
    nghttp2_session_callbacks_set_on_header_callback(
        cbs, [](nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
                const uint8_t* value, size_t valuelen, uint8_t, void* ud) {
          if (std::string(reinterpret_cast<const char*>(name), namelen) == ":status") {
            static_cast<RawClient*>(ud)->status[frame->hd.stream_id] =
                std::string(reinterpret_cast<const char*>(value), valuelen);
          }
          return 0;
        });
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, [](nghttp2_session*, const nghttp2_frame* frame, void* ud) {
      auto* self = static_cast<RawClient*>(ud);
      if (frame->hd.type == NGHTTP2_GOAWAY) {
        self->goaway = true;
        self->goaway_code = frame->goaway.error_code;
      }
      if (frame->hd.type == NGHTTP2_PING && (frame->hd.flags & NGHTTP2_FLAG_ACK) != 0) ++self->ping_acks;
      return 0;
    });
    nghttp2_option* opt;
    nghttp2_option_new(&opt);
    if (!http_messaging) nghttp2_option_set_no_http_messaging(opt, 1);
    nghttp2_session_client_new2(&session, cbs, this, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cbs);
    nghttp2_submit_settings(session, NGHTTP2_FLAG_NONE, nullptr, 0);
    produce();
  }
  ~RawClient() { nghttp2_session_del(session); }

  // Serialises what the raw session has queued into to_server.
  void produce() {
    const uint8_t* data;
    ssize_t n;
    while ((n = nghttp2_session_mem_send(session, &data)) > 0) to_server.add(data, static_cast<size_t>(n));
  }
  // Hands to_server to the server codec, and its answer back to the raw session.
  void exchange() {
    produce();
    if (!to_server.empty()) {
      if (server_ok) {
        server_ok = server->dispatch(to_server, server_error);
      } else {
        to_server.drain(to_server.length());
      }
    }
    dispatcher.runDeferredFlushes();
    std::string answer = server_transport.out.toString();
    server_transport.out.drain(server_transport.out.length());
    if (!answer.empty()) {
      nghttp2_session_mem_recv(session, reinterpret_cast<const uint8_t*>(answer.data()), answer.size());
    }
    produce();
  }
  int32_t request(std::vector<std::pair<std::string, std::string>> fields) {
    // Names are sent exactly as given (NO_COPY_NAME: nghttp2 would otherwise lowercase them), so they
    // must live until the frame is sent.
    std::vector<nghttp2_nv> nva;
    for (auto& f : fields) {
      names.push_back(f.first);
      std::string& name = names.back();
      nva.push_back({reinterpret_cast<uint8_t*>(name.data()), reinterpret_cast<uint8_t*>(f.second.data()),
                     name.size(), f.second.size(), NGHTTP2_NV_FLAG_NO_COPY_NAME});
    }
    return nghttp2_submit_request(session, nullptr, nva.data(), nva.size(), nullptr, nullptr);
  }
  static std::vector<std::pair<std::string, std::string>> basic(const std::string& path) {
    return {{":method", "GET"}, {":scheme", "http"}, {":path", path}, {":authority", "example.com"}};
  }
};

}  // namespace

TEST_CASE("Http2: GET round trip preserves headers") {
  Pair p;
  p.server_callbacks.on_complete = [](ServerStreamHandler& s) { s.respond(200, "hello"); };

  RequestHeaders req = Pair::get("/hello?x=1");
  req.add("X-Custom", "Value");
  req.add("accept", "*/*");
  req.add("x-multi", "a");
  req.add("x-multi", "b");
  req.add("Connection", "keep-alive");
  req.add("Keep-Alive", "timeout=5");
  req.add("Proxy-Connection", "keep-alive");
  req.add("Transfer-Encoding", "chunked");
  req.add("Upgrade", "h2c");
  req.add("TE", "trailers");
  req.add("cookie", "a=1");
  req.add("cookie", "b=2");
  ClientStreamHandler& c = p.start(req, true);
  p.pump();

  REQUIRE(p.server_callbacks.streams.size() == 1);
  ServerStreamHandler& s = *p.server_callbacks.streams[0];
  REQUIRE(s.headers);
  CHECK(s.headers->method == "GET");
  CHECK(s.headers->path == "/hello?x=1");
  CHECK(s.headers->authority == "example.com");
  CHECK(s.headers->scheme == "http");
  CHECK(s.headers->protocol.empty());
  const auto& e = s.headers->entries();
  // Order kept, names lowercased, connection-specific fields gone, cookie crumbs joined.
  std::vector<std::string> names;
  for (const auto& entry : e) names.push_back(entry.name);
  CHECK(names == std::vector<std::string>{"x-custom", "accept", "x-multi", "x-multi", "te", "cookie"});
  CHECK(*s.headers->get("x-custom") == "Value");
  CHECK(s.headers->getJoined("x-multi") == "a, b");
  CHECK(*s.headers->get("te") == "trailers");
  CHECK(*s.headers->get("cookie") == "a=1; b=2");
  CHECK(s.complete);
  CHECK(s.body.empty());

  REQUIRE(c.headers);
  CHECK(c.headers->status == 200);
  CHECK(*c.headers->get("x-served-by") == "strait");
  CHECK(*c.headers->get("content-type") == "text/plain");
  CHECK(c.body == "hello");
  CHECK(c.complete);
  CHECK_FALSE(c.reset);
  CHECK_FALSE(s.reset);
  CHECK(p.client->activeStreams() == 0);
  CHECK(p.server->activeStreams() == 0);
  CHECK(p.server->protocol() == Protocol::Http2);
  CHECK(p.server_ok);
  CHECK(p.client_ok);

  SECTION("an HTTP/1 Host header becomes :authority") {
    RequestHeaders h1 = Pair::get("/h1");
    h1.authority.clear();
    h1.add("Host", "h1.example:8080");
    ClientStreamHandler& c2 = p.start(h1, true);
    p.pump();
    REQUIRE(p.server_callbacks.streams.size() == 2);
    ServerStreamHandler& s2 = *p.server_callbacks.streams[1];
    CHECK(s2.headers->authority == "h1.example:8080");
    CHECK(s2.headers->get("host") == nullptr);
    CHECK(c2.complete);
  }
}

TEST_CASE("Http2: POST with a 1 MiB body streams intact both ways") {
  Pair p;
  p.server_callbacks.on_complete = [](ServerStreamHandler& s) {
    ResponseHeaders h;
    h.status = 200;
    s.encoder->encodeHeaders(h, false);
    Buffer b;
    b.add(s.body);
    s.encoder->encodeData(b, true);
  };
  const std::string body = pattern(1024 * 1024, 3);
  ClientStreamHandler& c = p.start(Pair::post("/upload"), false);
  sendBody(*c.encoder, body, true);
  p.pump();

  REQUIRE(p.server_callbacks.streams.size() == 1);
  ServerStreamHandler& s = *p.server_callbacks.streams[0];
  CHECK(s.body.size() == body.size());
  CHECK(s.body == body);
  CHECK(s.data_calls > 1);  // streamed, not buffered whole
  CHECK(c.complete);
  CHECK(c.body.size() == body.size());
  CHECK(c.body == body);
  CHECK_FALSE(c.reset);
  CHECK(p.client->activeStreams() == 0);
  CHECK(p.server->activeStreams() == 0);
}

TEST_CASE("Http2: trailers both ways (gRPC-like)") {
  Pair p;
  p.server_callbacks.on_complete = [](ServerStreamHandler& s) { s.respond(200, "reply-message", true); };
  RequestHeaders req = Pair::post("/pkg.Service/Method");
  req.add("content-type", "application/grpc");
  req.add("te", "trailers");
  ClientStreamHandler& c = p.start(req, false);
  Buffer b;
  b.add("request-message");
  c.encoder->encodeData(b, false);
  TrailerMap t;
  t.add("X-Request-Trailer", "done");
  c.encoder->encodeTrailers(t);
  p.pump();

  REQUIRE(p.server_callbacks.streams.size() == 1);
  ServerStreamHandler& s = *p.server_callbacks.streams[0];
  CHECK(s.body == "request-message");
  REQUIRE(s.trailers);
  CHECK(*s.trailers->get("x-request-trailer") == "done");
  REQUIRE(c.headers);
  CHECK(c.headers->status == 200);
  CHECK(c.body == "reply-message");
  REQUIRE(c.trailers);
  CHECK(*c.trailers->get("grpc-status") == "0");
  CHECK(*c.trailers->get("grpc-message") == "ok");
  CHECK(c.complete);

  SECTION("trailers right after headers (no body)") {
    p.server_callbacks.on_complete = [](ServerStreamHandler& s) { s.respond(200, "", true); };
    ClientStreamHandler& c2 = p.start(Pair::get("/empty"), true);
    p.pump();
    REQUIRE(c2.headers);
    CHECK(c2.body.empty());
    REQUIRE(c2.trailers);
    CHECK(*c2.trailers->get("grpc-status") == "0");
    CHECK(c2.complete);
    CHECK_FALSE(c2.reset);
  }
}

TEST_CASE("Http2: informational responses reach decode1xxHeaders") {
  Pair p;
  p.server_callbacks.on_headers = [](ServerStreamHandler& s) {
    ResponseHeaders h;
    h.status = 100;
    s.encoder->encode1xxHeaders(h);
  };
  p.server_callbacks.on_complete = [](ServerStreamHandler& s) { s.respond(201, "made"); };
  ClientStreamHandler& c = p.start(Pair::post("/expect"), false);
  p.pump();
  CHECK(c.informational == std::vector<uint32_t>{100});
  CHECK_FALSE(c.headers);
  Buffer b;
  b.add("payload");
  c.encoder->encodeData(b, true);
  p.pump();
  REQUIRE(c.headers);
  CHECK(c.headers->status == 201);
  CHECK(c.body == "made");
}

TEST_CASE("Http2: 50 concurrent streams on one connection") {
  Pair p;
  p.server_callbacks.on_complete = [](ServerStreamHandler& s) {
    s.respond(200, "response for " + s.headers->path + ": " + std::to_string(s.body.size()));
  };
  std::vector<ClientStreamHandler*> handlers;
  for (int i = 0; i < 50; ++i) {
    ClientStreamHandler& c = p.start(Pair::post("/s" + std::to_string(i)), false);
    sendBody(*c.encoder, pattern(1000 + i * 100, i), true);
    handlers.push_back(&c);
  }
  CHECK(p.client->activeStreams() == 50);
  p.pump();
  REQUIRE(p.server_callbacks.streams.size() == 50);
  for (int i = 0; i < 50; ++i) {
    ClientStreamHandler& c = *handlers[i];
    CHECK(c.complete);
    CHECK(c.body == "response for /s" + std::to_string(i) + ": " + std::to_string(1000 + i * 100));
  }
  for (auto& s : p.server_callbacks.streams) {
    size_t i = std::stoul(s->headers->path.substr(2));
    CHECK(s->body == pattern(1000 + i * 100, static_cast<unsigned>(i)));
  }
  CHECK(p.client->activeStreams() == 0);
  CHECK(p.server->activeStreams() == 0);
}

TEST_CASE("Http2: RST_STREAM propagates both ways") {
  Pair p;
  SECTION("client resets") {
    ClientStreamHandler& c = p.start(Pair::post("/cancel"), false);
    p.pump();
    REQUIRE(p.server_callbacks.streams.size() == 1);
    c.encoder->stream().resetStream(StreamResetReason::LocalReset);
    p.pump();
    ServerStreamHandler& s = *p.server_callbacks.streams[0];
    REQUIRE(s.reset);
    CHECK(*s.reset == StreamResetReason::RemoteReset);
    CHECK_FALSE(c.reset);  // a local reset is not reported back to its author
    CHECK(p.server->activeStreams() == 0);
    CHECK(p.client->activeStreams() == 0);
  }
  SECTION("server resets") {
    p.server_callbacks.on_headers = [](ServerStreamHandler& s) {
      s.encoder->stream().resetStream(StreamResetReason::LocalReset);
    };
    ClientStreamHandler& c = p.start(Pair::get("/reset-me"), true);
    p.pump();
    REQUIRE(c.reset);
    CHECK(*c.reset == StreamResetReason::RemoteReset);
    CHECK_FALSE(c.headers);
    CHECK(p.client->activeStreams() == 0);
    CHECK(p.server->activeStreams() == 0);
  }
  SECTION("server refuses") {
    p.server_callbacks.on_headers = [](ServerStreamHandler& s) {
      s.encoder->stream().resetStream(StreamResetReason::RefusedStream);
    };
    ClientStreamHandler& c = p.start(Pair::get("/refuse-me"), true);
    p.pump();
    REQUIRE(c.reset);
    CHECK(*c.reset == StreamResetReason::RefusedStream);
  }
  SECTION("reset after the response began: no truncated body passed as complete") {
    p.server_callbacks.on_headers = [](ServerStreamHandler& s) {
      ResponseHeaders h;
      h.status = 200;
      s.encoder->encodeHeaders(h, false);
      Buffer b;
      b.add("partial");
      s.encoder->encodeData(b, false);
    };
    ClientStreamHandler& c = p.start(Pair::get("/partial"), true);
    p.pump();
    CHECK(c.body == "partial");
    p.server_callbacks.streams[0]->encoder->stream().resetStream(StreamResetReason::LocalReset);
    p.pump();
    CHECK_FALSE(c.complete);
    REQUIRE(c.reset);
    CHECK(*c.reset == StreamResetReason::RemoteReset);
  }
  CHECK(p.server_ok);
  CHECK(p.client_ok);
}

TEST_CASE("Http2: streams beyond MAX_CONCURRENT_STREAMS are refused") {
  CodecSettings server_settings;
  server_settings.max_concurrent_streams = 5;
  Pair p(server_settings);
  // Ten requests leave before the client has seen the server's SETTINGS.
  for (int i = 0; i < 10; ++i) p.start(Pair::get("/r" + std::to_string(i)), true);
  p.pump();
  CHECK(p.server_callbacks.streams.size() == 5);
  int refused = 0;
  for (auto& r : p.requests) {
    if (r->reset && *r->reset == StreamResetReason::RefusedStream) ++refused;
  }
  CHECK(refused == 5);
  CHECK(p.client_callbacks.max_streams == std::vector<uint32_t>{5});
  CHECK(p.client->activeStreams() == 5);
  CHECK_FALSE(p.client->canOpenStream());
  // Completing one frees a slot.
  p.server_callbacks.streams[0]->respond(200, "ok");
  p.pump();
  CHECK(p.client->activeStreams() == 4);
  CHECK(p.client->canOpenStream());
  CHECK(p.server_ok);
}

TEST_CASE("Http2: a read-disabled stream stops the peer at the window, then resumes") {
  CodecSettings server_settings;
  server_settings.initial_stream_window_size = 65535;
  CodecSettings client_settings;
  client_settings.stream_buffer_limit = 128 * 1024;
  Pair p(server_settings, client_settings);
  p.server_callbacks.on_headers = [](ServerStreamHandler& s) { s.encoder->stream().readDisable(true); };
  p.server_callbacks.on_complete = [](ServerStreamHandler& s) { s.respond(200, "got it"); };

  const std::string body = pattern(1024 * 1024, 9);
  ClientStreamHandler& c = p.start(Pair::post("/slow"), false);
  Buffer b;
  b.add(body);
  c.encoder->encodeData(b, true);
  CHECK(c.above == 1);  // 1 MiB pending > 128 KiB limit
  p.pump();
  REQUIRE(p.server_callbacks.streams.size() == 1);
  ServerStreamHandler& s = *p.server_callbacks.streams[0];
  // Data up to the window was delivered; then the client stopped (the window never reopened).
  CHECK(s.body.size() == 65535);
  CHECK_FALSE(s.complete);
  p.pump();
  CHECK(s.body.size() == 65535);
  CHECK(c.below == 0);

  s.encoder->stream().readDisable(false);
  p.pump();
  CHECK(s.complete);
  CHECK(s.body == body);
  CHECK(c.below == 1);
  CHECK(c.complete);
  CHECK(c.body == "got it");
}

TEST_CASE("Http2: a slow response reader backs up the server stream's watermarks") {
  CodecSettings server_settings;
  server_settings.stream_buffer_limit = 256 * 1024;
  CodecSettings client_settings;
  client_settings.initial_stream_window_size = 65535;
  Pair p(server_settings, client_settings);
  const std::string body = pattern(2 * 1024 * 1024, 5);
  p.server_callbacks.on_complete = [&](ServerStreamHandler& s) { s.respond(200, body); };
  ClientStreamHandler& c = p.start(Pair::get("/download"), true);
  c.encoder->stream().readDisable(true);
  p.pump();
  REQUIRE(p.server_callbacks.streams.size() == 1);
  ServerStreamHandler& s = *p.server_callbacks.streams[0];
  CHECK(s.above == 1);
  CHECK(s.below == 0);
  CHECK(c.body.size() == 65535);
  c.encoder->stream().readDisable(false);
  p.pump();
  CHECK(c.complete);
  CHECK(c.body == body);
  CHECK(s.below == 1);
}

TEST_CASE("Http2: the transport's watermarks hold DATA and reach every stream") {
  Pair p;
  p.server_callbacks.on_complete = [](ServerStreamHandler& s) { s.respond(200, pattern(100000, 1)); };
  p.start(Pair::get("/a"), true);
  p.pump();
  p.server->onUnderlyingConnectionAboveWriteBufferHighWatermark();
  ClientStreamHandler& c = p.start(Pair::get("/b"), true);
  p.pump();
  REQUIRE(p.server_callbacks.streams.size() == 2);
  ServerStreamHandler& s = *p.server_callbacks.streams[1];
  CHECK(s.above == 1);  // a stream born while the connection is backed up hears it at once
  REQUIRE(c.headers);   // HEADERS still flow
  CHECK(c.body.empty());  // DATA waits
  p.server->onUnderlyingConnectionBelowWriteBufferLowWatermark();
  CHECK(s.below == 1);
  p.pump();
  CHECK(c.body == pattern(100000, 1));
  CHECK(c.complete);
}

TEST_CASE("Http2: malformed requests are reset and never delivered") {
  RawClient raw(/*http_messaging=*/false);
  raw.server_callbacks.on_complete = [](ServerStreamHandler& s) { s.respond(200, "fine"); };
  auto with = [](std::string name, std::string value) {
    auto f = RawClient::basic("/bad");
    f.push_back({std::move(name), std::move(value)});
    return f;
  };
  int32_t upper = raw.request(with("X-Upper", "a"));
  int32_t connection = raw.request(with("connection", "close"));
  int32_t te = raw.request(with("te", "gzip"));
  int32_t crlf = raw.request(with("x-evil", "a\r\nx-injected: 1"));
  int32_t space = raw.request(with("bad name", "v"));
  int32_t no_path = raw.request({{":method", "GET"}, {":scheme", "http"}, {":authority", "example.com"}});
  int32_t unknown_pseudo = raw.request(with(":foo", "bar"));
  int32_t host_mismatch = raw.request(with("host", "other.example"));
  int32_t good = raw.request(RawClient::basic("/good"));
  raw.exchange();
  raw.exchange();

  for (int32_t id : {upper, connection, te, crlf, space, no_path, unknown_pseudo, host_mismatch}) {
    INFO("stream " << id);
    REQUIRE(raw.closed.count(id) == 1);
    CHECK(raw.closed[id] == NGHTTP2_PROTOCOL_ERROR);
    CHECK(raw.status.count(id) == 0);
  }
  // Only the good request reached the application; the connection lives on.
  REQUIRE(raw.server_callbacks.streams.size() == 1);
  CHECK(raw.server_callbacks.streams[0]->headers->path == "/good");
  CHECK(raw.status[good] == "200");
  CHECK(raw.server_ok);
  CHECK_FALSE(raw.goaway);
  CHECK(raw.server->activeStreams() == 0);
}

TEST_CASE("Http2: header limits and HPACK bombs reset the stream") {
  Pair p;
  p.server_callbacks.on_complete = [](ServerStreamHandler& s) { s.respond(200, "ok"); };
  SECTION("HPACK bomb: a small block that decodes past the limit") {
    RequestHeaders req = Pair::get("/bomb");
    // Small enough for the HPACK encoder to index (under 3/4 of the 4 KiB table): sent once, then
    // referenced by a one-byte index 24 times: 72 KB decoded from under 4 KB on the wire.
    const std::string big(2900, 'x');
    for (int i = 0; i < 25; ++i) req.add("x-big", big);
    ClientStreamHandler& c = p.start(req, true);
    p.dispatcher.runDeferredFlushes();
    size_t wire = p.client_transport.out.length();
    CHECK(wire < 10000);
    p.pump();
    REQUIRE(c.reset);
    CHECK(*c.reset == StreamResetReason::RemoteReset);
  }
  SECTION("too many headers") {
    RequestHeaders req = Pair::get("/many");
    for (int i = 0; i < 101; ++i) req.add("x-h" + std::to_string(i), "v");
    ClientStreamHandler& c = p.start(req, true);
    p.pump();
    REQUIRE(c.reset);
    CHECK(*c.reset == StreamResetReason::RemoteReset);
  }
  SECTION("headers over the size limit, across CONTINUATION frames") {
    RequestHeaders req = Pair::get("/large");
    for (int i = 0; i < 7; ++i) req.add("x-large-" + std::to_string(i), std::string(9000, static_cast<char>('a' + i)));
    ClientStreamHandler& c = p.start(req, true);
    p.dispatcher.runDeferredFlushes();
    CHECK(p.client_transport.out.length() > 16384);  // more than one frame
    p.pump();
    REQUIRE(c.reset);
  }
  CHECK(p.server_callbacks.streams.empty());
  // The connection survives: a normal request still works.
  ClientStreamHandler& ok = p.start(Pair::get("/after"), true);
  p.pump();
  CHECK(ok.complete);
  CHECK(ok.body == "ok");
  CHECK(p.server_ok);
}

TEST_CASE("Http2: a rapid-reset burst closes the connection") {
  RawClient raw(/*http_messaging=*/true);
  raw.exchange();
  for (int i = 0; i < 300 && raw.server_ok; ++i) {
    int32_t id = raw.request(RawClient::basic("/r" + std::to_string(i)));
    raw.produce();  // HEADERS leave before the RST_STREAM
    nghttp2_submit_rst_stream(raw.session, NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL);
    raw.produce();
    if (i % 20 == 19) raw.exchange();
  }
  raw.exchange();
  CHECK_FALSE(raw.server_ok);
  CHECK(raw.server_error.detail.find("reset") != std::string::npos);
  CHECK(raw.goaway);
  CHECK(raw.goaway_code == NGHTTP2_ENHANCE_YOUR_CALM);
  CHECK(raw.server_transport.close_calls == 1);
  CHECK(raw.server_callbacks.streams.size() <= 120);
  for (auto& s : raw.server_callbacks.streams) {
    REQUIRE(s->reset);
    CHECK(*s->reset == StreamResetReason::RemoteReset);
  }
  // Other connections are unaffected.
  Pair other;
  other.server_callbacks.on_complete = [](ServerStreamHandler& s) { s.respond(200, "ok"); };
  ClientStreamHandler& c = other.start(Pair::get("/"), true);
  other.pump();
  CHECK(c.complete);
}

TEST_CASE("Http2: many cancelled streams among completed ones are tolerated") {
  RawClient raw(/*http_messaging=*/true);
  raw.server_callbacks.on_complete = [](ServerStreamHandler& s) { s.respond(200, "ok"); };
  raw.exchange();
  // 150 resets, but 300 completed requests: resets do not dominate.
  for (int i = 0; i < 450; ++i) {
    int32_t id = raw.request(RawClient::basic("/m" + std::to_string(i)));
    raw.produce();
    if (i % 3 == 0) {
      nghttp2_submit_rst_stream(raw.session, NGHTTP2_FLAG_NONE, id, NGHTTP2_CANCEL);
      raw.produce();
    }
    raw.exchange();
  }
  CHECK(raw.server_ok);
  CHECK_FALSE(raw.goaway);
}

TEST_CASE("Http2: PING flood while our replies are not read closes the connection") {
  SECTION("one burst") {
    RawClient raw(true);
    raw.exchange();
    raw.server->onUnderlyingConnectionAboveWriteBufferHighWatermark();
    for (int i = 0; i < 1500; ++i) nghttp2_submit_ping(raw.session, NGHTTP2_FLAG_NONE, nullptr);
    raw.exchange();
    CHECK_FALSE(raw.server_ok);
    CHECK(raw.server_transport.close_calls == 1);
  }
  SECTION("trickled") {
    RawClient raw(true);
    raw.exchange();
    raw.server->onUnderlyingConnectionAboveWriteBufferHighWatermark();
    for (int round = 0; round < 20 && raw.server_ok; ++round) {
      for (int i = 0; i < 100; ++i) nghttp2_submit_ping(raw.session, NGHTTP2_FLAG_NONE, nullptr);
      raw.exchange();
    }
    CHECK_FALSE(raw.server_ok);
    CHECK(raw.server_error.detail.find("flood") != std::string::npos);
  }
  SECTION("SETTINGS flood") {
    RawClient raw(true);
    raw.exchange();
    raw.server->onUnderlyingConnectionAboveWriteBufferHighWatermark();
    for (int i = 0; i < 1500; ++i) nghttp2_submit_settings(raw.session, NGHTTP2_FLAG_NONE, nullptr, 0);
    raw.exchange();
    CHECK_FALSE(raw.server_ok);
    CHECK(raw.server_transport.close_calls == 1);
  }
  SECTION("a peer that reads its answers may ping a lot") {
    RawClient raw(true);
    raw.exchange();
    for (int round = 0; round < 20; ++round) {
      for (int i = 0; i < 100; ++i) nghttp2_submit_ping(raw.session, NGHTTP2_FLAG_NONE, nullptr);
      raw.exchange();
    }
    CHECK(raw.server_ok);
    CHECK(raw.ping_acks == 2000);
  }
}

TEST_CASE("Http2: GOAWAY from the server") {
  Pair p;
  ClientStreamHandler& c = p.start(Pair::get("/inflight"), true);
  p.pump();
  REQUIRE(p.server_callbacks.streams.size() == 1);
  CHECK(p.client->canOpenStream());
  p.server->goAway();
  p.pump();
  CHECK(p.client_callbacks.goaways == 1);
  CHECK_FALSE(p.client->canOpenStream());
  CHECK(p.server_transport.close_calls == 0);  // a stream is still open

  // A request sent after the GOAWAY is refused (safe to retry elsewhere).
  ClientStreamHandler& late = p.start(Pair::get("/late"), true);
  p.pump();
  REQUIRE(late.reset);
  CHECK(*late.reset == StreamResetReason::RefusedStream);

  // The in-flight stream completes, then both sides close.
  p.server_callbacks.streams[0]->respond(200, "last");
  p.pump();
  CHECK(c.complete);
  CHECK(c.body == "last");
  CHECK(p.server_callbacks.streams.size() == 1);
  CHECK(p.server_transport.close_calls == 1);
  CHECK(p.client_transport.close_calls == 1);
  CHECK(p.server_ok);
  CHECK(p.client_ok);
}

TEST_CASE("Http2: GOAWAY refuses streams the server never processed") {
  Pair p;
  p.pump();
  // Two requests in flight; the server has processed neither when it goes away.
  ClientStreamHandler& a = p.start(Pair::get("/a"), true);
  ClientStreamHandler& b = p.start(Pair::get("/b"), true);
  p.server->goAway();
  p.pump();
  CHECK(p.client_callbacks.goaways == 1);
  REQUIRE(a.reset);
  REQUIRE(b.reset);
  CHECK(*a.reset == StreamResetReason::RefusedStream);
  CHECK(*b.reset == StreamResetReason::RefusedStream);
  CHECK(p.server_callbacks.streams.empty());
}

TEST_CASE("Http2: a client that says GOAWAY and leaves is no protocol error") {
  // h2load, browsers and gRPC end a connection with GOAWAY then FIN. The server's session is then done,
  // it asks its transport to close, and a connection with nothing to flush closes at once, inside the
  // dispatch() that read the GOAWAY. That dispatch succeeds: the HCM counted a downstream protocol error
  // for every such connection before.
  Pair p;
  ClientStreamHandler& c = p.start(Pair::get("/one"), true);
  p.pump();
  REQUIRE(p.server_callbacks.streams.size() == 1);
  p.server_callbacks.streams[0]->respond(200, "ok");
  p.pump();
  REQUIRE(c.complete);
  p.server_transport.on_close = [&] { p.server->onTransportClosed(); };
  p.client->goAway();
  p.pump();
  CHECK(p.server_transport.close_calls == 1);
  CHECK(p.server_ok);
  CHECK(p.server_error.detail.empty());
  // Whatever comes after the close still fails: the session is gone.
  CodecError error;
  Buffer junk;
  junk.add("x");
  CHECK_FALSE(p.server->dispatch(junk, error));
}

TEST_CASE("Http2: transport close resets open streams") {
  Pair p;
  ClientStreamHandler& c = p.start(Pair::post("/open"), false);
  p.pump();
  REQUIRE(p.server_callbacks.streams.size() == 1);
  p.client->onTransportClosed();
  p.server->onTransportClosed();
  REQUIRE(c.reset);
  CHECK(*c.reset == StreamResetReason::ConnectionTermination);
  REQUIRE(p.server_callbacks.streams[0]->reset);
  CHECK(*p.server_callbacks.streams[0]->reset == StreamResetReason::ConnectionTermination);
  CHECK(p.client->activeStreams() == 0);
  CHECK(p.server->activeStreams() == 0);
  CHECK_FALSE(p.client->canOpenStream());
  // A request started anyway fails at once instead of hanging.
  ClientStreamHandler& late = p.start(Pair::get("/late"), true);
  REQUIRE(late.reset);
  CHECK(*late.reset == StreamResetReason::ConnectionTermination);
  CodecError error;
  Buffer junk;
  junk.add("x");
  CHECK_FALSE(p.client->dispatch(junk, error));
}

TEST_CASE("Http2: a non-HTTP/2 preface is a protocol error") {
  event::Dispatcher dispatcher("http2-preface");
  FakeTransport transport(dispatcher);
  TestServerCallbacks callbacks;
  auto server = http2::createServerConnection(transport, callbacks, {});
  Buffer in;
  in.add("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  CodecError error;
  CHECK_FALSE(server->dispatch(in, error));
  CHECK(error.status == 400);
  CHECK_FALSE(error.detail.empty());
  CHECK(callbacks.streams.empty());
}

namespace {
void frame(std::string& out, uint8_t type, uint8_t flags, uint32_t stream, const std::string& payload) {
  out.push_back(static_cast<char>(payload.size() >> 16));
  out.push_back(static_cast<char>(payload.size() >> 8));
  out.push_back(static_cast<char>(payload.size()));
  out.push_back(static_cast<char>(type));
  out.push_back(static_cast<char>(flags));
  out.push_back(static_cast<char>(stream >> 24));
  out.push_back(static_cast<char>(stream >> 16));
  out.push_back(static_cast<char>(stream >> 8));
  out.push_back(static_cast<char>(stream));
  out += payload;
}
}  // namespace

TEST_CASE("Http2: a CONTINUATION flood closes the connection") {
  event::Dispatcher dispatcher("http2-continuation");
  FakeTransport transport(dispatcher);
  TestServerCallbacks callbacks;
  auto server = http2::createServerConnection(transport, callbacks, {});
  std::string wire = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  frame(wire, NGHTTP2_SETTINGS, 0, 0, "");
  // HPACK: :method GET, :scheme http, :path / (static table), :authority literal.
  std::string block = "\x82\x86\x84\x41\x0b" "example.com";
  frame(wire, NGHTTP2_HEADERS, NGHTTP2_FLAG_END_STREAM, 1, block);  // no END_HEADERS
  const std::string field("\x00\x01x\x01y", 5);                     // literal "x: y", not indexed
  for (int i = 0; i < 50; ++i) frame(wire, NGHTTP2_CONTINUATION, 0, 1, field);
  Buffer in;
  in.add(wire);
  CodecError error;
  CHECK_FALSE(server->dispatch(in, error));
  CHECK(error.status == 400);
  CHECK(callbacks.streams.empty());
  CHECK(transport.close_calls == 1);

  SECTION("a header block in a few CONTINUATION frames is fine") {
    event::Dispatcher d2("http2-continuation-ok");
    FakeTransport t2(d2);
    TestServerCallbacks cb2;
    auto s2 = http2::createServerConnection(t2, cb2, {});
    std::string ok = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    frame(ok, NGHTTP2_SETTINGS, 0, 0, "");
    frame(ok, NGHTTP2_HEADERS, NGHTTP2_FLAG_END_STREAM, 1, block);
    for (int i = 0; i < 3; ++i) frame(ok, NGHTTP2_CONTINUATION, 0, 1, field);
    frame(ok, NGHTTP2_CONTINUATION, NGHTTP2_FLAG_END_HEADERS, 1, field);
    Buffer in2;
    in2.add(ok);
    CodecError e2;
    CHECK(s2->dispatch(in2, e2));
    REQUIRE(cb2.streams.size() == 1);
    CHECK(cb2.streams[0]->headers->authority == "example.com");
    CHECK(cb2.streams[0]->headers->count("x") == 4);
  }
}

// Found by tests/fuzz/h2_client_fuzz (regressions/h2_client_fuzz/status-000): nghttp2 only checks that
// :status is a number, so "000" reached the router as status 0.
// A client connection with one GET sent on stream 1, for tests that then feed it a server's frames.
struct OneGetClient {
  explicit OneGetClient(const char* name) : dispatcher(name), transport(dispatcher) {
    client = http2::createClientConnection(transport, callbacks, {});
    RequestEncoder& e = client->newStream(h);
    e.stream().setCallbacks(&h);
    RequestHeaders req;
    req.method = "GET";
    req.path = "/";
    req.scheme = "http";
    req.authority = "up.example";
    e.encodeHeaders(req, true);
    dispatcher.runDeferredFlushes();
  }
  event::Dispatcher dispatcher;
  FakeTransport transport;
  TestClientCallbacks callbacks;
  std::unique_ptr<ClientConnection> client;
  ClientStreamHandler h;
};

TEST_CASE("Http2: a response :status that is not 100..599 resets the stream") {
  for (const std::string status : {"204", "000", "099", "600", "2000", "20"}) {
    INFO(":status " << status);
    OneGetClient rig("http2-status");
    auto& client = rig.client;
    auto& h = rig.h;
    // The server's SETTINGS, then HEADERS (END_STREAM | END_HEADERS) on stream 1 holding one HPACK literal
    // with incremental indexing, name :status (static index 8), raw value.
    std::string block = "\x48";
    block.push_back(static_cast<char>(status.size()));
    block += status;
    std::string in;
    frame(in, 4, 0, 0, "");
    frame(in, 1, 0x05, 1, block);
    Buffer b;
    b.add(in);
    CodecError error;
    CHECK(client->dispatch(b, error));
    if (status == "204") {
      REQUIRE(h.headers != nullptr);
      CHECK(h.headers->status == 204);
      CHECK_FALSE(h.reset.has_value());
    } else {
      CHECK(h.headers == nullptr);
      REQUIRE(h.reset.has_value());
      CHECK(*h.reset == StreamResetReason::ProtocolError);
    }
    client->onTransportClosed();
  }
}

// Found by h2_client_fuzz (tests/fuzz/regressions/h2_client_fuzz/data-before-final-headers): a 100
// response, then DATA on the same stream before any final response headers, reached decodeData.
TEST_CASE("Http2: DATA after a 1xx and before the final response resets the stream") {
  for (const bool empty : {true, false}) {
    INFO((empty ? "empty DATA" : "DATA with a body"));
    OneGetClient rig("http2-data-before-headers");
    auto& client = rig.client;
    auto& h = rig.h;
    // SETTINGS; HEADERS (END_HEADERS) with :status 100 (static index 9 is "204": literal name index 8);
    // then DATA on stream 1.
    std::string in;
    frame(in, 4, 0, 0, "");
    frame(in, 1, 0x04, 1, std::string("\x48\x03" "100", 5));
    frame(in, 0, 0x00, 1, empty ? "" : "body");
    Buffer b;
    b.add(in);
    CodecError error;
    CHECK(client->dispatch(b, error));
    CHECK(h.informational == std::vector<uint32_t>{100});
    CHECK(h.headers == nullptr);
    CHECK(h.body.empty());
    REQUIRE(h.reset.has_value());
    CHECK(*h.reset == StreamResetReason::ProtocolError);
    client->onTransportClosed();
  }
}
