#include "proxy/stats/stats.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "proxy/stats/tag_extraction.h"

namespace strait::stats {

namespace {
thread_local Shard* t_shard = nullptr;
}

void setThreadShard(Shard* shard) { t_shard = shard; }
Shard* threadShard() { return t_shard; }

namespace {

// Open addressing over {hash, id} slots (power-of-two capacity, linear probing, load at most 3/4,
// backward-shift deletion, shrinking when a quarter full), shared by the symbol table and the store.
constexpr uint32_t kNoId = UINT32_MAX;

template <class Slot>
void openResize(std::vector<Slot>& index, size_t capacity) {
  std::vector<Slot> old = std::move(index);
  index.assign(capacity, Slot{0, kNoId});
  index.shrink_to_fit();
  const size_t mask = capacity - 1;
  for (const Slot& s : old) {
    if (s.id == kNoId) continue;
    size_t i = s.hash & mask;
    while (index[i].id != kNoId) i = (i + 1) & mask;
    index[i] = s;
  }
}

template <class Slot>
void openInsert(std::vector<Slot>& index, size_t& size, uint32_t hash, uint32_t id) {
  if ((size + 1) * 4 > index.size() * 3) openResize(index, index.empty() ? 16 : index.size() * 2);
  const size_t mask = index.size() - 1;
  size_t i = hash & mask;
  while (index[i].id != kNoId) i = (i + 1) & mask;
  index[i] = Slot{hash, id};
  ++size;
}

template <class Slot>
void openErase(std::vector<Slot>& index, size_t& size, uint32_t hash, uint32_t id) {
  if (index.empty()) return;
  const size_t mask = index.size() - 1;
  size_t i = hash & mask;
  while (index[i].id != id) {
    if (index[i].id == kNoId) return;  // not there
    i = (i + 1) & mask;
  }
  size_t j = i;
  for (;;) {
    j = (j + 1) & mask;
    if (index[j].id == kNoId) break;
    const size_t home = index[j].hash & mask;
    // Slot j may move back to the hole at i unless its home lies cyclically in (i, j].
    const bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
    if (!stays) {
      index[i] = index[j];
      i = j;
    }
  }
  index[i] = Slot{0, kNoId};
  --size;
  if (index.size() > 16 && size * 8 < index.size()) openResize(index, index.size() / 2);
}

template <class Slot, class Eq>
uint32_t openFind(const std::vector<Slot>& index, uint32_t hash, Eq eq) {
  if (index.empty()) return kNoId;
  const size_t mask = index.size() - 1;
  for (size_t i = hash & mask;; i = (i + 1) & mask) {
    const Slot& s = index[i];
    if (s.id == kNoId) return kNoId;
    if (s.hash == hash && eq(s.id)) return s.id;
  }
}

uint32_t textHash(std::string_view text) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a, folded
  for (unsigned char c : text) h = (h ^ c) * 1099511628211ull;
  return static_cast<uint32_t>(h ^ (h >> 32));
}

// Takes the lowest free id that is still free and in range (the list may hold stale ids), else kNoId.
template <class IsFree>
uint32_t popFree(std::vector<uint32_t>& free_ids, size_t end, IsFree is_free) {
  while (!free_ids.empty()) {
    std::pop_heap(free_ids.begin(), free_ids.end(), std::greater<uint32_t>());
    const uint32_t id = free_ids.back();
    free_ids.pop_back();
    if (id < end && is_free(id)) return id;
  }
  return kNoId;
}

void pushFree(std::vector<uint32_t>& free_ids, uint32_t id) {
  free_ids.push_back(id);
  std::push_heap(free_ids.begin(), free_ids.end(), std::greater<uint32_t>());
}

// After a release: drop trailing free elements, and the list's stale ids, so that memory follows the
// live count (a mesh that shrinks gives its stats' bookkeeping back).
template <class T, class IsFree>
void trimTail(std::vector<T>& items, std::vector<uint32_t>& free_ids, size_t live, IsFree is_free) {
  size_t n = items.size();
  while (n > 0 && is_free(static_cast<uint32_t>(n - 1))) --n;
  if (n == items.size()) return;
  items.resize(n);
  if (items.capacity() > 64 && items.size() * 4 < items.capacity()) items.shrink_to_fit();
  if (free_ids.size() > 2 * (items.size() - live) + 64) {
    std::vector<uint32_t> fresh;
    for (uint32_t i = 0; i < items.size(); ++i) {
      if (is_free(i)) fresh.push_back(i);
    }
    std::make_heap(fresh.begin(), fresh.end(), std::greater<uint32_t>());
    free_ids.swap(fresh);
    free_ids.shrink_to_fit();
  }
}


// Whether shard pages have been written (present or swapped: /proc/self/pagemap bits 63 and 62). Reading
// a page that was never written would make it resident (this kernel maps no zero page on reads), so the
// scrape and the slot clearing read only pages that exist and take the others as zeros. Without
// /proc, every page counts as written (correct values, only the memory is lost).
int pagemapFd() {
  static const int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  return fd;
}

// `pages` consecutive pages from the one holding `first`: written[i] for each.
void writtenPages(const void* first, size_t pages, std::vector<bool>& written) {
  written.assign(pages, true);
  const int fd = pagemapFd();
  if (fd < 0 || pages == 0) return;
  std::vector<uint64_t> entries(pages);
  const off_t off = static_cast<off_t>(reinterpret_cast<uintptr_t>(first) / 4096 * sizeof(uint64_t));
  const ssize_t want = static_cast<ssize_t>(pages * sizeof(uint64_t));
  if (pread(fd, entries.data(), static_cast<size_t>(want), off) != want) return;
  for (size_t i = 0; i < pages; ++i) written[i] = (entries[i] & (3ull << 62)) != 0;
}

bool pageWritten(const void* addr) {
  std::vector<bool> w;
  writtenPages(addr, 1, w);
  return w[0];
}

// During one Store::release(): what pageWritten() said of each shard page, so that releasing a cluster's
// stats asks /proc once per page, not once per stat (a removal of 10,000 clusters releases ~600,000).
struct ReleaseMemo {
  bool active = false;
  std::unordered_map<uintptr_t, bool> pages;
};
thread_local ReleaseMemo t_release_memo;

bool pageWrittenMemo(const void* addr) {
  if (!t_release_memo.active) return pageWritten(addr);
  const uintptr_t page = reinterpret_cast<uintptr_t>(addr) & ~uintptr_t{4095};
  auto [it, fresh] = t_release_memo.pages.try_emplace(page, false);
  if (fresh) it->second = pageWritten(addr);
  return it->second;
}

}  // namespace

Shard::Shard() {
  const size_t bytes = size_t{kMaxSlots} * sizeof(std::atomic<int64_t>);
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) std::abort();
#ifdef MADV_NOHUGEPAGE
  madvise(p, bytes, MADV_NOHUGEPAGE);  // a 2 MiB page per touched stat would defeat the point
#endif
  slots_ = static_cast<std::atomic<int64_t>*>(p);
}

Shard::~Shard() { munmap(slots_, size_t{kMaxSlots} * sizeof(std::atomic<int64_t>)); }

void Shard::clear(uint32_t index, uint32_t n) {
  if (!pageWrittenMemo(&slots_[index])) return;  // reads as zeros; reading it would materialise it
  for (uint32_t i = 0; i < n; ++i) {
    if (slots_[index + i].load(std::memory_order_relaxed) != 0) slots_[index + i].store(0, std::memory_order_relaxed);
  }
}

void Shard::discardPages(uint32_t first_page, uint32_t pages) {
  // The pages read as zeros again and stop counting in RSS.
  madvise(reinterpret_cast<char*>(slots_) + size_t{first_page} * 4096, size_t{pages} * 4096, MADV_DONTNEED);
}

uint32_t SymbolTable::find(std::string_view text) const {
  return openFind(index_, textHash(text), [&](uint32_t id) { return syms_[id].text == text; });
}

uint32_t SymbolTable::intern(std::string_view text) {
  const uint32_t hash = textHash(text);
  uint32_t id = openFind(index_, hash, [&](uint32_t i) { return syms_[i].text == text; });
  if (id != kNone) {
    ++syms_[id].refs;
    return id;
  }
  id = popFree(free_, syms_.size(), [&](uint32_t i) { return syms_[i].refs == 0; });
  if (id == kNoId) {
    id = static_cast<uint32_t>(syms_.size());
    syms_.emplace_back();
  }
  syms_[id].text.assign(text.data(), text.size());
  syms_[id].refs = 1;
  ++live_;
  indexInsert(hash, id);
  return id;
}

void SymbolTable::release(uint32_t id) {
  Sym& s = syms_[id];
  if (--s.refs > 0) return;
  indexErase(textHash(s.text), id);
  std::string().swap(s.text);
  --live_;
  pushFree(free_, id);
  trimTail(syms_, free_, live_, [&](uint32_t i) { return syms_[i].refs == 0; });
}

size_t SymbolTable::bytes() const {
  size_t b = syms_.capacity() * sizeof(Sym) + free_.capacity() * sizeof(uint32_t) + index_.capacity() * sizeof(Slot);
  for (const auto& s : syms_) {
    if (s.text.capacity() > 15) b += s.text.capacity() + 1;
  }
  return b;
}

void SymbolTable::indexInsert(uint32_t hash, uint32_t id) { openInsert(index_, index_size_, hash, id); }
void SymbolTable::indexErase(uint32_t hash, uint32_t id) { openErase(index_, index_size_, hash, id); }
void SymbolTable::indexResize(size_t capacity) { openResize(index_, capacity); }

Store::Store(uint32_t shards) {
  for (uint32_t i = 0; i < shards; ++i) shards_.push_back(std::make_unique<Shard>());
}

Store::~Store() = default;

uint32_t StatBlock::add(std::string leaf, StatType type, uint32_t slots) {
  const uint32_t offset = slots_;
  by_name_.emplace(leaf, static_cast<uint32_t>(leaves_.size()));
  leaves_.push_back(Leaf{std::move(leaf), type, offset});
  slots_ += slots;
  return offset;
}

uint32_t StatBlock::histogram(std::string leaf) {
  return add(std::move(leaf), StatType::Histogram, kHistogramBuckets + 1);
}

const StatBlock::Leaf* StatBlock::find(std::string_view leaf) const {
  auto it = by_name_.find(leaf);
  return it == by_name_.end() ? nullptr : &leaves_[it->second];
}

void Store::indexInsert(uint32_t hash, uint32_t id) { openInsert(index_, index_size_, hash, id); }
void Store::indexErase(uint32_t hash, uint32_t id) { openErase(index_, index_size_, hash, id); }
void Store::indexResize(size_t capacity) { openResize(index_, capacity); }

uint32_t Store::entryHash(uint32_t prefix, uint32_t leaf) {
  uint64_t k = (uint64_t{prefix} << 32 | leaf) * 0x9E3779B97F4A7C15ull;
  return static_cast<uint32_t>(k >> 32);
}

uint32_t Store::findEntry(uint32_t prefix, uint32_t leaf) const {
  return openFind(index_, entryHash(prefix, leaf),
                  [&](uint32_t id) { return entries_[id].prefix == prefix && entries_[id].leaf == leaf; });
}

namespace {
// "cluster.a.upstream_rq_total" -> "cluster.a" + "upstream_rq_total"; a name without a dot has an empty
// prefix.
std::pair<std::string_view, std::string_view> splitName(std::string_view name) {
  const size_t dot = name.rfind('.');
  if (dot == std::string_view::npos) return {std::string_view(), name};
  return {name.substr(0, dot), name.substr(dot + 1)};
}
}  // namespace

std::string Store::nameOf(const Entry& e) const {
  const std::string& p = symbols_.text(e.prefix);
  const std::string& l = symbols_.text(e.leaf);
  std::string out;
  if (p.empty()) {
    // A dot-less name, or one that starts with a dot (its prefix is empty too): keep it as given.
    out.reserve(l.size() + 1);
    if ((e.flags & kLeadingDot) != 0) out.push_back('.');
    out += l;
    return out;
  }
  out.reserve(p.size() + 1 + l.size());
  out += p;
  out.push_back('.');
  out += l;
  return out;
}

uint32_t Store::allocSlots(uint32_t slots) {
  const uint32_t units = Shard::kSlotsPerPage / slots;
  if (units == 0) std::abort();
  auto& partial = partial_[slots];
  uint32_t pg = kNoId;
  while (!partial.empty()) {
    const uint32_t cand = partial.back();
    if (cand < pages_.size() && pages_[cand].slots == slots && pages_[cand].used < units) {
      pg = cand;
      break;
    }
    partial.pop_back();
  }
  if (pg == kNoId) {
    pg = popFree(free_pages_, pages_.size(), [&](uint32_t i) { return pages_[i].slots == 0; });
    if (pg == kNoId) {
      pg = static_cast<uint32_t>(pages_.size());
      if (size_t{pg + 1} * Shard::kSlotsPerPage > Shard::kMaxSlots) std::abort();
      pages_.emplace_back();
    }
    pages_[pg].slots = static_cast<uint8_t>(slots);
    partial.push_back(pg);
  }
  Page& page = pages_[pg];
  uint32_t unit = 0;
  for (uint32_t w = 0; w < Shard::kSlotsPerPage / 64; ++w) {
    if (page.bits[w] != ~uint64_t{0}) {
      unit = w * 64 + static_cast<uint32_t>(__builtin_ctzll(~page.bits[w]));
      break;
    }
  }
  page.bits[unit / 64] |= uint64_t{1} << (unit % 64);
  ++page.used;
  if (page.used == units) partial.pop_back();  // it was the last in the list
  slots_in_use_ += slots;
  return pg * Shard::kSlotsPerPage + unit * slots;
}

void Store::freeSlots(uint32_t first, uint32_t slots) {
  slots_in_use_ -= slots;
  const uint32_t pg = first / Shard::kSlotsPerPage;
  const uint32_t unit = (first % Shard::kSlotsPerPage) / slots;
  const uint32_t units = Shard::kSlotsPerPage / slots;
  Page& page = pages_[pg];
  // Nobody can write these slots any more (every handle's holder is gone): clear them for the next stat,
  // unless the whole page goes (below), which zeroes it anyway.
  if (page.used > 1) {
    for (auto& s : shards_) s->clear(first, slots);
  }
  page.bits[unit / 64] &= ~(uint64_t{1} << (unit % 64));
  if (page.used-- == units) partial_[slots].push_back(pg);
  if (page.used > 0) return;
  // Every stat of this page is gone: each shard gives the page back (it reads as zeros again), and the
  // page may take stats of any size next.
  for (auto& s : shards_) s->discardPages(pg, 1);
  page = Page();
  pushFree(free_pages_, pg);
  while (!pages_.empty() && pages_.back().slots == 0) pages_.pop_back();
  if (pages_.capacity() > 64 && pages_.size() * 4 < pages_.capacity()) pages_.shrink_to_fit();
}

uint32_t Store::create(const std::string& name, StatType type, bool hidden, uint32_t slots, bool scoped,
                       uint32_t* slot_out) {
  std::lock_guard<std::mutex> lock(lock_);
  auto [prefix_text, leaf_text] = splitName(name);
  const uint32_t p = symbols_.find(prefix_text);
  const uint32_t l = p == SymbolTable::kNone ? SymbolTable::kNone : symbols_.find(leaf_text);
  uint32_t id = (p == SymbolTable::kNone || l == SymbolTable::kNone) ? kNoId : findEntry(p, l);
  // A name that starts with a dot (".x") splits into an empty prefix like "x" does: tell them apart.
  const bool leading_dot = !name.empty() && name.front() == '.' && prefix_text.empty();
  if (id != kNoId && ((entries_[id].flags & kLeadingDot) != 0) != leading_dot) id = kNoId;
  uint32_t offset = 0;
  if (id == kNoId && p != SymbolTable::kNone && !leading_dot) {
    // A stat of a block (a cluster's traffic stats asked for by name: hot restart's carry-over).
    const StatBlock::Leaf* leaf = nullptr;
    id = findInBlock(p, leaf_text, &leaf);
    if (id != kNoId) offset = leaf->offset;
  }
  if (id != kNoId) {
    Entry& e = entries_[id];
    if (scoped) {
      ++e.refs;
    } else {
      e.flags |= kPermanent;
    }
    *slot_out = e.slot + offset;
    return id;
  }
  Entry e{};
  e.prefix = symbols_.intern(prefix_text);
  e.leaf = symbols_.intern(leaf_text);
  e.slot = allocSlots(slots);
  e.refs = scoped ? 1u : 0u;
  e.type = type;
  e.slots = static_cast<uint8_t>(slots);
  e.flags = static_cast<uint8_t>(kLive | (hidden ? kHidden : 0) | (scoped ? 0 : kPermanent) | (leading_dot ? kLeadingDot : 0));
  ++live_stats_;
  *slot_out = e.slot;
  return addEntry(e);
}

uint32_t Store::addEntry(const Entry& e) {
  uint32_t id = popFree(free_entries_, entries_.size(), [&](uint32_t i) { return (entries_[i].flags & kLive) == 0; });
  if (id == kNoId) {
    id = static_cast<uint32_t>(entries_.size());
    // Grow by a quarter, not double: at 10,000 clusters doubling leaves megabytes of entries unused.
    if (entries_.size() == entries_.capacity()) entries_.reserve(entries_.capacity() + entries_.capacity() / 4 + 256);
    entries_.push_back(e);
  } else {
    entries_[id] = e;
  }
  ++live_entries_;
  indexInsert(entryHash(e.prefix, e.leaf), id);
  return id;
}

uint32_t Store::layoutId(const StatBlock& layout) {
  for (size_t i = 0; i < layouts_.size(); ++i) {
    if (layouts_[i] == &layout) return static_cast<uint32_t>(i);
  }
  layouts_.push_back(&layout);
  return static_cast<uint32_t>(layouts_.size() - 1);
}

uint32_t Store::findInBlock(uint32_t prefix, std::string_view leaf, const StatBlock::Leaf** out) const {
  for (size_t i = 0; i < layouts_.size(); ++i) {
    const StatBlock::Leaf* l = layouts_[i]->find(leaf);
    if (l == nullptr) continue;
    const uint32_t id = findEntry(prefix, kBlockLeaf | static_cast<uint32_t>(i));
    if (id == kNoId) continue;
    *out = l;
    return id;
  }
  return kNoId;
}

uint32_t Store::createBlock(std::string_view prefix, const StatBlock& layout, uint32_t* slot_out) {
  if (layout.slots() == 0 || layout.slots() > UINT8_MAX) std::abort();  // Entry::slots is 8 bits
  std::lock_guard<std::mutex> lock(lock_);
  const uint32_t leaf = kBlockLeaf | layoutId(layout);
  const uint32_t p = symbols_.find(prefix);
  uint32_t id = p == SymbolTable::kNone ? kNoId : findEntry(p, leaf);
  if (id != kNoId) {
    ++entries_[id].refs;
    *slot_out = entries_[id].slot;
    return id;
  }
  Entry e{};
  e.prefix = symbols_.intern(prefix);
  e.leaf = leaf;
  e.slot = allocSlots(layout.slots());
  e.refs = 1;
  e.type = StatType::Counter;  // unused: each leaf has its own
  e.slots = static_cast<uint8_t>(layout.slots());
  e.flags = kLive | kBlock;
  live_stats_ += layout.size();
  *slot_out = e.slot;
  return addEntry(e);
}

void Store::release(const std::vector<uint32_t>& entry_ids) {
  std::lock_guard<std::mutex> lock(lock_);
  t_release_memo.active = true;
  struct EndMemo {
    ~EndMemo() {
      t_release_memo.active = false;
      t_release_memo.pages.clear();
    }
  } end_memo;
  bool any = false;
  for (uint32_t id : entry_ids) {
    if (id >= entries_.size()) continue;
    Entry& e = entries_[id];
    if ((e.flags & kLive) == 0) continue;
    if (e.refs > 0) --e.refs;
    if (e.refs > 0 || (e.flags & kPermanent) != 0) continue;
    freeSlots(e.slot, e.slots);
    indexErase(entryHash(e.prefix, e.leaf), id);
    symbols_.release(e.prefix);
    if ((e.flags & kBlock) != 0) {
      live_stats_ -= layouts_[e.leaf & ~kBlockLeaf]->size();
    } else {
      symbols_.release(e.leaf);
      --live_stats_;
    }
    e.flags = 0;
    --live_entries_;
    pushFree(free_entries_, id);
    any = true;
  }
  if (!any) return;
  trimTail(entries_, free_entries_, live_entries_, [&](uint32_t i) { return (entries_[i].flags & kLive) == 0; });
}

size_t Store::statCount() const {
  std::lock_guard<std::mutex> lock(lock_);
  return live_stats_;
}

size_t Store::entryCount() const {
  std::lock_guard<std::mutex> lock(lock_);
  return live_entries_;
}

uint32_t Store::slotHighWater() const {
  std::lock_guard<std::mutex> lock(lock_);
  return static_cast<uint32_t>(pages_.size() * Shard::kSlotsPerPage);
}

uint32_t Store::slotsInUse() const {
  std::lock_guard<std::mutex> lock(lock_);
  return slots_in_use_;
}

size_t Store::metadataBytes() const {
  std::lock_guard<std::mutex> lock(lock_);
  size_t b = symbols_.bytes() + entries_.capacity() * sizeof(Entry) + free_entries_.capacity() * sizeof(uint32_t) +
             index_.capacity() * sizeof(IndexSlot) + pages_.capacity() * sizeof(Page) +
             free_pages_.capacity() * sizeof(uint32_t) + layouts_.capacity() * sizeof(const StatBlock*);
  for (const auto& [n, v] : partial_) b += v.capacity() * sizeof(uint32_t) + 64;
  return b;
}

Counter Store::counter(const std::string& name, bool hidden) {
  uint32_t slot = 0;
  create(name, StatType::Counter, hidden, 1, false, &slot);
  return Counter{slot};
}
Gauge Store::gauge(const std::string& name, bool hidden) {
  uint32_t slot = 0;
  create(name, StatType::Gauge, hidden, 1, false, &slot);
  return Gauge{slot};
}
Histogram Store::histogram(const std::string& name) {
  uint32_t slot = 0;
  create(name, StatType::Histogram, false, kHistogramBuckets + 1, false, &slot);
  return Histogram{slot};
}

Histogram StatScope::histogram(const std::string& name) {
  return Histogram{make(name, StatType::Histogram, false, kHistogramBuckets + 1)};
}

int64_t Store::sum(uint32_t index) const {
  int64_t total = 0;
  for (const auto& s : shards_) {
    if (pageWritten(&s->slot(index))) total += s->read(index);
  }
  return total;
}

std::vector<Store::Value> Store::snapshot() const { return snapshot(nullptr); }

std::vector<Store::Value> Store::snapshot(const std::function<bool(std::string_view name)>& keep) const {
  std::lock_guard<std::mutex> lock(lock_);
  // Which pages each shard has written: the others read as zeros without being touched.
  std::vector<std::vector<bool>> written(shards_.size());
  for (size_t i = 0; i < shards_.size(); ++i) writtenPages(&shards_[i]->slot(0), pages_.size(), written[i]);
  auto read = [&](size_t shard, uint32_t index) -> int64_t {
    return written[shard][index / Shard::kSlotsPerPage] ? shards_[shard]->read(index) : 0;
  };
  std::vector<Value> out;
  if (!keep) out.reserve(live_stats_);
  // Names are spelled into one buffer and copied out only for the stats kept.
  std::string name_buf;
  auto add = [&](const std::string& spelled, StatType type, uint32_t slot) {
    if (keep && !keep(spelled)) return;
    std::string name = spelled;
    if (type == StatType::Histogram) {
      Value v{std::move(name), StatType::Histogram, 0, std::vector<int64_t>(kHistogramBuckets, 0), 0};
      for (uint32_t b = 0; b < kHistogramBuckets; ++b) {
        for (size_t s = 0; s < shards_.size(); ++s) v.buckets[b] += read(s, slot + b);
        v.value += v.buckets[b];
      }
      for (size_t s = 0; s < shards_.size(); ++s) v.sum_us += read(s, slot + kHistogramBuckets);
      out.push_back(std::move(v));
      return;
    }
    int64_t sum = 0;
    for (size_t s = 0; s < shards_.size(); ++s) sum += read(s, slot);
    out.push_back(Value{std::move(name), type, sum, {}, 0});
  };
  for (const Entry& e : entries_) {
    if ((e.flags & kLive) == 0 || (e.flags & kHidden) != 0) continue;
    if ((e.flags & kBlock) != 0) {
      const std::string& prefix = symbols_.text(e.prefix);
      for (const auto& leaf : layouts_[e.leaf & ~kBlockLeaf]->leaves_) {
        name_buf.assign(prefix);
        name_buf += '.';
        name_buf += leaf.name;
        add(name_buf, leaf.type, e.slot + leaf.offset);
      }
      continue;
    }
    add(nameOf(e), e.type, e.slot);
  }
  std::sort(out.begin(), out.end(), [](const Value& a, const Value& b) { return a.name < b.name; });
  return out;
}

int64_t Store::value(const std::string& name) const {
  std::lock_guard<std::mutex> lock(lock_);
  auto [prefix_text, leaf_text] = splitName(name);
  const uint32_t p = symbols_.find(prefix_text);
  if (p == SymbolTable::kNone) return 0;
  const uint32_t l = symbols_.find(leaf_text);
  const uint32_t id = l == SymbolTable::kNone ? kNoId : findEntry(p, l);
  if (id != kNoId) return sum(entries_[id].slot);
  const StatBlock::Leaf* leaf = nullptr;
  const uint32_t block = findInBlock(p, leaf_text, &leaf);
  return block == kNoId ? 0 : sum(entries_[block].slot + leaf->offset);
}

void set(Store& store, Gauge g, int64_t value) {
  // Shard 0 holds the value; other shards never write this gauge.
  store.shard(0).slot(g.index).store(value, std::memory_order_relaxed);
}

namespace {

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

std::string renderPrometheus(const std::vector<Store::Value>& values, const TagRules* rules) {
  struct Sample {
    std::string labels;
    int64_t value;
    const Store::Value* hist = nullptr;
  };
  struct Family {
    StatType type;
    std::string help;  // the stat name with its tag values as "{tag}"
    std::vector<Sample> samples;
  };
  std::map<std::string, Family> families;
  for (const auto& v : values) {
    TaggedName t = extractTags(v.name, rules, false);
    std::string labels;
    for (const auto& [tag, value] : t.tags) {
      absl::StrAppend(&labels, labels.empty() ? "{" : ",", tag, "=\"", escapeLabel(value), "\"");
    }
    if (!labels.empty()) labels += "}";
    std::string full = "envoy_" + sanitize(t.name);
    auto it = families.find(full);
    if (it != families.end() && it->second.type != v.type) {
      // Another kind of stat already has this family name (one TYPE per family): this one keeps its
      // whole name, untagged.
      full = "envoy_" + sanitize(v.name);
      labels.clear();
      it = families.find(full);
      if (it == families.end()) it = families.emplace(full, Family{v.type, v.name, {}}).first;
    }
    if (it == families.end()) it = families.emplace(full, Family{v.type, extractTags(v.name, rules, true).pattern, {}}).first;
    it->second.samples.push_back(Sample{labels, v.value, v.type == StatType::Histogram ? &v : nullptr});
  }
  std::string out;
  for (const auto& [name, fam] : families) {
    const char* type = fam.type == StatType::Counter ? "counter" : fam.type == StatType::Gauge ? "gauge" : "histogram";
    // HELP text: the Envoy stat behind the family (escaped as the format asks: backslash and newline).
    std::string help;
    for (char c : fam.help) {
      if (c == '\\') help += "\\\\";
      else if (c == '\n') help += "\\n";
      else help.push_back(c);
    }
    absl::StrAppend(&out, "# HELP ", name, " ", type, " ", help, "\n# TYPE ", name, " ", type, "\n");
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
