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
//
// Closing: when the codec itself decides to close (after a last response: `connection: close`, HTTP/1.0,
// goAway(), a refused upgrade, a response before the end of its request; or on Stream::resetStream() or a
// half-close mid-request), nothing more is read or written from that moment, the stream is detached first, and
// the transport's closeAfterFlush() follows from a zero-delay timer: never synchronously under the caller, who
// is usually in the middle of encoding or tearing its own stream down. resetStream() also gives the stream's
// callbacks onResetStream (with the caller's reason). goAway() with nothing in flight and sendErrorResponse()
// close synchronously (they are called by the owner, not from inside a stream).
class Http1ServerConnection : public ServerConnection {
 public:
  virtual void setDeferredErrorHandler(std::function<void(const CodecError&)> handler) = 0;
  // Writes a bare error response (`HTTP/1.1 <status> <reason>`, content-length: 0, connection: close) unless a
  // response already started on this connection, then closes after flushing. For errors dispatch() reported
  // before any stream existed (no encoder to answer with).
  virtual void sendErrorResponse(const CodecError& error) = 0;
  // The peer half-closed (the transport read EOF). In a tunnel this ends the stream's request direction
  // (decodeData with end_stream). A request still being received can never complete: its stream is reset
  // (ConnectionTermination) and the connection closes after flushing. A complete request is unaffected.
  virtual void onRemoteHalfClose() = 0;
};

// Client side, what HTTP/1 adds to the shared contract.
class Http1ClientConnection : public ClientConnection {
 public:
  // Whether any response byte arrived since the current stream was opened (it keeps its value after the stream
  // is reset, until the next newStream()). A stream reset with ConnectionTermination while this is false was
  // never answered: the pool may retry it once on a fresh connection.
  virtual bool responseStarted() const = 0;
  // The upstream half-closed: ends a close-delimited response body, or the response direction of a tunnel;
  // any other unfinished response is lost and its stream is reset with ConnectionTermination (check
  // responseStarted() to decide on a retry). The connection is never reusable after this.
  virtual void onRemoteHalfClose() = 0;
};

}  // namespace strait::http::http1
