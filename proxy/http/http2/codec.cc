#include "proxy/http/http2/codec.h"
#include "proxy/common/owned_list.h"
#include "proxy/common/pooled.h"

#include <nghttp2/nghttp2.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/common/log.h"
#include "proxy/event/dispatcher.h"
#include "proxy/http/http2/mem.h"

// HTTP/2 codec on nghttp2 (server and client).
//
// Shape:
// - One ConnectionBase owns the nghttp2_session. Input is fed with nghttp2_session_mem_recv() from
//   dispatch(); output is produced with nghttp2_session_send() whose callbacks append to one output
//   Buffer, handed to the transport with one write() per flush (DATA payloads are moved slice by slice
//   from the stream's pending buffer with NGHTTP2_DATA_FLAG_NO_COPY: bodies are never copied).
// - Every public entry point opens a FlushScope; the outermost scope flushes once when it ends, so a
//   dispatch() that produces many frames (or a decode callback that encodes a reply) writes once.
//   Stream-level calls from outside a dispatch (a response arriving from an upstream) only queue a
//   flush for the end of the loop iteration: with many streams in flight, their HEADERS and DATA go
//   out through one nghttp2_session_send() and one write instead of one each.
// - Streams are StreamBase objects (ServerStream / ClientStream), attached to nghttp2 as stream user
//   data. A stream is released (deferred delete) only once nghttp2 is done with it (on_stream_close,
//   or a request HEADERS that never left), so nghttp2 never holds a dangling pointer and a user still
//   inside one of our callbacks never sees its encoder freed.
// - Inbound flow control: automatic WINDOW_UPDATE is off. The connection window is returned as data
//   is delivered; a stream's window only while the stream is not readDisable()d.
// - Outbound backpressure: a stream's pending body passing stream_buffer_limit raises its high
//   watermark (low at half). While the transport is above its high watermark, DATA is deferred (control
//   frames still flow, but are counted: a peer that floods us with frames needing an answer while not
//   reading ours gets the connection closed).

namespace strait::http::http2 {

namespace {

using common::Buffer;

// Largest output handed to the transport per write (a big window could otherwise move many MiB of
// pending bodies into the transport in one go, far past its watermark).
constexpr size_t kFlushChunk = 256 * 1024;
// Reset flood: close once more than this many streams ended in a reset the peer caused, and those
// resets are more than half of the streams the peer opened.
constexpr uint64_t kResetFloodMinResets = 100;
// nghttp2's own RST_STREAM token bucket (server): burst and tokens per second.
constexpr uint64_t kResetRateBurst = 1000;
constexpr uint64_t kResetRatePerSecond = 33;
constexpr uint32_t kMaxWindow = 0x7fffffff;

// Connection-specific header fields (RFC 9113 8.2.2) that must never be sent on HTTP/2. `te` is
// allowed only as "trailers". Checked by length first so most names cost one switch.
bool isConnectionSpecific(std::string_view name, std::string_view value) {
  switch (name.size()) {
    case 2: return headerNameEquals(name, "te") && !headerNameEquals(value, "trailers");
    case 7: return headerNameEquals(name, "upgrade");
    case 10: return headerNameEquals(name, "connection") || headerNameEquals(name, "keep-alive");
    case 16: return headerNameEquals(name, "proxy-connection");
    case 17: return headerNameEquals(name, "transfer-encoding");
    default: return false;
  }
}

inline bool isHost(std::string_view name) { return name.size() == 4 && headerNameEquals(name, "host"); }

uint32_t resetCode(StreamResetReason reason) {
  switch (reason) {
    case StreamResetReason::RefusedStream: return NGHTTP2_REFUSED_STREAM;
    case StreamResetReason::ProtocolError: return NGHTTP2_PROTOCOL_ERROR;
    case StreamResetReason::Overflow: return NGHTTP2_INTERNAL_ERROR;
    case StreamResetReason::LocalReset:
    case StreamResetReason::RemoteReset:
    case StreamResetReason::ConnectionFailure:
    case StreamResetReason::ConnectionTermination: return NGHTTP2_CANCEL;
    case StreamResetReason::ResponseComplete: return NGHTTP2_NO_ERROR;
  }
  return NGHTTP2_CANCEL;
}

class ConnectionBase;

enum class Building { None, Request, Response, Trailers };

// ------------------------------------------------------------------------------------------------
// Streams

class StreamBase : public Stream, public event::DeferredDeletable, public common::ListLinks<StreamBase> {
 public:
  explicit StreamBase(ConnectionBase& parent) : parent_(parent) {}

  // Stream
  void setCallbacks(StreamCallbacks* callbacks) override;
  void resetStream(StreamResetReason reason) override;
  void readDisable(bool disable) override;

  void encodeDataImpl(Buffer& data, bool end_stream);
  void encodeTrailersImpl(const TrailerMap& trailers);

  void raiseWatermark() {
    if (watermark_sources_++ == 0 && callbacks_ != nullptr) callbacks_->onAboveWriteBufferHighWatermark();
  }
  void lowerWatermark() {
    if (watermark_sources_ == 0) return;
    if (--watermark_sources_ == 0 && callbacks_ != nullptr) callbacks_->onBelowWriteBufferLowWatermark();
  }
  // Whether the user may still hear from / talk to this stream.
  bool live() const { return !closed_ && !local_reset_; }

  ConnectionBase& parent_;
  int32_t id_ = -1;
  StreamCallbacks* callbacks_ = nullptr;
  RequestDecoder* request_decoder_ = nullptr;    // server
  ResponseDecoder* response_decoder_ = nullptr;  // client
  bool in_list_ = false;

  // Inbound header block under construction.
  Building building_ = Building::None;
  RequestHeadersPtr request_headers_;
  ResponseHeadersPtr response_headers_;
  TrailerMapPtr trailers_in_;
  HeaderMap* building_map_ = nullptr;
  uint32_t header_bytes_ = 0;
  uint32_t header_count_ = 0;
  int32_t cookie_index_ = -1;

  uint32_t read_disable_count_ = 0;
  size_t unconsumed_ = 0;  // delivered while read-disabled: window not yet returned

  // Outbound body (created on first use: libstdc++'s deque allocates even when empty).
  std::optional<Buffer> send_;
  size_t sendLength() const { return send_ ? send_->length() : 0; }
  TrailerMapPtr trailers_out_;
  bool has_provider_ = false;
  bool data_deferred_ = false;
  bool above_stream_limit_ = false;
  bool below_pending_ = false;
  uint32_t watermark_sources_ = 0;

  // State.
  bool delivered_ = false;       // the user knows this stream (server: newStream called)
  bool headers_submitted_ = false;
  bool final_headers_ = false;   // client: final response headers received
  bool local_end_ = false;       // the user ended its side
  bool remote_end_ = false;      // the peer ended its side
  bool local_reset_ = false;     // the user reset it
  bool remote_rst_ = false;
  uint32_t remote_rst_code_ = 0;
  bool end_stream_sent_ = false;   // our END_STREAM went out (DATA, HEADERS or trailers)
  bool rst_after_end_ = false;     // RST_STREAM(NO_ERROR) waits for our END_STREAM to go out
  bool discard_input_ = false;     // the rest of the peer's body is read and dropped
  uint64_t discarded_ = 0;         // bytes of it dropped so far
  event::TimerPtr early_timer_;    // resets the stream a moment after an early response went out
  bool has_codec_reason_ = false;  // the codec reset it (limits, bad headers)
  StreamResetReason codec_reason_ = StreamResetReason::LocalReset;
  bool closed_ = false;
};

class ServerStream final : public StreamBase, public ResponseEncoder, public common::Pooled<ServerStream> {
 public:
  using StreamBase::StreamBase;
  void encode1xxHeaders(const ResponseHeaders& headers) override;
  void encodeHeaders(const ResponseHeaders& headers, bool end_stream) override;
  void encodeData(Buffer& data, bool end_stream) override { encodeDataImpl(data, end_stream); }
  void encodeTrailers(const TrailerMap& trailers) override { encodeTrailersImpl(trailers); }
  Stream& stream() override { return *this; }
};

class ClientStream final : public StreamBase, public RequestEncoder, public common::Pooled<ClientStream> {
 public:
  using StreamBase::StreamBase;
  void encodeHeaders(const RequestHeaders& headers, bool end_stream) override;
  void encodeData(Buffer& data, bool end_stream) override { encodeDataImpl(data, end_stream); }
  void encodeTrailers(const TrailerMap& trailers) override { encodeTrailersImpl(trailers); }
  Stream& stream() override { return *this; }
};

// ------------------------------------------------------------------------------------------------
// Connection

class ConnectionBase : public event::DeferredFlush {
 public:
  // Defers flushing to the end of the outermost public call; a stream-level scope (`deferred`) further
  // to the end of the loop iteration.
  class FlushScope {
   public:
    explicit FlushScope(ConnectionBase& c, bool deferred = false) : c_(c), deferred_(deferred) { ++c_.scope_depth_; }
    ~FlushScope() {
      if (--c_.scope_depth_ != 0) return;
      if (deferred_) {
        c_.queueFlush();
      } else {
        c_.flushNow();
      }
    }
    FlushScope(const FlushScope&) = delete;
    FlushScope& operator=(const FlushScope&) = delete;

   private:
    ConnectionBase& c_;
    const bool deferred_;
  };

  // event::DeferredFlush
  void runDeferredFlush() override {
    flush_queued_ = false;
    flushNow();
  }

  ConnectionBase(CodecTransport& transport, const CodecSettings& settings, ServerConnectionCallbacks* server_callbacks,
                 ClientConnectionCallbacks* client_callbacks);
  virtual ~ConnectionBase();
  ConnectionBase(const ConnectionBase&) = delete;
  ConnectionBase& operator=(const ConnectionBase&) = delete;

  bool dispatchImpl(Buffer& data, CodecError& error);
  void goAwayImpl();
  void shutdownNoticeImpl();
  void aboveHighWatermarkImpl();
  void belowLowWatermarkImpl();
  void transportClosedImpl();
  size_t activeStreamsImpl() const { return active_.size(); }

  // Client side.
  RequestEncoder& newClientStream(ResponseDecoder& decoder);
  bool canOpenStreamImpl() const;

  bool server() const { return server_callbacks_ != nullptr; }
  bool usable() const { return !session_dead_; }
  nghttp2_session* session() { return session_; }
  event::Dispatcher& dispatcher() { return transport_.dispatcher(); }
  bool writeBlocked() const { return write_blocked_; }
  uint32_t streamBufferLimit() const { return settings_.stream_buffer_limit; }

  // Header list conversion into nva_ (connection-specific fields dropped; nghttp2 lowercases names
  // as it copies them at submission).
  void buildRequestNva(const RequestHeaders& headers);
  void buildResponseNva(const ResponseHeaders& headers);
  void buildTrailerNva(const HeaderMap& trailers);
  nghttp2_nv* nva() { return nva_.data(); }
  size_t nvaLength() const { return nva_.size(); }

  nghttp2_data_provider provider(StreamBase& s) {
    nghttp2_data_provider p;
    p.source.ptr = &s;
    p.read_callback = &ConnectionBase::onDataSourceRead;
    return p;
  }

  // Ends a stream: notifies the user if it did not complete, releases it (deferred).
  void finishStream(StreamBase& s, uint32_t error_code);
  void schedulePendingBelow(StreamBase& s) {
    if (!s.below_pending_) {
      s.below_pending_ = true;
      below_pending_.push_back(&s);
    }
  }
  void resumeData(StreamBase& s) {
    if (s.data_deferred_ && s.headers_submitted_ && !write_blocked_ && usable()) {
      s.data_deferred_ = false;
      nghttp2_session_resume_data(session_, s.id_);
    }
  }
  // Stops the session with a GOAWAY carrying `code` (sent at the next flush).
  void terminate(uint32_t code, const char* why);

 private:
  friend class StreamBase;
  friend class ClientStream;

  void flushNow();
  void queueFlush();
  bool addMaxStreamsToSettings(const uint8_t* data, size_t length);
  void maybeCloseTransport();
  void addNv(std::string_view name, std::string_view value);
  void addRegularHeaders(const HeaderMap& headers, bool skip_host);
  StreamBase* streamFor(int32_t id) {
    return static_cast<StreamBase*>(nghttp2_session_get_stream_user_data(session_, id));
  }
  StreamBase* findStream(int32_t id) {
    for (StreamBase* s = active_.front(); s != nullptr; s = active_.next(*s)) {
      if (s->id_ == id) return s;
    }
    return nullptr;
  }
  void deliverHeaders(StreamBase& s, const nghttp2_frame* frame);
  void deliverData(StreamBase& s, bool end_stream);
  void dropUndelivered();
  int headerFailure(StreamBase& s, uint32_t code, StreamResetReason reason);
  void countPeerReset();
  // A stream whose response ended early: RST_STREAM(NO_ERROR) once the response is out and more than
  // kEarlyResponseDrainBytes of the unwanted request body arrived.
  void maybeEndEarlyStream(StreamBase& s);
  static constexpr uint64_t kEarlyResponseDrainBytes = 8 * 1024 * 1024;
  static constexpr uint64_t kEarlyResponseLingerMs = 100;
  void countFrameWhileBlocked(uint8_t type);

  // nghttp2 callbacks.
  static ssize_t onSend(nghttp2_session*, const uint8_t* data, size_t length, int, void* user_data);
  static int onSendData(nghttp2_session*, nghttp2_frame* frame, const uint8_t* framehd, size_t length,
                        nghttp2_data_source* source, void* user_data);
  static ssize_t onDataSourceRead(nghttp2_session*, int32_t stream_id, uint8_t*, size_t length, uint32_t* data_flags,
                                  nghttp2_data_source* source, void* user_data);
  static int onBeginHeaders(nghttp2_session*, const nghttp2_frame* frame, void* user_data);
  static int onHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
                      const uint8_t* value, size_t valuelen, uint8_t flags, void* user_data);
  static int onInvalidHeader(nghttp2_session*, const nghttp2_frame*, const uint8_t*, size_t, const uint8_t*, size_t,
                             uint8_t, void*);
  static int onFrameRecv(nghttp2_session*, const nghttp2_frame* frame, void* user_data);
  static int onDataChunkRecv(nghttp2_session*, uint8_t flags, int32_t stream_id, const uint8_t* data, size_t len,
                             void* user_data);
  static int onStreamClose(nghttp2_session*, int32_t stream_id, uint32_t error_code, void* user_data);
  static int onFrameSend(nghttp2_session*, const nghttp2_frame* frame, void* user_data);
  static int onFrameNotSend(nghttp2_session*, const nghttp2_frame* frame, int lib_error_code, void* user_data);
  static int onError(nghttp2_session*, int lib_error_code, const char* msg, size_t len, void* user_data);
  static const nghttp2_session_callbacks* callbacks();

  CodecTransport& transport_;
  const CodecSettings settings_;
  ServerConnectionCallbacks* server_callbacks_;
  ClientConnectionCallbacks* client_callbacks_;
  nghttp2_session* session_ = nullptr;
  const uint32_t max_header_bytes_;

  Buffer out_;
  // The chunks of the DATA frame being received, delivered when the frame ends.
  Buffer recv_;
  StreamBase* recv_owner_ = nullptr;
  common::OwnedList<StreamBase> active_;
  std::vector<std::unique_ptr<StreamBase>> orphans_;  // client streams opened on a dead connection
  std::vector<StreamBase*> below_pending_;
  std::vector<nghttp2_nv> nva_;
  char status_digits_[3] = {'2', '0', '0'};

  int scope_depth_ = 0;
  bool flush_queued_ = false;
  bool in_flush_ = false;
  bool flush_again_ = false;
  bool write_blocked_ = false;
  bool session_dead_ = false;  // no nghttp2 call may be made any more
  bool notice_sent_ = false;   // the drain's first GOAWAY (last stream id 2^31-1) went out
  bool close_requested_ = false;
  bool goaway_received_ = false;
  bool goaway_submitted_ = false;
  std::string terminal_error_;

  uint64_t streams_opened_ = 0;
  uint64_t streams_refused_ = 0;
  bool advertise_max_streams_ = false;  // the next onSend adds MAX_CONCURRENT_STREAMS to our SETTINGS
  bool own_stream_limit_ = true;        // server: we enforce MAX_CONCURRENT_STREAMS, not nghttp2
  uint64_t peer_resets_ = 0;
  uint64_t frames_while_blocked_ = 0;
  uint64_t control_frames_while_blocked_ = 0;
};

// ---- StreamBase ---------------------------------------------------------------------------------

void StreamBase::setCallbacks(StreamCallbacks* callbacks) {
  callbacks_ = callbacks;
  // A stream born while its connection (or its own buffer) is backed up starts above its watermark.
  if (callbacks_ != nullptr && watermark_sources_ > 0) callbacks_->onAboveWriteBufferHighWatermark();
}

void StreamBase::resetStream(StreamResetReason reason) {
  if (!live()) return;
  ConnectionBase::FlushScope scope(parent_, true);
  if (reason == StreamResetReason::ResponseComplete && id_ > 0 && parent_.usable() && local_end_) {
    // The response is queued whole. The rest of the request is read and dropped; once the response has
    // gone out and more than kEarlyResponseDrainBytes of it came, RST_STREAM(NO_ERROR) stops it. Never
    // earlier: nghttp2 would send the RST_STREAM ahead of the queued HEADERS/DATA/trailers and the
    // client would get nothing. Draining a moderate body first keeps clients that cannot take a reset
    // while they upload (libcurl 7.x fails the whole transfer) working.
    discard_input_ = true;
    rst_after_end_ = true;
    parent_.maybeEndEarlyStream(*this);
    return;
  }
  local_reset_ = true;
  if (id_ > 0 && parent_.usable()) {
    nghttp2_submit_rst_stream(parent_.session(), NGHTTP2_FLAG_NONE, id_, resetCode(reason));
  } else if (id_ <= 0) {
    // Never submitted: nghttp2 does not know it.
    parent_.finishStream(*this, NGHTTP2_CANCEL);
  }
}

void StreamBase::readDisable(bool disable) {
  if (disable) {
    ++read_disable_count_;
    return;
  }
  if (read_disable_count_ == 0) return;
  if (--read_disable_count_ == 0 && unconsumed_ > 0 && !closed_ && parent_.usable()) {
    ConnectionBase::FlushScope scope(parent_, true);
    nghttp2_session_consume_stream(parent_.session(), id_, unconsumed_);
    unconsumed_ = 0;
  }
}

void StreamBase::encodeDataImpl(Buffer& data, bool end_stream) {
  if (!live() || local_end_ || !has_provider_ || !parent_.usable()) {
    data.drain(data.length());
    return;
  }
  ConnectionBase::FlushScope scope(parent_, true);
  if (!send_) send_.emplace();
  send_->move(data);
  if (end_stream) local_end_ = true;
  if (!above_stream_limit_ && send_->length() > parent_.streamBufferLimit()) {
    above_stream_limit_ = true;
    raiseWatermark();
  }
  parent_.resumeData(*this);
}

void StreamBase::encodeTrailersImpl(const TrailerMap& trailers) {
  if (!live() || local_end_ || !has_provider_ || !parent_.usable()) return;
  ConnectionBase::FlushScope scope(parent_, true);
  local_end_ = true;
  if (!trailers.empty()) {
    trailers_out_ = std::make_unique<TrailerMap>(trailers);
  }
  parent_.resumeData(*this);
}

void ServerStream::encode1xxHeaders(const ResponseHeaders& headers) {
  if (!live() || headers_submitted_ || !parent_.usable()) return;
  ConnectionBase::FlushScope scope(parent_, true);
  parent_.buildResponseNva(headers);
  nghttp2_submit_headers(parent_.session(), NGHTTP2_FLAG_NONE, id_, nullptr, parent_.nva(), parent_.nvaLength(),
                         nullptr);
}

void ServerStream::encodeHeaders(const ResponseHeaders& headers, bool end_stream) {
  if (!live() || headers_submitted_ || !parent_.usable()) return;
  ConnectionBase::FlushScope scope(parent_, true);
  parent_.buildResponseNva(headers);
  headers_submitted_ = true;
  int rv;
  if (end_stream) {
    local_end_ = true;
    rv = nghttp2_submit_response(parent_.session(), id_, parent_.nva(), parent_.nvaLength(), nullptr);
  } else {
    has_provider_ = true;
    nghttp2_data_provider prd = parent_.provider(*this);
    rv = nghttp2_submit_response(parent_.session(), id_, parent_.nva(), parent_.nvaLength(), &prd);
  }
  if (rv != 0) {
    LOG_DEBUG("http2: stream %d: cannot submit response: %s", id_, nghttp2_strerror(rv));
    has_provider_ = false;
  }
}

void ClientStream::encodeHeaders(const RequestHeaders& headers, bool end_stream) {
  if (!live() || headers_submitted_) return;
  if (!parent_.usable()) {
    // The connection is gone: fail the request now (the pool should not have used this connection).
    closed_ = true;
    if (callbacks_ != nullptr) callbacks_->onResetStream(StreamResetReason::ConnectionTermination);
    return;
  }
  ConnectionBase::FlushScope scope(parent_, true);
  parent_.buildRequestNva(headers);
  headers_submitted_ = true;
  nghttp2_data_provider prd = parent_.provider(*this);
  if (end_stream) {
    local_end_ = true;
  } else {
    has_provider_ = true;
  }
  int32_t id = nghttp2_submit_request(parent_.session(), nullptr, parent_.nva(), parent_.nvaLength(),
                                      end_stream ? nullptr : &prd, this);
  if (id < 0) {
    LOG_DEBUG("http2: cannot submit request: %s", nghttp2_strerror(id));
    has_provider_ = false;
    has_codec_reason_ = true;
    codec_reason_ = (id == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE || id == NGHTTP2_ERR_START_STREAM_NOT_ALLOWED)
                        ? StreamResetReason::RefusedStream
                        : StreamResetReason::LocalReset;
    parent_.finishStream(*this, NGHTTP2_REFUSED_STREAM);
    return;
  }
  id_ = id;
}

// ---- ConnectionBase -----------------------------------------------------------------------------

const nghttp2_session_callbacks* ConnectionBase::callbacks() {
  static const nghttp2_session_callbacks* cbs = [] {
    nghttp2_session_callbacks* c;
    RELEASE_ASSERT(nghttp2_session_callbacks_new(&c) == 0, "nghttp2_session_callbacks_new");
    nghttp2_session_callbacks_set_send_callback(c, &ConnectionBase::onSend);
    nghttp2_session_callbacks_set_send_data_callback(c, &ConnectionBase::onSendData);
    nghttp2_session_callbacks_set_on_begin_headers_callback(c, &ConnectionBase::onBeginHeaders);
    nghttp2_session_callbacks_set_on_header_callback(c, &ConnectionBase::onHeader);
    nghttp2_session_callbacks_set_on_invalid_header_callback(c, &ConnectionBase::onInvalidHeader);
    nghttp2_session_callbacks_set_on_frame_recv_callback(c, &ConnectionBase::onFrameRecv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(c, &ConnectionBase::onDataChunkRecv);
    nghttp2_session_callbacks_set_on_stream_close_callback(c, &ConnectionBase::onStreamClose);
    nghttp2_session_callbacks_set_on_frame_send_callback(c, &ConnectionBase::onFrameSend);
    nghttp2_session_callbacks_set_on_frame_not_send_callback(c, &ConnectionBase::onFrameNotSend);
    nghttp2_session_callbacks_set_error_callback2(c, &ConnectionBase::onError);
    return c;  // lives for the process (nghttp2 copies it into each session)
  }();
  return cbs;
}

ConnectionBase::ConnectionBase(CodecTransport& transport, const CodecSettings& settings,
                               ServerConnectionCallbacks* server_callbacks, ClientConnectionCallbacks* client_callbacks)
    : transport_(transport),
      settings_(settings),
      server_callbacks_(server_callbacks),
      client_callbacks_(client_callbacks),
      max_header_bytes_(settings.max_request_headers_kb * 1024) {
  nghttp2_option* opt;
  RELEASE_ASSERT(nghttp2_option_new(&opt) == 0, "nghttp2_option_new");
  // Flow control follows our buffers, not nghttp2's.
  nghttp2_option_set_no_auto_window_update(opt, 1);
  // We keep no priority tree, so closed streams need not be retained.
  nghttp2_option_set_no_closed_streams(opt, 1);
  // Floods of frames that need an answer (SETTINGS/PING ACK, RST_STREAM) queued inside nghttp2.
  nghttp2_option_set_max_outbound_ack(opt, std::max<uint32_t>(settings.max_outbound_control_frames, 1));
  nghttp2_option_set_max_settings(opt, 32);
  // A header block we send may be as large as the biggest we accept, HPACK overhead included.
  nghttp2_option_set_max_send_header_block_length(opt, std::max<size_t>(64 * 1024, 2 * size_t{max_header_bytes_}));
  // CONTINUATION floods: a legitimate header block within our limit needs limit/16 KiB frames.
  nghttp2_option_set_max_continuations(opt, std::max<size_t>(8, 2 * (size_t{max_header_bytes_} / 16384 + 1)));
  if (server()) {
    // Rapid reset (CVE-2023-44487): nghttp2's token bucket on received RST_STREAM; our own ratio check
    // (countPeerReset) also catches resets the peer provokes from us.
    nghttp2_option_set_stream_reset_rate_limit(opt, kResetRateBurst, kResetRatePerSecond);
  }
  int rv = server() ? nghttp2_session_server_new3(&session_, callbacks(), this, opt, sessionAllocator())
                    : nghttp2_session_client_new3(&session_, callbacks(), this, opt, sessionAllocator());
  nghttp2_option_del(opt);
  RELEASE_ASSERT(rv == 0, "nghttp2_session_new");

  nghttp2_settings_entry iv[6];
  size_t n = 0;
  iv[n++] = {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, std::min(settings.initial_stream_window_size, kMaxWindow)};
  iv[n++] = {NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, settings.hpack_table_size};
  iv[n++] = {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, max_header_bytes_};
  if (server()) {
    // MAX_CONCURRENT_STREAMS is not given to nghttp2: once a peer has ACKed it, nghttp2 treats a stream
    // beyond it as a connection error, where RFC 9113 5.1.2 (and our hardening rules) want a stream error.
    // onSend adds it to this SETTINGS frame on the wire, and onBeginHeaders enforces it with
    // REFUSED_STREAM. nghttp2 expects one ACK for the frame and gets one.
    advertise_max_streams_ = true;
  } else {
    iv[n++] = {NGHTTP2_SETTINGS_ENABLE_PUSH, 0};
  }
  nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, iv, n);
  uint32_t conn_window = std::min(settings.initial_connection_window_size, kMaxWindow);
  if (conn_window > NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE) {
    nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0, static_cast<int32_t>(conn_window));
  }
  nva_.reserve(32);
  // The preface (client magic and/or SETTINGS) goes out at once.
  FlushScope scope(*this);
}

void ConnectionBase::queueFlush() {
  if (flush_queued_) return;
  flush_queued_ = true;
  transport_.dispatcher().queueFlush(this);
}

ConnectionBase::~ConnectionBase() {
  if (flush_queued_) transport_.dispatcher().cancelFlush(this);
  // nghttp2_session_del calls no callbacks. Streams still listed are freed with us; users must not hold
  // encoders past the connection.
  nghttp2_session_del(session_);
  session_ = nullptr;
}

void ConnectionBase::flushNow() {
  if (session_dead_) return;
  if (in_flush_) {
    flush_again_ = true;
    return;
  }
  in_flush_ = true;
  do {
    flush_again_ = false;
    int rv = nghttp2_session_send(session_);
    if (rv != 0) {
      LOG_DEBUG("http2: nghttp2_session_send: %s", nghttp2_strerror(rv));
      if (terminal_error_.empty()) terminal_error_ = std::string("http2: ") + nghttp2_strerror(rv);
      session_dead_ = true;
    }
    // Streams whose pending body drained below half the limit hear it after nghttp2 is done with them.
    if (!below_pending_.empty()) {
      std::vector<StreamBase*> pending;
      pending.swap(below_pending_);
      for (StreamBase* s : pending) {
        s->below_pending_ = false;
        if (s->closed_ || !s->above_stream_limit_ || s->sendLength() >= streamBufferLimit() / 2) continue;
        s->above_stream_limit_ = false;
        s->lowerWatermark();
      }
    }
    if (!out_.empty()) {
      transport_.write(out_, false);
      // More may be waiting (we stop at kFlushChunk per write) unless the transport backed up.
      if (!session_dead_ && nghttp2_session_want_write(session_) != 0) flush_again_ = true;
    }
  } while (flush_again_ && !session_dead_);
  in_flush_ = false;
  maybeCloseTransport();
}

void ConnectionBase::maybeCloseTransport() {
  if (close_requested_) return;
  bool done = session_dead_ ||
              (nghttp2_session_want_read(session_) == 0 && nghttp2_session_want_write(session_) == 0);
  if (!done) return;
  close_requested_ = true;
  LOG_DEBUG("http2: session done (%s), closing", terminal_error_.empty() ? "graceful" : terminal_error_.c_str());
  transport_.closeAfterFlush();
}

void ConnectionBase::terminate(uint32_t code, const char* why) {
  if (session_dead_) return;
  if (terminal_error_.empty()) terminal_error_ = why;
  nghttp2_session_terminate_session(session_, code);
}

bool ConnectionBase::dispatchImpl(Buffer& data, CodecError& error) {
  auto fail = [&](uint32_t status) {
    data.drain(data.length());
    error.status = status;
    error.detail = terminal_error_.empty() ? "http2 protocol error" : terminal_error_;
    return false;
  };
  if (!terminal_error_.empty() || session_dead_) return fail(400);
  {
    FlushScope scope(*this);
    while (!data.empty()) {
      iovec iov[16];
      size_t n = data.fillIovecs(iov, 16);
      size_t used = 0;
      for (size_t i = 0; i < n && !session_dead_; ++i) {
        ssize_t rv =
            nghttp2_session_mem_recv(session_, static_cast<const uint8_t*>(iov[i].iov_base), iov[i].iov_len);
        if (rv < 0) {
          // Fatal to the session (bad client magic, flood, out of memory): nothing more may be sent.
          LOG_DEBUG("http2: nghttp2_session_mem_recv: %s", nghttp2_strerror(static_cast<int>(rv)));
          if (terminal_error_.empty()) terminal_error_ = std::string("http2: ") + nghttp2_strerror(static_cast<int>(rv));
          session_dead_ = true;
          break;
        }
        used += iov[i].iov_len;
      }
      // The session may also have died under a callback (the transport closed, an outbound flood).
      if (session_dead_) break;
      data.drain(used);
    }
    // Frames queued inside nghttp2 that we could not send yet (write side blocked).
    if (!session_dead_ && nghttp2_session_get_outbound_queue_size(session_) > settings_.max_outbound_frames) {
      terminate(NGHTTP2_ENHANCE_YOUR_CALM, "http2: outbound frame queue flood");
    }
  }
  if (session_dead_) maybeCloseTransport();
  if (!terminal_error_.empty()) return fail(400);
  return true;
}

void ConnectionBase::goAwayImpl() {
  if (session_dead_ || goaway_submitted_) return;
  FlushScope scope(*this);
  goaway_submitted_ = true;
  nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(session_),
                        NGHTTP2_NO_ERROR, nullptr, 0);
}

void ConnectionBase::shutdownNoticeImpl() {
  if (session_dead_ || goaway_submitted_ || notice_sent_) return;
  FlushScope scope(*this);
  notice_sent_ = true;
  nghttp2_submit_shutdown_notice(session_);
}

void ConnectionBase::aboveHighWatermarkImpl() {
  if (write_blocked_) return;
  FlushScope scope(*this);
  write_blocked_ = true;
  frames_while_blocked_ = 0;
  control_frames_while_blocked_ = 0;
  std::vector<StreamBase*> streams;
  streams.reserve(active_.size());
  for (StreamBase* s = active_.front(); s != nullptr; s = active_.next(*s)) streams.push_back(s);
  for (StreamBase* s : streams) {
    if (!s->closed_) s->raiseWatermark();
  }
}

void ConnectionBase::belowLowWatermarkImpl() {
  if (!write_blocked_) return;
  FlushScope scope(*this);
  write_blocked_ = false;
  std::vector<StreamBase*> streams;
  streams.reserve(active_.size());
  for (StreamBase* s = active_.front(); s != nullptr; s = active_.next(*s)) streams.push_back(s);
  for (StreamBase* s : streams) {
    if (s->closed_) continue;
    resumeData(*s);
    s->lowerWatermark();
  }
}

void ConnectionBase::transportClosedImpl() {
  // A close this codec asked for when the session ended gracefully (both sides done after a GOAWAY) is
  // no error: it often happens inside dispatch() (the transport closes at once when nothing is left to
  // flush), which must not then report the peer's last frames as a protocol error. Any other close is
  // one: what dispatch() is given afterwards fails.
  const bool graceful = close_requested_ && terminal_error_.empty();
  if (!graceful && terminal_error_.empty()) terminal_error_ = "http2: connection closed";
  session_dead_ = true;
  close_requested_ = true;
  recv_.clear();
  recv_owner_ = nullptr;
  std::vector<std::unique_ptr<StreamBase>> streams;
  streams.reserve(active_.size());
  while (!active_.empty()) streams.push_back(active_.take(*active_.front()));
  for (auto& s : streams) {
    s->closed_ = true;
    s->in_list_ = false;
  }
  for (auto& s : streams) {
    bool complete = s->local_end_ && s->remote_end_;
    if (s->delivered_ && !s->local_reset_ && !complete && s->callbacks_ != nullptr) {
      s->callbacks_->onResetStream(StreamResetReason::ConnectionTermination);
    }
  }
  for (auto& s : streams) dispatcher().deferredDelete(std::move(s));
}

RequestEncoder& ConnectionBase::newClientStream(ResponseDecoder& decoder) {
  auto stream = std::make_unique<ClientStream>(*this);
  ClientStream& s = *stream;
  s.response_decoder_ = &decoder;
  s.delivered_ = true;
  if (session_dead_) {
    // The pool should not do this (canOpenStream() is false); encodeHeaders() will report the failure.
    orphans_.push_back(std::move(stream));
    return s;
  }
  active_.pushBack(std::move(stream));
  s.in_list_ = true;
  if (write_blocked_) s.watermark_sources_ = 1;
  return s;
}

bool ConnectionBase::canOpenStreamImpl() const {
  if (session_dead_ || goaway_received_ || goaway_submitted_ || close_requested_) return false;
  auto* session = const_cast<nghttp2_session*>(session_);
  if (nghttp2_session_check_request_allowed(session) == 0) return false;
  uint32_t max = nghttp2_session_get_remote_settings(session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
  return active_.size() < max;
}

void ConnectionBase::finishStream(StreamBase& s, uint32_t error_code) {
  if (s.closed_) return;
  s.closed_ = true;
  s.early_timer_.reset();
  if (recv_owner_ == &s) dropUndelivered();
  bool complete = s.local_end_ && s.remote_end_ && !s.remote_rst_ && error_code == NGHTTP2_NO_ERROR;
  bool notify = s.delivered_ && !s.local_reset_ && !complete;
  StreamResetReason reason = StreamResetReason::ConnectionTermination;
  if (s.has_codec_reason_) {
    reason = s.codec_reason_;
  } else if (s.remote_rst_) {
    reason = s.remote_rst_code_ == NGHTTP2_REFUSED_STREAM ? StreamResetReason::RefusedStream
                                                           : StreamResetReason::RemoteReset;
  } else if (error_code == NGHTTP2_REFUSED_STREAM) {
    reason = StreamResetReason::RefusedStream;
  } else if (error_code != NGHTTP2_NO_ERROR) {
    reason = StreamResetReason::ProtocolError;
  }
  // Server: resets the peer caused (its RST_STREAM before our response ended, or a stream we had to
  // reset because of what it sent) count towards the reset flood check.
  if (server() && !s.local_reset_ && ((s.remote_rst_ && !s.local_end_) || (!s.remote_rst_ && error_code != NGHTTP2_NO_ERROR))) {
    countPeerReset();
  }
  std::unique_ptr<StreamBase> owned;
  if (s.in_list_) {
    s.in_list_ = false;
    owned = active_.take(s);
  }
  if (notify && s.callbacks_ != nullptr) s.callbacks_->onResetStream(reason);
  if (owned) dispatcher().deferredDelete(std::move(owned));
}

void ConnectionBase::maybeEndEarlyStream(StreamBase& s) {
  if (!s.rst_after_end_ || !s.end_stream_sent_ || s.closed_ || !usable()) return;
  if (s.discarded_ <= kEarlyResponseDrainBytes) {
    // Give the peer a moment to take the response in before the reset: a client still uploading in the
    // same read as the reset (libcurl 7.x) fails the whole transfer; one that has seen the response
    // stops uploading and waits for the stream to close.
    if (!s.early_timer_) {
      s.early_timer_ = dispatcher().createTimer([this, &s] {
        s.discarded_ = kEarlyResponseDrainBytes + 1;
        maybeEndEarlyStream(s);
      });
      s.early_timer_->enable(kEarlyResponseLingerMs);
    }
    return;
  }
  // The whole response is out: tell the peer to stop sending the request (RFC 9113 section 8.1). It is a
  // NO_ERROR reset: the response it got is complete.
  s.rst_after_end_ = false;
  s.early_timer_.reset();
  nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, s.id_, NGHTTP2_NO_ERROR);
  queueFlush();
}

void ConnectionBase::countPeerReset() {
  ++peer_resets_;
  if (peer_resets_ > kResetFloodMinResets && peer_resets_ * 2 > streams_opened_) {
    LOG_DEBUG("http2: reset flood: %lu resets of %lu streams", static_cast<unsigned long>(peer_resets_),
              static_cast<unsigned long>(streams_opened_));
    terminate(NGHTTP2_ENHANCE_YOUR_CALM, "http2: too many stream resets");
  }
}

void ConnectionBase::countFrameWhileBlocked(uint8_t type) {
  if (!write_blocked_) return;
  ++frames_while_blocked_;
  if (type != NGHTTP2_DATA && type != NGHTTP2_HEADERS) ++control_frames_while_blocked_;
  if (control_frames_while_blocked_ > settings_.max_outbound_control_frames ||
      frames_while_blocked_ > settings_.max_outbound_frames) {
    // The peer keeps making us answer while it does not read: stop.
    if (terminal_error_.empty()) terminal_error_ = "http2: outbound frame flood";
    session_dead_ = true;
  }
}

// ---- header lists -------------------------------------------------------------------------------

void ConnectionBase::addNv(std::string_view name, std::string_view value) {
  nghttp2_nv nv;
  nv.name = reinterpret_cast<uint8_t*>(const_cast<char*>(name.data()));
  nv.namelen = name.size();
  nv.value = reinterpret_cast<uint8_t*>(const_cast<char*>(value.data()));
  nv.valuelen = value.size();
  nv.flags = NGHTTP2_NV_FLAG_NONE;
  nva_.push_back(nv);
}

void ConnectionBase::addRegularHeaders(const HeaderMap& headers, bool skip_host) {
  for (const auto& e : headers.entries()) {
    if (e.name.empty() || e.name[0] == ':') continue;
    if (isConnectionSpecific(e.name, e.value)) continue;
    if (skip_host && isHost(e.name)) continue;
    // nghttp2 copies the fields when a frame is submitted and lowercases names as it copies.
    addNv(e.name, e.value);
  }
}

void ConnectionBase::buildRequestNva(const RequestHeaders& h) {
  nva_.clear();
  nva_.reserve(h.size() + 5);
  const bool connect = h.method == "CONNECT";
  addNv(":method", h.method.empty() ? std::string_view("GET") : std::string_view(h.method));
  std::string_view authority = h.authority;
  if (authority.empty()) {
    // An HTTP/1 request's Host header becomes :authority.
    if (const std::string* host = h.get("host")) authority = *host;
  }
  if (!connect || !h.protocol.empty()) {
    addNv(":scheme", h.scheme.empty() ? std::string_view("http") : std::string_view(h.scheme));
    addNv(":path", h.path.empty() ? std::string_view("/") : std::string_view(h.path));
  }
  if (!authority.empty()) addNv(":authority", authority);
  // :protocol only exists with CONNECT (RFC 8441); an HTTP/1 Upgrade token is not sent on HTTP/2.
  if (connect && !h.protocol.empty()) addNv(":protocol", h.protocol);
  addRegularHeaders(h, true);
}

void ConnectionBase::buildResponseNva(const ResponseHeaders& h) {
  nva_.clear();
  nva_.reserve(h.size() + 1);
  uint32_t status = (h.status >= 100 && h.status <= 999) ? h.status : 500;
  status_digits_[0] = static_cast<char>('0' + status / 100);
  status_digits_[1] = static_cast<char>('0' + status / 10 % 10);
  status_digits_[2] = static_cast<char>('0' + status % 10);
  addNv(":status", std::string_view(status_digits_, 3));
  addRegularHeaders(h, false);
}

void ConnectionBase::buildTrailerNva(const HeaderMap& t) {
  nva_.clear();
  nva_.reserve(t.size());
  addRegularHeaders(t, false);
}

// ---- delivery -----------------------------------------------------------------------------------

void ConnectionBase::deliverHeaders(StreamBase& s, const nghttp2_frame* frame) {
  const bool end_stream = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
  const Building what = s.building_;
  s.building_ = Building::None;
  s.building_map_ = nullptr;
  if (server()) {
    if (what == Building::Request) {
      s.delivered_ = true;
      s.remote_end_ = end_stream;
      s.request_decoder_ = &server_callbacks_->newStream(static_cast<ServerStream&>(s));
      if (s.live()) s.request_decoder_->decodeHeaders(std::move(s.request_headers_), end_stream);
    } else if (what == Building::Trailers) {
      s.remote_end_ = true;
      if (s.live() && s.request_decoder_ != nullptr) s.request_decoder_->decodeTrailers(std::move(s.trailers_in_));
    }
    return;
  }
  if (what == Building::Response) {
    ResponseHeadersPtr headers = std::move(s.response_headers_);
    if (headers->status >= 100 && headers->status < 200) {
      if (s.live()) s.response_decoder_->decode1xxHeaders(std::move(headers));
      return;
    }
    s.final_headers_ = true;
    s.remote_end_ = end_stream;
    if (s.live()) s.response_decoder_->decodeHeaders(std::move(headers), end_stream);
  } else if (what == Building::Trailers) {
    s.remote_end_ = true;
    if (s.live()) s.response_decoder_->decodeTrailers(std::move(s.trailers_in_));
  }
}

void ConnectionBase::dropUndelivered() {
  // Received but never delivered: the connection window still has to come back.
  if (!recv_.empty() && !session_dead_) nghttp2_session_consume_connection(session_, recv_.length());
  recv_.clear();
  recv_owner_ = nullptr;
}

void ConnectionBase::deliverData(StreamBase& s, bool end_stream) {
  if (recv_owner_ != &s) dropUndelivered();  // (a zero-length DATA frame has no chunks)
  recv_owner_ = nullptr;
  const size_t len = recv_.length();
  if (end_stream) s.remote_end_ = true;
  if (!s.live() || !s.delivered_ || s.discard_input_) {
    if (len > 0) {
      nghttp2_session_consume(session_, s.id_, len);
      recv_.clear();
    }
    return;
  }
  if (!server() && !s.final_headers_) {
    // DATA before the final response headers (after a 1xx, or none at all): a malformed response
    // (RFC 9113 section 8.1). nghttp2 lets it through after a 1xx; the response decoder would get a body
    // with no response (found by h2_client_fuzz). The stream is reset as a protocol error.
    if (len > 0) {
      nghttp2_session_consume(session_, s.id_, len);
      recv_.clear();
    }
    if (!s.has_codec_reason_) {
      s.has_codec_reason_ = true;
      s.codec_reason_ = StreamResetReason::ProtocolError;
      s.discard_input_ = true;
      nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, s.id_, NGHTTP2_PROTOCOL_ERROR);
    }
    return;
  }
  if (server()) {
    if (s.request_decoder_ != nullptr) s.request_decoder_->decodeData(recv_, end_stream);
  } else {
    s.response_decoder_->decodeData(recv_, end_stream);
  }
  recv_.clear();
  if (len == 0) return;
  nghttp2_session_consume_connection(session_, len);
  if (s.closed_) return;
  if (s.read_disable_count_ > 0) {
    s.unconsumed_ += len;
  } else {
    nghttp2_session_consume_stream(session_, s.id_, len);
  }
}

int ConnectionBase::headerFailure(StreamBase& s, uint32_t code, StreamResetReason reason) {
  s.has_codec_reason_ = true;
  s.codec_reason_ = reason;
  s.building_ = Building::None;
  s.building_map_ = nullptr;
  // Our RST_STREAM goes first; the one nghttp2 adds for the callback failure is then dropped.
  nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, s.id_, code);
  return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
}

// ---- nghttp2 callbacks --------------------------------------------------------------------------

ssize_t ConnectionBase::onSend(nghttp2_session*, const uint8_t* data, size_t length, int, void* user_data) {
  auto* c = static_cast<ConnectionBase*>(user_data);
  if (c->out_.length() >= kFlushChunk) return NGHTTP2_ERR_WOULDBLOCK;
  if (c->advertise_max_streams_) {
    c->advertise_max_streams_ = false;
    if (c->addMaxStreamsToSettings(data, length)) return static_cast<ssize_t>(length);
  }
  c->out_.add(data, length);
  return static_cast<ssize_t>(length);
}

bool ConnectionBase::addMaxStreamsToSettings(const uint8_t* data, size_t length) {
  // The first bytes a server session sends are its SETTINGS frame (the server preface), whole.
  const size_t payload = (size_t{data[0]} << 16) | (size_t{data[1]} << 8) | data[2];
  const bool settings_frame = length >= 9 && data[3] == NGHTTP2_SETTINGS && data[4] == 0 && data[5] == 0 &&
                              data[6] == 0 && data[7] == 0 && data[8] == 0 && length >= 9 + payload;
  if (!settings_frame) {
    // Not what nghttp2 has always sent first: advertise through nghttp2 after all (its connection-error
    // behaviour beyond the limit is the lesser evil next to advertising no limit).
    LOG_ERROR("http2: first frame sent is not SETTINGS; MAX_CONCURRENT_STREAMS left to nghttp2");
    own_stream_limit_ = false;
    nghttp2_settings_entry iv{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, settings_.max_concurrent_streams};
    nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, &iv, 1);
    return false;
  }
  const size_t grown = payload + 6;
  const uint32_t max = settings_.max_concurrent_streams;
  const uint8_t head[9] = {static_cast<uint8_t>(grown >> 16), static_cast<uint8_t>(grown >> 8),
                           static_cast<uint8_t>(grown), NGHTTP2_SETTINGS, 0, 0, 0, 0, 0};
  const uint8_t entry[6] = {0, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, static_cast<uint8_t>(max >> 24),
                            static_cast<uint8_t>(max >> 16), static_cast<uint8_t>(max >> 8),
                            static_cast<uint8_t>(max)};
  out_.add(head, sizeof(head));
  out_.add(data + 9, payload);
  out_.add(entry, sizeof(entry));
  out_.add(data + 9 + payload, length - 9 - payload);
  return true;
}

int ConnectionBase::onSendData(nghttp2_session*, nghttp2_frame* frame, const uint8_t* framehd, size_t length,
                               nghttp2_data_source* source, void* user_data) {
  auto* c = static_cast<ConnectionBase*>(user_data);
  auto* s = static_cast<StreamBase*>(source->ptr);
  if (c->out_.length() >= kFlushChunk) return NGHTTP2_ERR_WOULDBLOCK;
  RELEASE_ASSERT(s->sendLength() >= length, "http2: DATA frame longer than the pending body");
  c->out_.add(framehd, 9);
  const size_t padlen = frame->data.padlen;
  if (padlen > 0) {
    uint8_t pad_field = static_cast<uint8_t>(padlen - 1);
    c->out_.add(&pad_field, 1);
  }
  if (length > 0) c->out_.move(*s->send_, length);
  if (padlen > 1) {
    static const uint8_t zeros[256] = {};
    c->out_.add(zeros, padlen - 1);
  }
  if (s->above_stream_limit_ && s->sendLength() < c->streamBufferLimit() / 2) c->schedulePendingBelow(*s);
  return 0;
}

ssize_t ConnectionBase::onDataSourceRead(nghttp2_session* session, int32_t stream_id, uint8_t*, size_t length,
                                         uint32_t* data_flags, nghttp2_data_source* source, void* user_data) {
  auto* c = static_cast<ConnectionBase*>(user_data);
  auto* s = static_cast<StreamBase*>(source->ptr);
  const size_t avail = s->sendLength();
  if ((avail == 0 && !s->local_end_) || c->write_blocked_) {
    s->data_deferred_ = true;
    return NGHTTP2_ERR_DEFERRED;
  }
  const size_t n = std::min(avail, length);
  *data_flags |= NGHTTP2_DATA_FLAG_NO_COPY;
  if (s->local_end_ && n == avail) {
    *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    if (s->trailers_out_) {
      *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
      c->buildTrailerNva(*s->trailers_out_);
      int rv = nghttp2_submit_trailer(session, stream_id, c->nva(), c->nvaLength());  // copies the fields
      s->trailers_out_.reset();
      if (rv != 0) {
        LOG_DEBUG("http2: stream %d: cannot submit trailers: %s", stream_id, nghttp2_strerror(rv));
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
      }
    }
  }
  return static_cast<ssize_t>(n);
}

int ConnectionBase::onBeginHeaders(nghttp2_session*, const nghttp2_frame* frame, void* user_data) {
  auto* c = static_cast<ConnectionBase*>(user_data);
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  StreamBase* s;
  if (c->server() && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
    if (c->own_stream_limit_ && c->active_.size() >= c->settings_.max_concurrent_streams) {
      // Over our advertised limit: a stream error (nghttp2 knows no limit and keeps the connection). The
      // stream gets no object; its header and data callbacks find none and are ignored.
      // Refusals count towards the reset flood check: a client that keeps opening streams past the limit
      // makes us answer each one.
      ++c->streams_refused_;
      nghttp2_submit_rst_stream(c->session_, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_REFUSED_STREAM);
      c->countPeerReset();
      return 0;
    }
    auto stream = std::make_unique<ServerStream>(*c);
    s = stream.get();
    s->id_ = frame->hd.stream_id;
    c->active_.pushBack(std::move(stream));
    s->in_list_ = true;
    nghttp2_session_set_stream_user_data(c->session_, s->id_, s);
    ++c->streams_opened_;
    if (c->write_blocked_) s->watermark_sources_ = 1;
    s->request_headers_ = std::make_unique<RequestHeaders>();
    s->request_headers_->entries().reserve(16);
    s->building_ = Building::Request;
    s->building_map_ = s->request_headers_.get();
  } else {
    s = c->streamFor(frame->hd.stream_id);
    if (s == nullptr || s->closed_) return 0;
    if (!c->server() && !s->final_headers_) {
      s->response_headers_ = std::make_unique<ResponseHeaders>();
      s->response_headers_->entries().reserve(16);
      s->building_ = Building::Response;
      s->building_map_ = s->response_headers_.get();
    } else {
      s->trailers_in_ = std::make_unique<TrailerMap>();
      s->building_ = Building::Trailers;
      s->building_map_ = s->trailers_in_.get();
    }
  }
  s->header_bytes_ = 0;
  s->header_count_ = 0;
  s->cookie_index_ = -1;
  return 0;
}

int ConnectionBase::onHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name_data, size_t namelen,
                             const uint8_t* value_data, size_t valuelen, uint8_t, void* user_data) {
  auto* c = static_cast<ConnectionBase*>(user_data);
  StreamBase* s = c->streamFor(frame->hd.stream_id);
  if (s == nullptr || s->building_ == Building::None) return 0;
  std::string_view name(reinterpret_cast<const char*>(name_data), namelen);
  std::string_view value(reinterpret_cast<const char*>(value_data), valuelen);

  // Decoded size across HEADERS + CONTINUATION (HPACK bombs decode small frames into huge lists).
  s->header_bytes_ += static_cast<uint32_t>(namelen + valuelen);
  if (s->header_bytes_ > c->max_header_bytes_) {
    return c->headerFailure(*s, NGHTTP2_ENHANCE_YOUR_CALM, StreamResetReason::Overflow);
  }

  if (!name.empty() && name[0] == ':') {
    // nghttp2 already checked which pseudo-headers may appear, their order and their values.
    if (s->building_ == Building::Request) {
      RequestHeaders& h = *s->request_headers_;
      switch (namelen) {
        case 5: h.path.assign(value); break;                                  // :path
        case 7: (name[1] == 'm' ? h.method : h.scheme).assign(value); break;  // :method / :scheme
        case 9: h.protocol.assign(value); break;                              // :protocol
        case 10: h.authority.assign(value); break;                            // :authority
        default: break;
      }
    } else if (s->building_ == Building::Response && namelen == 7) {  // :status
      // Three digits, 100..599 (RFC 9110 section 15), as the HTTP/1 codec requires: nghttp2 only checks
      // that it is a number, and "000" or "99999" would go on downstream (found by h2_client_fuzz).
      uint32_t status = 0;
      for (char ch : value) status = ch >= '0' && ch <= '9' ? status * 10 + static_cast<uint32_t>(ch - '0') : 0;
      if (value.size() != 3 || status < 100 || status > 599) {
        return c->headerFailure(*s, NGHTTP2_PROTOCOL_ERROR, StreamResetReason::ProtocolError);
      }
      s->response_headers_->status = status;
    }
    return 0;
  }

  if (++s->header_count_ > c->settings_.max_headers_count) {
    return c->headerFailure(*s, NGHTTP2_ENHANCE_YOUR_CALM, StreamResetReason::Overflow);
  }
  auto& entries = s->building_map_->entries();
  if (s->building_ == Building::Request) {
    if (namelen == 4 && name == "host") {
      RequestHeaders& h = *s->request_headers_;
      if (h.authority.empty()) {
        h.authority.assign(value);
      } else if (!headerNameEquals(h.authority, value)) {
        // :authority and Host naming different targets: a routing/authorization confusion attempt.
        return c->headerFailure(*s, NGHTTP2_PROTOCOL_ERROR, StreamResetReason::ProtocolError);
      }
      return 0;
    }
    if (namelen == 6 && name == "cookie") {
      // HTTP/2 may split cookies into crumbs; HTTP/1 needs one header (RFC 9113 8.2.3).
      if (s->cookie_index_ >= 0) {
        std::string& joined = entries[static_cast<size_t>(s->cookie_index_)].value;
        joined.append("; ");
        joined.append(value);
        return 0;
      }
      s->cookie_index_ = static_cast<int32_t>(entries.size());
    }
  }
  entries.push_back(HeaderMap::Entry{std::string(name), std::string(value)});
  return 0;
}

int ConnectionBase::onInvalidHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t*, size_t,
                                    const uint8_t*, size_t, uint8_t, void* user_data) {
  // nghttp2 would silently drop a regular field with invalid characters (e.g. CR/LF in the value, a
  // space in the name); we reset the stream (PROTOCOL_ERROR) instead.
  auto* c = static_cast<ConnectionBase*>(user_data);
  if (StreamBase* s = c->streamFor(frame->hd.stream_id)) {
    s->has_codec_reason_ = true;
    s->codec_reason_ = StreamResetReason::ProtocolError;
    s->building_ = Building::None;
    s->building_map_ = nullptr;
  }
  return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
}

int ConnectionBase::onFrameRecv(nghttp2_session*, const nghttp2_frame* frame, void* user_data) {
  auto* c = static_cast<ConnectionBase*>(user_data);
  switch (frame->hd.type) {
    case NGHTTP2_DATA: {
      StreamBase* s = c->streamFor(frame->hd.stream_id);
      LOG_TRACE("h2: DATA frame on stream %d, %zu bytes (known %d, closed %d, live %d)", frame->hd.stream_id,
                frame->hd.length, s != nullptr ? 1 : 0, s != nullptr && s->closed_ ? 1 : 0, s != nullptr && s->live() ? 1 : 0);
      if (s != nullptr && !s->closed_) c->deliverData(*s, (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0);
      break;
    }
    case NGHTTP2_HEADERS: {
      StreamBase* s = c->streamFor(frame->hd.stream_id);
      if (s != nullptr && !s->closed_ && s->building_ != Building::None) c->deliverHeaders(*s, frame);
      break;
    }
    case NGHTTP2_RST_STREAM: {
      StreamBase* s = c->streamFor(frame->hd.stream_id);
      if (s != nullptr) {
        s->remote_rst_ = true;
        s->remote_rst_code_ = frame->rst_stream.error_code;
      }
      break;
    }
    case NGHTTP2_SETTINGS:
      if (!c->server() && (frame->hd.flags & NGHTTP2_FLAG_ACK) == 0) {
        for (size_t i = 0; i < frame->settings.niv; ++i) {
          if (frame->settings.iv[i].settings_id == NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS) {
            c->client_callbacks_->onMaxConcurrentStreamsChanged(frame->settings.iv[i].value);
          }
        }
      }
      break;
    case NGHTTP2_GOAWAY:
      if (!c->server() && !c->goaway_received_) {
        // nghttp2 then closes our streams above last_stream_id with REFUSED_STREAM (safe to retry).
        c->goaway_received_ = true;
        c->client_callbacks_->onGoAway();
      }
      break;
    default:
      break;
  }
  return 0;
}

int ConnectionBase::onDataChunkRecv(nghttp2_session* session, uint8_t, int32_t stream_id, const uint8_t* data,
                                    size_t len, void* user_data) {
  auto* c = static_cast<ConnectionBase*>(user_data);
  StreamBase* s = c->streamFor(stream_id);
  if (s == nullptr || !s->live() || !s->delivered_ || s->discard_input_) {
    nghttp2_session_consume(session, stream_id, len);
    if (s != nullptr && s->discard_input_) {
      s->discarded_ += len;
      c->maybeEndEarlyStream(*s);
    }
    return 0;
  }
  // Frames are never interleaved, so one buffer holds the chunks of the DATA frame being received.
  if (c->recv_owner_ != s) {
    if (!c->recv_.empty()) c->dropUndelivered();
    c->recv_owner_ = s;
  }
  c->recv_.add(data, len);
  return 0;
}

int ConnectionBase::onStreamClose(nghttp2_session*, int32_t stream_id, uint32_t error_code, void* user_data) {
  auto* c = static_cast<ConnectionBase*>(user_data);
  StreamBase* s = c->streamFor(stream_id);
  if (s != nullptr) c->finishStream(*s, error_code);
  return 0;
}

int ConnectionBase::onFrameSend(nghttp2_session* session, const nghttp2_frame* frame, void* user_data) {
  auto* c = static_cast<ConnectionBase*>(user_data);
  c->countFrameWhileBlocked(frame->hd.type);
  if ((frame->hd.type == NGHTTP2_DATA || frame->hd.type == NGHTTP2_HEADERS) &&
      (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0) {
    if (StreamBase* s = c->streamFor(frame->hd.stream_id)) {
      s->end_stream_sent_ = true;
      c->maybeEndEarlyStream(*s);
    }
  }
  if (frame->hd.type == NGHTTP2_GOAWAY && frame->goaway.error_code != NGHTTP2_NO_ERROR) {
    if (c->terminal_error_.empty()) {
      c->terminal_error_ = std::string("http2: ") + nghttp2_http2_strerror(frame->goaway.error_code);
      if (frame->goaway.opaque_data_len > 0) {
        c->terminal_error_ += ": ";
        c->terminal_error_.append(reinterpret_cast<const char*>(frame->goaway.opaque_data),
                                  frame->goaway.opaque_data_len);
      }
    }
    LOG_DEBUG("http2: sent GOAWAY: %s", c->terminal_error_.c_str());
  }
  return 0;
}

int ConnectionBase::onFrameNotSend(nghttp2_session* session, const nghttp2_frame* frame, int lib_error_code,
                                   void* user_data) {
  auto* c = static_cast<ConnectionBase*>(user_data);
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  const int32_t id = frame->hd.stream_id;
  LOG_DEBUG("http2: stream %d: HEADERS not sent: %s", id, nghttp2_strerror(lib_error_code));
  if (!c->server() && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
    StreamBase* s = c->findStream(id);
    if (s == nullptr || s->closed_) return 0;
    if (!s->local_reset_) {
      s->has_codec_reason_ = true;
      s->codec_reason_ = (lib_error_code == NGHTTP2_ERR_START_STREAM_NOT_ALLOWED ||
                          lib_error_code == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE)
                             ? StreamResetReason::RefusedStream
                             : StreamResetReason::LocalReset;
    }
    // If nghttp2 opened the stream it closes it next (on_stream_close); otherwise it never existed there.
    if (nghttp2_session_find_stream(session, id) == nullptr) c->finishStream(*s, NGHTTP2_REFUSED_STREAM);
    return 0;
  }
  // A response / trailer block that could not be sent (e.g. too large): the stream cannot go on.
  if (StreamBase* s = c->streamFor(id)) {
    if (s->live()) {
      s->has_codec_reason_ = true;
      s->codec_reason_ = StreamResetReason::LocalReset;
    }
    nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, id, NGHTTP2_INTERNAL_ERROR);
  }
  return 0;
}

int ConnectionBase::onError(nghttp2_session*, int lib_error_code, const char* msg, size_t len, void*) {
  LOG_DEBUG("http2: nghttp2 (%s): %.*s", nghttp2_strerror(lib_error_code), static_cast<int>(len), msg);
  return 0;
}

// ------------------------------------------------------------------------------------------------
// The two public faces.

class ServerConnectionImpl final : public ServerConnection, public ConnectionBase {
 public:
  ServerConnectionImpl(CodecTransport& transport, ServerConnectionCallbacks& callbacks, const CodecSettings& settings)
      : ConnectionBase(transport, settings, &callbacks, nullptr) {}
  bool dispatch(Buffer& data, CodecError& error) override { return dispatchImpl(data, error); }
  Protocol protocol() const override { return Protocol::Http2; }
  void goAway() override { goAwayImpl(); }
  void shutdownNotice() override { shutdownNoticeImpl(); }
  void onUnderlyingConnectionAboveWriteBufferHighWatermark() override { aboveHighWatermarkImpl(); }
  void onUnderlyingConnectionBelowWriteBufferLowWatermark() override { belowLowWatermarkImpl(); }
  void onTransportClosed() override { transportClosedImpl(); }
  size_t activeStreams() const override { return activeStreamsImpl(); }
};

class ClientConnectionImpl final : public ClientConnection, public ConnectionBase {
 public:
  ClientConnectionImpl(CodecTransport& transport, ClientConnectionCallbacks& callbacks, const CodecSettings& settings)
      : ConnectionBase(transport, settings, nullptr, &callbacks) {}
  bool dispatch(Buffer& data, CodecError& error) override { return dispatchImpl(data, error); }
  Protocol protocol() const override { return Protocol::Http2; }
  void goAway() override { goAwayImpl(); }
  void onUnderlyingConnectionAboveWriteBufferHighWatermark() override { aboveHighWatermarkImpl(); }
  void onUnderlyingConnectionBelowWriteBufferLowWatermark() override { belowLowWatermarkImpl(); }
  void onTransportClosed() override { transportClosedImpl(); }
  size_t activeStreams() const override { return activeStreamsImpl(); }
  RequestEncoder& newStream(ResponseDecoder& decoder) override { return newClientStream(decoder); }
  bool canOpenStream() const override { return canOpenStreamImpl(); }
};

}  // namespace

std::unique_ptr<ServerConnection> createServerConnection(CodecTransport& transport, ServerConnectionCallbacks& callbacks,
                                                         const CodecSettings& settings) {
  return std::make_unique<ServerConnectionImpl>(transport, callbacks, settings);
}

std::unique_ptr<ClientConnection> createClientConnection(CodecTransport& transport, ClientConnectionCallbacks& callbacks,
                                                         const CodecSettings& settings) {
  return std::make_unique<ClientConnectionImpl>(transport, callbacks, settings);
}

}  // namespace strait::http::http2
