#pragma once

#include <list>
#include <memory>
#include <string>

#include "proxy/network/connection.h"
#include "proxy/network/listener.h"

namespace strait::server {

class Server;
class AdminConnection;

// Envoy-compatible admin endpoint on the main thread. One request per connection (Connection: close):
// the admin is for people and scrapers, not for throughput.
class AdminServer {
 public:
  explicit AdminServer(Server& server);
  ~AdminServer();
  bool bind(const network::Address& address, std::string* error);
  const network::Address& address() const { return address_; }
  void stop();

  struct Response {
    int status = 200;
    std::string content_type = "text/plain; charset=UTF-8";
    std::string body;
  };
  Response handle(const std::string& method, const std::string& url);
  void remove(AdminConnection* c);

 private:
  Server& server_;
  network::Address address_;
  std::unique_ptr<network::TcpListener> listener_;
  std::list<std::unique_ptr<AdminConnection>> connections_;
};

}  // namespace strait::server
