#pragma once

#include <atomic>

#include <cstdint>
#include <memory>
#include <string>

#include "proxy/common/buffer.h"
#include "proxy/event/dispatcher.h"
#include "proxy/network/address.h"
#include "proxy/network/transport_socket.h"

typedef struct uv_tcp_s uv_tcp_t;
typedef struct uv_stream_s uv_stream_t;

namespace strait::network {

class Connection;
struct ConnectionHandle;

enum class ConnectionEvent {
  Connected,      // an outgoing connect finished
  RemoteClose,    // the peer closed or reset, or an I/O error happened
  LocalClose,     // we closed it (close() was called)
  ConnectFailed,  // an outgoing connect was refused or failed
  ConnectTimeout  // an outgoing connect did not finish in time
};

enum class CloseType {
  FlushWrite,  // send what is buffered, then close
  NoFlush,     // close now, dropping buffered output
  Reset        // close now with an RST (SO_LINGER 0)
};

// What a connection's owner hears. Every callback runs on the connection's dispatcher.
class ConnectionCallbacks {
 public:
  virtual ~ConnectionCallbacks() = default;
  // Bytes arrived (in `data`, which the callee drains or moves). `end_stream` once the peer half-closed.
  virtual void onData(Connection& conn, common::Buffer& data, bool end_stream) = 0;
  virtual void onEvent(Connection& conn, ConnectionEvent event) = 0;
  // The write buffer rose above its high watermark / fell back below its low watermark.
  virtual void onAboveWriteBufferHighWatermark(Connection&) {}
  virtual void onBelowWriteBufferLowWatermark(Connection&) {}
};

// A TCP connection on one dispatcher, with a read buffer, a write buffer and watermarks.
// Half-close is supported: write(data, true) shuts down our sending side after the data is flushed;
// the connection closes itself once both directions have ended.
//
// A transport socket (TLS) may sit between the buffers and the socket: the owner then reads and writes
// plaintext as before; the connection feeds socket bytes through the transport. An outgoing connection
// raises Connected only once the handshake is complete; an accepted one raises Connected then too.
class Connection : public event::DeferredDeletable, public event::DeferredFlush, private TransportSocketCallbacks {
 public:
  enum class State { Connecting, Open, Closed };

  // An accepted connection (takes over the accepted libuv handle).
  Connection(event::Dispatcher& dispatcher, uv_tcp_t* accepted);
  // An outgoing connection; call connect() next.
  Connection(event::Dispatcher& dispatcher, const Address& remote);
  ~Connection() override;

  void setCallbacks(ConnectionCallbacks* cb) { callbacks_ = cb; }
  // Puts a transport socket (TLS) between this connection and its socket. Outgoing connections: before
  // connect(). Accepted ones: after a listener filter peeked (the peeked bytes become the transport's
  // input) and before startReading(); the server handshake then runs as bytes arrive.
  void setTransportSocket(TransportSocketPtr transport);
  bool transportReady() const { return transport_ == nullptr || transport_ready_; }
  // Why the transport failed (empty if it did not): "TLS_error:...", for logs.
  std::string_view transportFailureReason() const { return transport_ ? transport_->failureReason() : ""; }
  // High watermark = limit, low = limit / 2. 0 disables watermarks.
  void setBufferLimits(uint32_t limit);
  // `source`: bind to this local address first (its port 0: any), when it is of the remote's family.
  void connect(uint64_t timeout_ms, const std::optional<Address>& source = std::nullopt);
  // Reports ConnectFailed on the next loop turn without connecting (the transport could not be made).
  void failConnect();
  // Starts delivering data (accepted connections start paused so the owner can set itself up). Bytes
  // already read (by a listener filter that peeked at them) are delivered at once.
  void startReading();
  // Pauses delivery until the next startReading() (a listener filter handing the connection on).
  void stopReading();
  // Moves `data` to the write buffer and sends it; `end_stream` half-closes after it.
  void write(common::Buffer& data, bool end_stream);
  // Reference-counted: each disable(true) needs a disable(false) before reading resumes.
  void readDisable(bool disable);
  void close(CloseType type);

  State state() const { return state_; }
  event::Dispatcher& dispatcher() { return dispatcher_; }
  const Address& localAddress() const { return local_; }
  const Address& remoteAddress() const { return remote_; }
  // Replaces the local address with the pre-NAT destination (SO_ORIGINAL_DST). Returns false if the
  // connection was not redirected (its original destination is the listener itself).
  bool restoreOriginalDestination();
  bool localAddressRestored() const { return local_restored_; }
  size_t writeBufferLength() const { return write_buffer_.length() + (transport_ ? transport_->outBuffer().length() : 0); }
  uint64_t bytesRead() const { return bytes_read_; }
  uint64_t bytesWritten() const { return bytes_written_; }
  uint64_t id() const { return id_; }
  bool readHalfClosed() const { return read_ended_; }
  int fd() const;
  // TLS facts about this connection and its peer (identity, SNI, ALPN); null for plaintext.
  const SslInfo* ssl() const { return transport_ ? transport_->ssl() : nullptr; }
  // "tls" or "raw_buffer".
  std::string_view transportProtocol() const { return transport_ ? transport_->protocol() : "raw_buffer"; }
  // DeferredFlush: what write() gathered during this loop iteration goes out in one writev.
  void runDeferredFlush() override;
  // Counts of open connections (a listener's, and the process-wide one, for their connection limits)
  // that this connection is part of: decremented when it is destroyed, whichever stage it ends in.
  void countIn(std::shared_ptr<std::atomic<int64_t>> counter) {
    (open_counter_ ? open_counter_global_ : open_counter_) = std::move(counter);
  }

 private:
  friend struct ConnectionHandle;
  void onReadable(ssize_t nread);
  void onConnect(int status);
  void onWriteDone(int status);
  void onShutdownDone();
  void flush();
  void scheduleFlush();
  void checkWatermarks();
  void closeNow(ConnectionEvent event, bool reset);
  void maybeCloseAfterHalfClose();
  void updateReading();
  // The buffer the socket writes from: ciphertext with a transport, the write buffer without.
  common::Buffer& socketOut() { return transport_ ? transport_->outBuffer() : write_buffer_; }
  void handleTransportClose();
  void processTransportInput(bool eof);
  // TransportSocketCallbacks
  void onTransportReady() override;
  void onTransportWantsFlush() override;

  TransportSocketPtr transport_;  // null: plaintext, the socket reads into read_buffer_ directly
  event::Dispatcher& dispatcher_;
  ConnectionHandle* handle_;
  ConnectionCallbacks* callbacks_ = nullptr;
  Address local_;
  Address remote_;
  common::Buffer read_buffer_;
  common::Buffer write_buffer_;
  event::TimerPtr connect_timer_;
  State state_;
  uint64_t id_;
  uint64_t bytes_read_ = 0;
  uint64_t bytes_written_ = 0;
  size_t in_flight_ = 0;        // bytes handed to a pending uv_write
  uint32_t high_watermark_ = 0;
  uint32_t low_watermark_ = 0;
  uint32_t read_disable_count_ = 0;
  bool above_high_ = false;
  bool reading_ = false;        // uv_read_start in effect
  bool read_started_ = false;   // owner asked for data
  bool read_ended_ = false;     // peer half-closed
  bool write_end_pending_ = false;
  bool write_ended_ = false;    // shutdown(SHUT_WR) done
  bool close_after_flush_ = false;
  bool local_restored_ = false;
  bool flush_queued_ = false;
  bool transport_ready_ = false;  // the transport's handshake finished (meaningless without one)
  bool client_ = false;           // we connected out (Connected is raised after the handshake)
  std::shared_ptr<std::atomic<int64_t>> open_counter_;
  std::shared_ptr<std::atomic<int64_t>> open_counter_global_;
};
using ConnectionPtr = std::unique_ptr<Connection>;

}  // namespace strait::network
