// The SSL stat set, declared with the transport socket seam (proxy/network/transport_socket.h).
#include "proxy/network/transport_socket.h"

#include <deque>
#include <mutex>

namespace strait::network {

namespace {
template <typename Maker>
SslStats make(const std::string& prefix, Maker counter) {
  const std::string p = prefix + "ssl.";
  SslStats s;
  s.handshake = counter(p + "handshake");
  s.connection_error = counter(p + "connection_error");
  s.fail_verify_san = counter(p + "fail_verify_san");
  s.fail_verify_no_cert = counter(p + "fail_verify_no_cert");
  s.fail_verify_error = counter(p + "fail_verify_error");
  s.no_certificate = counter(p + "no_certificate");
  s.session_reused = counter(p + "session_reused");
  return s;
}
}  // namespace

SslStats makeSslStats(stats::Store& store, const std::string& prefix) {
  SslStats s = make(prefix, [&](const std::string& n) { return store.counter(n); });
  s.peers = std::make_shared<PeerIdentityCounters>(&store, nullptr, prefix + "ssl.peer.");
  return s;
}

SslStats makeSslStats(stats::StatScope& scope, const std::string& prefix) {
  SslStats s = make(prefix, [&](const std::string& n) { return scope.counter(n); });
  s.peers = std::make_shared<PeerIdentityCounters>(nullptr, &scope, prefix + "ssl.peer.");
  return s;
}

stats::Counter PeerIdentityCounters::make(const std::string& name) {
  return scope_ != nullptr ? scope_->counter(name) : store_->counter(name);
}

void PeerIdentityCounters::onHandshake(const std::string& identity) {
  stats::Counter c;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = counters_.find(identity);
    if (it != counters_.end()) {
      c = it->second;
    } else if (counters_.size() < kMaxIdentities) {
      // ':' separates tags in some stats backends; a SPIFFE ID keeps the rest of its shape.
      std::string id = identity;
      for (char& ch : id) {
        if (ch == ':') ch = '_';
      }
      c = make(prefix_ + id + ".handshake");
      counters_.emplace(identity, c);
    } else {
      if (!other_) other_ = make(prefix_ + "other.handshake");
      c = *other_;
    }
  }
  stats::inc(c);
}

namespace {
struct AlpnRegistry {
  std::mutex mu;
  std::deque<std::string> wires;  // id i+1 -> wires[i]
};
AlpnRegistry& alpnRegistry() {
  static auto* r = new AlpnRegistry;
  return *r;
}
}  // namespace

uint32_t internAlpnOverride(const std::vector<std::string>& protocols) {
  std::string wire;
  for (const auto& p : protocols) {
    if (p.empty() || p.size() > 255) continue;
    wire.push_back(static_cast<char>(p.size()));
    wire.append(p);
  }
  if (wire.empty()) return 0;
  auto& r = alpnRegistry();
  std::lock_guard<std::mutex> lock(r.mu);
  for (size_t i = 0; i < r.wires.size(); ++i) {
    if (r.wires[i] == wire) return static_cast<uint32_t>(i + 1);
  }
  r.wires.push_back(std::move(wire));
  return static_cast<uint32_t>(r.wires.size());
}

std::string alpnOverrideWire(uint32_t id) {
  if (id == 0) return {};
  auto& r = alpnRegistry();
  std::lock_guard<std::mutex> lock(r.mu);
  return id <= r.wires.size() ? r.wires[id - 1] : std::string();
}

}  // namespace strait::network
