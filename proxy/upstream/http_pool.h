#pragma once

#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "proxy/config/snapshot.h"
#include "proxy/event/dispatcher.h"
#include "proxy/http/codec.h"
#include "proxy/network/address.h"

namespace strait::upstream {

enum class PoolFailureReason { ConnectionFailure, Timeout, Overflow };

// What a request waiting for a connection hears.
class PoolCallbacks {
 public:
  virtual ~PoolCallbacks() = default;
  // `encoder` is ready; `reused` is true if the connection already served a request (a failure before
  // any response byte may then be the keep-alive race, worth one retry on a fresh connection).
  virtual void onPoolReady(http::RequestEncoder& encoder, bool reused) = 0;
  virtual void onPoolFailure(PoolFailureReason reason) = 0;
};

class Cancellable {
 public:
  virtual ~Cancellable() = default;
  virtual void cancel() = 0;
};

class ActiveClient;

// The connections of one worker to one upstream address with one protocol. HTTP/1: one request per
// connection at a time, idle connections kept for reuse. HTTP/2: streams multiplexed up to the peer's
// limit, more connections opened as needed.
class HttpPool {
 public:
  HttpPool(event::Dispatcher& dispatcher, config::ClusterConstSharedPtr cluster, network::Address address,
           const config::Host* host, http::Protocol protocol);
  ~HttpPool();

  // Either calls onPoolReady/onPoolFailure before returning (and returns nullptr), or queues the
  // request and returns a handle to cancel it.
  Cancellable* newStream(http::ResponseDecoder& decoder, PoolCallbacks& callbacks);
  bool idle() const;
  http::Protocol protocol() const { return protocol_; }
  // A config update replaced the cluster: connections stay, new ones use the new settings.
  void updateCluster(const config::ClusterConstSharedPtr& cluster, const config::Host* host) {
    cluster_ = cluster;
    setHost(host);
  }
  const config::Cluster* cluster() const { return cluster_.get(); }

 private:
  friend class ActiveClient;
  struct Pending;
  void onClientReady(ActiveClient& client);
  void onClientClosed(ActiveClient& client, bool connect_failed, bool timed_out);
  void attach(ActiveClient& client, http::ResponseDecoder& decoder, PoolCallbacks& callbacks);
  void processPending();
  void createClient();
  void cancelPending(Pending* p);

  event::Dispatcher& dispatcher_;
  config::ClusterConstSharedPtr cluster_;
  network::Address address_;
  // A copy (address and stat handles): the config object the host came from may be replaced and freed.
  void setHost(const config::Host* host) {
    if (host != nullptr) host_value_ = *host;
    host_ = host != nullptr ? &host_value_ : nullptr;
  }
  config::Host host_value_;
  const config::Host* host_ = nullptr;
  http::Protocol protocol_;
  http::CodecSettings settings_;
  std::list<std::unique_ptr<ActiveClient>> clients_;
  std::list<std::unique_ptr<Pending>> pending_;
  std::vector<ActiveClient*> idle_;  // HTTP/1 connections free for a request, most recent last
  uint32_t connecting_capacity_ = 0;  // streams the connecting clients will be able to take
};

// A worker's pools, keyed by (cluster, address, protocol). Pools whose cluster left the config are
// dropped once idle.
class HttpPoolManager {
 public:
  explicit HttpPoolManager(event::Dispatcher& dispatcher) : dispatcher_(dispatcher) {}
  HttpPool& pool(const config::ClusterConstSharedPtr& cluster, const config::HostChoice& host, http::Protocol protocol);

 private:
  struct Key {
    uint32_t cluster;  // the cluster's stable index: pools outlive config updates of their cluster
    network::Address address;
    http::Protocol protocol;
    bool operator<(const Key& o) const;
  };
  event::Dispatcher& dispatcher_;
  std::map<Key, std::unique_ptr<HttpPool>> pools_;
};

}  // namespace strait::upstream
