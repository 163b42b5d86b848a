#include "proxy/stats/stats.h"

#include <algorithm>

namespace strait::stats {

namespace {
thread_local Shard* t_shard = nullptr;
}

void setThreadShard(Shard* shard) { t_shard = shard; }
Shard* threadShard() { return t_shard; }

Shard::Shard() : chunks_(new std::atomic<std::atomic<int64_t>*>[kMaxChunks]) {
  for (uint32_t i = 0; i < kMaxChunks; ++i) chunks_[i].store(nullptr, std::memory_order_relaxed);
}

Shard::~Shard() {
  for (uint32_t i = 0; i < kMaxChunks; ++i) delete[] chunks_[i].load(std::memory_order_relaxed);
}

void Shard::ensureChunk(uint32_t chunk) {
  if (chunks_[chunk].load(std::memory_order_acquire) != nullptr) return;
  auto* c = new std::atomic<int64_t>[kChunk];
  for (uint32_t i = 0; i < kChunk; ++i) c[i].store(0, std::memory_order_relaxed);
  chunks_[chunk].store(c, std::memory_order_release);
}

int64_t Shard::read(uint32_t index) const {
  auto* c = chunks_[index / kChunk].load(std::memory_order_acquire);
  return c == nullptr ? 0 : c[index % kChunk].load(std::memory_order_relaxed);
}

Store::Store(uint32_t shards) {
  for (uint32_t i = 0; i < shards; ++i) shards_.push_back(std::make_unique<Shard>());
}

uint32_t Store::create(const std::string& name, StatType type, bool hidden) {
  std::lock_guard<std::mutex> lock(lock_);
  auto it = by_name_.find(name);
  if (it != by_name_.end()) return it->second;
  uint32_t index = static_cast<uint32_t>(infos_.size());
  if (index / Shard::kChunk >= Shard::kMaxChunks) std::abort();
  for (auto& s : shards_) s->ensureChunk(index / Shard::kChunk);
  infos_.push_back(StatInfo{name, type, hidden});
  by_name_.emplace(name, index);
  return index;
}

Counter Store::counter(const std::string& name, bool hidden) { return Counter{create(name, StatType::Counter, hidden)}; }
Gauge Store::gauge(const std::string& name, bool hidden) { return Gauge{create(name, StatType::Gauge, hidden)}; }

int64_t Store::sum(uint32_t index) const {
  int64_t total = 0;
  for (const auto& s : shards_) total += s->read(index);
  return total;
}

std::vector<Store::Value> Store::snapshot() const {
  std::lock_guard<std::mutex> lock(lock_);
  std::vector<Value> out;
  out.reserve(infos_.size());
  for (const auto& [name, index] : by_name_) {
    if (infos_[index].hidden) continue;
    int64_t sum = 0;
    for (const auto& s : shards_) sum += s->read(index);
    out.push_back(Value{name, infos_[index].type, sum});
  }
  return out;
}

int64_t Store::value(const std::string& name) const {
  std::lock_guard<std::mutex> lock(lock_);
  auto it = by_name_.find(name);
  if (it == by_name_.end()) return 0;
  int64_t sum = 0;
  for (const auto& s : shards_) sum += s->read(it->second);
  return sum;
}

void set(Store& store, Gauge g, int64_t value) {
  // Shard 0 holds the value; other shards never write this gauge.
  store.shard(0).slot(g.index).store(value, std::memory_order_relaxed);
}

namespace {

struct TagRule {
  const char* prefix;  // with trailing dot
  const char* tag;
};
// Envoy's default tag extractors for the families Strait emits.
constexpr TagRule kRules[] = {
    {"cluster.", "envoy_cluster_name"},
    {"listener.", "envoy_listener_address"},
    {"http.", "envoy_http_conn_manager_prefix"},
    {"tcp.", "envoy_tcp_prefix"},
};

std::string sanitize(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
    out.push_back(ok ? c : '_');
  }
  return out;
}

std::string escapeLabel(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '\\' || c == '"') out.push_back('\\');
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out.push_back(c);
  }
  return out;
}

}  // namespace

std::string renderPrometheus(const std::vector<Store::Value>& values) {
  struct Sample {
    std::string labels;
    int64_t value;
  };
  struct Family {
    StatType type;
    std::vector<Sample> samples;
  };
  std::map<std::string, Family> families;
  for (const auto& v : values) {
    std::string metric;
    std::string labels;
    for (const auto& rule : kRules) {
      std::string_view name(v.name);
      std::string_view prefix(rule.prefix);
      if (name.substr(0, prefix.size()) != prefix) continue;
      // The tag value runs up to the last dot (cluster names may contain dots).
      size_t last = name.rfind('.');
      if (last == std::string_view::npos || last < prefix.size()) break;
      std::string value(name.substr(prefix.size(), last - prefix.size()));
      metric = std::string(prefix.substr(0, prefix.size() - 1)) + "_" + std::string(name.substr(last + 1));
      labels = std::string("{") + rule.tag + "=\"" + escapeLabel(value) + "\"}";
      break;
    }
    if (metric.empty()) metric = v.name;
    std::string full = "envoy_" + sanitize(metric);
    auto& fam = families[full];
    fam.type = v.type;
    fam.samples.push_back(Sample{labels, v.value});
  }
  std::string out;
  for (const auto& [name, fam] : families) {
    out += "# TYPE " + name + (fam.type == StatType::Counter ? " counter\n" : " gauge\n");
    for (const auto& s : fam.samples) {
      out += name + s.labels + " " + std::to_string(s.value) + "\n";
    }
  }
  return out;
}

}  // namespace strait::stats
