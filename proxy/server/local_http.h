#pragma once

#include <functional>
#include <list>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/event/dispatcher.h"
#include "proxy/network/address.h"
#include "proxy/network/listener.h"

namespace strait::server {

class LocalHttpConnection;

// A response that stays open after its head (server-sent events): sent without a length, it ends when
// the connection closes. The server owns the connection; this is a weak handle to it, so holding one
// keeps nothing alive and a client that went away just makes send() false.
class LocalHttpStream {
 public:
  LocalHttpStream() = default;
  explicit LocalHttpStream(std::weak_ptr<LocalHttpConnection*> token) : token_(std::move(token)) {}
  bool open() const;
  // Writes `chunk`; false (and the connection closed) when the client is gone or has left more than
  // `max_unsent` bytes unread: a slow reader is dropped rather than buffered without end.
  bool send(std::string_view chunk, size_t max_unsent);
  void close();  // at once, dropping what is unsent
  void end();    // after what was sent is flushed

 private:
  std::weak_ptr<LocalHttpConnection*> token_;
};

struct LocalHttpResponse {
  LocalHttpResponse() = default;
  LocalHttpResponse(int s, std::string type, std::string b) : status(s), content_type(std::move(type)), body(std::move(b)) {}
  int status = 200;
  std::string content_type = "text/plain; charset=UTF-8";
  std::string body;
  // Set: a streaming response. The head and `body` are sent, then this gets the stream to write on.
  std::function<void(LocalHttpStream)> stream;
};

// The small HTTP/1.1 server the admin and the status ports share, on the main thread's loop: one
// request per connection (llhttp, 64 KiB at most), answered with Connection: close. For people,
// probes and scrapers, not for throughput. The handler answers through `respond`, at once or later on
// the same loop (a probe of the application); a `respond` that comes after the client left does nothing.
class LocalHttpServer {
 public:
  using Respond = std::function<void(const LocalHttpResponse&)>;
  using Handler = std::function<void(const std::string& method, const std::string& url, Respond respond)>;

  LocalHttpServer(event::Dispatcher& dispatcher, Handler handler);
  ~LocalHttpServer();
  LocalHttpServer(const LocalHttpServer&) = delete;
  LocalHttpServer& operator=(const LocalHttpServer&) = delete;

  // Listens on `address` too (may be called once per address). Not SO_REUSEPORT: a second process on
  // the same port must fail loudly, not share it.
  bool bind(const network::Address& address, std::string* error);
  // The bound addresses (port 0 resolved), in bind order.
  const std::vector<network::Address>& addresses() const { return addresses_; }
  // Hot restart: where bind() first looks for the socket the previous process listened on at that
  // address (as configured); it returns the fd, or -1 to bind anew. Process-wide, main thread.
  static void setInheritedSocketSource(std::function<int(const network::Address&)> source);
  // Hot restart, the process handing over: stops accepting on the socket bound at `bound` (open
  // connections finish) and returns a duplicate of it, which keeps it and its queue alive; -1 if there
  // is none. resume() accepts on such a duplicate again (the next process went away).
  int release(const network::Address& bound);
  void resume(const network::Address& bound, int fd);
  // Stops accepting and closes every open connection.
  void stop();
  // For a port open beyond loopback (the status ports): at most `max_connections` open at once (more
  // are closed at accept), and a request must arrive whole within `request_timeout_ms` of the accept.
  // 0: no limit (the admin, on loopback, has none).
  void setLimits(size_t max_connections, uint64_t request_timeout_ms) {
    max_connections_ = max_connections;
    request_timeout_ms_ = request_timeout_ms;
  }

 private:
  friend class LocalHttpConnection;
  void remove(LocalHttpConnection* c);
  std::unique_ptr<network::TcpListener> listen(int fd, std::string* error);

  event::Dispatcher& dispatcher_;
  Handler handler_;
  std::vector<network::Address> addresses_;
  std::vector<std::unique_ptr<network::TcpListener>> listeners_;  // by addresses_ index; null: released
  std::list<std::unique_ptr<LocalHttpConnection>> connections_;
  size_t max_connections_ = 0;
  uint64_t request_timeout_ms_ = 0;
};

}  // namespace strait::server
