#include "xds/client/ads_client.h"

#include <grpc/grpc.h>
#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>
#include <grpcpp/support/sync_stream.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <deque>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <thread>
#include <unordered_set>

#include "absl/strings/cord.h"
#include "absl/strings/str_split.h"
#include "envoy/service/discovery/v3/ads.grpc.pb.h"
#include "envoy/service/secret/v3/sds.grpc.pb.h"
#include "envoy/service/discovery/v3/discovery.pb.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/wire_format_lite.h"
#include "xds/client/backoff.h"
#include "xds/client/token_bucket.h"

namespace strait::xds {
namespace {

using Clock = std::chrono::steady_clock;
using envoy::service::discovery::v3::AggregatedDiscoveryService;
using envoy::service::discovery::v3::DeltaDiscoveryRequest;
using envoy::service::discovery::v3::DeltaDiscoveryResponse;
using envoy::service::discovery::v3::DiscoveryRequest;
using envoy::service::discovery::v3::DiscoveryResponse;
using SotwStream = grpc::ClientReaderWriter<DiscoveryRequest, DiscoveryResponse>;
using DeltaStream = grpc::ClientReaderWriter<DeltaDiscoveryRequest, DeltaDiscoveryResponse>;

constexpr char kWrappedResourceType[] = "type.googleapis.com/envoy.service.discovery.v3.Resource";
constexpr char kWildcard[] = "*";
// Responses read ahead of processing; the reader blocks beyond this (gRPC flow control then holds the
// server back), so a flooding server cannot grow memory without bound.
constexpr size_t kMaxQueuedResponses = 8;
// NACK messages can name many resources; keep requests small.
constexpr size_t kMaxErrorDetailBytes = 16 * 1024;
// How often the channel's state is checked while a connection attempt is under way.
constexpr std::chrono::milliseconds kConnectPollInterval{20};

enum Level { kTrace = 0, kDebug = 1, kInfo = 2, kWarning = 3, kError = 4 };

// The name of a resource in state-of-the-world: field 1 (a string) of every type we subscribe to
// (Listener.name, Cluster.name, RouteConfiguration.name, ClusterLoadAssignment.cluster_name,
// Secret.name). Read straight off the wire so the client needs no knowledge of the message.
bool extractName(const std::string& bytes, std::string* name) {
  using google::protobuf::internal::WireFormatLite;
  google::protobuf::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(bytes.data()),
                                            static_cast<int>(bytes.size()));
  name->clear();
  for (;;) {
    const uint32_t tag = in.ReadTag();
    if (tag == 0) return in.CurrentPosition() == static_cast<int>(bytes.size());
    if (WireFormatLite::GetTagFieldNumber(tag) == 1 &&
        WireFormatLite::GetTagWireType(tag) == WireFormatLite::WIRETYPE_LENGTH_DELIMITED) {
      uint32_t length = 0;
      if (!in.ReadVarint32(&length) || !in.ReadString(name, static_cast<int>(length))) return false;
      continue;
    }
    if (!WireFormatLite::SkipField(&in, tag)) return false;
  }
}

std::string truncateError(std::string message) {
  if (message.size() > kMaxErrorDetailBytes) {
    message.resize(kMaxErrorDetailBytes);
    message += "...(truncated)";
  }
  return message;
}

using NameSetPtr = std::shared_ptr<const std::set<std::string>>;
const NameSetPtr& emptyNames() {
  static const NameSetPtr kEmpty = std::make_shared<const std::set<std::string>>();
  return kEmpty;
}

// For the log: the first names, and how many more (a subscription may name 10,000 resources).
std::string joinNames(const std::set<std::string>& names) {
  std::string out;
  size_t shown = 0;
  for (const auto& n : names) {
    if (shown == 16) {
      out += ",... (" + std::to_string(names.size() - shown) + " more)";
      break;
    }
    if (!out.empty()) out += ",";
    out += n;
    ++shown;
  }
  return out;
}

}  // namespace

class AdsClient::Impl {
 public:
  Impl(AdsConfig config, XdsSubscriber& subscriber)
      : config_(std::move(config)),
        subscriber_(subscriber),
        bucket_(config_.rate_limit_burst, config_.rate_limit_per_second, Clock::now()),
        backoff_(config_.backoff_base_ms, config_.backoff_max_ms, std::random_device{}()) {
    // Wildcard types exist from the start, CDS first: that order is the order of the first requests.
    // An SDS stream has none: it asks for the secrets it is told about.
    if (config_.service == AdsConfig::Service::Aggregated) {
      for (const char* type : {kClusterType, kListenerType}) {
        if (type == kClusterType && !config_.cds_wildcard) continue;
        Sub& sub = subFor(type);
        sub.wildcard = true;
      }
    }
    publishLocked();
  }

  ~Impl() { stop(); }

  void start() {
    std::lock_guard<std::mutex> lk(mu_);
    if (started_ || stopping_) return;
    started_ = true;
    thread_ = std::thread([this] { run(); });
  }

  void stop() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stopping_ = true;
      // Unblock a stream creation or a Write stuck on flow control; otherwise the client thread
      // half-closes the stream itself before cancelling it.
      if (ctx_ != nullptr && in_blocking_call_) ctx_->TryCancel();
    }
    cv_.notify_all();
    space_cv_.notify_all();
    if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
  }

  void setResourceNames(const std::string& type_url, std::vector<std::string> names) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      pending_names_[type_url] = std::set<std::string>(names.begin(), names.end());
    }
    cv_.notify_all();
  }

  std::map<std::string, TypeState> state() const {
    std::lock_guard<std::mutex> lk(mu_);
    return published_state_;
  }

  Stats stats() const {
    std::lock_guard<std::mutex> lk(mu_);
    return published_stats_;
  }

  bool connected() const {
    std::lock_guard<std::mutex> lk(mu_);
    return published_stats_.connected;
  }

 private:
  // Everything about one type. Touched only by the client thread, except through publishLocked().
  struct Sub {
    std::string type_url;
    bool wildcard = false;
    bool active = false;                // subscribed at least once (wildcard: from start)
    // Names of interest (named types). Shared, never modified in place: the stream's set below takes the
    // same pointer once it is sent, so 10,000 EDS names are held once, not once per set.
    NameSetPtr interest = emptyNames();
    uint64_t interest_gen = 0;          // bumped when `interest` changes (what publishLocked copies)
    // Persistent across streams.
    std::string version;                              // last accepted version
    std::map<std::string, std::string> held;          // accepted resources: name -> version
    bool initial_fetch_done = false;
    std::optional<Clock::time_point> initial_fetch_deadline;
    std::string last_error;
    uint64_t update_attempt = 0, update_success = 0, update_rejected = 0;
    // Per stream.
    bool sent_on_stream = false;             // the first request of this type went out
    NameSetPtr stream_names = emptyNames();  // what the server believes we subscribe to
    // interest_gen when stream_names was last made equal to what we want (max: not on this stream), so
    // an ACK at 10,000 EDS names neither compares nor copies the name sets.
    uint64_t stream_gen = UINT64_MAX;
    std::string nonce;                       // newest nonce on this stream
    bool ack_pending = false;                // a response awaits its ACK/NACK
    std::optional<absl::Status> pending_error;  // set: that ACK is a NACK
    bool queued = false;
    std::map<std::string, Clock::time_point> dne_deadlines;  // does-not-exist timers

    void resetStream() {
      sent_on_stream = false;
      stream_names = emptyNames();
      stream_gen = UINT64_MAX;
      nonce.clear();
      ack_pending = false;
      pending_error.reset();
      queued = false;
      dne_deadlines.clear();
    }
    // The names we want the server to have, in the form the protocol names them.
    bool namesInSync() const { return stream_gen == interest_gen; }
    const NameSetPtr& wanted(bool delta) const {
      static const NameSetPtr kDeltaWildcard = std::make_shared<const std::set<std::string>>(std::set<std::string>{kWildcard});
      if (wildcard) return delta ? kDeltaWildcard : emptyNames();
      return interest;
    }
  };

  // ---- logging ----------------------------------------------------------------------------------

  void log(int level, const char* fmt, ...) const __attribute__((format(printf, 3, 4))) {
    if (!config_.log) return;
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    config_.log(level, std::string("xds: ") + buf);
  }

  // ---- subscriptions ----------------------------------------------------------------------------

  Sub& subFor(const std::string& type_url) {
    auto it = sub_index_.find(type_url);
    if (it != sub_index_.end()) return *subs_[it->second];
    subs_.push_back(std::make_unique<Sub>());
    subs_.back()->type_url = type_url;
    sub_index_[type_url] = subs_.size() - 1;
    return *subs_.back();
  }

  Sub* findSub(const std::string& type_url) {
    auto it = sub_index_.find(type_url);
    return it == sub_index_.end() ? nullptr : subs_[it->second].get();
  }

  void enqueue(Sub& sub) {
    if (sub.queued) return;
    sub.queued = true;
    send_queue_.push_back(&sub);
  }

  void activate(Sub& sub, Clock::time_point now) {
    if (sub.active) return;
    sub.active = true;
    if (config_.initial_fetch_timeout_ms > 0 && !sub.initial_fetch_done) {
      sub.initial_fetch_deadline = now + std::chrono::milliseconds(config_.initial_fetch_timeout_ms);
    }
  }

  // NOLINTNEXTLINE(performance-unnecessary-value-param): wrong, each set is moved out into sub.interest.
  void applyNameChanges(std::map<std::string, std::set<std::string>> changes, Clock::time_point now) {
    for (auto& [type_url, names] : changes) {
      Sub& sub = subFor(type_url);
      if (sub.wildcard) {
        log(kWarning, "setResourceNames(%s) ignored: the type is subscribed as wildcard", type_url.c_str());
        continue;
      }
      if (sub.active && names == *sub.interest) continue;
      // Names no longer of interest: forget them (no timer, no version advertised on reconnect).
      for (const auto& old : *sub.interest) {
        if (names.count(old) == 0) {
          sub.held.erase(old);
          sub.dne_deadlines.erase(old);
        }
      }
      sub.interest = std::make_shared<const std::set<std::string>>(std::move(names));
      ++sub.interest_gen;
      if (!sub.interest->empty()) activate(sub, now);
      if (config_.log) log(kDebug, "interest %s: [%s]", type_url.c_str(), joinNames(*sub.interest).c_str());
      if (stream_ok_) enqueue(sub);
    }
  }

  // ---- response handling ------------------------------------------------------------------------

  // Checks that every resource has this type and a unique name; fills `out`. Returns the NACK message
  // on failure.
  std::optional<std::string> decodeSotw(const DiscoveryResponse& resp, std::vector<Resource>& out) {
    std::unordered_set<std::string> seen;
    out.reserve(resp.resources_size());
    for (int i = 0; i < resp.resources_size(); ++i) {
      const google::protobuf::Any& any = resp.resources(i);
      Resource r;
      if (any.type_url() == kWrappedResourceType) {
        envoy::service::discovery::v3::Resource wrapped;
        if (!wrapped.ParseFromString(any.value())) {
          return "resources[" + std::to_string(i) + "]: cannot decode the Resource wrapper";
        }
        if (!wrapped.has_resource()) {
          return "resources[" + std::to_string(i) + "] ('" + wrapped.name() +
                 "'): a Resource wrapper without a payload (TTL heartbeat) is not supported";
        }
        r.name = wrapped.name();
        r.version = wrapped.version().empty() ? resp.version_info() : wrapped.version();
        r.resource = wrapped.resource();
      } else {
        r.resource = any;
        r.version = resp.version_info();
      }
      if (r.resource.type_url() != resp.type_url()) {
        return "resources[" + std::to_string(i) + "]: type " + r.resource.type_url() +
               " does not match the response's type " + resp.type_url();
      }
      if (r.name.empty() && !extractName(r.resource.value(), &r.name)) {
        return "resources[" + std::to_string(i) + "]: cannot decode the resource";
      }
      if (r.name.empty()) return "resources[" + std::to_string(i) + "]: the resource has no name";
      if (!seen.insert(r.name).second) {
        return "duplicate resource name '" + r.name + "' in the response (resources[" + std::to_string(i) + "])";
      }
      out.push_back(std::move(r));
    }
    return std::nullopt;
  }

  std::optional<std::string> decodeDelta(const DeltaDiscoveryResponse& resp, std::vector<Resource>& out) {
    std::unordered_set<std::string> seen;
    out.reserve(resp.resources_size());
    for (int i = 0; i < resp.resources_size(); ++i) {
      const auto& res = resp.resources(i);
      if (res.name().empty()) return "resources[" + std::to_string(i) + "]: the resource has no name";
      if (!seen.insert(res.name()).second) {
        return "duplicate resource name '" + res.name() + "' in the response (resources[" + std::to_string(i) + "])";
      }
      if (!res.has_resource()) continue;  // a TTL refresh: nothing changes
      if (res.resource().type_url() != resp.type_url()) {
        return "resources[" + std::to_string(i) + "] ('" + res.name() + "'): type " + res.resource().type_url() +
               " does not match the response's type " + resp.type_url();
      }
      out.push_back(Resource{res.name(), res.version(), res.resource()});
    }
    for (const auto& name : resp.removed_resources()) {
      if (seen.count(name) != 0) return "resource '" + name + "' is both updated and removed in the response";
    }
    return std::nullopt;
  }

  // The checks shared by both variants. Returns the Sub to process, or nullptr to ignore.
  Sub* subForResponse(const std::string& type_url, const std::string& nonce) {
    Sub* sub = findSub(type_url);
    if (sub == nullptr || !sub->active || !sub->sent_on_stream) {
      // Never subscribed on this stream: answering would subscribe (an empty SotW list is wildcard).
      ++stats_.ignored_responses;
      log(kWarning, "ignoring a response for unsubscribed type %s (nonce %s)", type_url.c_str(), nonce.c_str());
      return nullptr;
    }
    return sub;
  }

  void finishResponse(Sub& sub, const absl::Status& status, const std::string& version, bool sotw) {
    if (status.ok()) {
      ++sub.update_success;
      sub.version = version;
      sub.last_error.clear();
      sub.pending_error.reset();
      log(kDebug, "accepted %s version %s (nonce %s)", sub.type_url.c_str(), version.c_str(), sub.nonce.c_str());
    } else {
      ++sub.update_rejected;
      sub.last_error = std::string(status.message());
      sub.pending_error = status;
      log(kWarning, "rejected %s version %s (nonce %s): %s", sub.type_url.c_str(), version.c_str(),
          sub.nonce.c_str(), sub.last_error.c_str());
    }
    sub.ack_pending = true;
    enqueue(sub);
    got_response_on_stream_ = true;
    if (!sub.initial_fetch_done) {
      sub.initial_fetch_done = true;
      sub.initial_fetch_deadline.reset();
      subscriber_.onInitialFetchDone(sub.type_url, false);
    }
  }

  void handleSotw(const DiscoveryResponse& resp) {
    ++stats_.responses_received;
    Sub* sub = subForResponse(resp.type_url(), resp.nonce());
    if (sub == nullptr) return;
    sub->nonce = resp.nonce();
    ++sub->update_attempt;
    std::vector<Resource> resources;
    absl::Status status;
    if (auto error = decodeSotw(resp, resources)) {
      status = absl::InvalidArgumentError(*error);
      subscriber_.onRejectedByClient(sub->type_url, resp.version_info(), std::string(status.message()));
    } else {
      for (const auto& r : resources) sub->dne_deadlines.erase(r.name);
      std::vector<std::string> removed;
      if (sub->wildcard) {
        std::unordered_set<std::string> present;
        for (const auto& r : resources) present.insert(r.name);
        for (const auto& [name, version] : sub->held) {
          if (present.count(name) == 0) removed.push_back(name);
        }
      }
      status = subscriber_.onResources(sub->type_url, resources, removed, resp.version_info(), true);
      const auto refused = refusedNames(status);
      if (status.ok() || refused) {
        if (sub->wildcard) {
          // The set held is the response's, except that a refused resource keeps the version held before.
          std::map<std::string, std::string> kept;
          for (const auto& [name, version] : sub->held) {
            if (refused && refused->count(name) != 0) kept.emplace(name, version);
          }
          sub->held = std::move(kept);
        }
        for (const auto& r : resources) {
          if (refused && refused->count(r.name) != 0) continue;
          if (sub->wildcard || sub->interest->count(r.name) != 0) sub->held[r.name] = r.version;
        }
      }
    }
    finishResponse(*sub, status, resp.version_info(), true);
  }

  void handleDelta(const DeltaDiscoveryResponse& resp) {
    ++stats_.responses_received;
    Sub* sub = subForResponse(resp.type_url(), resp.nonce());
    if (sub == nullptr) return;
    sub->nonce = resp.nonce();
    ++sub->update_attempt;
    std::vector<Resource> resources;
    absl::Status status;
    if (auto error = decodeDelta(resp, resources)) {
      status = absl::InvalidArgumentError(*error);
      subscriber_.onRejectedByClient(sub->type_url, resp.system_version_info(), std::string(status.message()));
    } else {
      for (const auto& r : resp.resources()) sub->dne_deadlines.erase(r.name());
      for (const auto& name : resp.removed_resources()) sub->dne_deadlines.erase(name);
      std::vector<std::string> removed(resp.removed_resources().begin(), resp.removed_resources().end());
      status = subscriber_.onResources(sub->type_url, resources, removed, resp.system_version_info(), false);
      const auto refused = refusedNames(status);
      if (status.ok() || refused) {
        for (const auto& r : resources) {
          if (refused && refused->count(r.name) != 0) continue;
          if (sub->wildcard || sub->interest->count(r.name) != 0) sub->held[r.name] = r.version;
        }
        // A removal ends the resource, not the subscription.
        for (const auto& name : removed) sub->held.erase(name);
      }
    }
    finishResponse(*sub, status, resp.system_version_info(), false);
  }

  // ---- requests ---------------------------------------------------------------------------------

  static void setError(google::rpc::Status* detail, const absl::Status& status) {
    detail->set_code(static_cast<int>(status.code()));
    detail->set_message(truncateError(std::string(status.message())));
  }

  // Whether `sub` has something to say on this stream.
  bool needsRequest(const Sub& sub) const {
    if (!sub.active) return false;
    const NameSetPtr& wanted = sub.wanted(config_.delta);
    if (!sub.sent_on_stream) {
      // An empty first request for a named type would be a legacy wildcard subscription.
      return sub.wildcard || !wanted->empty();
    }
    return sub.ack_pending || (!sub.namesInSync() && wanted != sub.stream_names && *wanted != *sub.stream_names);
  }

  DiscoveryRequest buildSotw(const Sub& sub) {
    DiscoveryRequest req;
    if (!node_sent_) *req.mutable_node() = config_.node;
    req.set_type_url(sub.type_url);
    req.set_version_info(sub.version);
    req.set_response_nonce(sub.nonce);  // always the newest on this stream
    for (const auto& name : *sub.wanted(false)) req.add_resource_names(name);
    if (sub.ack_pending && sub.pending_error) setError(req.mutable_error_detail(), *sub.pending_error);
    return req;
  }

  DeltaDiscoveryRequest buildDelta(const Sub& sub) {
    DeltaDiscoveryRequest req;
    if (!node_sent_) *req.mutable_node() = config_.node;
    req.set_type_url(sub.type_url);
    const std::set<std::string>& wanted = *sub.wanted(true);
    if (!sub.sent_on_stream) {
      // Reconnect: tell the server what we hold so it sends only what changed.
      for (const auto& [name, version] : sub.held) (*req.mutable_initial_resource_versions())[name] = version;
    }
    if (!sub.namesInSync()) {
      for (const auto& name : wanted) {
        if (sub.stream_names->count(name) == 0) req.add_resource_names_subscribe(name);
      }
      for (const auto& name : *sub.stream_names) {
        if (wanted.count(name) == 0) req.add_resource_names_unsubscribe(name);
      }
    }
    if (sub.ack_pending) {
      // Delta carries a nonce only on an ACK/NACK.
      req.set_response_nonce(sub.nonce);
      if (sub.pending_error) setError(req.mutable_error_detail(), *sub.pending_error);
    }
    return req;
  }

  template <class Stream, class Req>
  bool blockingWrite(Stream* stream, const Req& req) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (stopping_) return false;
      in_blocking_call_ = true;
    }
    const bool ok = stream->Write(req);
    std::lock_guard<std::mutex> lk(mu_);
    in_blocking_call_ = false;
    return ok;
  }

  // Sends what is queued, as far as the token bucket allows.
  void flush(Clock::time_point now) {
    while (stream_ok_ && !send_queue_.empty()) {
      Sub& sub = *send_queue_.front();
      if (!needsRequest(sub)) {
        sub.queued = false;
        send_queue_.pop_front();
        continue;
      }
      if (!bucket_.tryConsume(now)) {
        if (!rate_limited_) {
          rate_limited_ = true;
          ++stats_.rate_limit_enforced;
          log(kWarning, "request rate limit reached; %zu type(s) waiting", send_queue_.size());
        }
        return;
      }
      rate_limited_ = false;
      sub.queued = false;
      send_queue_.pop_front();

      const NameSetPtr& wanted_set = sub.wanted(config_.delta);
      const std::set<std::string>& wanted = *wanted_set;
      bool ok;
      if (config_.delta) {
        DeltaDiscoveryRequest req = buildDelta(sub);
        log(kDebug, "send delta %s: +%d -%d nonce=%s%s", sub.type_url.c_str(), req.resource_names_subscribe_size(),
            req.resource_names_unsubscribe_size(), req.response_nonce().c_str(),
            req.has_error_detail() ? " (NACK)" : "");
        ok = blockingWrite(delta_stream_.get(), req);
      } else {
        DiscoveryRequest req = buildSotw(sub);
        log(kDebug, "send %s: version=%s nonce=%s names=[%s]%s", sub.type_url.c_str(), req.version_info().c_str(),
            req.response_nonce().c_str(), joinNames(wanted).c_str(), req.has_error_detail() ? " (NACK)" : "");
        ok = blockingWrite(sotw_stream_.get(), req);
      }
      if (!ok) {
        log(kInfo, "write failed; the stream is closing");
        stream_ok_ = false;
        std::lock_guard<std::mutex> lk(mu_);
        if (ctx_) ctx_->TryCancel();  // the reader sees the end and reports it
        return;
      }
      ++stats_.requests_sent;
      node_sent_ = true;
      if (!stats_.connected) {
        stats_.connected = true;
        log(kInfo, "connected to %s", config_.target.c_str());
        subscriber_.onStreamState(true);
      }
      // Does-not-exist timers for names newly subscribed and not held.
      if (!sub.namesInSync()) {
        if (!sub.wildcard && config_.resource_does_not_exist_timeout_ms > 0) {
          for (const auto& name : wanted) {
            if (sub.stream_names->count(name) == 0 && sub.held.count(name) == 0) {
              sub.dne_deadlines[name] = now + std::chrono::milliseconds(config_.resource_does_not_exist_timeout_ms);
            }
          }
        }
        sub.stream_names = wanted_set;  // shared, not copied
        sub.stream_gen = sub.interest_gen;
      }
      sub.sent_on_stream = true;
      sub.ack_pending = false;
      sub.pending_error.reset();
    }
  }

  // ---- timers -----------------------------------------------------------------------------------

  void fireTimers(Clock::time_point now) {
    for (auto& owned : subs_) {
      Sub& sub = *owned;
      if (sub.initial_fetch_deadline && now >= *sub.initial_fetch_deadline) {
        sub.initial_fetch_deadline.reset();
        sub.initial_fetch_done = true;
        log(kWarning, "initial fetch of %s timed out", sub.type_url.c_str());
        subscriber_.onInitialFetchDone(sub.type_url, true);
      }
      std::vector<std::string> expired;
      for (const auto& [name, deadline] : sub.dne_deadlines) {
        if (now >= deadline) expired.push_back(name);
      }
      for (const auto& name : expired) {
        sub.dne_deadlines.erase(name);
        log(kInfo, "%s '%s' does not exist (no response named it in time)", sub.type_url.c_str(), name.c_str());
        subscriber_.onResourceDoesNotExist(sub.type_url, name);
      }
    }
  }

  Clock::time_point nextDeadline(Clock::time_point now) {
    Clock::time_point next = now + std::chrono::hours(1);
    if (channel_ != nullptr && !streamExists()) {
      next = std::min(next, now + kConnectPollInterval);  // connecting: watch the channel's state
    } else if (!streamExists()) {
      next = std::min(next, reconnect_at_);
    }
    if (stream_ok_ && !send_queue_.empty()) next = std::min(next, bucket_.nextTokenAt(now));
    for (const auto& owned : subs_) {
      if (owned->initial_fetch_deadline) next = std::min(next, *owned->initial_fetch_deadline);
      for (const auto& [name, deadline] : owned->dne_deadlines) next = std::min(next, deadline);
    }
    return next;
  }

  // ---- stream lifecycle -------------------------------------------------------------------------

  bool streamExists() const { return sotw_stream_ != nullptr || delta_stream_ != nullptr; }

  template <class Stream, class Resp>
  void readLoop(Stream* stream, std::deque<Resp>* queue) {
    for (;;) {
      Resp resp;
      if (!stream->Read(&resp)) break;
      std::unique_lock<std::mutex> lk(mu_);
      space_cv_.wait(lk, [&] { return queue->size() < kMaxQueuedResponses || stopping_; });
      if (stopping_) continue;  // drain until the cancelled stream ends
      queue->push_back(std::move(resp));
      cv_.notify_all();
    }
    std::lock_guard<std::mutex> lk(mu_);
    reader_done_ = true;
    cv_.notify_all();
  }

  // A connection attempt: a fresh channel asked to connect. The client thread does not block on it
  // (a control plane behind a firewall that drops SYNs takes gRPC's 20 s connect timeout to fail);
  // the loop polls the channel's state while timers keep firing.
  void beginConnect() {
    ++stats_.streams_started;
    grpc::ChannelArguments args;
    // Our backoff decides when to retry: a fresh channel per attempt, with its own subchannels, so
    // gRPC's own reconnect backoff (shared through the global subchannel pool) never adds to it.
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetInt(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, -1);  // a full CDS can be large
    if (config_.keepalive_time_ms > 0) {
      args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(config_.keepalive_time_ms));
      args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, static_cast<int>(config_.keepalive_timeout_ms));
      args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    }
    std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
    if (config_.tls) {
      auto tls = config_.tls();
      if (!tls.ok()) {
        log(kWarning, "TLS for %s: %s", config_.target.c_str(), std::string(tls.status().message()).c_str());
        scheduleReconnect(Clock::now(), "TLS settings unusable");
        return;
      }
      grpc::SslCredentialsOptions o;
      o.pem_root_certs = tls->root_certs;
      o.pem_private_key = tls->private_key;
      o.pem_cert_chain = tls->cert_chain;
      creds = grpc::SslCredentials(o);
      if (!tls->target_name_override.empty()) args.SetSslTargetNameOverride(tls->target_name_override);
    }
    channel_ = grpc::CreateCustomChannel(config_.target, creds, args);
    channel_->GetState(/*try_to_connect=*/true);
    log(kDebug, "connecting to %s", config_.target.c_str());
  }

  // While connecting: opens the stream once the channel is READY; a failed attempt backs off.
  void pollConnect(Clock::time_point now) {
    grpc_connectivity_state state = channel_->GetState(/*try_to_connect=*/true);
    if (state != GRPC_CHANNEL_READY && state != GRPC_CHANNEL_TRANSIENT_FAILURE && state != GRPC_CHANNEL_SHUTDOWN) {
      // Waiting on the channel drives gRPC's I/O polling; GetState() alone does not, and with no other
      // gRPC activity in the process the connect would only be noticed by gRPC's 5 s backup poller.
      channel_->WaitForStateChange(state, std::chrono::system_clock::now() + std::chrono::milliseconds(10));
      state = channel_->GetState(/*try_to_connect=*/true);
    }
    if (state == GRPC_CHANNEL_READY) {
      openStream();
    } else if (state == GRPC_CHANNEL_TRANSIENT_FAILURE || state == GRPC_CHANNEL_SHUTDOWN) {
      channel_.reset();
      scheduleReconnect(now, "connection failed");
    }
  }

  void openStream() {
    if (config_.service == AdsConfig::Service::Aggregated) {
      stub_ = AggregatedDiscoveryService::NewStub(channel_);
    } else {
      sds_stub_ = envoy::service::secret::v3::SecretDiscoveryService::NewStub(channel_);
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (stopping_) return;
      ctx_ = std::make_unique<grpc::ClientContext>();
      reader_done_ = false;
      in_blocking_call_ = true;  // sends the call's headers (the connection is up: quick)
    }
    log(kDebug, "opening %s stream to %s", config_.delta ? "delta" : "SotW", config_.target.c_str());
    const bool ads = config_.service == AdsConfig::Service::Aggregated;
    if (config_.delta) {
      delta_stream_ = ads ? stub_->DeltaAggregatedResources(ctx_.get()) : sds_stub_->DeltaSecrets(ctx_.get());
      reader_ = std::thread([this] { readLoop(delta_stream_.get(), &delta_responses_); });
    } else {
      sotw_stream_ = ads ? stub_->StreamAggregatedResources(ctx_.get()) : sds_stub_->StreamSecrets(ctx_.get());
      reader_ = std::thread([this] { readLoop(sotw_stream_.get(), &sotw_responses_); });
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      in_blocking_call_ = false;
    }
    stream_ok_ = true;
    node_sent_ = false;
    got_response_on_stream_ = false;
    send_queue_.clear();
    for (auto& owned : subs_) owned->resetStream();
    // Every subscription again, in the order the types were first subscribed (CDS, LDS, ...).
    for (auto& owned : subs_) {
      if (owned->active) enqueue(*owned);
    }
  }

  void scheduleReconnect(Clock::time_point now, const char* why) {
    if (got_response_on_stream_) backoff_.reset();
    got_response_on_stream_ = false;
    const uint64_t delay = backoff_.nextDelayMs();
    reconnect_at_ = now + std::chrono::milliseconds(delay);
    log(kInfo, "%s; reconnecting to %s in %llu ms", why, config_.target.c_str(), static_cast<unsigned long long>(delay));
  }

  // Joins the reader and tears the stream down. `graceful`: half-close before cancelling (stop()).
  void endStream(Clock::time_point now, bool graceful) {
    if (!streamExists()) return;
    if (graceful && stream_ok_) {
      if (config_.delta) {
        delta_stream_->WritesDone();
      } else {
        sotw_stream_->WritesDone();
      }
    }
    {
      // A reader that saw the end has the server's status already: cancelling would replace it.
      std::lock_guard<std::mutex> lk(mu_);
      if (ctx_ && !reader_done_) ctx_->TryCancel();
    }
    space_cv_.notify_all();
    if (reader_.joinable()) reader_.join();
    const grpc::Status status = config_.delta ? delta_stream_->Finish() : sotw_stream_->Finish();
    ++stats_.streams_closed;
    log(graceful ? kDebug : kWarning, "stream to %s closed: %d %s", config_.target.c_str(),
        static_cast<int>(status.error_code()), status.error_message().c_str());
    {
      std::lock_guard<std::mutex> lk(mu_);
      sotw_stream_.reset();
      delta_stream_.reset();
      ctx_.reset();
      sotw_responses_.clear();
      delta_responses_.clear();
      reader_done_ = false;
    }
    stub_.reset();
    sds_stub_.reset();
    channel_.reset();
    stream_ok_ = false;
    send_queue_.clear();
    // Does-not-exist timers die with the stream; the config held stays.
    for (auto& owned : subs_) owned->resetStream();
    if (stats_.connected) {
      stats_.connected = false;
      subscriber_.onStreamState(false);
    }
    if (!graceful) scheduleReconnect(now, "stream closed");
  }

  // Copies the client thread's state for state()/stats(). Called by the client thread (or the
  // constructor) with mu_ held.
  void publishLocked() {
    for (const auto& owned : subs_) {
      const Sub& sub = *owned;
      if (!sub.active && !sub.wildcard) {
        published_state_.erase(sub.type_url);
        continue;
      }
      TypeState& ts = published_state_[sub.type_url];
      ts.version = sub.version;
      ts.nonce = sub.nonce;
      ts.last_error = sub.last_error;
      ts.update_attempt = sub.update_attempt;
      ts.update_success = sub.update_success;
      ts.update_rejected = sub.update_rejected;
      ts.resource_count = sub.held.size();
      ts.initial_fetch_done = sub.initial_fetch_done;
      ts.names = sub.interest;  // shared, not copied
      ts.wildcard = sub.wildcard;
    }
    published_stats_ = stats_;
    published_stats_.pending_requests = send_queue_.size();
  }

  void run() {
    const Clock::time_point start = Clock::now();
    for (auto& owned : subs_) {
      if (owned->wildcard) activate(*owned, start);
    }
    reconnect_at_ = start;
    for (;;) {
      std::deque<DiscoveryResponse> sotw;
      std::deque<DeltaDiscoveryResponse> delta;
      std::map<std::string, std::set<std::string>> names;
      bool reader_done;
      {
        std::unique_lock<std::mutex> lk(mu_);
        publishLocked();
        const Clock::time_point deadline = nextDeadline(Clock::now());
        cv_.wait_until(lk, deadline, [&] {
          return stopping_ || !sotw_responses_.empty() || !delta_responses_.empty() || reader_done_ ||
                 !pending_names_.empty();
        });
        if (stopping_) break;
        sotw.swap(sotw_responses_);
        delta.swap(delta_responses_);
        names.swap(pending_names_);
        reader_done = reader_done_;
      }
      space_cv_.notify_all();
      Clock::time_point now = Clock::now();
      // Interest changes made before these responses, then each response (it sets its type's newest
      // nonce) with the changes its callback made, then the requests that carry all of it.
      applyNameChanges(std::move(names), now);
      for (const auto& resp : sotw) {
        handleSotw(resp);
        applyNameChanges(takePendingNames(), now);
      }
      for (const auto& resp : delta) {
        handleDelta(resp);
        applyNameChanges(takePendingNames(), now);
      }
      now = Clock::now();
      if (reader_done) endStream(now, false);
      fireTimers(now);
      if (!streamExists() && channel_ == nullptr && now >= reconnect_at_) beginConnect();
      if (!streamExists() && channel_ != nullptr) {
        pollConnect(now);
        now = Clock::now();
      }
      applyNameChanges(takePendingNames(), now);
      flush(now);
    }
    endStream(Clock::now(), true);
    std::lock_guard<std::mutex> lk(mu_);
    publishLocked();
  }

  std::map<std::string, std::set<std::string>> takePendingNames() {
    std::lock_guard<std::mutex> lk(mu_);
    std::map<std::string, std::set<std::string>> out;
    out.swap(pending_names_);
    return out;
  }

  const AdsConfig config_;
  XdsSubscriber& subscriber_;

  // Client thread only.
  std::vector<std::unique_ptr<Sub>> subs_;  // in first-subscription order
  std::map<std::string, size_t> sub_index_;
  std::deque<Sub*> send_queue_;
  TokenBucket bucket_;
  JitteredBackoff backoff_;
  bool rate_limited_ = false;
  bool stream_ok_ = false;  // the stream exists and no write has failed
  bool node_sent_ = false;
  bool got_response_on_stream_ = false;
  Clock::time_point reconnect_at_{};
  Stats stats_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<AggregatedDiscoveryService::Stub> stub_;
  std::unique_ptr<envoy::service::secret::v3::SecretDiscoveryService::Stub> sds_stub_;
  std::unique_ptr<SotwStream> sotw_stream_;
  std::unique_ptr<DeltaStream> delta_stream_;
  std::thread reader_;
  std::thread thread_;

  // Shared, under mu_.
  mutable std::mutex mu_;
  std::condition_variable cv_;        // wakes the client thread
  std::condition_variable space_cv_;  // wakes the reader when the queue has room
  bool started_ = false;
  bool stopping_ = false;
  bool in_blocking_call_ = false;
  bool reader_done_ = false;
  std::unique_ptr<grpc::ClientContext> ctx_;
  std::deque<DiscoveryResponse> sotw_responses_;
  std::deque<DeltaDiscoveryResponse> delta_responses_;
  std::map<std::string, std::set<std::string>> pending_names_;
  std::map<std::string, TypeState> published_state_;
  Stats published_stats_;
};

AdsClient::AdsClient(AdsConfig config, XdsSubscriber& subscriber)
    : impl_(std::make_unique<Impl>(std::move(config), subscriber)) {}
AdsClient::~AdsClient() { impl_->stop(); }
void AdsClient::start() { impl_->start(); }
void AdsClient::stop() { impl_->stop(); }
void AdsClient::setResourceNames(const std::string& type_url, std::vector<std::string> names) {
  impl_->setResourceNames(type_url, std::move(names));
}
std::map<std::string, AdsClient::TypeState> AdsClient::state() const { return impl_->state(); }
AdsClient::Stats AdsClient::stats() const { return impl_->stats(); }
bool AdsClient::connected() const { return impl_->connected(); }

constexpr char kRefusedPayload[] = "type.strait.dev/xds.RefusedResources";

absl::Status partiallyAccepted(absl::Status error, const std::vector<std::string>& refused) {
  std::string names;
  for (const auto& n : refused) {
    names += n;
    names += '\n';
  }
  error.SetPayload(kRefusedPayload, absl::Cord(names));
  return error;
}

std::optional<std::set<std::string>> refusedNames(const absl::Status& status) {
  auto payload = status.GetPayload(kRefusedPayload);
  if (!payload) return std::nullopt;
  std::set<std::string> out;
  for (absl::string_view n : absl::StrSplit(std::string(*payload), '\n', absl::SkipEmpty())) out.emplace(n);
  return out;
}

}  // namespace strait::xds
