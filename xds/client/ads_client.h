#pragma once

// The xDS client: one ADS stream (state of the world or delta) to the control plane, on its own thread.
//
// The client owns the protocol: subscriptions (CDS and LDS wildcard, named RDS/EDS/SDS), ACK/NACK with
// the newest nonce, request rate limiting, reconnect with backoff, does-not-exist and initial-fetch
// timers. It does not understand the resources: it hands them to an XdsSubscriber (the server), which
// validates and applies them and answers OK (the client ACKs) or an error (the client NACKs with the
// error's message). See xds/client/README.md for the rules and their reasons.
//
// gRPC runs only here (sync API: this thread writes, a reader thread reads); it never enters libuv.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "envoy/config/core/v3/base.pb.h"
#include "google/protobuf/any.pb.h"

namespace strait::xds {

// Type URLs of the resources Strait subscribes to.
inline constexpr char kClusterType[] = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
inline constexpr char kListenerType[] = "type.googleapis.com/envoy.config.listener.v3.Listener";
inline constexpr char kRouteType[] = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
inline constexpr char kEndpointType[] = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
inline constexpr char kSecretType[] = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

// One resource as delivered to the subscriber.
struct Resource {
  std::string name;
  // SotW: the response's version_info (or the version of a resource wrapped in discovery.v3.Resource);
  // delta: the resource's own version.
  std::string version;
  // The payload; its type_url equals the response's type_url (the client NACKs anything else).
  google::protobuf::Any resource;
};

// What the client delivers. Every call is made on the client's own thread, one at a time, with no lock
// of the client held: the subscriber may call AdsClient::setResourceNames() from inside a callback.
class XdsSubscriber {
 public:
  virtual ~XdsSubscriber() = default;

  // One call per DiscoveryResponse / DeltaDiscoveryResponse of a subscribed type.
  // `resources`: SotW: the full set of this type in the response; delta: the added/updated ones.
  // `removed`: SotW LDS/CDS (wildcard types): names accepted before and missing now; SotW RDS/EDS/SDS:
  // always empty (absence deletes nothing); delta: removed_resources.
  // `version`: version_info / system_version_info. `sotw`: which variant.
  // Block until applied (the client ACKs as soon as this returns OK). Return an error whose message
  // names the resource and field to NACK; its code goes into error_detail (use InvalidArgument).
  // A rejected response must leave the previous config in force: the client keeps reporting the last
  // accepted version, and (SotW) computes the next `removed` against the last accepted set.
  // Partial acceptance (Envoy's): a subscriber that applied some resources and refused others returns
  // partiallyAccepted(error, refused names). The response is NACKed with that error, but the client
  // holds the resources that were applied (their versions, and their absence for SotW removals).
  virtual absl::Status onResources(const std::string& type_url, const std::vector<Resource>& resources,
                                   const std::vector<std::string>& removed, const std::string& version,
                                   bool sotw) = 0;

  // The does-not-exist timer for a named resource (RDS/EDS/SDS) fired: the name was subscribed on this
  // stream, is not held, and no response named it within the timeout. Never called for a name already
  // received; the subscription goes on (a later response may still bring it).
  virtual void onResourceDoesNotExist(const std::string& type_url, const std::string& name) = 0;

  // Stream state, for /ready and stats: true once the first request of a stream was written, false
  // when that stream ends. The config held stays in force while disconnected.
  virtual void onStreamState(bool connected) = 0;
  // The client itself rejected a response (a name twice, a wrong type, an undecodable payload) and
  // NACKs it without calling onResources(): for the subscriber's stats and status.
  virtual void onRejectedByClient(const std::string& type_url, const std::string& version, const std::string& error) {
    (void)type_url;
    (void)version;
    (void)error;
  }

  // Once per type and client: the first response of the type was processed (accepted or rejected:
  // timed_out=false), or initial_fetch_timeout_ms passed since the type was first subscribed without one
  // (timed_out=true). Startup ordering (/ready) hangs on this for CDS and LDS.
  virtual void onInitialFetchDone(const std::string& type_url, bool timed_out) {}
};

// An error (InvalidArgument, naming each refused resource) marked with the resources it refused; the
// rest of the response was applied.
absl::Status partiallyAccepted(absl::Status error, const std::vector<std::string>& refused);
// The refused names of a partiallyAccepted() error; nullopt for any other status (all refused or none).
std::optional<std::set<std::string>> refusedNames(const absl::Status& status);

// Log sink: level uses strait::common::LogLevel's numbers (0 trace, 1 debug, 2 info, 3 warning,
// 4 error). Called from the client's threads; must be thread-safe. Empty: no logging.
using XdsLogFn = std::function<void(int level, const std::string& message)>;

struct AdsConfig {
  // "127.0.0.1:15010", "[::1]:15010", "localhost:15010" or "unix:/path/to/socket" (gRPC target syntax).
  std::string target;
  // Which service the stream calls: ADS (every type; CDS and LDS subscribed as wildcard from the start),
  // or SDS on a stream of its own (SecretDiscoveryService: only named Secret subscriptions).
  enum class Service { Aggregated, Secret };
  Service service = Service::Aggregated;
  // TLS on the channel, asked for at every connection attempt (so a rotated certificate is taken on the
  // next reconnect). Unset: plaintext. An error from it fails that attempt (it is retried with backoff).
  struct Tls {
    std::string root_certs;   // PEM; empty: gRPC's default roots
    std::string private_key;  // PEM; with cert_chain: a client certificate (mTLS)
    std::string cert_chain;
    std::string target_name_override;  // the name the server certificate must carry (else the target host)
  };
  std::function<absl::StatusOr<Tls>()> tls;
  bool delta = false;  // api_type DELTA_GRPC (else GRPC: state of the world)
  // Aggregated: CDS is a wildcard subscription from the start (the bootstrap has cds_config). False:
  // CDS is a named type like EDS, subscribed by setResourceNames() (on-demand cluster discovery).
  bool cds_wildcard = true;
  envoy::config::core::v3::Node node;
  // Per type, from its first subscription; 0 disables. Reported through onInitialFetchDone().
  uint64_t initial_fetch_timeout_ms = 15000;
  // Named resources (RDS/EDS/SDS) not received this long after their subscription was sent.
  uint64_t resource_does_not_exist_timeout_ms = 15000;
  // Reconnect backoff: delay = random in [0, min(max, base * 2^n)] (full jitter); n resets once a
  // response arrives on a stream.
  uint64_t backoff_base_ms = 500;
  uint64_t backoff_max_ms = 30000;
  // Request rate limit (a token bucket; Envoy's defaults): a burst of `rate_limit_burst` requests,
  // refilled at `rate_limit_per_second`. 0 burst disables the limit.
  uint32_t rate_limit_burst = 100;
  double rate_limit_per_second = 10.0;
  // HTTP/2 keepalive pings on the control-plane connection; 0 disables. Above grpc-go's default
  // enforcement minimum (5 min) so a Go control plane never answers with GOAWAY too_many_pings.
  uint64_t keepalive_time_ms = 360000;
  uint64_t keepalive_timeout_ms = 20000;
  XdsLogFn log;
};

class AdsClient {
 public:
  // Counters and the newest state of one type, for /config_dump and stats.
  struct TypeState {
    std::string version;     // last accepted version_info (delta: system_version_info)
    std::string nonce;       // newest nonce on the current stream ("" when none)
    std::string last_error;  // message of the last NACK; cleared by the next accepted update
    uint64_t update_attempt = 0;   // responses received
    uint64_t update_success = 0;   // responses accepted (ACK)
    uint64_t update_rejected = 0;  // responses rejected (NACK)
    uint64_t resource_count = 0;   // resources held (accepted)
    bool initial_fetch_done = false;
    std::shared_ptr<const std::set<std::string>> names;  // names of interest (empty for wildcard types)
    bool wildcard = false;
  };
  // Stream-level counters (Envoy: control_plane.*).
  struct Stats {
    bool connected = false;
    uint64_t streams_started = 0;       // stream attempts
    uint64_t streams_closed = 0;        // streams that ended (any reason)
    uint64_t requests_sent = 0;
    uint64_t responses_received = 0;
    uint64_t rate_limit_enforced = 0;   // times a request had to wait for a token
    uint64_t pending_requests = 0;      // types with a request waiting to be sent
    uint64_t ignored_responses = 0;     // responses for a type never subscribed
  };

  AdsClient(AdsConfig config, XdsSubscriber& subscriber);
  ~AdsClient();  // stops and joins
  AdsClient(const AdsClient&) = delete;
  AdsClient& operator=(const AdsClient&) = delete;

  // Starts the thread: connect, subscribe CDS then LDS (wildcard), then every named type with names
  // (CDS among them when !cds_wildcard).
  void start();
  // Half-closes and cancels the stream, joins the threads. Idempotent. Do not call from a callback.
  void stop();

  // Thread-safe. The names of interest for a named type (RDS, EDS, SDS; CDS when !cds_wildcard). A
  // request goes out when the set changes (SotW: the full list with the last accepted version and
  // newest nonce; delta: the
  // subscribe/unsubscribe diff). Names dropped from the set are forgotten (their versions are not
  // advertised on a delta reconnect). A type's first request on a stream waits for a non-empty set
  // (an empty first request would mean wildcard).
  void setResourceNames(const std::string& type_url, std::vector<std::string> names);

  // Thread-safe snapshots.
  std::map<std::string, TypeState> state() const;
  Stats stats() const;
  bool connected() const;

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace strait::xds
