#pragma once

// Stand-ins for what an HTTP filter talks to, for unit tests that drive one filter instance: the
// chain builder that collects it, the decoder callbacks the HTTP connection manager would give it
// (recording what the filter did), and a worker with a real dispatcher and no clusters (derive from
// it to give the filter clusters).

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "proxy/config/snapshot.h"
#include "proxy/event/dispatcher.h"
#include "proxy/http/filter.h"
#include "proxy/network/connection.h"
#include "proxy/upstream/http_pool.h"

namespace strait::testing {

struct FakeFilterChain : http::FilterChainBuilder {
  std::vector<http::StreamDecoderFilterPtr> decoders;
  void addDecoderFilter(http::StreamDecoderFilterPtr f) override { decoders.push_back(std::move(f)); }
  void addEncoderFilter(http::StreamEncoderFilterPtr) override {}
};

class FakeWorker : public config::WorkerContext {
 public:
  explicit FakeWorker(event::Dispatcher& d) : d_(d), pools_(d) {}
  event::Dispatcher& dispatcher() override { return d_; }
  std::optional<config::HostChoice> chooseHost(const config::Cluster&, const network::Connection&,
                                               const upstream::LbContext*) override {
    return std::nullopt;
  }
  void addSession(std::unique_ptr<config::ActiveSession>) override {}
  void removeSession(config::ActiveSession&) override {}
  uint64_t random() override { return 0; }
  upstream::HttpPoolManager& httpPools() override { return pools_; }
  std::shared_ptr<const void> routeTable(uint32_t) override { return nullptr; }
  const config::ClusterConstSharedPtr& cluster(uint32_t) override {
    static const config::ClusterConstSharedPtr kNone;
    return kNone;
  }

 private:
  event::Dispatcher& d_;
  upstream::HttpPoolManager pools_;
};

// What the filter did: continued (how often), a local reply (status, body, details), encoded headers.
struct FakeDecoderCallbacks : http::DecoderFilterCallbacks {
  config::WorkerContext* w = nullptr;  // null: a filter that asks for its worker aborts the test
  network::Connection* conn = nullptr;
  const http::RouteEntry* route_entry = nullptr;
  http::StreamInfo info;
  http::RequestHeaders headers;
  int continued = 0;
  uint32_t status = 0;
  std::string body;
  std::string details;
  http::ResponseHeadersPtr encoded;

  void continueDecoding() override { ++continued; }
  void sendLocalReply(uint32_t s, std::string_view b, std::string_view d) override {
    status = s;
    body = std::string(b);
    details = std::string(d);
  }
  const http::RouteEntry* route() const override { return route_entry; }
  config::WorkerContext& worker() override {
    if (w == nullptr) std::abort();
    return *w;
  }
  const network::Connection& connection() const override { return *conn; }
  http::StreamInfo& streamInfo() override { return info; }
  const http::RequestHeaders& requestHeaders() const override { return headers; }
  void encode1xxHeaders(http::ResponseHeadersPtr) override {}
  void encodeHeaders(http::ResponseHeadersPtr h, bool) override { encoded = std::move(h); }
  void encodeData(common::Buffer&, bool) override {}
  void encodeTrailers(http::TrailerMapPtr) override {}
  void resetStream() override {}
  void onDecoderFilterAboveWriteBufferHighWatermark() override {}
  void onDecoderFilterBelowWriteBufferLowWatermark() override {}
  void setDownstreamWatermarkCallbacks(http::DownstreamWatermarkCallbacks*) override {}
  uint32_t bufferLimit() const override { return 0; }
  bool websocketAllowedByDefault() const override { return false; }
};

}  // namespace strait::testing
