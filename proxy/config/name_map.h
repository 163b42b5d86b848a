#pragma once

#include <cstddef>
#include <initializer_list>
#include <iterator>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace strait::config {

// A map from names to values that is cheap to copy while it is large and changes little: the xDS
// thread copies its held resources and its cluster table on every update, and at 10,000 clusters a
// std::map copy (and the old one's destruction) was a fifth of a one-endpoint update's time.
//
// It is a frozen, shared base (never changed once built, shared by every copy) plus a small private
// overlay of what changed since: names set and names erased. A copy copies the overlay only, unless
// the overlay has grown past twice the square root of the base: then the copy gets a new base with
// everything folded in (O(n), once per ~2*sqrt(n) changes) and an empty overlay. Writes never fold (a
// push of 10,000 resources is 10,000 overlay inserts, folded once by the next copy), and the original
// is never changed by a copy (other threads may be reading it). Reads look in the overlay, then the
// base; iteration merges the two in name order, so a NameMap iterates exactly as the std::map of the
// same content would.
//
// Values should be cheap to copy (shared_ptrs, small records): folding copies them.
template <class V>
class NameMap {
 public:
  using Map = std::map<std::string, V, std::less<>>;
  using value_type = typename Map::value_type;

  NameMap() = default;
  NameMap(const NameMap& other) { *this = other; }
  NameMap(NameMap&&) noexcept = default;
  NameMap& operator=(NameMap&&) noexcept = default;
  NameMap& operator=(const NameMap& other) {
    if (this == &other) return *this;
    const size_t base_size = other.base_ ? other.base_->size() : 0;
    const size_t overlay = other.overlaySize();
    if (overlay > 32 && overlay * overlay > 4 * base_size) {
      auto folded = std::make_shared<Map>();
      for (const auto& kv : other) folded->emplace_hint(folded->end(), kv.first, kv.second);
      base_ = std::move(folded);
      set_.clear();
      erased_.clear();
    } else {
      base_ = other.base_;
      set_ = other.set_;
      erased_ = other.erased_;
    }
    size_ = other.size_;
    return *this;
  }
  NameMap(std::initializer_list<std::pair<const std::string, V>> items) {
    for (const auto& [k, v] : items) set(k, v);
  }

  // Iterates base and overlay together in name order, skipping base entries the overlay replaced or erased.
  class const_iterator {
   public:
    using iterator_category = std::forward_iterator_tag;
    using value_type = typename Map::value_type;
    using difference_type = std::ptrdiff_t;
    using pointer = const value_type*;
    using reference = const value_type&;

    const_iterator() = default;
    reference operator*() const { return from_base_ ? *b_ : *o_; }
    pointer operator->() const { return &**this; }
    const_iterator& operator++() {
      if (from_base_) {
        ++b_;
      } else {
        ++o_;
      }
      settle();
      return *this;
    }
    const_iterator operator++(int) {
      auto old = *this;
      ++*this;
      return old;
    }
    bool operator==(const const_iterator& other) const {
      // The element pointed at (a find() result may not have skipped the shadowed base entries yet).
      return from_base_ == other.from_base_ && (from_base_ ? b_ == other.b_ : o_ == other.o_);
    }
    bool operator!=(const const_iterator& other) const { return !(*this == other); }

   private:
    friend class NameMap;
    const_iterator(const NameMap* m, typename Map::const_iterator b, typename Map::const_iterator o)
        : m_(m), b_(b), o_(o) {
      settle();
    }
    // At overlay entry `o`, with `b` the first base entry after its name, not yet skipped past shadowed
    // ones: find() must not walk the base (when the overlay shadows most of it, as after a state-of-the-
    // world push, that walk made each find O(n)); the next ++ settles.
    struct AtOverlay {};
    const_iterator(const NameMap* m, typename Map::const_iterator b, typename Map::const_iterator o, AtOverlay)
        : m_(m), b_(b), o_(o), from_base_(false) {}
    // Skips base entries shadowed by the overlay (set or erased there), then picks the smaller name.
    void settle() {
      const auto b_end = m_->baseEnd();
      while (b_ != b_end && m_->shadowed(b_->first)) ++b_;
      if (b_ == b_end) {
        from_base_ = false;
      } else if (o_ == m_->set_.end()) {
        from_base_ = true;
      } else {
        from_base_ = b_->first < o_->first;
      }
    }
    const NameMap* m_ = nullptr;
    typename Map::const_iterator b_{};
    typename Map::const_iterator o_{};
    bool from_base_ = false;
  };
  using iterator = const_iterator;

  const_iterator begin() const { return const_iterator(this, baseBegin(), set_.begin()); }
  const_iterator end() const { return const_iterator(this, baseEnd(), set_.end()); }

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }

  // The value held under `name`, or null.
  const V* get(std::string_view name) const {
    auto o = set_.find(name);
    if (o != set_.end()) return &o->second;
    if (!base_ || erased_.count(name) != 0) return nullptr;
    auto b = base_->find(name);
    return b == base_->end() ? nullptr : &b->second;
  }
  size_t count(std::string_view name) const { return get(name) != nullptr ? 1 : 0; }
  // An iterator that goes on in name order from the entry found.
  const_iterator find(std::string_view name) const {
    auto o = set_.find(name);
    if (o != set_.end()) {
      return const_iterator(this, base_ ? base_->upper_bound(name) : baseEnd(), o, typename const_iterator::AtOverlay{});
    }
    if (!base_ || erased_.count(name) != 0) return end();
    auto b = base_->find(name);
    if (b == base_->end()) return end();
    return const_iterator(this, b, set_.lower_bound(name));
  }
  const V& at(std::string_view name) const {
    const V* v = get(name);
    if (v == nullptr) throw std::out_of_range("NameMap::at");
    return *v;
  }

  void set(const std::string& name, V value) {
    const bool had = get(name) != nullptr;
    erased_.erase(name);
    set_.insert_or_assign(name, std::move(value));
    if (!had) ++size_;
  }
  // Returns whether `name` was held.
  bool erase(std::string_view name) {
    if (get(name) == nullptr) return false;
    auto o = set_.find(name);
    if (o != set_.end()) set_.erase(o);
    if (base_ && base_->find(name) != base_->end()) erased_.emplace(name);
    --size_;
    return true;
  }
  void clear() {
    base_.reset();
    set_.clear();
    erased_.clear();
    size_ = 0;
  }
  // Erases the entries `pred(name, value)` is true for. O(n): a pass over everything.
  template <class Pred>
  size_t eraseIf(Pred pred) {
    std::vector<std::string> gone;
    for (const auto& [k, v] : *this) {
      if (pred(k, v)) gone.push_back(k);
    }
    for (const auto& k : gone) erase(k);
    return gone.size();
  }

  // For tests and /memory: how many entries the private overlay holds.
  size_t overlaySize() const { return set_.size() + erased_.size(); }

 private:
  static const Map& emptyMap() {
    static const Map* empty = new Map();
    return *empty;
  }
  typename Map::const_iterator baseBegin() const { return base_ ? base_->begin() : emptyMap().begin(); }
  typename Map::const_iterator baseEnd() const { return base_ ? base_->end() : emptyMap().end(); }
  bool shadowed(std::string_view name) const {
    return (!set_.empty() && set_.count(name) != 0) || (!erased_.empty() && erased_.count(name) != 0);
  }

  std::shared_ptr<const Map> base_;
  Map set_;                                     // set since the base was made (new or replaced)
  std::set<std::string, std::less<>> erased_;   // base entries erased since (never also in set_)
  size_t size_ = 0;
};

}  // namespace strait::config
