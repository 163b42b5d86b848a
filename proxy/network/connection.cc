#include "proxy/network/connection.h"

#include <linux/netfilter_ipv4.h>
#include <sys/socket.h>
#include <uv.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "proxy/common/log.h"

#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80
#endif

namespace strait::network {

// The libuv side of a connection. It outlives the Connection when needed: libuv may still call back
// (cancelled writes, close) after the owner is gone, so callbacks go through `owner`, which the
// Connection clears in its destructor; the handle frees itself in the close callback.
struct ConnectionHandle {
  uv_tcp_t tcp;
  uv_write_t write_req;
  uv_connect_t connect_req;
  uv_shutdown_t shutdown_req;
  Connection* owner = nullptr;
  bool closing = false;

  static ConnectionHandle* of(uv_handle_t* h) { return static_cast<ConnectionHandle*>(h->data); }
  static void onAlloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
    ConnectionHandle* self = of(h);
    if (self->owner == nullptr) {
      buf->base = nullptr;
      buf->len = 0;
      return;
    }
    size_t avail = 0;
    Connection* c = self->owner;
    buf->base = (c->transport_ ? c->transport_->readBuffer() : c->read_buffer_).reserve(&avail);
    buf->len = avail;
  }
  static void onRead(uv_stream_t* s, ssize_t nread, const uv_buf_t*) {
    ConnectionHandle* self = of(reinterpret_cast<uv_handle_t*>(s));
    if (self->owner != nullptr) self->owner->onReadable(nread);
  }
  static void onWrite(uv_write_t* req, int status) {
    ConnectionHandle* self = static_cast<ConnectionHandle*>(req->data);
    if (self->owner != nullptr) self->owner->onWriteDone(status);
  }
  static void onConnect(uv_connect_t* req, int status) {
    ConnectionHandle* self = static_cast<ConnectionHandle*>(req->data);
    if (self->owner != nullptr) self->owner->onConnect(status);
  }
  static void onShutdown(uv_shutdown_t* req, int) {
    ConnectionHandle* self = static_cast<ConnectionHandle*>(req->data);
    if (self->owner != nullptr) self->owner->onShutdownDone();
  }
  static void onClose(uv_handle_t* h) { delete of(h); }
};

namespace {
std::atomic<uint64_t> g_next_connection_id{1};

Address sockName(uv_tcp_t* t) {
  sockaddr_storage ss{};
  int len = sizeof(ss);
  uv_tcp_getsockname(t, reinterpret_cast<sockaddr*>(&ss), &len);
  return Address(reinterpret_cast<sockaddr*>(&ss));
}
Address peerName(uv_tcp_t* t) {
  sockaddr_storage ss{};
  int len = sizeof(ss);
  uv_tcp_getpeername(t, reinterpret_cast<sockaddr*>(&ss), &len);
  return Address(reinterpret_cast<sockaddr*>(&ss));
}
ConnectionHandle* newHandle(uv_loop_t* loop, Connection* owner) {
  auto* h = new ConnectionHandle;
  uv_tcp_init(loop, &h->tcp);
  h->tcp.data = h;
  h->write_req.data = h;
  h->connect_req.data = h;
  h->shutdown_req.data = h;
  h->owner = owner;
  return h;
}
}  // namespace

Connection::Connection(event::Dispatcher& dispatcher, uv_tcp_t* accepted)
    : dispatcher_(dispatcher),
      handle_(static_cast<ConnectionHandle*>(accepted->data)),
      state_(State::Open),
      id_(g_next_connection_id.fetch_add(1, std::memory_order_relaxed)) {
  handle_->owner = this;
  uv_tcp_nodelay(&handle_->tcp, 1);
  local_ = sockName(&handle_->tcp);
  remote_ = peerName(&handle_->tcp);
}

Connection::Connection(event::Dispatcher& dispatcher, const Address& remote)
    : dispatcher_(dispatcher),
      handle_(newHandle(dispatcher.loop(), this)),
      remote_(remote),
      state_(State::Connecting),
      id_(g_next_connection_id.fetch_add(1, std::memory_order_relaxed)),
      client_(true) {}

Connection::~Connection() {
  if (flush_queued_) dispatcher_.cancelFlush(this);
  // Whoever destroys a connection does not hear about it (its callbacks may be gone already).
  callbacks_ = nullptr;
  if (state_ != State::Closed) closeNow(ConnectionEvent::LocalClose, false);
  // closeNow() hands the handle to libuv; it is freed in its close callback.
  if (open_counter_) open_counter_->fetch_sub(1, std::memory_order_relaxed);
  if (open_counter_global_) open_counter_global_->fetch_sub(1, std::memory_order_relaxed);
}

// Allocates the handle for an accepted socket; used by the listener before constructing a Connection.
uv_tcp_t* allocateAcceptHandle(uv_loop_t* loop) { return &newHandle(loop, nullptr)->tcp; }
void freeUnusedAcceptHandle(uv_tcp_t* t) {
  uv_close(reinterpret_cast<uv_handle_t*>(t), &ConnectionHandle::onClose);
}

int Connection::fd() const {
  uv_os_fd_t fd = -1;
  uv_fileno(reinterpret_cast<const uv_handle_t*>(&handle_->tcp), &fd);
  return fd;
}

void Connection::setTransportSocket(TransportSocketPtr transport) {
  transport_ = std::move(transport);
  transport_ready_ = false;
  transport_->setCallbacks(*this);
  // Bytes a listener filter peeked at are the start of the handshake.
  if (!read_buffer_.empty()) transport_->readBuffer().move(read_buffer_);
}

void Connection::onTransportReady() {
  transport_ready_ = true;
  if (connect_timer_) connect_timer_->disable();
  LOG_TRACE("[C%lu] TLS handshake done (%s)", id_, transport_->ssl() ? std::string(transport_->ssl()->tlsVersion()).c_str() : "");
  if (callbacks_) callbacks_->onEvent(*this, ConnectionEvent::Connected);
  if (state_ != State::Open) return;
  // Plaintext written while the handshake ran goes out now.
  scheduleFlush();
  updateReading();
}

void Connection::onTransportWantsFlush() {
  if (state_ == State::Open) scheduleFlush();
}

// The transport gave up (handshake failure, a bad record): send what it has (an alert) if the socket
// takes it at once, then close. An outgoing connection whose handshake failed reports ConnectFailed.
void Connection::handleTransportClose() {
  if (state_ == State::Closed) return;
  LOG_DEBUG("[C%lu] transport closed: %s", id_, std::string(transport_->failureReason()).c_str());
  common::Buffer& out = transport_->outBuffer();
  if (!out.empty() && in_flight_ == 0) {
    iovec iov[4];
    size_t n = out.fillIovecs(iov, 4);
    int rc = uv_try_write(reinterpret_cast<uv_stream_t*>(&handle_->tcp), reinterpret_cast<uv_buf_t*>(iov),
                          static_cast<unsigned>(n));
    if (rc > 0) bytes_written_ += static_cast<uint64_t>(rc);
  }
  closeNow(client_ && !transport_ready_ ? ConnectionEvent::ConnectFailed : ConnectionEvent::RemoteClose, false);
}

void Connection::setBufferLimits(uint32_t limit) {
  high_watermark_ = limit;
  low_watermark_ = limit / 2;
}

void Connection::connect(uint64_t timeout_ms, const std::optional<Address>& source) {
  uv_tcp_nodelay(&handle_->tcp, 1);
  int rc = 0;
  if (source && source->family() == remote_.family()) {
    rc = uv_tcp_bind(&handle_->tcp, source->sockAddr(), 0);
    if (rc != 0) LOG_DEBUG("[C%lu] bind to %s failed: %s", id_, source->asString().c_str(), uv_strerror(rc));
  }
  if (rc == 0) rc = uv_tcp_connect(&handle_->connect_req, &handle_->tcp, remote_.sockAddr(), &ConnectionHandle::onConnect);
  if (rc != 0) {
    // Errors found synchronously (e.g. no route) are reported on the next loop turn, like async ones.
    LOG_DEBUG("[C%lu] connect to %s failed at once: %s", id_, remote_.asString().c_str(), uv_strerror(rc));
    connect_timer_ = dispatcher_.createTimer([this] { closeNow(ConnectionEvent::ConnectFailed, false); });
    connect_timer_->enable(0);
    return;
  }
  if (timeout_ms > 0) {
    connect_timer_ = dispatcher_.createTimer([this] {
      LOG_DEBUG("[C%lu] connect to %s timed out", id_, remote_.asString().c_str());
      closeNow(ConnectionEvent::ConnectTimeout, false);
    });
    connect_timer_->enable(timeout_ms);
  }
}

void Connection::failConnect() {
  connect_timer_ = dispatcher_.createTimer([this] { closeNow(ConnectionEvent::ConnectFailed, false); });
  connect_timer_->enable(0);
}

void Connection::onConnect(int status) {
  // With a transport the connect timeout also covers the handshake.
  if (connect_timer_ && (transport_ == nullptr || status != 0)) connect_timer_->disable();
  if (state_ != State::Connecting) return;
  if (status != 0) {
    LOG_DEBUG("[C%lu] connect to %s failed: %s", id_, remote_.asString().c_str(), uv_strerror(status));
    closeNow(ConnectionEvent::ConnectFailed, false);
    return;
  }
  state_ = State::Open;
  local_ = sockName(&handle_->tcp);
  if (transport_) {
    // Connected is raised when the handshake completes (onTransportReady).
    transport_->onConnected();
    flush();
    updateReading();
    return;
  }
  if (callbacks_) callbacks_->onEvent(*this, ConnectionEvent::Connected);
  if (state_ != State::Open) return;
  flush();
  updateReading();
}

void Connection::startReading() {
  read_started_ = true;
  updateReading();
  if (transport_ && !transport_ready_ && state_ == State::Open && !transport_->readBuffer().empty()) {
    processTransportInput(false);  // a peeked ClientHello
    return;
  }
  if ((!read_buffer_.empty() || read_ended_) && callbacks_ != nullptr && state_ == State::Open && transportReady()) {
    callbacks_->onData(*this, read_buffer_, read_ended_);
  }
}

void Connection::stopReading() {
  read_started_ = false;
  updateReading();
}

void Connection::readDisable(bool disable) {
  if (disable) {
    ++read_disable_count_;
  } else if (read_disable_count_ > 0) {
    --read_disable_count_;
  }
  updateReading();
}

void Connection::updateReading() {
  if (state_ != State::Open) return;
  // A handshake in progress reads whatever the owner wants: it cannot finish otherwise.
  const bool handshaking = transport_ != nullptr && !transport_ready_ && (read_started_ || client_);
  bool want = ((read_started_ && read_disable_count_ == 0) || handshaking) && !read_ended_;
  if (want && !reading_) {
    uv_read_start(reinterpret_cast<uv_stream_t*>(&handle_->tcp), &ConnectionHandle::onAlloc, &ConnectionHandle::onRead);
    reading_ = true;
  } else if (!want && reading_) {
    uv_read_stop(reinterpret_cast<uv_stream_t*>(&handle_->tcp));
    reading_ = false;
  }
}

// Runs what the transport holds from the socket: handshake progress, then plaintext for the owner.
void Connection::processTransportInput(bool eof) {
  if (transport_->onRead(read_buffer_, eof) == PostIoAction::Close) {
    handleTransportClose();
    return;
  }
  if (state_ != State::Open) return;
  if (!transport_->outBuffer().empty()) scheduleFlush();
  if (eof && !transport_ready_) {
    // The peer left in the middle of the handshake.
    handleTransportClose();
    return;
  }
  if (eof) {
    read_ended_ = true;
    updateReading();
  }
  // Plaintext goes to an owner that reads; one that has not started yet gets it from startReading().
  if (transport_ready_ && read_started_ && callbacks_ && (!read_buffer_.empty() || eof)) {
    callbacks_->onData(*this, read_buffer_, eof);
  }
  if (eof) maybeCloseAfterHalfClose();
}

void Connection::onReadable(ssize_t nread) {
  if (transport_) {
    const bool eof = nread == UV_EOF;
    if (nread > 0) {
      transport_->readBuffer().commit(static_cast<size_t>(nread));
      bytes_read_ += static_cast<uint64_t>(nread);
    } else if (nread == 0) {
      return;
    } else if (!eof) {
      LOG_DEBUG("[C%lu] read error: %s", id_, uv_strerror(static_cast<int>(nread)));
      closeNow(client_ && !transport_ready_ ? ConnectionEvent::ConnectFailed : ConnectionEvent::RemoteClose, false);
      return;
    }
    processTransportInput(eof);
    return;
  }
  if (nread > 0) {
    read_buffer_.commit(static_cast<size_t>(nread));
    bytes_read_ += static_cast<uint64_t>(nread);
    if (callbacks_) callbacks_->onData(*this, read_buffer_, false);
    return;
  }
  if (nread == 0) return;  // EAGAIN
  if (nread == UV_EOF) {
    read_ended_ = true;
    updateReading();
    if (callbacks_) callbacks_->onData(*this, read_buffer_, true);
    maybeCloseAfterHalfClose();
    return;
  }
  LOG_DEBUG("[C%lu] read error: %s", id_, uv_strerror(static_cast<int>(nread)));
  closeNow(ConnectionEvent::RemoteClose, false);
}

void Connection::write(common::Buffer& data, bool end_stream) {
  if (state_ == State::Closed || write_end_pending_) {
    data.drain(data.length());
    return;
  }
  write_buffer_.move(data);
  if (end_stream) write_end_pending_ = true;
  if (state_ == State::Open) scheduleFlush();
  checkWatermarks();
}

void Connection::scheduleFlush() {
  if (flush_queued_ || in_flight_ > 0) return;  // a pending uv_write's callback flushes the rest
  flush_queued_ = true;
  dispatcher_.queueFlush(this);
}

void Connection::runDeferredFlush() {
  flush_queued_ = false;
  if (state_ == State::Open) flush();
}

void Connection::flush() {
  if (state_ != State::Open || in_flight_ > 0) return;
  auto* stream = reinterpret_cast<uv_stream_t*>(&handle_->tcp);
  if (transport_ && transport_->encrypt(write_buffer_, write_end_pending_ || close_after_flush_) == PostIoAction::Close) {
    handleTransportClose();
    return;
  }
  common::Buffer& out = socketOut();
  while (!out.empty()) {
    iovec iov[16];
    size_t n = out.fillIovecs(iov, 16);
    // iovec and uv_buf_t share a layout on Unix (libuv guarantees it).
    int rc = uv_try_write(stream, reinterpret_cast<uv_buf_t*>(iov), static_cast<unsigned>(n));
    if (rc > 0) {
      bytes_written_ += static_cast<uint64_t>(rc);
      out.drain(static_cast<size_t>(rc));
      continue;
    }
    if (rc == UV_EAGAIN || rc == 0) {
      // The socket is full: hand the rest to libuv and wait for its callback.
      size_t total = 0;
      for (size_t i = 0; i < n; ++i) total += iov[i].iov_len;
      int wrc = uv_write(&handle_->write_req, stream, reinterpret_cast<uv_buf_t*>(iov), static_cast<unsigned>(n),
                         &ConnectionHandle::onWrite);
      if (wrc != 0) {
        closeNow(ConnectionEvent::RemoteClose, false);
        return;
      }
      in_flight_ = total;
      return;
    }
    LOG_DEBUG("[C%lu] write error: %s", id_, uv_strerror(rc));
    closeNow(ConnectionEvent::RemoteClose, false);
    return;
  }
  checkWatermarks();
  // With a transport mid-handshake, plaintext may still wait in write_buffer_: it goes once it is done.
  if (write_buffer_.empty() || (transport_ && !transport_ready_ && close_after_flush_)) {
    if (close_after_flush_) {
      closeNow(ConnectionEvent::LocalClose, false);
      return;
    }
    if (write_end_pending_ && !write_ended_) {
      write_ended_ = true;
      uv_shutdown(&handle_->shutdown_req, stream, &ConnectionHandle::onShutdown);
    }
  }
}

void Connection::onWriteDone(int status) {
  if (state_ == State::Closed) return;
  if (status != 0) {
    LOG_DEBUG("[C%lu] write failed: %s", id_, uv_strerror(status));
    closeNow(ConnectionEvent::RemoteClose, false);
    return;
  }
  bytes_written_ += in_flight_;
  socketOut().drain(in_flight_);
  in_flight_ = 0;
  flush();
  checkWatermarks();
}

void Connection::onShutdownDone() { maybeCloseAfterHalfClose(); }

void Connection::maybeCloseAfterHalfClose() {
  // Both directions over: the peer sent FIN and our FIN went out after every buffered byte.
  if (state_ == State::Open && read_ended_ && write_ended_ && in_flight_ == 0 && write_buffer_.empty() &&
      socketOut().empty()) {
    closeNow(ConnectionEvent::RemoteClose, false);
  }
}

void Connection::checkWatermarks() {
  if (high_watermark_ == 0 || callbacks_ == nullptr) return;
  size_t len = writeBufferLength();
  if (!above_high_ && len > high_watermark_) {
    above_high_ = true;
    callbacks_->onAboveWriteBufferHighWatermark(*this);
  } else if (above_high_ && len <= low_watermark_) {
    above_high_ = false;
    callbacks_->onBelowWriteBufferLowWatermark(*this);
  }
}

void Connection::close(CloseType type) {
  if (state_ == State::Closed) return;
  // A TLS connection says close_notify first, so the peer can tell a close from a truncation.
  const bool tls_goodbye = transport_ != nullptr && transport_ready_;
  if (type == CloseType::FlushWrite && state_ == State::Open &&
      (!write_buffer_.empty() || in_flight_ > 0 || !socketOut().empty() || tls_goodbye)) {
    close_after_flush_ = true;
    scheduleFlush();
    // Stop reading: nothing more is accepted from a connection we are closing.
    read_disable_count_++;
    updateReading();
    return;
  }
  closeNow(ConnectionEvent::LocalClose, type == CloseType::Reset);
}

void Connection::closeNow(ConnectionEvent event, bool reset) {
  if (state_ == State::Closed) return;
  state_ = State::Closed;
  if (flush_queued_) {
    flush_queued_ = false;
    dispatcher_.cancelFlush(this);
  }
  connect_timer_.reset();
  if (reset) {
    linger l{1, 0};
    int fd = this->fd();
    if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
  }
  handle_->owner = nullptr;
  handle_->closing = true;
  uv_close(reinterpret_cast<uv_handle_t*>(&handle_->tcp), &ConnectionHandle::onClose);
  read_buffer_.clear();
  write_buffer_.clear();
  if (transport_) {
    transport_->readBuffer().clear();
    transport_->outBuffer().clear();
  }
  in_flight_ = 0;
  if (callbacks_) callbacks_->onEvent(*this, event);
}

bool Connection::restoreOriginalDestination() {
  int fd = this->fd();
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  int rc;
  if (local_.isV6()) {
    rc = getsockopt(fd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, &ss, &len);
  } else {
    rc = getsockopt(fd, SOL_IP, SO_ORIGINAL_DST, &ss, &len);
  }
  if (rc != 0) return false;
  Address original(reinterpret_cast<sockaddr*>(&ss));
  if (original == local_) return false;  // not redirected: the destination is the listener itself
  local_ = original;
  local_restored_ = true;
  return true;
}

}  // namespace strait::network
