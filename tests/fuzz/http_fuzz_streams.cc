#include "tests/fuzz/http_fuzz_streams.h"

#include <string_view>

namespace strait::fuzz {

namespace {

void send(http::ResponseEncoder& e, std::string_view s, bool end_stream) {
  common::Buffer b;
  b.add(s);
  e.encodeData(b, end_stream);
}

void send(http::RequestEncoder& e, std::string_view s, bool end_stream) {
  common::Buffer b;
  b.add(s);
  e.encodeData(b, end_stream);
}

}  // namespace

// ---- server side ----------------------------------------------------------------------------------

void ServerStream::decodeHeaders(http::RequestHeadersPtr h, bool end_stream) {
  FUZZ_CHECK(!reset, "request headers after a reset");
  FUZZ_CHECK(headers == nullptr, "request headers twice");
  FUZZ_CHECK(h != nullptr, "null request headers");
  headers = std::move(h);
  request_ended = end_stream;
  owner.onHeaders(*this);
}

void ServerStream::decodeData(common::Buffer& data, bool end_stream) {
  FUZZ_CHECK(!reset, "request data after a reset");
  FUZZ_CHECK(headers != nullptr, "request data before headers");
  FUZZ_CHECK(!request_ended, "request data after the end of the request");
  data.drain(data.length());
  if (end_stream) {
    request_ended = true;
    owner.onEnded(*this);
  }
}

void ServerStream::decodeTrailers(http::TrailerMapPtr trailers) {
  FUZZ_CHECK(!reset, "request trailers after a reset");
  FUZZ_CHECK(headers != nullptr, "request trailers before headers");
  FUZZ_CHECK(!request_ended, "request trailers after the end of the request");
  FUZZ_CHECK(trailers != nullptr, "null request trailers");
  request_ended = true;
  owner.onEnded(*this);
}

bool ServerStream::tunnel() const { return headers->method == "CONNECT" || !headers->protocol.empty(); }

http::RequestDecoder& ServerStreams::newStream(http::ResponseEncoder& encoder) {
  streams_.push_back(std::make_unique<ServerStream>(*this, encoder));
  ServerStream& s = *streams_.back();
  encoder.stream().setCallbacks(&s);
  return s;
}

void ServerStreams::onHeaders(ServerStream& s) {
  if ((mode_ & 3) == 3) {
    s.reset = true;  // ours: the encoder is not touched again whatever the codec calls back
    s.encoder->stream().resetStream(http::StreamResetReason::LocalReset);
    return;
  }
  if ((mode_ & 4) != 0) {
    s.read_disabled = true;
    s.encoder->stream().readDisable(true);
  }
  const std::string* expect = s.headers->get("expect");
  if ((mode_ & 0x20) != 0 && expect != nullptr && *expect == "100-continue" && !s.reset) {
    http::ResponseHeaders cont;
    cont.status = 100;
    s.encoder->encode1xxHeaders(cont);
  }
  if ((mode_ & 3) == 2 || ((mode_ & 3) == 1 && s.tunnel())) {
    answer(s);
    return;
  }
  if (s.request_ended) onEnded(s);
}

void ServerStreams::onEnded(ServerStream& s) {
  if ((mode_ & 3) == 1) answer(s);
}

void ServerStreams::answerPending() {
  for (size_t i = 0; i < streams_.size(); ++i) {
    ServerStream& s = *streams_[i];
    if (s.read_disabled && !s.reset && !s.answered) {
      s.read_disabled = false;
      s.encoder->stream().readDisable(false);
    }
    if ((mode_ & 3) == 0 && s.headers && (s.request_ended || s.tunnel())) answer(s);
  }
}

void ServerStreams::answer(ServerStream& s) {
  if (s.reset || s.answered || !s.headers) return;
  http::ResponseEncoder& e = *s.encoder;
  http::ResponseHeaders h;
  if (s.tunnel()) {
    const bool accept = (mode_ & 0x40) != 0;
    const bool h1_upgrade = connection != nullptr && connection->protocol() != http::Protocol::Http2 &&
                            s.headers->method != "CONNECT";
    h.status = !accept ? 403 : h1_upgrade ? 101 : 200;
    if (h1_upgrade && accept) {
      h.add("upgrade", s.headers->protocol);
      h.add("connection", "upgrade");
    }
    s.answered = !accept;
    e.encodeHeaders(h, !accept);
    if (!accept || s.reset) return;
    s.answered = true;
    send(e, "tunnel bytes", true);
    return;
  }
  const bool head = s.headers->method == "HEAD";
  s.answered = true;
  switch ((mode_ >> 3) & 3) {
    case 0:
      h.status = 200;
      e.encodeHeaders(h, true);
      break;
    case 1:
      h.status = 200;
      h.add("content-length", "5");
      e.encodeHeaders(h, head);
      if (!head && !s.reset) send(e, "hello", true);
      break;
    case 2: {
      h.status = 500;
      e.encodeHeaders(h, head);
      if (head || s.reset) break;
      send(e, "hel", false);
      if (s.reset) break;
      send(e, "lo", false);
      if (s.reset) break;
      http::TrailerMap t;
      t.add("grpc-status", "0");
      e.encodeTrailers(t);
      break;
    }
    default:
      h.status = 204;
      e.encodeHeaders(h, true);
      break;
  }
}

// ---- client side ----------------------------------------------------------------------------------

void ClientStream::decode1xxHeaders(http::ResponseHeadersPtr h) {
  FUZZ_CHECK(!reset && !response_ended, "1xx after the end or a reset");
  FUZZ_CHECK(!got_headers, "1xx after the final headers");
  FUZZ_CHECK(h != nullptr && h->status >= 100 && h->status < 200, "1xx with a final status");
}

void ClientStream::decodeHeaders(http::ResponseHeadersPtr h, bool end_stream) {
  FUZZ_CHECK(!reset, "response headers after a reset");
  FUZZ_CHECK(!got_headers, "response headers twice");
  FUZZ_CHECK(h != nullptr && h->status >= 100 && h->status <= 999, "response status out of range");
  got_headers = true;
  status = h->status;
  response_ended = end_stream;
}

void ClientStream::decodeData(common::Buffer& data, bool end_stream) {
  FUZZ_CHECK(!reset, "response data after a reset");
  FUZZ_CHECK(got_headers, "response data before headers");
  FUZZ_CHECK(!response_ended, "response data after the end");
  data.drain(data.length());
  response_ended = end_stream;
}

void ClientStream::decodeTrailers(http::TrailerMapPtr trailers) {
  FUZZ_CHECK(!reset, "response trailers after a reset");
  FUZZ_CHECK(got_headers, "response trailers before headers");
  FUZZ_CHECK(!response_ended, "response trailers after the end");
  FUZZ_CHECK(trailers != nullptr, "null response trailers");
  response_ended = true;
}

bool ClientStreams::open(http::ClientConnection& c, uint8_t kind) {
  if (!c.canOpenStream()) return false;
  streams_.push_back(std::make_unique<ClientStream>());
  ClientStream& s = *streams_.back();
  http::RequestEncoder& e = c.newStream(s);
  s.encoder = &e;
  e.stream().setCallbacks(&s);
  http::RequestHeaders h;
  h.authority = "upstream.example:8080";
  h.scheme = "http";
  h.path = "/fuzz?q=1";
  h.add("x-request-id", "1");
  switch (kind % 6) {
    case 0:
      h.method = "GET";
      break;
    case 1:
      h.method = "HEAD";
      break;
    case 2:
    case 3:
      h.method = "POST";
      if (c.protocol() != http::Protocol::Http2 && kind % 6 == 2) h.add("content-length", "4");
      break;
    case 4:
      h.method = "CONNECT";
      h.path.clear();
      h.scheme.clear();
      s.tunnel = true;
      break;
    default:
      h.method = "GET";
      h.protocol = "websocket";
      s.tunnel = true;
      break;
  }
  const bool body = kind % 6 == 2 || kind % 6 == 3;
  s.request_ended = !body && !s.tunnel;
  e.encodeHeaders(h, s.request_ended);
  if (body && !s.reset) {
    send(e, "body", kind % 6 == 2);
    if (kind % 6 == 3 && !s.reset) {
      http::TrailerMap t;
      t.add("x-trailer", "t");
      e.encodeTrailers(t);
    }
    s.request_ended = true;
  }
  return true;
}

void ClientStreams::progress() {
  for (size_t i = 0; i < streams_.size(); ++i) {
    ClientStream& s = *streams_[i];
    if (!s.tunnel || !s.got_headers || s.request_ended || s.reset) continue;
    s.request_ended = true;
    if (s.status == 101 || (s.status >= 200 && s.status < 300)) {
      send(*s.encoder, "tunnel bytes", true);
    } else {
      // Refused: the router gives up on the request side.
      s.reset = true;
      s.encoder->stream().resetStream(http::StreamResetReason::LocalReset);
    }
  }
}

bool ClientStreams::allDone() const {
  for (const auto& s : streams_) {
    if (!s->done()) return false;
  }
  return true;
}

}  // namespace strait::fuzz
