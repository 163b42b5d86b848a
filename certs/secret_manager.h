#pragma once

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "certs/tls_context.h"
#include "proxy/stats/stats.h"

namespace strait::certs {

// A named TLS secret (Envoy's Secret resource): a certificate with its key, or a validation context.
struct Secret {
  std::optional<CertificatePair> certificate;
  std::optional<ValidationSettings> validation;
};
using SecretConstSharedPtr = std::shared_ptr<const Secret>;

// Hears that a secret it uses changed (a rotation). Called on the thread that saw the change (the file
// watcher, the xDS thread); must not block.
class SecretSubscriber {
 public:
  virtual ~SecretSubscriber() = default;
  virtual void onSecretUpdate() = 0;
};

// Where a secret comes from: inline config, files (watched), or SDS. Thread-safe.
class SecretProvider {
 public:
  explicit SecretProvider(std::string name) : name_(std::move(name)) {}
  virtual ~SecretProvider() = default;
  const std::string& name() const { return name_; }
  // Null until the secret first arrives (SDS warming).
  SecretConstSharedPtr current() const;
  void subscribe(std::weak_ptr<SecretSubscriber> s);
  // Replaces the secret and tells every live subscriber.
  void publish(SecretConstSharedPtr secret);
  uint64_t updates() const { return updates_.load(std::memory_order_relaxed); }
  // Named in config with an sds_config (fetched over xDS), as opposed to a bootstrap static secret.
  // `source`: empty for ADS, else the cluster whose SDS stream serves it (Istio's "sds-grpc").
  void markSds(const std::string& source) {
    std::lock_guard<std::mutex> lock(mu_);
    sds_ = true;
    source_ = source;
  }
  bool isSds() const {
    std::lock_guard<std::mutex> lock(mu_);
    return sds_;
  }
  std::string sdsSource() const {
    std::lock_guard<std::mutex> lock(mu_);
    return source_;
  }
  bool hasSubscribers() const;

 private:
  std::string name_;
  mutable std::mutex mu_;
  SecretConstSharedPtr current_;
  std::vector<std::weak_ptr<SecretSubscriber>> subscribers_;
  std::atomic<uint64_t> updates_{0};
  bool sds_ = false;
  std::string source_;
};
using SecretProviderSharedPtr = std::shared_ptr<SecretProvider>;

// One piece of PEM data: a file (watched) or inline text.
struct PemSource {
  std::string filename;  // empty: `inline_data`
  std::string inline_data;
  std::string describe() const { return filename.empty() ? std::string("<inline>") : filename; }
};

// Files behind a secret, re-read when any of them changes (content, inode or mtime: covers in-place
// writes, rename-over and Kubernetes' symlink swap). A certificate pair is only published once both
// halves match; otherwise the old pair stays and `sds.<name>.key_rotation_failed` moves.
class FileSecretProvider : public SecretProvider {
 public:
  // kind: a certificate pair (chain + key) or a validation context (ca).
  static std::shared_ptr<FileSecretProvider> certificate(PemSource chain, PemSource key);
  static std::shared_ptr<FileSecretProvider> validation(PemSource ca);
  // Reads the files; publishes if they changed and are valid. Returns the first load's error.
  absl::Status load();
  bool watched() const { return !chain_.filename.empty() || !key_.filename.empty(); }
  void setRotationFailedCounter(stats::Counter c) { rotation_failed_ = c; has_counter_ = true; }

 private:
  FileSecretProvider(std::string name, bool is_cert, PemSource chain, PemSource key)
      : SecretProvider(std::move(name)), is_cert_(is_cert), chain_(std::move(chain)), key_(std::move(key)) {}
  struct Stamp {
    dev_t dev = 0;
    ino_t ino = 0;
    int64_t mtime_ns = 0;
    int64_t size = -1;
    bool operator==(const Stamp&) const = default;
  };
  static Stamp stampOf(const std::string& path);
  bool is_cert_;
  PemSource chain_;  // the chain, or the CA bundle
  PemSource key_;
  Stamp chain_stamp_, key_stamp_;
  std::string chain_text_, key_text_;
  bool loaded_ = false;
  bool has_counter_ = false;
  std::mutex load_mu_;  // the watcher and config translation may both load
  stats::Counter rotation_failed_{};
  friend class SecretManager;
};

// Process-wide registry of secrets: named SDS/static secrets, file sources (deduplicated by path and
// polled by one watcher thread), and the live TLS contexts for /certs and the expiry gauges.
class SecretManager {
 public:
  static SecretManager& get();

  // Where stats go (sds.<name>.*, server.*_until_first_cert_expiring). Call once at start.
  void setStore(stats::Store* store);
  // A named secret (SDS or bootstrap static_resources.secrets); created empty on first use.
  SecretProviderSharedPtr named(const std::string& name);
  // An SDS update / removal for `name` (from the xDS applier).
  void onSdsSecret(const std::string& name, SecretConstSharedPtr secret);
  // Names of SDS secrets that some live TLS context waits for or uses (the SDS subscription).
  std::vector<std::string> sdsNames(const std::string& source = "");
  // The SDS sources (cluster names) other than ADS that live contexts use.
  std::vector<std::string> sdsSources();
  // File sources, shared by everyone naming the same files. The first load happens here.
  absl::StatusOr<std::shared_ptr<FileSecretProvider>> fileCertificate(const PemSource& chain, const PemSource& key);
  absl::StatusOr<std::shared_ptr<FileSecretProvider>> fileValidation(const PemSource& ca);
  // Polls every watched file now (tests; the watcher does it every interval).
  void pollNow();
  void setPollInterval(uint32_t ms) { poll_ms_ = ms; }

  // Live contexts, for /certs: each returns its current SslContext (null if none yet).
  class ContextSource {
   public:
    virtual ~ContextSource() = default;
    virtual SslContextConstSharedPtr currentContext() const = 0;
    virtual bool ready() const = 0;
    virtual bool serverSide() const = 0;
  };
  void track(std::weak_ptr<const ContextSource> source);
  std::vector<std::shared_ptr<const ContextSource>> liveContexts();
  // Envoy's /certs JSON.
  std::string certsJson();
  // Seconds until the first certificate in use expires (INT64_MAX with none).
  int64_t secondsUntilFirstExpiry();
  void stop();

 private:
  SecretManager() = default;
  void ensureWatcher();
  void watchLoop();
  std::mutex mu_;
  std::map<std::string, SecretProviderSharedPtr> named_;
  std::map<std::string, std::weak_ptr<FileSecretProvider>> files_;
  std::vector<std::weak_ptr<const ContextSource>> contexts_;
  stats::Store* store_ = nullptr;
  std::thread watcher_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::atomic<uint32_t> poll_ms_{500};
};

}  // namespace strait::certs
