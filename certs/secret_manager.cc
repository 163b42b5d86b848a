#include "certs/secret_manager.h"

#include <sys/stat.h>

#include <chrono>
#include <climits>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "proxy/common/json.h"
#include "proxy/common/log.h"

namespace strait::certs {

namespace {

bool readFile(const std::string& path, std::string* out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  std::ostringstream ss;
  ss << f.rdbuf();
  *out = ss.str();
  return true;
}

std::string rfc3339(std::time_t t) {
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

void jsonEscape(std::string& out, std::string_view s) { common::appendJsonString(out, s); }

void certJson(std::string& out, const CertificateDetails& d) {
  const std::time_t now = std::time(nullptr);
  out.append("{\"path\":");
  jsonEscape(out, d.path);
  out.append(",\"serial_number\":");
  jsonEscape(out, d.serial_number);
  out.append(",\"subject_alt_names\":[");
  bool first = true;
  for (const auto& u : d.uri_sans) {
    if (!first) out.push_back(',');
    first = false;
    out.append("{\"uri\":");
    jsonEscape(out, u);
    out.push_back('}');
  }
  for (const auto& n : d.dns_sans) {
    if (!first) out.push_back(',');
    first = false;
    out.append("{\"dns\":");
    jsonEscape(out, n);
    out.push_back('}');
  }
  out.append("],\"days_until_expiration\":\"");
  out.append(std::to_string(d.expiration_time > now ? (d.expiration_time - now) / 86400 : 0));
  out.append("\",\"seconds_until_expiration\":\"");
  out.append(std::to_string(d.expiration_time > now ? d.expiration_time - now : 0));
  out.append("\",\"valid_from\":\"");
  out.append(rfc3339(d.valid_from));
  out.append("\",\"expiration_time\":\"");
  out.append(rfc3339(d.expiration_time));
  out.append("\"}");
}

}  // namespace

SecretConstSharedPtr SecretProvider::current() const {
  std::lock_guard<std::mutex> lock(mu_);
  return current_;
}

void SecretProvider::subscribe(std::weak_ptr<SecretSubscriber> s) {
  std::lock_guard<std::mutex> lock(mu_);
  // Forget subscribers that are gone while we are here.
  std::erase_if(subscribers_, [](const std::weak_ptr<SecretSubscriber>& w) { return w.expired(); });
  subscribers_.push_back(std::move(s));
}

bool SecretProvider::hasSubscribers() const {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& w : subscribers_) {
    if (!w.expired()) return true;
  }
  return false;
}

void SecretProvider::publish(SecretConstSharedPtr secret) {
  std::vector<std::shared_ptr<SecretSubscriber>> live;
  {
    std::lock_guard<std::mutex> lock(mu_);
    current_ = std::move(secret);
    for (auto& w : subscribers_) {
      if (auto s = w.lock()) live.push_back(std::move(s));
    }
  }
  updates_.fetch_add(1, std::memory_order_relaxed);
  for (auto& s : live) s->onSecretUpdate();
}

std::shared_ptr<FileSecretProvider> FileSecretProvider::certificate(PemSource chain, PemSource key) {
  std::string name = absl::StrCat(chain.describe(), "+", key.describe());
  return std::shared_ptr<FileSecretProvider>(new FileSecretProvider(std::move(name), true, std::move(chain), std::move(key)));
}

std::shared_ptr<FileSecretProvider> FileSecretProvider::validation(PemSource ca) {
  std::string name = ca.describe();
  return std::shared_ptr<FileSecretProvider>(new FileSecretProvider(std::move(name), false, std::move(ca), PemSource{}));
}

FileSecretProvider::Stamp FileSecretProvider::stampOf(const std::string& path) {
  Stamp s;
  if (path.empty()) return s;
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return s;  // follows symlinks: a swapped ..data link changes the inode
  s.dev = st.st_dev;
  s.ino = st.st_ino;
  s.mtime_ns = static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  s.size = st.st_size;
  return s;
}

absl::Status FileSecretProvider::load() {
  std::lock_guard<std::mutex> lock(load_mu_);
  Stamp cs = stampOf(chain_.filename), ks = stampOf(key_.filename);
  if (loaded_ && cs == chain_stamp_ && ks == key_stamp_) return absl::OkStatus();
  std::string chain_text = chain_.inline_data, key_text = key_.inline_data;
  if (!chain_.filename.empty() && !readFile(chain_.filename, &chain_text)) {
    return absl::NotFoundError(absl::StrCat("cannot read '", chain_.filename, "'"));
  }
  if (is_cert_ && !key_.filename.empty() && !readFile(key_.filename, &key_text)) {
    return absl::NotFoundError(absl::StrCat("cannot read '", key_.filename, "'"));
  }
  // Stamps are taken before reading: a write that lands after the read shows as a change next poll.
  chain_stamp_ = cs;
  key_stamp_ = ks;
  if (loaded_ && chain_text == chain_text_ && key_text == key_text_) return absl::OkStatus();
  auto secret = std::make_shared<Secret>();
  if (is_cert_) {
    CertificatePair pair{chain_text, key_text, chain_.describe()};
    absl::Status st = checkCertificatePair(pair);
    if (!st.ok()) {
      if (has_counter_) stats::inc(rotation_failed_);
      if (loaded_) LOG_WARN("certificate %s: rotation not applied, the old pair stays: %s", name().c_str(), st.ToString().c_str());
      return st;
    }
    secret->certificate = std::move(pair);
  } else {
    ValidationSettings v;
    v.ca_pem = chain_text;
    v.ca_source = chain_.describe();
    if (!certificateDetails(chain_text, v.ca_source)) {
      if (has_counter_) stats::inc(rotation_failed_);
      return absl::InvalidArgumentError(absl::StrCat("'", chain_.describe(), "' holds no PEM certificate"));
    }
    secret->validation = std::move(v);
  }
  const bool rotated = loaded_;
  chain_text_ = std::move(chain_text);
  key_text_ = std::move(key_text);
  loaded_ = true;
  if (rotated) LOG_INFO("certificate source %s changed: new handshakes use it", name().c_str());
  publish(std::move(secret));
  return absl::OkStatus();
}

SecretManager& SecretManager::get() {
  static SecretManager* m = new SecretManager();  // lives for the process (the watcher thread uses it)
  return *m;
}

void SecretManager::setStore(stats::Store* store) {
  std::lock_guard<std::mutex> lock(mu_);
  store_ = store;
}

SecretProviderSharedPtr SecretManager::named(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& p = named_[name];
  if (!p) p = std::make_shared<SecretProvider>(name);
  return p;
}

void SecretManager::onSdsSecret(const std::string& name, SecretConstSharedPtr secret) { named(name)->publish(std::move(secret)); }

std::vector<std::string> SecretManager::sdsNames(const std::string& source) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> out;
  for (const auto& [name, p] : named_) {
    if (p->isSds() && p->sdsSource() == source && p->hasSubscribers()) out.push_back(name);
  }
  return out;
}

std::vector<std::string> SecretManager::sdsSources() {
  std::lock_guard<std::mutex> lock(mu_);
  std::set<std::string> out;
  for (const auto& [name, p] : named_) {
    if (p->isSds() && !p->sdsSource().empty() && p->hasSubscribers()) out.insert(p->sdsSource());
  }
  return {out.begin(), out.end()};
}

absl::StatusOr<std::shared_ptr<FileSecretProvider>> SecretManager::fileCertificate(const PemSource& chain,
                                                                                    const PemSource& key) {
  auto fresh = FileSecretProvider::certificate(chain, key);
  std::shared_ptr<FileSecretProvider> p;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto& slot = files_["cert:" + fresh->name() + (chain.filename.empty() ? chain.inline_data + key.inline_data : "")];
    p = slot.lock();
    if (!p) {
      p = fresh;
      slot = p;
      if (store_ != nullptr) p->setRotationFailedCounter(store_->counter(absl::StrCat("sds.", chain.describe(), ".key_rotation_failed")));
    }
  }
  auto st = p->load();
  if (!st.ok() && !p->current()) return st;
  if (p->watched()) ensureWatcher();
  return p;
}

absl::StatusOr<std::shared_ptr<FileSecretProvider>> SecretManager::fileValidation(const PemSource& ca) {
  auto fresh = FileSecretProvider::validation(ca);
  std::shared_ptr<FileSecretProvider> p;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto& slot = files_["ca:" + fresh->name() + (ca.filename.empty() ? ca.inline_data : "")];
    p = slot.lock();
    if (!p) {
      p = fresh;
      slot = p;
      if (store_ != nullptr) p->setRotationFailedCounter(store_->counter(absl::StrCat("sds.", ca.describe(), ".key_rotation_failed")));
    }
  }
  auto st = p->load();
  if (!st.ok() && !p->current()) return st;
  if (p->watched()) ensureWatcher();
  return p;
}

void SecretManager::pollNow() {
  std::vector<std::shared_ptr<FileSecretProvider>> live;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = files_.begin(); it != files_.end();) {
      if (auto p = it->second.lock()) {
        if (p->watched()) live.push_back(std::move(p));
        ++it;
      } else {
        it = files_.erase(it);
      }
    }
  }
  for (auto& p : live) (void)p->load();
  // The expiry gauges follow the certificates in use.
  stats::Store* store = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    store = store_;
  }
  if (store != nullptr) {
    int64_t secs = secondsUntilFirstExpiry();
    if (secs != INT64_MAX) {
      stats::set(*store, store->gauge("server.seconds_until_first_cert_expiring"), secs);
      stats::set(*store, store->gauge("server.days_until_first_cert_expiring"), secs / 86400);
    }
    // One gauge per certificate source (file path or SDS secret name): when it expires, as a Unix time
    // (Envoy's expiration_unix_time_seconds), so an alert can watch every identity in use.
    std::map<std::string, int64_t> expiry;
    for (const auto& src : liveContexts()) {
      auto ctx = src->currentContext();
      if (!ctx) continue;
      for (const auto& d : ctx->certDetails()) expiry[d.path] = d.expiration_time;
      if (ctx->caDetails()) expiry[ctx->caDetails()->path] = ctx->caDetails()->expiration_time;
    }
    for (const auto& [path, t] : expiry) {
      std::string name = path;
      for (char& c : name) {
        if (c == ':' || c == '/' || c == ' ') c = '_';
      }
      stats::set(*store, store->gauge("ssl.certificate." + name + ".expiration_unix_time_seconds"), t);
    }
  }
}

void SecretManager::ensureWatcher() {
  std::lock_guard<std::mutex> lock(mu_);
  if (watcher_.joinable() || stopping_) return;
  watcher_ = std::thread([this] { watchLoop(); });
}

void SecretManager::watchLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  // Counters written here (rotation failures) go to the shard of the xDS thread: both only write there on
  // rare events (a failed rotation, an update), and a lost increment in a race is the worst case.
  if (store_ != nullptr) stats::setThreadShard(&store_->shard(store_->shardCount() - 1));
  while (!stopping_) {
    cv_.wait_for(lock, std::chrono::milliseconds(poll_ms_.load()));
    if (stopping_) break;
    lock.unlock();
    pollNow();
    lock.lock();
  }
}

void SecretManager::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (watcher_.joinable()) watcher_.join();
}

void SecretManager::track(std::weak_ptr<const ContextSource> source) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    std::erase_if(contexts_, [](const std::weak_ptr<const ContextSource>& w) { return w.expired(); });
    contexts_.push_back(std::move(source));
  }
  // The watcher also keeps the expiry gauges current, whatever the certificates' source.
  ensureWatcher();
}

std::vector<std::shared_ptr<const SecretManager::ContextSource>> SecretManager::liveContexts() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::shared_ptr<const ContextSource>> out;
  for (auto& w : contexts_) {
    if (auto s = w.lock()) out.push_back(std::move(s));
  }
  return out;
}

int64_t SecretManager::secondsUntilFirstExpiry() {
  int64_t best = INT64_MAX;
  const std::time_t now = std::time(nullptr);
  for (const auto& src : liveContexts()) {
    auto ctx = src->currentContext();
    if (!ctx) continue;
    for (const auto& d : ctx->certDetails()) best = std::min<int64_t>(best, d.expiration_time - now);
    if (ctx->caDetails()) best = std::min<int64_t>(best, ctx->caDetails()->expiration_time - now);
  }
  return best;
}

std::string SecretManager::certsJson() {
  std::string out = "{\"certificates\":[";
  bool first = true;
  for (const auto& src : liveContexts()) {
    auto ctx = src->currentContext();
    if (!ctx) continue;
    if (!first) out.push_back(',');
    first = false;
    out.append("{\"ca_cert\":[");
    if (ctx->caDetails()) certJson(out, *ctx->caDetails());
    out.append("],\"cert_chain\":[");
    bool f2 = true;
    for (const auto& d : ctx->certDetails()) {
      if (!f2) out.push_back(',');
      f2 = false;
      certJson(out, d);
    }
    out.append("]}");
  }
  out.append("]}\n");
  return out;
}

}  // namespace strait::certs
