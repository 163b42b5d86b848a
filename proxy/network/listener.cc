#include "proxy/network/listener.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <cerrno>
#include <cstring>

#include "proxy/common/log.h"

namespace strait::network {

uv_tcp_t* allocateAcceptHandle(uv_loop_t* loop);
void freeUnusedAcceptHandle(uv_tcp_t* t);

int bindReusePortSocket(const Address& addr, std::string* error, bool reuse_port) {
  int fd = ::socket(addr.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    *error = std::string("socket: ") + std::strerror(errno);
    return -1;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  if (reuse_port && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0) {
    *error = std::string("SO_REUSEPORT: ") + std::strerror(errno);
    ::close(fd);
    return -1;
  }
  if (addr.isV6()) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  if (::bind(fd, addr.sockAddr(), addr.sockLen()) != 0) {
    *error = "bind " + addr.asString() + ": " + std::strerror(errno);
    ::close(fd);
    return -1;
  }
  return fd;
}

Address boundAddress(int fd) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  return Address(reinterpret_cast<sockaddr*>(&ss));
}

TcpListener::TcpListener(event::Dispatcher& dispatcher, int fd, int backlog, AcceptCb on_accept, bool listen_now)
    : dispatcher_(dispatcher), handle_(new uv_tcp_t), on_accept_(std::move(on_accept)), backlog_(backlog) {
  uv_tcp_init(dispatcher.loop(), handle_);
  handle_->data = this;
  int rc = uv_tcp_open(handle_, fd);
  if (rc != 0) {
    error_ = std::string("listen: ") + uv_strerror(rc);
    return;
  }
  ok_ = !listen_now || listen();
}

bool TcpListener::listen() {
  if (listening_) return true;
  int rc = uv_listen(reinterpret_cast<uv_stream_t*>(handle_), backlog_, &TcpListener::onConnection);
  if (rc != 0) {
    error_ = std::string("listen: ") + uv_strerror(rc);
    return false;
  }
  listening_ = true;
  return true;
}

TcpListener::~TcpListener() {
  handle_->data = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(handle_), [](uv_handle_t* h) { delete reinterpret_cast<uv_tcp_t*>(h); });
}

int TcpListener::fd() const {
  uv_os_fd_t fd = -1;
  if (uv_fileno(reinterpret_cast<const uv_handle_t*>(handle_), &fd) != 0) return -1;
  return fd;
}

size_t TcpListener::acceptPending() {
  if (!listening_) return 0;
  const int lfd = fd();
  if (lfd < 0) return 0;
  size_t n = 0;
  // Bounded by the queue's length (the backlog); a flood arriving meanwhile cannot keep this going.
  for (int i = 0; i < backlog_; ++i) {
    const int cfd = ::accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (cfd < 0) {
      if (errno == EINTR) continue;
      break;  // EAGAIN: the queue is empty (or an error that the next accept would see too)
    }
    uv_tcp_t* client = allocateAcceptHandle(dispatcher_.loop());
    if (int rc = uv_tcp_open(client, cfd); rc != 0) {
      LOG_DEBUG("accept (pending): %s", uv_strerror(rc));
      ::close(cfd);
      freeUnusedAcceptHandle(client);
      continue;
    }
    ++n;
    on_accept_(std::make_unique<Connection>(dispatcher_, client));
  }
  return n;
}

void TcpListener::onConnection(uv_stream_t* server, int status) {
  auto* self = static_cast<TcpListener*>(server->data);
  if (self == nullptr) return;
  if (status != 0) {
    LOG_WARN("accept error: %s", uv_strerror(status));
    return;
  }
  uv_tcp_t* client = allocateAcceptHandle(self->dispatcher_.loop());
  int rc = uv_accept(server, reinterpret_cast<uv_stream_t*>(client));
  if (rc != 0) {
    LOG_DEBUG("uv_accept: %s", uv_strerror(rc));
    freeUnusedAcceptHandle(client);
    return;
  }
  self->on_accept_(std::make_unique<Connection>(self->dispatcher_, client));
}

}  // namespace strait::network
