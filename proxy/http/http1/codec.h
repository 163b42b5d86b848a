#pragma once

#include <functional>
#include <memory>

#include "proxy/http/codec.h"

namespace strait::http::http1 {

// HTTP/1.1 codecs on llhttp (all lenient flags off, plus our own smuggling checks on top of its callbacks).
//
// Both factories return objects of the Http1* classes below: a caller that made the connection with these
// factories may static_cast to reach the HTTP/1-only calls.
std::unique_ptr<ServerConnection> createServerConnection(CodecTransport& transport, ServerConnectionCallbacks& callbacks,
                                                         const CodecSettings& settings);
std::unique_ptr<ClientConnection> createClientConnection(CodecTransport& transport, ClientConnectionCallbacks& callbacks,
                                                         const CodecSettings& settings);

// Server side, what HTTP/1 adds to the shared contract.
//
// Pipelining: one request at a time. Bytes that arrive after a complete request, while its response is not
// finished, stay inside the codec (the transport is readDisable(true)d meanwhile) and are parsed once the
// response completes, from a zero-delay timer on the transport's dispatcher, i.e. outside dispatch(). A
// protocol error found there cannot be returned by dispatch(), so it goes to the deferred error handler;
// without a handler the codec calls sendErrorResponse() itself.
//
// Upgrade / CONNECT: bytes after such a request are held until the response: a 101 (Upgrade) or a 2xx
// (CONNECT) turns the stream into a byte tunnel (decodeData / encodeData, end_stream = half-close); any other
// response closes the connection after it.
//
// A response that completes before its request was fully received closes the connection after it (the rest
// of that request is not delivered).
class Http1ServerConnection : public ServerConnection {
 public:
  virtual void setDeferredErrorHandler(std::function<void(const CodecError&)> handler) = 0;
  // Writes a bare error response (`HTTP/1.1 <status> <reason>`, content-length: 0, connection: close) unless a
  // response already started on this connection, then closes after flushing. For errors dispatch() reported
  // before any stream existed (no encoder to answer with).
  virtual void sendErrorResponse(const CodecError& error) = 0;
  // The peer half-closed (the transport read EOF). In a tunnel this ends the stream's request direction
  // (decodeData with end_stream); otherwise it changes nothing.
  virtual void onRemoteHalfClose() = 0;
};

// Client side, what HTTP/1 adds to the shared contract.
class Http1ClientConnection : public ClientConnection {
 public:
  // Whether any response byte arrived since the current stream was opened (it keeps its value after the stream
  // is reset, until the next newStream()). A stream reset with ConnectionTermination while this is false was
  // never answered: the pool may retry it once on a fresh connection.
  virtual bool responseStarted() const = 0;
  // The upstream half-closed: ends a close-delimited response body, or the response direction of a tunnel.
  virtual void onRemoteHalfClose() = 0;
};

}  // namespace strait::http::http1
