#pragma once

#include <functional>
#include <string>

#include "proxy/event/dispatcher.h"
#include "proxy/network/address.h"
#include "proxy/network/connection.h"

typedef struct uv_tcp_s uv_tcp_t;
typedef struct uv_stream_s uv_stream_t;

namespace strait::network {

// Creates a TCP socket bound to `addr` with SO_REUSEADDR and (unless told otherwise) SO_REUSEPORT set,
// not yet listening. Without SO_REUSEPORT a second process cannot bind the same address (the admin).
// IPv6 sockets are v6-only (as Envoy's default), so "[::]" and "0.0.0.0" can both be bound.
// Returns the fd, or -1 with `error` set.
int bindReusePortSocket(const Address& addr, std::string* error, bool reuse_port = true);
// The address a bound socket got (resolves port 0).
Address boundAddress(int fd);

// Accepts connections on one socket on one dispatcher. Each worker has its own TcpListener on its own
// SO_REUSEPORT socket for the same address.
class TcpListener {
 public:
  using AcceptCb = std::function<void(ConnectionPtr)>;
  // Takes ownership of `fd` (already bound) and starts listening, unless `listen_now` is false: then
  // nothing is accepted until listen() (a hot restart child holds its sockets until it is ready; a
  // socket it took from its parent keeps queueing connections for the parent meanwhile).
  TcpListener(event::Dispatcher& dispatcher, int fd, int backlog, AcceptCb on_accept, bool listen_now = true);
  ~TcpListener();
  TcpListener(const TcpListener&) = delete;
  TcpListener& operator=(const TcpListener&) = delete;
  bool ok() const { return ok_; }
  // Starts accepting (once; later calls do nothing). False, with error() set, if listen() failed.
  bool listen();
  const std::string& error() const { return error_; }
  // The listening socket (hot restart hands a duplicate of it to the next process); -1 if none.
  int fd() const;
  // Accepts every connection the kernel has queued on the socket now, through the accept callback, and
  // returns how many. Called just before a listener that goes away is closed: closing a listening
  // socket resets the connections in its queue, which their clients saw as established (a request
  // sent on one would fail); taken here, they are served and drained like the listener's others.
  size_t acceptPending();

 private:
  static void onConnection(uv_stream_t* server, int status);
  event::Dispatcher& dispatcher_;
  uv_tcp_t* handle_;
  AcceptCb on_accept_;
  int backlog_;
  bool listening_ = false;
  bool ok_ = false;
  std::string error_;
};

}  // namespace strait::network
