#include "proxy/stats/stats.h"

#include <algorithm>
#include <cstdio>

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

uint32_t Store::create(const std::string& name, StatType type, bool hidden, uint32_t slots, bool scoped) {
  std::lock_guard<std::mutex> lock(lock_);
  auto it = by_name_.find(name);
  if (it != by_name_.end()) {
    StatInfo& info = infos_.at(it->second);
    if (scoped) {
      ++info.refs;
    } else {
      info.permanent = true;
    }
    return it->second;
  }
  uint32_t index;
  auto free_it = free_slots_.find(slots);
  if (free_it != free_slots_.end() && !free_it->second.empty()) {
    // A released stat's slots, zeroed when it was released.
    index = free_it->second.back();
    free_it->second.pop_back();
  } else {
    index = next_slot_;
    // A multi-slot stat never straddles a chunk boundary.
    if (index / Shard::kChunk != (index + slots - 1) / Shard::kChunk) index = (index / Shard::kChunk + 1) * Shard::kChunk;
    if ((index + slots - 1) / Shard::kChunk >= Shard::kMaxChunks) std::abort();
    for (auto& s : shards_) s->ensureChunk(index / Shard::kChunk);
    next_slot_ = index + slots;
  }
  slots_in_use_ += slots;
  auto named = by_name_.emplace(name, index).first;
  infos_.emplace(index, StatInfo{&named->first, type, hidden, slots, scoped ? 1u : 0u, !scoped});
  return index;
}

void Store::release(const std::vector<uint32_t>& indices) {
  std::lock_guard<std::mutex> lock(lock_);
  for (uint32_t index : indices) {
    auto it = infos_.find(index);
    if (it == infos_.end()) continue;
    StatInfo& info = it->second;
    if (info.refs > 0) --info.refs;
    if (info.refs > 0 || info.permanent) continue;
    // Nobody can write these slots any more (every handle's holder is gone): clear them for the next stat.
    for (auto& s : shards_) {
      for (uint32_t i = 0; i < info.slots; ++i) s->slot(index + i).store(0, std::memory_order_relaxed);
    }
    free_slots_[info.slots].push_back(index);
    slots_in_use_ -= info.slots;
    by_name_.erase(by_name_.find(*info.name));
    infos_.erase(it);
  }
}

size_t Store::statCount() const {
  std::lock_guard<std::mutex> lock(lock_);
  return by_name_.size();
}

uint32_t Store::slotHighWater() const {
  std::lock_guard<std::mutex> lock(lock_);
  return next_slot_;
}

uint32_t Store::slotsInUse() const {
  std::lock_guard<std::mutex> lock(lock_);
  return slots_in_use_;
}

Counter Store::counter(const std::string& name, bool hidden) {
  return Counter{create(name, StatType::Counter, hidden, 1, false)};
}
Gauge Store::gauge(const std::string& name, bool hidden) { return Gauge{create(name, StatType::Gauge, hidden, 1, false)}; }
Histogram Store::histogram(const std::string& name) {
  return Histogram{create(name, StatType::Histogram, false, kHistogramBuckets + 1, false)};
}

Histogram StatScope::histogram(const std::string& name) {
  return Histogram{hold(store_.create(name, StatType::Histogram, false, kHistogramBuckets + 1, true))};
}

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
    const StatInfo& info = infos_.at(index);
    if (info.hidden) continue;
    if (info.type == StatType::Histogram) {
      Value v{name, StatType::Histogram, 0, std::vector<int64_t>(kHistogramBuckets, 0), 0};
      for (uint32_t b = 0; b < kHistogramBuckets; ++b) {
        for (const auto& s : shards_) v.buckets[b] += s->read(index + b);
        v.value += v.buckets[b];
      }
      for (const auto& s : shards_) v.sum_us += s->read(index + kHistogramBuckets);
      out.push_back(std::move(v));
      continue;
    }
    int64_t sum = 0;
    for (const auto& s : shards_) sum += s->read(index);
    out.push_back(Value{name, info.type, sum, {}, 0});
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

std::string histogramSummary(const Store::Value& v) {
  if (v.value == 0) return "No recorded values";
  std::string out;
  for (double q : {0.5, 0.9, 0.99}) {
    int64_t target = static_cast<int64_t>(q * static_cast<double>(v.value) + 0.999999);
    int64_t seen = 0;
    uint32_t b = 0;
    for (; b < kHistogramBuckets; ++b) {
      seen += v.buckets[b];
      if (seen >= target) break;
    }
    char buf[64];
    if (b < kHistogramBuckets - 1) {
      std::snprintf(buf, sizeof(buf), "P%g(<=%gms) ", q * 100, kHistogramBounds[b]);
    } else {
      std::snprintf(buf, sizeof(buf), "P%g(>%gms) ", q * 100, kHistogramBounds[kHistogramBuckets - 2]);
    }
    out += buf;
  }
  char buf[96];
  std::snprintf(buf, sizeof(buf), "count=%lld sum=%.3fms", static_cast<long long>(v.value),
                static_cast<double>(v.sum_us) / 1000.0);
  return out + buf;
}

std::string renderPrometheus(const std::vector<Store::Value>& values) {
  struct Sample {
    std::string labels;
    int64_t value;
    const Store::Value* hist = nullptr;
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
    fam.samples.push_back(Sample{labels, v.value, v.type == StatType::Histogram ? &v : nullptr});
  }
  std::string out;
  for (const auto& [name, fam] : families) {
    const char* type = fam.type == StatType::Counter ? " counter\n" : fam.type == StatType::Gauge ? " gauge\n" : " histogram\n";
    out += "# TYPE " + name + type;
    for (const auto& s : fam.samples) {
      if (s.hist == nullptr) {
        out += name + s.labels + " " + std::to_string(s.value) + "\n";
        continue;
      }
      // Labels for buckets: the family's tag plus le.
      std::string inner = s.labels.empty() ? "" : s.labels.substr(1, s.labels.size() - 2) + ",";
      int64_t cumulative = 0;
      for (uint32_t b = 0; b < kHistogramBuckets; ++b) {
        cumulative += s.hist->buckets[b];
        char le[32];
        if (b < kHistogramBuckets - 1) {
          std::snprintf(le, sizeof(le), "%g", kHistogramBounds[b]);
        } else {
          std::snprintf(le, sizeof(le), "+Inf");
        }
        out += name + "_bucket{" + inner + "le=\"" + le + "\"} " + std::to_string(cumulative) + "\n";
      }
      char sum[64];
      std::snprintf(sum, sizeof(sum), "%.3f", static_cast<double>(s.hist->sum_us) / 1000.0);
      out += name + "_sum" + s.labels + " " + sum + "\n";
      out += name + "_count" + s.labels + " " + std::to_string(s.hist->value) + "\n";
    }
  }
  return out;
}

}  // namespace strait::stats
