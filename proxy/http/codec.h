#pragma once

#include <cstdint>
#include <string>

#include "proxy/common/buffer.h"
#include "proxy/http/header_map.h"

namespace strait::event {
class Dispatcher;
}

namespace strait::http {

// The contract between the HTTP codecs (http1/ on llhttp, http2/ on nghttp2) and their users (the
// connection manager downstream, the connection pools upstream). Users never learn which version a
// stream runs on: both codecs speak in RequestHeaders / ResponseHeaders / Buffer / TrailerMap.

enum class Protocol { Http10, Http11, Http2 };
const char* protocolName(Protocol p);

enum class StreamResetReason {
  LocalReset,             // we reset it (e.g. a filter gave up, a timeout fired)
  RemoteReset,            // the peer sent RST_STREAM (HTTP/2)
  ConnectionFailure,      // the connection could not be made
  ConnectionTermination,  // the connection closed under the stream
  Overflow,               // too many streams / buffers exceeded
  RefusedStream,          // the peer refused it before processing (HTTP/2 REFUSED_STREAM): safe to retry
  ProtocolError,          // the peer broke the protocol
  // The response is complete and the rest of the request is not wanted (a local reply, an upstream
  // that answered early). HTTP/2: RST_STREAM(NO_ERROR) once the whole response has been sent
  // (RFC 9113 section 8.1), never ahead of it; HTTP/1: the connection closes after the response.
  ResponseComplete,
};
const char* resetReasonName(StreamResetReason r);

// What a codec needs from the byte transport under it (a network::Connection, or a test double).
class CodecTransport {
 public:
  virtual ~CodecTransport() = default;
  // Sends bytes (moves them out of `data`); `end_stream` half-closes after them.
  virtual void write(common::Buffer& data, bool end_stream) = 0;
  // Closes the transport after flushing what was written.
  virtual void closeAfterFlush() = 0;
  // Stops / resumes reading from the transport (reference counted).
  virtual void readDisable(bool disable) = 0;
  virtual event::Dispatcher& dispatcher() = 0;
};

// Per-stream notifications, for whoever holds a stream's encoder.
class StreamCallbacks {
 public:
  virtual ~StreamCallbacks() = default;
  virtual void onResetStream(StreamResetReason reason) = 0;
  // The stream's outgoing data is backing up (HTTP/2: the peer's window is closed and our per-stream
  // buffer passed its limit; HTTP/1: the connection's write buffer passed its high watermark).
  virtual void onAboveWriteBufferHighWatermark() = 0;
  virtual void onBelowWriteBufferLowWatermark() = 0;
};

class Stream {
 public:
  virtual ~Stream() = default;
  // One set of callbacks per stream side (set by the owner of the encoder).
  virtual void setCallbacks(StreamCallbacks* callbacks) = 0;
  // Abandons the stream (HTTP/2: RST_STREAM; HTTP/1: the connection is closed).
  virtual void resetStream(StreamResetReason reason) = 0;
  // Flow control, reference counted: while disabled, the codec stops delivering this stream's data
  // (HTTP/2: stops returning window to the peer; HTTP/1: stops reading the connection).
  virtual void readDisable(bool disable) = 0;
};

// Decoders receive a message; encoders send one.
class RequestDecoder {
 public:
  virtual ~RequestDecoder() = default;
  virtual void decodeHeaders(RequestHeadersPtr headers, bool end_stream) = 0;
  virtual void decodeData(common::Buffer& data, bool end_stream) = 0;
  virtual void decodeTrailers(TrailerMapPtr trailers) = 0;
};

class ResponseEncoder {
 public:
  virtual ~ResponseEncoder() = default;
  // An informational response (100 Continue, 103); never ends the stream.
  virtual void encode1xxHeaders(const ResponseHeaders& headers) = 0;
  virtual void encodeHeaders(const ResponseHeaders& headers, bool end_stream) = 0;
  virtual void encodeData(common::Buffer& data, bool end_stream) = 0;
  virtual void encodeTrailers(const TrailerMap& trailers) = 0;
  virtual Stream& stream() = 0;
};

class ResponseDecoder {
 public:
  virtual ~ResponseDecoder() = default;
  virtual void decode1xxHeaders(ResponseHeadersPtr headers) = 0;
  virtual void decodeHeaders(ResponseHeadersPtr headers, bool end_stream) = 0;
  virtual void decodeData(common::Buffer& data, bool end_stream) = 0;
  virtual void decodeTrailers(TrailerMapPtr trailers) = 0;
};

class RequestEncoder {
 public:
  virtual ~RequestEncoder() = default;
  virtual void encodeHeaders(const RequestHeaders& headers, bool end_stream) = 0;
  virtual void encodeData(common::Buffer& data, bool end_stream) = 0;
  virtual void encodeTrailers(const TrailerMap& trailers) = 0;
  virtual Stream& stream() = 0;
};

// A protocol error found while decoding: for HTTP/1 the connection manager answers with `status`
// (400, 431, 413, 505...) if no response has started, then closes. `detail` names the problem.
struct CodecError {
  uint32_t status = 400;
  std::string detail;
};

// Limits and knobs shared by both codecs (from the HTTP connection manager / cluster config).
struct CodecSettings {
  uint32_t max_request_headers_kb = 60;  // 431 beyond
  uint32_t max_headers_count = 100;      // 431 beyond
  uint32_t stream_buffer_limit = 1024 * 1024;
  // HTTP/2
  uint32_t max_concurrent_streams = 100;
  uint32_t initial_stream_window_size = 1024 * 1024;
  uint32_t initial_connection_window_size = 16 * 1024 * 1024;
  uint32_t hpack_table_size = 4096;
  uint32_t max_outbound_frames = 10000;
  uint32_t max_outbound_control_frames = 1000;
};

class ServerConnectionCallbacks {
 public:
  virtual ~ServerConnectionCallbacks() = default;
  // A new request began; return the decoder that receives it. `encoder` lives until the stream ends
  // (completes in both directions or is reset).
  virtual RequestDecoder& newStream(ResponseEncoder& encoder) = 0;
  // HTTP/1: the first byte of a request was parsed (also a pipelined one read together with the
  // previous request): its headers are now on the clock.
  virtual void onRequestBegin() {}
};

class ClientConnectionCallbacks {
 public:
  virtual ~ClientConnectionCallbacks() = default;
  // HTTP/2 GOAWAY received (no new streams on this connection).
  virtual void onGoAway() = 0;
  // The peer's SETTINGS changed how many streams we may open.
  virtual void onMaxConcurrentStreamsChanged(uint32_t max) { (void)max; }
};

class Connection {
 public:
  virtual ~Connection() = default;
  // Feeds received bytes (consumes `data`). Returns false on a protocol error, with `error` set; the
  // caller then answers (server side, if it can) and closes.
  virtual bool dispatch(common::Buffer& data, CodecError& error) = 0;
  virtual Protocol protocol() const = 0;
  // Graceful shutdown: HTTP/2 sends GOAWAY; HTTP/1 closes once the current response is done.
  virtual void goAway() = 0;
  // The transport's write buffer passed its watermarks: tell every stream.
  virtual void onUnderlyingConnectionAboveWriteBufferHighWatermark() = 0;
  virtual void onUnderlyingConnectionBelowWriteBufferLowWatermark() = 0;
  // The transport closed (remote or local): every open stream is reset with ConnectionTermination.
  virtual void onTransportClosed() = 0;
  // Streams open now.
  virtual size_t activeStreams() const = 0;
};

class ServerConnection : public Connection {
 public:
  // The first step of a graceful drain: HTTP/2 sends GOAWAY with the largest stream id (RFC 9113 6.8:
  // "shutting down soon", streams the client is opening still count); a later goAway() names the last
  // stream really taken. HTTP/1 has no such notice: it is goAway() (Connection: close on the next
  // response, or closing an idle connection).
  virtual void shutdownNotice() { goAway(); }
};

class ClientConnection : public Connection {
 public:
  // Starts a request on this connection; `decoder` receives the response.
  virtual RequestEncoder& newStream(ResponseDecoder& decoder) = 0;
  // Whether another stream may be opened now (HTTP/1: no request in flight; HTTP/2: below the peer's
  // max concurrent streams and no GOAWAY).
  virtual bool canOpenStream() const = 0;
};

}  // namespace strait::http
