#include "proxy/server/local_http.h"

#include <fcntl.h>
#include <llhttp.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "proxy/common/log.h"
#include "proxy/network/connection.h"

namespace strait::server {

namespace {
constexpr size_t kMaxRequestBytes = 64 * 1024;

const char* reasonPhrase(int status) {
  switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 431: return "Request Header Fields Too Large";
    case 503: return "Service Unavailable";
    default: return "Error";
  }
}
}  // namespace

// One connection: reads one request with llhttp, hands it to the handler, answers once, closes.
class LocalHttpConnection : public network::ConnectionCallbacks {
 public:
  LocalHttpConnection(LocalHttpServer& server, network::ConnectionPtr conn)
      : server_(server), conn_(std::move(conn)), self_(std::make_shared<LocalHttpConnection*>(this)) {
    llhttp_settings_init(&settings_);
    settings_.on_url = [](llhttp_t* p, const char* at, size_t len) {
      static_cast<LocalHttpConnection*>(p->data)->url_.append(at, len);
      return 0;
    };
    settings_.on_message_complete = [](llhttp_t* p) {
      static_cast<LocalHttpConnection*>(p->data)->complete_ = true;
      return static_cast<int>(HPE_PAUSED);
    };
    llhttp_init(&parser_, HTTP_REQUEST, &settings_);
    parser_.data = this;
    conn_->setCallbacks(this);
    conn_->startReading();
    if (server_.request_timeout_ms_ != 0) {
      request_timer_ = server_.dispatcher_.createTimer([this] { conn_->close(network::CloseType::NoFlush); });
      request_timer_->enable(server_.request_timeout_ms_);
    }
  }

  void onData(network::Connection&, common::Buffer& data, bool end_stream) override {
    if (handed_off_) {
      data.drain(data.length());
      // A stream's client that closes its side is gone (an event-stream client never half-closes).
      if (end_stream && streaming_) conn_->close(network::CloseType::NoFlush);
      return;
    }
    received_ += data.length();
    std::string chunk = data.toString();
    data.drain(data.length());
    llhttp_errno_t err = llhttp_execute(&parser_, chunk.data(), chunk.size());
    if (complete_) {
      handed_off_ = true;
      if (request_timer_) request_timer_->disable();
      // The handler may answer later (an application probe): it holds a weak token, so an answer
      // after this connection is gone goes nowhere.
      std::weak_ptr<LocalHttpConnection*> token = self_;
      server_.handler_(llhttp_method_name(static_cast<llhttp_method_t>(parser_.method)), url_,
                       [token](const LocalHttpResponse& r) {
                         if (auto self = token.lock()) (*self)->respond(r);
                       });
    } else if (err != HPE_OK) {
      handed_off_ = true;
      respond(LocalHttpResponse{400, "text/plain", absl::StrCat("bad request: ", llhttp_errno_name(err), "\n")});
    } else if (received_ > kMaxRequestBytes) {
      handed_off_ = true;
      respond(LocalHttpResponse{431, "text/plain", "request too large\n"});
    } else if (end_stream) {
      conn_->close(network::CloseType::NoFlush);
    }
  }

  void onEvent(network::Connection&, network::ConnectionEvent e) override {
    if (e == network::ConnectionEvent::RemoteClose || e == network::ConnectionEvent::LocalClose) {
      self_.reset();
      server_.remove(this);
    }
  }

  void close() { conn_->close(network::CloseType::NoFlush); }
  void end() { conn_->close(network::CloseType::FlushWrite); }

  bool open() const { return conn_->state() == network::Connection::State::Open; }
  bool sendChunk(std::string_view chunk, size_t max_unsent) {
    if (!open()) return false;
    if (conn_->writeBufferLength() > max_unsent) {
      conn_->close(network::CloseType::NoFlush);
      return false;
    }
    common::Buffer out;
    out.add(chunk);
    conn_->write(out, false);
    return true;
  }

 private:
  void respond(const LocalHttpResponse& r) {
    if (responded_ || conn_->state() == network::Connection::State::Closed) return;
    responded_ = true;
    common::Buffer out;
    // A stream has no length: its end is the connection's.
    out.add(absl::StrCat("HTTP/1.1 ", r.status, " ", reasonPhrase(r.status), "\r\ncontent-type: ", r.content_type,
                         r.stream ? std::string() : absl::StrCat("\r\ncontent-length: ", r.body.size()),
                         "\r\ncache-control: no-cache, max-age=0\r\nx-content-type-options: nosniff\r\n"
                         "connection: close\r\n\r\n"));
    out.add(r.body);
    conn_->write(out, false);
    if (r.stream) {
      streaming_ = true;
      r.stream(LocalHttpStream(self_));
      return;
    }
    conn_->close(network::CloseType::FlushWrite);
  }

  LocalHttpServer& server_;
  network::ConnectionPtr conn_;
  std::shared_ptr<LocalHttpConnection*> self_;  // the token answers reach this connection through
  llhttp_t parser_;
  llhttp_settings_t settings_;
  std::string url_;
  event::TimerPtr request_timer_;  // setLimits(): the whole request within the time
  size_t received_ = 0;
  bool complete_ = false;
  bool handed_off_ = false;
  bool responded_ = false;
  bool streaming_ = false;  // answered with a stream (LocalHttpResponse::stream)
};

bool LocalHttpStream::open() const {
  auto self = token_.lock();
  return self && (*self)->open();
}

bool LocalHttpStream::send(std::string_view chunk, size_t max_unsent) {
  auto self = token_.lock();
  return self && (*self)->sendChunk(chunk, max_unsent);
}

void LocalHttpStream::close() {
  if (auto self = token_.lock()) (*self)->close();
}

void LocalHttpStream::end() {
  if (auto self = token_.lock()) (*self)->end();
}

LocalHttpServer::LocalHttpServer(event::Dispatcher& dispatcher, Handler handler)
    : dispatcher_(dispatcher), handler_(std::move(handler)) {}

LocalHttpServer::~LocalHttpServer() { stop(); }

namespace {
std::function<int(const network::Address&)>& inheritedSocketSource() {
  static std::function<int(const network::Address&)> source;
  return source;
}
}  // namespace

void LocalHttpServer::setInheritedSocketSource(std::function<int(const network::Address&)> source) {
  inheritedSocketSource() = std::move(source);
}

std::unique_ptr<network::TcpListener> LocalHttpServer::listen(int fd, std::string* error) {
  auto listener = std::make_unique<network::TcpListener>(dispatcher_, fd, 128, [this](network::ConnectionPtr c) {
    if (max_connections_ != 0 && connections_.size() >= max_connections_) {
      c->close(network::CloseType::NoFlush);
      dispatcher_.deferredDelete(std::move(c));
      return;
    }
    connections_.push_back(std::make_unique<LocalHttpConnection>(*this, std::move(c)));
  });
  if (!listener->ok()) {
    *error = listener->error();
    return nullptr;
  }
  return listener;
}

bool LocalHttpServer::bind(const network::Address& address, std::string* error) {
  int fd = inheritedSocketSource() ? inheritedSocketSource()(address) : -1;
  if (fd < 0) fd = network::bindReusePortSocket(address, error, false);
  if (fd < 0) return false;
  auto listener = listen(fd, error);
  if (!listener) return false;
  addresses_.push_back(network::boundAddress(fd));
  listeners_.push_back(std::move(listener));
  return true;
}

int LocalHttpServer::release(const network::Address& bound) {
  for (size_t i = 0; i < addresses_.size(); ++i) {
    if (!(addresses_[i] == bound) || !listeners_[i] || listeners_[i]->fd() < 0) continue;
    int fd = ::fcntl(listeners_[i]->fd(), F_DUPFD_CLOEXEC, 0);
    if (fd >= 0) listeners_[i].reset();
    return fd;
  }
  return -1;
}

void LocalHttpServer::resume(const network::Address& bound, int fd) {
  for (size_t i = 0; i < addresses_.size(); ++i) {
    if (!(addresses_[i] == bound) || listeners_[i]) continue;
    std::string err;
    listeners_[i] = listen(fd, &err);
    if (listeners_[i]) return;
    LOG_ERROR("%s: %s", bound.asString().c_str(), err.c_str());
    return;
  }
  ::close(fd);
}

void LocalHttpServer::stop() {
  listeners_.clear();
  // Closing raises events that remove entries; iterate over a copy of the pointers.
  std::vector<LocalHttpConnection*> open;
  for (auto& c : connections_) open.push_back(c.get());
  for (auto* c : open) c->close();
}

void LocalHttpServer::remove(LocalHttpConnection* c) {
  for (auto it = connections_.begin(); it != connections_.end(); ++it) {
    if (it->get() == c) {
      // The connection owns the network::Connection whose callback we are in: free both later.
      struct Holder : event::DeferredDeletable {
        std::unique_ptr<LocalHttpConnection> c;
      };
      auto h = std::make_unique<Holder>();
      h->c = std::move(*it);
      connections_.erase(it);
      dispatcher_.deferredDelete(std::move(h));
      return;
    }
  }
}

}  // namespace strait::server
