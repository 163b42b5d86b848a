// Translation of Envoy's TLS transport socket config (UpstreamTlsContext, DownstreamTlsContext, Secret)
// into TLS socket factories. Runtime code (tls_socket, tls_context) never sees a proto.
#include "certs/tls_config.h"

#include <openssl/ssl.h>

#include <atomic>
#include <cstdlib>
#include <functional>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "certs/secret_manager.h"
#include "certs/tls_socket.h"
#include "envoy/extensions/transport_sockets/raw_buffer/v3/raw_buffer.pb.h"
#include "envoy/extensions/transport_sockets/tls/v3/secret.pb.h"
#include "envoy/extensions/transport_sockets/tls/v3/tls.pb.h"
#include "google/protobuf/any.pb.h"
#include "proxy/common/log.h"
#include "proxy/config/bootstrap.h"
#include "proxy/http/matchers.h"

namespace strait::certs {

namespace tls_v3 = envoy::extensions::transport_sockets::tls::v3;
namespace core_v3 = envoy::config::core::v3;
namespace matcher_v3 = envoy::type::matcher::v3;

namespace {

constexpr const char* kUpstreamTlsType = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext";
constexpr const char* kDownstreamTlsType =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext";
constexpr const char* kRawBufferType = "type.googleapis.com/envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer";

absl::Status fieldError(const std::string& path, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

// ---- config pieces ----------------------------------------------------------------------------------

absl::StatusOr<PemSource> pemSource(const core_v3::DataSource& ds, const std::string& path) {
  PemSource out;
  switch (ds.specifier_case()) {
    case core_v3::DataSource::kFilename:
      if (ds.filename().empty()) return fieldError(path + ".filename", "must not be empty");
      out.filename = ds.filename();
      return out;
    case core_v3::DataSource::kInlineBytes:
      out.inline_data = ds.inline_bytes();
      return out;
    case core_v3::DataSource::kInlineString:
      out.inline_data = ds.inline_string();
      return out;
    case core_v3::DataSource::kEnvironmentVariable: {
      const char* v = std::getenv(ds.environment_variable().c_str());
      if (v == nullptr) return fieldError(path + ".environment_variable", absl::StrCat("'", ds.environment_variable(), "' is not set"));
      out.inline_data = v;
      return out;
    }
    case core_v3::DataSource::SPECIFIER_NOT_SET:
      break;
  }
  return fieldError(path, "one of filename, inline_bytes, inline_string, environment_variable is required");
}

absl::StatusOr<std::function<bool(std::string_view)>> stringMatcher(const matcher_v3::StringMatcher& m,
                                                                    const std::string& path, std::string* describe) {
  http::StringMatch match;
  auto st = http::buildStringMatch(m, path, match);
  if (!st.ok()) return st;
  *describe = m.ShortDebugString();
  return std::function<bool(std::string_view)>([match = std::move(match)](std::string_view v) { return match.match(v); });
}

// The static part of a CertificateValidationContext: SAN rules and allowances (the CA comes apart, from
// a provider, because it rotates).
absl::Status validationRules(const tls_v3::CertificateValidationContext& v, const std::string& path,
                             ValidationSettings* out) {
  for (int i = 0; i < v.match_typed_subject_alt_names_size(); ++i) {
    const auto& t = v.match_typed_subject_alt_names(i);
    const std::string p = absl::StrCat(path, ".match_typed_subject_alt_names[", i, "]");
    SanMatcher m;
    switch (t.san_type()) {
      case tls_v3::SubjectAltNameMatcher::URI: m.type = SanMatcher::Type::Uri; break;
      case tls_v3::SubjectAltNameMatcher::DNS: m.type = SanMatcher::Type::Dns; break;
      case tls_v3::SubjectAltNameMatcher::EMAIL: m.type = SanMatcher::Type::Email; break;
      case tls_v3::SubjectAltNameMatcher::IP_ADDRESS: m.type = SanMatcher::Type::Ip; break;
      default:
        return fieldError(p + ".san_type", "must be URI, DNS, EMAIL or IP_ADDRESS");
    }
    auto fn = stringMatcher(t.matcher(), p + ".matcher", &m.description);
    if (!fn.ok()) return fn.status();
    m.match = *std::move(fn);
    out->san_matchers.push_back(std::move(m));
  }
  for (int i = 0; i < v.match_subject_alt_names_size(); ++i) {
    SanMatcher m;
    m.type = SanMatcher::Type::Any;
    auto fn = stringMatcher(v.match_subject_alt_names(i), absl::StrCat(path, ".match_subject_alt_names[", i, "]"), &m.description);
    if (!fn.ok()) return fn.status();
    m.match = *std::move(fn);
    out->san_matchers.push_back(std::move(m));
  }
  out->accept_untrusted = v.trust_chain_verification() == tls_v3::CertificateValidationContext::ACCEPT_UNTRUSTED;
  out->allow_expired = v.allow_expired_certificate();
  return absl::OkStatus();
}

absl::StatusOr<int> tlsVersion(tls_v3::TlsParameters::TlsProtocol p, const std::string& path, bool is_min) {
  switch (p) {
    case tls_v3::TlsParameters::TLS_AUTO: return is_min ? TLS1_2_VERSION : TLS1_3_VERSION;
    case tls_v3::TlsParameters::TLSv1_2: return TLS1_2_VERSION;
    case tls_v3::TlsParameters::TLSv1_3: return TLS1_3_VERSION;
    case tls_v3::TlsParameters::TLSv1_0:
    case tls_v3::TlsParameters::TLSv1_1:
      return fieldError(path, "TLS 1.0 and 1.1 are not supported (TLSv1_2 is the lowest)");
    default:
      return fieldError(path, "unknown TLS version");
  }
}

// A reference to a secret by name: static (bootstrap) or SDS over ADS.
absl::StatusOr<SecretProviderSharedPtr> sdsProvider(const tls_v3::SdsSecretConfig& s, const std::string& path) {
  if (s.name().empty()) return fieldError(path + ".name", "is required");
  std::string source;  // empty: ADS
  if (s.has_sds_config() && s.sds_config().has_api_config_source()) {
    // SDS on its own stream to one of our clusters (Istio: sds-grpc, a unix socket to its agent).
    const auto& api = s.sds_config().api_config_source();
    const std::string ap = path + ".sds_config.api_config_source";
    if (api.api_type() != core_v3::ApiConfigSource::GRPC) {
      return fieldError(ap + ".api_type", "only GRPC is supported for SDS on its own stream");
    }
    if (api.grpc_services_size() != 1 || !api.grpc_services(0).has_envoy_grpc() ||
        api.grpc_services(0).envoy_grpc().cluster_name().empty()) {
      return fieldError(ap + ".grpc_services", "exactly one envoy_grpc service naming a static cluster is supported");
    }
    source = api.grpc_services(0).envoy_grpc().cluster_name();
  } else if (s.has_sds_config() && !s.sds_config().has_ads()) {
    return fieldError(path + ".sds_config", "ads: {} or an api_config_source is required");
  }
  auto p = SecretManager::get().named(s.name());
  if (s.has_sds_config()) p->markSds(source);  // fetched over xDS; otherwise a bootstrap static secret
  return p;
}

// ---- the factory ------------------------------------------------------------------------------------

// Makes TLS sockets for one filter chain or cluster. Holds the current SslContext, rebuilt whenever one
// of its secrets rotates (on the thread that saw the rotation); workers pick it up for new handshakes.
class TlsSocketFactory : public network::TransportSocketFactory,
                         public SecretSubscriber,
                         public SecretManager::ContextSource,
                         public std::enable_shared_from_this<TlsSocketFactory> {
 public:
  TlsSocketFactory(std::string name, TlsSettings settings, std::optional<ValidationSettings> rules, uint64_t hash)
      : name_(std::move(name)), settings_(std::move(settings)), rules_(std::move(rules)), hash_(hash) {}

  void addCertificateProvider(SecretProviderSharedPtr p) { cert_providers_.push_back(std::move(p)); }
  void setValidationProvider(SecretProviderSharedPtr p) { validation_provider_ = std::move(p); }
  // Subscribes to every provider and builds the first context (if every secret is there).
  absl::Status start() {
    for (auto& p : cert_providers_) p->subscribe(weak_from_this());
    if (validation_provider_) validation_provider_->subscribe(weak_from_this());
    SecretManager::get().track(std::static_pointer_cast<const SecretManager::ContextSource>(shared_from_this()));
    return rebuild();
  }

  // TransportSocketFactory
  network::TransportSocketPtr create(const network::TransportSocketOptions& options) const override {
    auto ctx = ctx_.load();
    if (!ctx) return nullptr;  // no certificate yet: the caller refuses, never plaintext
    return std::make_unique<TlsSocket>(std::move(ctx), options);
  }
  bool implementsSecureTransport() const override { return true; }
  uint64_t hashKey() const override { return hash_; }
  const std::vector<std::string>& alpnProtocols() const override { return settings_.alpn; }
  bool ready() const override { return ctx_.load() != nullptr; }

  // SecretSubscriber
  void onSecretUpdate() override {
    absl::Status st = rebuild();
    if (!st.ok()) LOG_WARN("TLS context %s: update not applied, the previous one stays: %s", name_.c_str(), st.ToString().c_str());
  }

  // ContextSource
  SslContextConstSharedPtr currentContext() const override { return ctx_.load(); }
  bool serverSide() const override { return settings_.server; }

 private:
  absl::Status rebuild() {
    std::lock_guard<std::mutex> lock(rebuild_mu_);
    std::vector<CertificatePair> certs;
    for (auto& p : cert_providers_) {
      auto s = p->current();
      if (!s) return absl::OkStatus();  // still warming
      if (!s->certificate) return absl::InvalidArgumentError(absl::StrCat("secret '", p->name(), "' is not a tls_certificate"));
      certs.push_back(*s->certificate);
    }
    std::optional<ValidationSettings> validation = rules_;
    if (validation_provider_) {
      auto s = validation_provider_->current();
      if (!s) return absl::OkStatus();
      if (!s->validation) return absl::InvalidArgumentError(absl::StrCat("secret '", validation_provider_->name(), "' is not a validation_context"));
      if (!validation) validation = ValidationSettings{};
      validation->ca_pem = s->validation->ca_pem;
      validation->ca_source = s->validation->ca_source;
      // A validation context from SDS may carry its own rules; they add to the static ones.
      for (const auto& m : s->validation->san_matchers) validation->san_matchers.push_back(m);
      validation->accept_untrusted = validation->accept_untrusted || s->validation->accept_untrusted;
      validation->allow_expired = validation->allow_expired || s->validation->allow_expired;
    }
    auto ctx = SslContext::create(settings_, certs, validation);
    if (!ctx.ok()) return ctx.status();
    ctx_.store(*std::move(ctx));
    return absl::OkStatus();
  }

  std::string name_;
  TlsSettings settings_;
  std::optional<ValidationSettings> rules_;  // static SAN rules etc. (ca_pem empty)
  uint64_t hash_;
  std::vector<SecretProviderSharedPtr> cert_providers_;
  SecretProviderSharedPtr validation_provider_;
  std::mutex rebuild_mu_;
  std::atomic<SslContextConstSharedPtr> ctx_;
};

absl::StatusOr<network::TransportSocketFactorySharedPtr> buildFactory(const tls_v3::CommonTlsContext& common,
                                                                       const std::string& path, bool server,
                                                                       TlsSettings settings, uint64_t hash) {
  settings.server = server;
  if (common.has_tls_params()) {
    const auto& tp = common.tls_params();
    auto min = tlsVersion(tp.tls_minimum_protocol_version(), path + ".tls_params.tls_minimum_protocol_version", true);
    if (!min.ok()) return min.status();
    auto max = tlsVersion(tp.tls_maximum_protocol_version(), path + ".tls_params.tls_maximum_protocol_version", false);
    if (!max.ok()) return max.status();
    if (*min > *max) return fieldError(path + ".tls_params", "the minimum version is above the maximum");
    settings.min_version = *min;
    settings.max_version = *max;
    settings.cipher_suites = absl::StrJoin(tp.cipher_suites(), ":");
    settings.ecdh_curves = absl::StrJoin(tp.ecdh_curves(), ":");
  }
  for (const auto& a : common.alpn_protocols()) settings.alpn.push_back(a);

  std::optional<ValidationSettings> rules;
  SecretProviderSharedPtr validation_provider;
  switch (common.validation_context_type_case()) {
    case tls_v3::CommonTlsContext::kValidationContext: {
      const auto& v = common.validation_context();
      const std::string vp = path + ".validation_context";
      rules = ValidationSettings{};
      auto st = validationRules(v, vp, &*rules);
      if (!st.ok()) return st;
      if (v.has_trusted_ca()) {
        auto src = pemSource(v.trusted_ca(), vp + ".trusted_ca");
        if (!src.ok()) return src.status();
        auto p = SecretManager::get().fileValidation(*src);
        if (!p.ok()) return fieldError(vp + ".trusted_ca", std::string(p.status().message()));
        validation_provider = *p;
      } else if (!rules->accept_untrusted) {
        return fieldError(vp + ".trusted_ca", "is required (or trust_chain_verification: ACCEPT_UNTRUSTED)");
      }
      break;
    }
    case tls_v3::CommonTlsContext::kValidationContextSdsSecretConfig: {
      auto p = sdsProvider(common.validation_context_sds_secret_config(), path + ".validation_context_sds_secret_config");
      if (!p.ok()) return p.status();
      validation_provider = *p;
      break;
    }
    case tls_v3::CommonTlsContext::kCombinedValidationContext: {
      const auto& c = common.combined_validation_context();
      const std::string cp = path + ".combined_validation_context";
      rules = ValidationSettings{};
      auto st = validationRules(c.default_validation_context(), cp + ".default_validation_context", &*rules);
      if (!st.ok()) return st;
      if (!c.has_validation_context_sds_secret_config()) {
        return fieldError(cp + ".validation_context_sds_secret_config", "is required");
      }
      auto p = sdsProvider(c.validation_context_sds_secret_config(), cp + ".validation_context_sds_secret_config");
      if (!p.ok()) return p.status();
      validation_provider = *p;
      break;
    }
    case tls_v3::CommonTlsContext::VALIDATION_CONTEXT_TYPE_NOT_SET:
      break;
  }
  if (server && settings.require_client_certificate && !rules && !validation_provider) {
    return fieldError(path, "require_client_certificate needs a validation context");
  }

  auto factory = std::make_shared<TlsSocketFactory>(path, settings, rules, hash);
  if (common.tls_certificates_size() > 0) {
    for (int i = 0; i < common.tls_certificates_size(); ++i) {
      const auto& tc = common.tls_certificates(i);
      const std::string cp = absl::StrCat(path, ".tls_certificates[", i, "]");
      if (!tc.has_certificate_chain()) return fieldError(cp + ".certificate_chain", "is required");
      if (!tc.has_private_key()) return fieldError(cp + ".private_key", "is required");
      auto chain = pemSource(tc.certificate_chain(), cp + ".certificate_chain");
      if (!chain.ok()) return chain.status();
      auto key = pemSource(tc.private_key(), cp + ".private_key");
      if (!key.ok()) return key.status();
      auto p = SecretManager::get().fileCertificate(*chain, *key);
      if (!p.ok()) return fieldError(cp, std::string(p.status().message()));
      factory->addCertificateProvider(*p);
    }
  } else {
    for (int i = 0; i < common.tls_certificate_sds_secret_configs_size(); ++i) {
      auto p = sdsProvider(common.tls_certificate_sds_secret_configs(i),
                           absl::StrCat(path, ".tls_certificate_sds_secret_configs[", i, "]"));
      if (!p.ok()) return p.status();
      factory->addCertificateProvider(*p);
    }
  }
  if (server && common.tls_certificates_size() == 0 && common.tls_certificate_sds_secret_configs_size() == 0) {
    return fieldError(path + ".tls_certificates", "a server needs a certificate (tls_certificates or tls_certificate_sds_secret_configs)");
  }
  if (validation_provider) factory->setValidationProvider(validation_provider);
  auto st = factory->start();
  if (!st.ok()) return fieldError(path, std::string(st.message()));
  return network::TransportSocketFactorySharedPtr(factory);
}

uint64_t hashOf(const google::protobuf::Message& m) {
  std::string bytes;
  m.SerializeToString(&bytes);
  return std::hash<std::string>{}(bytes);
}

absl::StatusOr<network::TransportSocketFactorySharedPtr> translateTlsUncached(const google::protobuf::Any& any,
                                                                              const std::string& path, bool server);

// Every xDS update translates the whole config again; a TLS context is only built anew when its config
// changed. Factories are shared by config bytes (their secrets and files are tracked by the providers).
absl::StatusOr<network::TransportSocketFactorySharedPtr> translateTls(const google::protobuf::Any& any, const std::string& path,
                                                                      bool server) {
  static std::mutex mu;
  static std::map<std::string, std::weak_ptr<const network::TransportSocketFactory>> cache;
  const std::string key = absl::StrCat(server ? "s:" : "c:", any.type_url(), "\n", any.value());
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(key);
    if (it != cache.end()) {
      if (auto f = it->second.lock()) return f;
    }
  }
  auto f = translateTlsUncached(any, path, server);
  if (!f.ok()) return f;
  std::lock_guard<std::mutex> lock(mu);
  static size_t sweep_at = 64;  // forget dead entries now and then, not on every insert
  if (cache.size() >= sweep_at) {
    std::erase_if(cache, [](const auto& kv) { return kv.second.expired(); });
    sweep_at = std::max<size_t>(64, cache.size() * 2);
  }
  cache[key] = *f;
  return f;
}

absl::StatusOr<network::TransportSocketFactorySharedPtr> translateTlsUncached(const google::protobuf::Any& any,
                                                                              const std::string& path, bool server) {
  if (any.type_url() == kUpstreamTlsType) {
    if (server) return fieldError(path, "a listener's filter chain takes a DownstreamTlsContext");
    tls_v3::UpstreamTlsContext u;
    if (!any.UnpackTo(&u)) return fieldError(path, "cannot decode UpstreamTlsContext");
    if (u.allow_renegotiation()) return fieldError(path + ".allow_renegotiation", "renegotiation is not supported");
    TlsSettings s;
    s.sni = u.sni();
    return buildFactory(u.common_tls_context(), path + ".common_tls_context", false, std::move(s), hashOf(u));
  }
  if (!server) return fieldError(path, "a cluster takes an UpstreamTlsContext");
  tls_v3::DownstreamTlsContext d;
  if (!any.UnpackTo(&d)) return fieldError(path, "cannot decode DownstreamTlsContext");
  TlsSettings s;
  s.require_client_certificate = d.has_require_client_certificate() && d.require_client_certificate().value();
  return buildFactory(d.common_tls_context(), path + ".common_tls_context", true, std::move(s), hashOf(d));
}

absl::StatusOr<SecretConstSharedPtr> translateSecret(const tls_v3::Secret& s, const std::string& path) {
  auto out = std::make_shared<Secret>();
  if (s.has_tls_certificate()) {
    const auto& tc = s.tls_certificate();
    auto chain = pemSource(tc.certificate_chain(), path + ".tls_certificate.certificate_chain");
    if (!chain.ok()) return chain.status();
    auto key = pemSource(tc.private_key(), path + ".tls_certificate.private_key");
    if (!key.ok()) return key.status();
    if (!chain->filename.empty() || !key->filename.empty()) {
      // A secret naming files: the file source watches them; the secret takes what it reads now.
      auto p = SecretManager::get().fileCertificate(*chain, *key);
      if (!p.ok()) return fieldError(path + ".tls_certificate", std::string(p.status().message()));
      return (*p)->current();
    }
    CertificatePair pair{chain->inline_data, key->inline_data, "sds:" + s.name()};
    auto st = checkCertificatePair(pair);
    if (!st.ok()) return fieldError(path + ".tls_certificate", std::string(st.message()));
    out->certificate = std::move(pair);
  } else if (s.has_validation_context()) {
    const auto& v = s.validation_context();
    ValidationSettings vs;
    auto st = validationRules(v, path + ".validation_context", &vs);
    if (!st.ok()) return st;
    if (!v.has_trusted_ca()) return fieldError(path + ".validation_context.trusted_ca", "is required");
    auto ca = pemSource(v.trusted_ca(), path + ".validation_context.trusted_ca");
    if (!ca.ok()) return ca.status();
    if (!ca->filename.empty()) {
      auto p = SecretManager::get().fileValidation(*ca);
      if (!p.ok()) return fieldError(path + ".validation_context.trusted_ca", std::string(p.status().message()));
      vs.ca_pem = (*p)->current()->validation->ca_pem;
      vs.ca_source = ca->filename;
    } else {
      vs.ca_pem = ca->inline_data;
      vs.ca_source = "sds:" + s.name();
      if (!certificateDetails(vs.ca_pem, vs.ca_source)) return fieldError(path + ".validation_context.trusted_ca", "holds no PEM certificate");
    }
    out->validation = std::move(vs);
  } else {
    return fieldError(path, "a secret needs tls_certificate or validation_context");
  }
  return SecretConstSharedPtr(out);
}

}  // namespace

absl::Status loadStaticSecret(const google::protobuf::Message& m, const std::string& path) {
  const auto& s = static_cast<const tls_v3::Secret&>(m);
  if (s.name().empty()) return fieldError(path + ".name", "is required");
  // The bootstrap is translated again on every xDS update: publish only what changed.
  static std::mutex mu;
  static std::map<std::string, std::string> seen;
  std::string bytes = s.SerializeAsString();
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = seen.find(s.name());
    if (it != seen.end() && it->second == bytes) return absl::OkStatus();
  }
  auto secret = translateSecret(s, path);
  if (!secret.ok()) return secret.status();
  SecretManager::get().named(s.name())->publish(*secret);
  std::lock_guard<std::mutex> lock(mu);
  seen[s.name()] = bytes;
  return absl::OkStatus();
}

absl::Status applySdsSecret(const google::protobuf::Message& m, const std::string& path) {
  const auto& s = static_cast<const tls_v3::Secret&>(m);
  if (s.name().empty()) return fieldError(path + ".name", "is required");
  auto secret = translateSecret(s, path);
  if (!secret.ok()) return secret.status();
  SecretManager::get().onSdsSecret(s.name(), *secret);
  return absl::OkStatus();
}

absl::Status checkSdsSecret(const google::protobuf::Message& m, const std::string& path) {
  const auto& s = static_cast<const tls_v3::Secret&>(m);
  if (s.name().empty()) return fieldError(path + ".name", "is required");
  return translateSecret(s, path).status();
}

void registerTransportSockets() {
  config::registerTransportSocket(kUpstreamTlsType, translateTls);
  config::registerTransportSocket(kDownstreamTlsType, translateTls);
  config::registerTransportSocket(kRawBufferType,
                                  [](const google::protobuf::Any&, const std::string&, bool)
                                      -> absl::StatusOr<network::TransportSocketFactorySharedPtr> { return nullptr; });
  config::registerSecretLoader(loadStaticSecret);
}

}  // namespace strait::certs
