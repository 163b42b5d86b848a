#pragma once

// The codecs' users as the HTTP fuzz targets play them: ServerStreams answers requests the way the
// connection manager and router do, ClientStreams sends requests the way the connection pools do. Both
// check the codec contract (proxy/http/codec.h) and abort when it is broken: nothing delivered on a
// stream after its end or its reset, headers once.

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

#include "proxy/http/codec.h"
#include "tests/fuzz/fuzz_support.h"

namespace strait::fuzz {

class ServerStreams;

struct ServerStream : http::RequestDecoder, http::StreamCallbacks {
  explicit ServerStream(ServerStreams& o, http::ResponseEncoder& e) : owner(o), encoder(&e) {}
  void decodeHeaders(http::RequestHeadersPtr h, bool end_stream) override;
  void decodeData(common::Buffer& data, bool end_stream) override;
  void decodeTrailers(http::TrailerMapPtr trailers) override;
  void onResetStream(http::StreamResetReason) override { reset = true; }
  void onAboveWriteBufferHighWatermark() override {}
  void onBelowWriteBufferLowWatermark() override {}
  bool tunnel() const;

  ServerStreams& owner;
  http::ResponseEncoder* encoder;
  http::RequestHeadersPtr headers;
  bool request_ended = false;
  bool reset = false;
  bool answered = false;  // our response ended: the encoder is not ours to touch any more
  bool read_disabled = false;
};

// `mode` picks how requests are answered:
//   bits 0-1  0: after dispatch() returns, once the request ended (the router's way)
//             1: from inside the decode call that ends the request (a local reply)
//             2: from inside decodeHeaders, body or not (an early local reply)
//             3: the stream is reset at its headers
//   bit 2     the stream is read-disabled from its headers until the next answerPending()
//   bits 3-4  the response: headers only / content-length body / chunked body with trailers / 204
//   bit 5     100-continue before the response when the request asks for it
//   bit 6     tunnels (CONNECT, Upgrade) are accepted (200 / 101) rather than refused (403)
class ServerStreams : public http::ServerConnectionCallbacks {
 public:
  explicit ServerStreams(uint8_t mode) : mode_(mode) {}
  http::RequestDecoder& newStream(http::ResponseEncoder& encoder) override;
  // What mode 0 answers, and read-disabled streams enabled again.
  void answerPending();

  void onHeaders(ServerStream& s);
  void onEnded(ServerStream& s);
  void answer(ServerStream& s);

  http::ServerConnection* connection = nullptr;

 private:
  uint8_t mode_;
  std::vector<std::unique_ptr<ServerStream>> streams_;
};

struct ClientStream : http::ResponseDecoder, http::StreamCallbacks {
  void decode1xxHeaders(http::ResponseHeadersPtr h) override;
  void decodeHeaders(http::ResponseHeadersPtr h, bool end_stream) override;
  void decodeData(common::Buffer& data, bool end_stream) override;
  void decodeTrailers(http::TrailerMapPtr trailers) override;
  void onResetStream(http::StreamResetReason) override { reset = true; }
  void onAboveWriteBufferHighWatermark() override {}
  void onBelowWriteBufferLowWatermark() override {}
  bool done() const { return reset || (response_ended && request_ended); }

  http::RequestEncoder* encoder = nullptr;
  bool tunnel = false;
  bool got_headers = false;
  uint32_t status = 0;
  bool response_ended = false;
  bool request_ended = false;
  bool reset = false;
};

// Requests of several shapes (GET, HEAD, POST with a body, POST with trailers, CONNECT, a WebSocket
// upgrade), one after the other or several at once, on a client connection.
class ClientStreams : public http::ClientConnectionCallbacks {
 public:
  void onGoAway() override { goaway = true; }
  // Opens a stream of shape `kind` if the connection takes one; false if not.
  bool open(http::ClientConnection& c, uint8_t kind);
  // Tunnels that got their 2xx send their bytes and half-close.
  void progress();
  // Whether every stream opened so far is done.
  bool allDone() const;
  size_t opened() const { return streams_.size(); }

  bool goaway = false;

 private:
  std::vector<std::unique_ptr<ClientStream>> streams_;
};

}  // namespace strait::fuzz
