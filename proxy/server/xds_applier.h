#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "proxy/config/bootstrap.h"
#include "proxy/config/snapshot.h"
#include "proxy/stats/stats.h"
#include "xds/client/ads_client.h"

namespace strait::server {

class Server;

// Turns what the ADS client receives into snapshots: decodes and validates each response, builds a
// whole new Snapshot from the bootstrap plus every accepted resource (unchanged parts are re-used by
// the workers: listener sockets, connection pools), hands it to the server, and only then lets the
// client ACK. A response that does not translate is NACKed with the resource and field named, and the
// last good config keeps serving. Runs on the ADS client's thread.
class XdsApplier : public xds::XdsSubscriber {
 public:
  XdsApplier(Server& server, stats::Store& store, config::SnapshotConstSharedPtr initial, bool reject_unknown_fields);
  ~XdsApplier() override;
  void start();
  void stop();

  // XdsSubscriber
  absl::Status onResources(const std::string& type_url, const std::vector<xds::Resource>& resources,
                           const std::vector<std::string>& removed, const std::string& version, bool sotw) override;
  void onResourceDoesNotExist(const std::string& type_url, const std::string& name) override;
  void onStreamState(bool connected) override;
  void onRejectedByClient(const std::string& type_url, const std::string& version, const std::string& error) override;
  void onInitialFetchDone(const std::string& type_url, bool timed_out) override;

  // On-demand cluster discovery (any thread): the cluster names to subscribe by name over CDS, all of
  // them each time. Only when the bootstrap has no cds_config (AdsSettings::cds_wildcard false).
  void setOnDemandClusters(std::vector<std::string> names);

  // For /config_dump: the accepted resources, and per type the version and the last rejection.
  struct TypeStatus {
    std::string version;
    std::string last_error;
    std::string last_error_version;
  };
  std::shared_ptr<const config::ConfigSources> sources() const;
  std::map<std::string, TypeStatus> status() const;
  // Resources held now that carried fields Strait does not know: "<Type> '<name>'" -> field paths (by
  // number). A record lives as long as its resource: an update without unknown fields, a removal, or the
  // resource being dropped (SotW absence, no parent any more) ends it; a rejected update leaves none.
  std::map<std::string, std::string> unknownFieldsSeen() const;

 private:
  struct TypeStats {
    stats::Counter update_attempt;
    stats::Counter update_success;
    stats::Counter update_rejected;
  };
  TypeStats& statsFor(const std::string& type_url);
  // The NACK for the resources of a response that were refused (OK when none was).
  static absl::Status refusal(const std::string& type_url, size_t received,
                              const std::vector<std::pair<std::string, std::string>>& refused);
  absl::Status apply(const std::string& type_url, const std::vector<xds::Resource>& resources,
                     const std::vector<std::string>& removed, const std::string& version, bool sotw);

  Server& server_;
  stats::Store& store_;
  config::SnapshotConstSharedPtr snapshot_;  // the last applied
  std::shared_ptr<const config::ConfigSources> sources_;
  std::map<std::string, TypeStats> type_stats_;
  stats::Gauge connected_state_;
  stats::Counter unknown_fields_;
  bool reject_unknown_;
  // Per type URL, per resource name (the name it was sent under): its unknown field paths. Guarded by mu_;
  // changed only once an update is applied, and pruned to the resources sources_ holds.
  std::map<std::string, std::map<std::string, std::string>> unknown_seen_;
  void commitUnknownFields(const std::string& type_url, const std::map<std::string, std::string>& received,
                           const config::ConfigSources& held);
  mutable std::mutex mu_;  // guards sources_ and status_ for the admin
  std::map<std::string, TypeStatus> status_;
  std::set<std::string> initialized_;
  // The RDS and EDS names last given to the client (xDS thread only).
  std::set<std::string> asked_rds_;
  std::shared_ptr<const std::set<std::string>> asked_eds_;
  // The on-demand cluster names (setOnDemandClusters; guarded by mu_), to tell the server which
  // removals and does-not-exist answers the waiting streams care about.
  std::set<std::string> on_demand_;
  void reportMissingOnDemand(const std::vector<xds::Resource>& resources, const std::vector<std::string>& removed,
                             bool sotw);
  bool ready_signalled_ = false;
  bool warming_wait_started_ = false;
  // Envoy's init manager: the server is initialised once the first CDS and LDS responses are done and
  // every cluster and listener they brought is in force (EDS, RDS warmed), or the wait timed out.
  // xDS thread.
  void checkInitialized();
  // How many held clusters and listeners are not in force yet (waiting for endpoints or a route
  // configuration); the first few are named in `shown` ("Cluster 'a'").
  size_t stillWarming(std::vector<std::string>* shown) const;
  std::unique_ptr<xds::AdsClient> client_;
};

}  // namespace strait::server
