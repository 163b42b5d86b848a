#include "proxy/server/sds_streams.h"

#include "absl/strings/str_cat.h"
#include "certs/secret_manager.h"
#include "certs/tls_config.h"
#include "envoy/extensions/transport_sockets/tls/v3/secret.pb.h"
#include "proxy/common/log.h"

namespace strait::server {

namespace tls_v3 = envoy::extensions::transport_sockets::tls::v3;

// One SDS stream and its subscriber.
class SdsStreams::Stream : public xds::XdsSubscriber {
 public:
  Stream(stats::Store& store, const std::string& cluster, const std::string& target, const envoy::config::core::v3::Node& node)
      : store_(store), cluster_(cluster) {
    const std::string p = absl::StrCat("sds.", cluster, ".");
    update_success_ = store.counter(p + "update_success");
    update_rejected_ = store.counter(p + "update_rejected");
    connected_ = store.gauge(p + "connected_state");
    xds::AdsConfig cfg;
    cfg.service = xds::AdsConfig::Service::Secret;
    cfg.target = target;
    cfg.node = node;
    cfg.log = [](int level, const std::string& message) {
      STRAIT_LOG(static_cast<common::LogLevel>(level), "sds: %s", message.c_str());
    };
    LOG_INFO("sds: stream to cluster '%s' at %s", cluster.c_str(), target.c_str());
    client_ = std::make_unique<xds::AdsClient>(std::move(cfg), *this);
  }
  ~Stream() override { client_->stop(); }

  void setNames(std::vector<std::string> names) {
    client_->setResourceNames(xds::kSecretType, std::move(names));
    if (!started_) {
      started_ = true;
      client_->start();
    }
  }
  void stop() { client_->stop(); }

  absl::Status onResources(const std::string& type_url, const std::vector<xds::Resource>& resources,
                           const std::vector<std::string>&, const std::string& version, bool) override {
    useShard();
    if (type_url != xds::kSecretType) return absl::InvalidArgumentError("an SDS stream only takes Secret resources");
    std::vector<std::shared_ptr<tls_v3::Secret>> secrets;
    for (const auto& r : resources) {
      auto s = std::make_shared<tls_v3::Secret>();
      if (!r.resource.UnpackTo(s.get())) {
        stats::inc(update_rejected_);
        return absl::InvalidArgumentError(absl::StrCat("Secret '", r.name, "': cannot be decoded"));
      }
      if (s->name() != r.name) {
        stats::inc(update_rejected_);
        return absl::InvalidArgumentError(absl::StrCat("Secret '", r.name, "': name: differs from the resource name"));
      }
      secrets.push_back(std::move(s));
    }
    // All or nothing: every secret is checked before any is published.
    for (const auto& s : secrets) {
      auto st = certs::checkSdsSecret(*s, absl::StrCat("Secret '", s->name(), "'"));
      if (!st.ok()) {
        stats::inc(update_rejected_);
        LOG_WARN("sds: %s: rejected version '%s': %s", cluster_.c_str(), version.c_str(), std::string(st.message()).c_str());
        return st;
      }
    }
    for (const auto& s : secrets) {
      auto st = certs::applySdsSecret(*s, absl::StrCat("Secret '", s->name(), "'"));
      if (!st.ok()) return st;
    }
    stats::inc(update_success_);
    LOG_INFO("sds: %s: applied version '%s' (%zu secrets)", cluster_.c_str(), version.c_str(), secrets.size());
    return absl::OkStatus();
  }
  void onResourceDoesNotExist(const std::string&, const std::string& name) override {
    LOG_WARN("sds: %s: secret '%s' does not exist (no answer within the timeout)", cluster_.c_str(), name.c_str());
  }
  void onStreamState(bool connected) override {
    useShard();
    stats::set(store_, connected_, connected ? 1 : 0);
  }
  void onRejectedByClient(const std::string&, const std::string& version, const std::string& error) override {
    useShard();
    stats::inc(update_rejected_);
    LOG_WARN("sds: %s: rejected version '%s': %s", cluster_.c_str(), version.c_str(), error.c_str());
  }

 private:
  // The client's thread counts into the xDS thread's shard (both only on rare events).
  void useShard() {
    if (stats::threadShard() == nullptr) stats::setThreadShard(&store_.shard(store_.shardCount() - 1));
  }
  stats::Store& store_;
  std::string cluster_;
  stats::Counter update_success_, update_rejected_;
  stats::Gauge connected_;
  std::unique_ptr<xds::AdsClient> client_;
  bool started_ = false;
};

SdsStreams::SdsStreams(stats::Store& store, envoy::config::core::v3::Node node) : store_(store), node_(std::move(node)) {
  node_.set_user_agent_name("strait");
  node_.set_user_agent_version(STRAIT_VERSION);
}

SdsStreams::~SdsStreams() { stop(); }

void SdsStreams::refresh(const config::Snapshot& snapshot) {
  std::lock_guard<std::mutex> lock(mu_);
  if (stopped_) return;
  auto& secrets = certs::SecretManager::get();
  for (const auto& source : secrets.sdsSources()) {
    auto it = streams_.find(source);
    if (it == streams_.end()) {
      auto c = snapshot.clusters_by_name.find(source);
      if (c == snapshot.clusters_by_name.end() || c->second->grpcTarget().empty()) {
        LOG_WARN("sds: cluster '%s' named by an sds_config has no endpoint; its secrets cannot be fetched", source.c_str());
        continue;
      }
      it = streams_.emplace(source, std::make_unique<Stream>(store_, source, c->second->grpcTarget(), node_)).first;
    }
    it->second->setNames(secrets.sdsNames(source));
  }
}

void SdsStreams::stop() {
  std::map<std::string, std::unique_ptr<Stream>> streams;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopped_ = true;
    streams.swap(streams_);
  }
  for (auto& [name, s] : streams) s->stop();
}

}  // namespace strait::server
