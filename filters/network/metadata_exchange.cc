#include "filters/network/metadata_exchange.h"

#include <algorithm>

#include "absl/strings/escaping.h"
#include "google/protobuf/any.pb.h"
#include "google/protobuf/struct.pb.h"
#include "istio/metadata_exchange/config.pb.h"
#include "proxy/common/log.h"
#include "proxy/config/typed_struct.h"
#include "proxy/network/connection.h"
#include "proxy/network/transport_socket.h"
#include "proxy/stats/istio_metrics.h"

namespace strait::filters::network {

namespace {

namespace im = stats::istio;
using MetadataExchangeProto = envoy::tcp::metadataexchange::config::MetadataExchange;

constexpr const char* kPeerMetadata = "x-envoy-peer-metadata";
constexpr const char* kPeerMetadataId = "x-envoy-peer-metadata-id";
constexpr const char* kStructTypeUrl = "type.googleapis.com/google.protobuf.Struct";
// Payloads up to this size are cached per worker by their bytes (stats::istio::peerCached), as the
// HTTP header values are; a bigger one is decoded each time, so a peer cannot fill the cache with them.
constexpr size_t kMaxCachedPayload = 8192;

void putBigEndian(char* out, uint32_t v) {
  out[0] = static_cast<char>(v >> 24);
  out[1] = static_cast<char>(v >> 16);
  out[2] = static_cast<char>(v >> 8);
  out[3] = static_cast<char>(v);
}

uint32_t bigEndian(const char* in) {
  const auto* b = reinterpret_cast<const unsigned char*>(in);
  return uint32_t{b[0]} << 24 | uint32_t{b[1]} << 16 | uint32_t{b[2]} << 8 | uint32_t{b[3]};
}

// Puts `bytes` back in front of what `data` holds.
void prepend(common::Buffer& data, std::string_view bytes) {
  if (bytes.empty()) return;
  common::Buffer front;
  front.add(bytes);
  front.move(data);
  data.move(front);
}

// This pod's frame, made from the metadata istio_metrics.h encodes for the HTTP exchange: once per worker
// thread and configure() (its generation).
const std::string& localFrame() {
  thread_local uint64_t generation = 0;
  thread_local std::string frame;
  const uint64_t now = im::generation();
  if (generation != now || frame.empty()) {
    std::string metadata;
    if (!absl::Base64Unescape(im::localPeerMetadataHeader(), &metadata)) metadata.clear();
    frame = encodePeerExchangeFrame(metadata, im::localPeerIdHeader());
    generation = now;
  }
  return frame;
}

uint32_t decodePeer(std::string_view payload) {
  uint32_t (*make)(std::string_view) = [](std::string_view p) -> uint32_t {
    google::protobuf::Struct metadata;
    std::string id;
    if (!decodePeerExchangePayload(p, &metadata, &id) || metadata.fields().empty()) return im::kUnknown;
    return im::peer(im::peerFromMetadata(metadata));
  };
  // A serialized Any with a type_url starts with its tag (field 1, length-delimited): 0x0a.
  if (!payload.empty() && payload.front() == '\x0a' && payload.size() <= kMaxCachedPayload) {
    return im::peerCached(payload, make);
  }
  return make(payload);
}

// istio.metadata_exchange on a filter chain: checks the connection's ALPN once its TLS is up and, when
// it is the protocol, leaves the exchange for tcp_proxy to take (takeDownstreamPeerExchange).
struct Pending {
  uint64_t connection = 0;  // id + 1; 0: none
  const PeerExchangeConfig* config = nullptr;
};
thread_local Pending tl_pending;

class PeerExchangeFilter : public config::NetworkReadFilter {
 public:
  PeerExchangeFilter(PeerExchangeConfigConstSharedPtr cfg, stats::Counter inert) : cfg_(std::move(cfg)), inert_(inert) {}
  bool admit(const strait::network::Connection& conn) const override {
    const strait::network::SslInfo* ssl = conn.ssl();
    if (ssl == nullptr || ssl->alpn() != cfg_->protocol) {
      stats::inc(cfg_->alpn_protocol_not_found);
      stats::inc(inert_);
      return true;
    }
    stats::inc(cfg_->alpn_protocol_found);
    // The terminal filter takes the connection next, on this thread (Worker::startChain).
    tl_pending = Pending{conn.id() + 1, cfg_.get()};
    return true;
  }

 private:
  PeerExchangeConfigConstSharedPtr cfg_;
  stats::Counter inert_;
};

}  // namespace

absl::StatusOr<PeerExchangeConfigConstSharedPtr> peerExchangeConfig(const google::protobuf::Any& any,
                                                                   const std::string& path, stats::Store& store) {
  std::string protocol;
  if (auto ts = config::readTypedStruct(any)) {
    auto it = ts->value.fields().find(std::string("protocol"));
    if (it != ts->value.fields().end()) {
      if (it->second.kind_case() != google::protobuf::Value::kStringValue) {
        return absl::InvalidArgumentError(path + ".value.protocol: must be a string");
      }
      protocol = it->second.string_value();
    }
  } else if (config::isTypedStruct(any)) {
    return absl::InvalidArgumentError(path + ".value: cannot decode the TypedStruct");
  } else {
    MetadataExchangeProto proto;
    if (!any.UnpackTo(&proto)) return absl::InvalidArgumentError(path + ": cannot decode MetadataExchange");
    protocol = proto.protocol();
  }
  if (protocol.empty()) return PeerExchangeConfigConstSharedPtr();
  auto cfg = std::make_shared<PeerExchangeConfig>();
  cfg->protocol = std::move(protocol);
  cfg->alpn_protocol_found = store.counter("metadata_exchange.alpn_protocol_found");
  cfg->alpn_protocol_not_found = store.counter("metadata_exchange.alpn_protocol_not_found");
  cfg->initial_header_not_found = store.counter("metadata_exchange.initial_header_not_found");
  cfg->header_not_found = store.counter("metadata_exchange.header_not_found");
  cfg->metadata_added = store.counter("metadata_exchange.metadata_added");
  return PeerExchangeConfigConstSharedPtr(std::move(cfg));
}

config::NetworkReadFilterConstSharedPtr createPeerExchangeFilter(PeerExchangeConfigConstSharedPtr cfg,
                                                                 stats::Counter inert) {
  return std::make_shared<PeerExchangeFilter>(std::move(cfg), inert);
}

const PeerExchangeConfig* takeDownstreamPeerExchange(uint64_t connection_id) {
  if (tl_pending.connection != connection_id + 1) return nullptr;
  const PeerExchangeConfig* cfg = tl_pending.config;
  tl_pending = Pending{};
  return cfg;
}

std::string encodePeerExchangeFrame(std::string_view metadata, std::string_view node_id) {
  google::protobuf::Struct data;
  auto& fields = *data.mutable_fields();
  // The exchanged keys, already encoded; an empty string is an empty Struct.
  fields[std::string(kPeerMetadata)].mutable_struct_value()->ParseFromArray(metadata.data(), static_cast<int>(metadata.size()));
  if (!node_id.empty()) fields[std::string(kPeerMetadataId)].set_string_value(std::string(node_id));
  google::protobuf::Any any;
  any.set_type_url(kStructTypeUrl);
  data.SerializeToString(any.mutable_value());
  const std::string payload = any.SerializeAsString();
  std::string frame(kPeerExchangeHeaderSize, '\0');
  putBigEndian(frame.data(), kPeerExchangeMagic);
  putBigEndian(frame.data() + 4, static_cast<uint32_t>(payload.size()));
  frame += payload;
  return frame;
}

bool decodePeerExchangePayload(std::string_view payload, google::protobuf::Struct* metadata, std::string* node_id) {
  google::protobuf::Any any;
  if (!any.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) return false;
  const std::string& url = any.type_url();
  if (url.substr(url.rfind('/') + 1) != "google.protobuf.Struct") return false;
  google::protobuf::Struct data;
  if (!data.ParseFromString(any.value())) return false;
  metadata->Clear();
  node_id->clear();
  auto it = data.fields().find(std::string(kPeerMetadata));
  if (it != data.fields().end() && it->second.kind_case() == google::protobuf::Value::kStructValue) {
    *metadata = it->second.struct_value();
  }
  it = data.fields().find(std::string(kPeerMetadataId));
  if (it != data.fields().end() && it->second.kind_case() == google::protobuf::Value::kStringValue) {
    *node_id = it->second.string_value();
  }
  return true;
}

PeerExchangeReader::Status PeerExchangeReader::giveBack(common::Buffer& data, Status status) {
  finished_ = true;
  prepend(data, std::string_view(header_, header_len_));
  return status;
}

PeerExchangeReader::Status PeerExchangeReader::onData(common::Buffer& data, bool end_stream) {
  if (finished_) return Status::Done;
  if (!in_payload_) {
    const auto take = static_cast<uint32_t>(std::min<size_t>(kPeerExchangeHeaderSize - header_len_, data.length()));
    data.copyOut(0, take, header_ + header_len_);
    data.drain(take);
    header_len_ += take;
    if (header_len_ < kPeerExchangeHeaderSize) return end_stream ? giveBack(data, Status::NotFrame) : Status::NeedMore;
    expected_ = bigEndian(header_ + 4);
    if (bigEndian(header_) != kPeerExchangeMagic || expected_ > kPeerExchangeMaxPayload) {
      return giveBack(data, Status::NotFrame);
    }
    in_payload_ = true;
  }
  const size_t take = std::min<size_t>(expected_ - payload_.size(), data.length());
  if (take > 0) {
    const size_t at = payload_.size();
    payload_.resize(at + take);
    data.copyOut(0, take, payload_.data() + at);
    data.drain(take);
  }
  if (payload_.size() < expected_) {
    if (!end_stream) return Status::NeedMore;
    finished_ = true;
    payload_.clear();
    return Status::Dropped;
  }
  finished_ = true;
  google::protobuf::Any any;
  if (!any.ParseFromString(payload_)) {
    // Istio drained the header before parsing: the payload goes on.
    prepend(data, payload_);
    payload_.clear();
    return Status::BadPayload;
  }
  return Status::Done;
}

std::unique_ptr<PeerExchange> PeerExchange::forUpstream(const PeerExchangeConfig& cfg,
                                                        const strait::network::Connection& conn) {
  const strait::network::SslInfo* ssl = conn.ssl();
  if (ssl == nullptr || ssl->alpn() != cfg.protocol) {
    stats::inc(cfg.alpn_protocol_not_found);
    return nullptr;
  }
  stats::inc(cfg.alpn_protocol_found);
  return std::make_unique<PeerExchange>(cfg);
}

void PeerExchange::start(strait::network::Connection& conn) {
  common::Buffer frame;
  frame.add(localFrame());
  conn.write(frame, false);
  stats::inc(cfg_.metadata_added);
}

bool PeerExchange::onData(common::Buffer& data, bool end_stream) {
  switch (reader_.onData(data, end_stream)) {
    case PeerExchangeReader::Status::NeedMore:
      return false;
    case PeerExchangeReader::Status::Done:
      // The peer's labels matter only to Istio's metrics: while they are off, nothing is decoded.
      if (im::enabled()) peer_ = decodePeer(reader_.payload());
      break;
    case PeerExchangeReader::Status::NotFrame:
      stats::inc(cfg_.initial_header_not_found);
      LOG_DEBUG("metadata exchange: the peer sent no %s header (bad magic, oversized or cut short): its bytes are "
                "forwarded as they are",
                cfg_.protocol.c_str());
      break;
    case PeerExchangeReader::Status::BadPayload:
    case PeerExchangeReader::Status::Dropped:
      stats::inc(cfg_.header_not_found);
      LOG_DEBUG("metadata exchange: the peer's %s payload does not decode or was cut short", cfg_.protocol.c_str());
      break;
  }
  return true;
}

void registerClusterPeerExchange() { config::registerUpstreamPeerExchange(peerExchangeConfig); }

}  // namespace strait::filters::network
