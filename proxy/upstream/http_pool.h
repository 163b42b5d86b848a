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
  // `connection` is the upstream connection the stream runs on (its TLS peer identity, addresses); it
  // may close before the stream ends, so nothing should keep a reference to it.
  virtual void onPoolReady(http::RequestEncoder& encoder, bool reused, const network::Connection& connection) = 0;
  virtual void onPoolFailure(PoolFailureReason reason) = 0;
};

class Cancellable {
 public:
  virtual ~Cancellable() = default;
  virtual void cancel() = 0;
};

class ActiveClient;
class HttpPoolManager;

inline uint64_t transportHash(const config::Cluster& c, const config::Host* host) {
  const auto& ts = config::transportFor(c, host);
  return ts ? ts->hashKey() : 0;
}

// The connections of one worker to one upstream address with one protocol and routing priority (as in
// Envoy, each priority has its own pools: its connections and waiting requests count against that
// priority's circuit breakers). HTTP/1: one request per connection at a time, idle connections kept for
// reuse. HTTP/2: streams multiplexed up to the peer's limit, more connections opened as needed.
class HttpPool : public event::DeferredDeletable {
 public:
  HttpPool(event::Dispatcher& dispatcher, config::ClusterConstSharedPtr cluster, network::Address address,
           const config::Host* host, http::Protocol protocol,
           ResourcePriority priority = ResourcePriority::Default, uint32_t alpn_override = 0);
  ~HttpPool() override;

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
  // The host or cluster left the config: idle connections close now, busy ones after their requests, and
  // the pool is released when it has none left. Requests already waiting are still served.
  void drain();
  bool draining() const { return draining_; }
  const network::Address& address() const { return address_; }

 private:
  friend class HttpPoolManager;
  friend class ActiveClient;
  struct Pending;
  void onClientReady(ActiveClient& client);
  void onClientClosed(ActiveClient& client, bool connect_failed, bool timed_out);
  void attach(ActiveClient& client, http::ResponseDecoder& decoder, PoolCallbacks& callbacks);
  void processPending();
  void createClient();
  void cancelPending(Pending* p);
  // Tells the manager once the pool has neither connections nor waiting requests.
  void maybeRelease();

  event::Dispatcher& dispatcher_;
  config::ClusterConstSharedPtr cluster_;
  network::Address address_;
  // Held: the host stays while the pool has connections to it, whatever the config does meanwhile.
  void setHost(const config::Host* host) {
    host_ref_ = host != nullptr ? host->shared_from_this() : nullptr;
    host_ = host_ref_.get();
  }
  upstream::HostConstSharedPtr host_ref_;
  const config::Host* host_ = nullptr;
  http::Protocol protocol_;
  ResourcePriority priority_;
  uint32_t alpn_id_ = 0;        // its key's network::internAlpnOverride id
  std::string alpn_override_;  // that list in wire form; empty: the context's ALPN
  http::CodecSettings settings_;
  std::list<std::unique_ptr<ActiveClient>> clients_;
  std::list<std::unique_ptr<Pending>> pending_;
  std::vector<ActiveClient*> idle_;  // HTTP/1 connections free for a request, most recent last
  uint32_t connecting_capacity_ = 0;  // streams the connecting clients will be able to take
  HttpPoolManager* manager_ = nullptr;
  // Its slot under the cluster's max_connection_pools (all workers, this priority); null: over the
  // limit, and every request it is asked for overflows until a later pool gets a slot.
  upstream::ClusterRuntimeSharedPtr pool_slot_;
  bool draining_ = false;
  bool released_ = false;
};

// A worker's pools, keyed by (cluster, transport, address, protocol, priority). A pool goes when its last connection does
// (an idle timeout, the upstream closing) with no request waiting; a pool whose cluster or host left the
// config drains first. So pools, and the config objects they hold, do not pile up as endpoints come and go.
class HttpPoolManager {
 public:
  explicit HttpPoolManager(event::Dispatcher& dispatcher) : dispatcher_(dispatcher) {}
  ~HttpPoolManager();
  // `alpn_override`: a network::internAlpnOverride id (Istio's istio.alpn), 0 for none; connections
  // offering different ALPN lists never share a pool.
  HttpPool& pool(const config::ClusterConstSharedPtr& cluster, const config::HostChoice& host, http::Protocol protocol,
                 ResourcePriority priority = ResourcePriority::Default, uint32_t alpn_override = 0);
  // A new config: drains the pools of clusters it no longer has, and of hosts an endpoint-listed cluster
  // (STATIC, EDS) no longer lists. Walks this worker's pools only, not the snapshot's clusters.
  void onConfig(const config::Snapshot& snapshot);
  size_t poolCount() const { return pools_.size() + draining_.size(); }

 private:
  friend class HttpPool;
  struct Key {
    uint32_t cluster;  // the cluster's stable index: pools outlive config updates of their cluster
    uint64_t transport;  // the transport socket's hash (SNI, SANs, ALPN...): 0 for plaintext
    network::Address address;
    http::Protocol protocol;
    ResourcePriority priority;
    uint32_t alpn_override;
    bool operator<(const Key& o) const;
  };
  void release(HttpPool& pool);

  event::Dispatcher& dispatcher_;
  std::map<Key, std::unique_ptr<HttpPool>> pools_;
  std::map<HttpPool*, std::unique_ptr<HttpPool>> draining_;
};

}  // namespace strait::upstream
