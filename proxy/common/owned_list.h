#pragma once

#include <cstddef>
#include <memory>

namespace strait::common {

template <typename T>
class OwnedList;

// The links an element of an OwnedList<T> carries itself (T derives from ListLinks<T>).
template <typename T>
class ListLinks {
 private:
  friend class OwnedList<T>;
  T* prev_ = nullptr;
  T* next_ = nullptr;
};

// A doubly linked list that owns heap objects carrying their own links. Adding and removing allocate
// nothing: std::list<std::unique_ptr<T>> costs a list node per element on top of the element itself, and
// streams come and go once per request. Elements are walked with front() / next(); take() unlinks an
// element and hands its ownership back (to be destroyed now or deferred).
template <typename T>
class OwnedList {
 public:
  OwnedList() = default;
  ~OwnedList() { clear(); }
  OwnedList(const OwnedList&) = delete;
  OwnedList& operator=(const OwnedList&) = delete;

  bool empty() const { return head_ == nullptr; }
  size_t size() const { return size_; }
  T* front() const { return head_; }
  static T* next(const T& item) { return static_cast<const ListLinks<T>&>(item).next_; }

  T& pushBack(std::unique_ptr<T> item) {
    T* raw = item.release();
    ListLinks<T>& l = *raw;
    l.prev_ = tail_;
    l.next_ = nullptr;
    if (tail_ != nullptr) {
      static_cast<ListLinks<T>&>(*tail_).next_ = raw;
    } else {
      head_ = raw;
    }
    tail_ = raw;
    ++size_;
    return *raw;
  }

  // Unlinks `item` (which must be in this list) and returns it.
  std::unique_ptr<T> take(T& item) {
    ListLinks<T>& l = item;
    if (l.prev_ != nullptr) {
      static_cast<ListLinks<T>&>(*l.prev_).next_ = l.next_;
    } else {
      head_ = l.next_;
    }
    if (l.next_ != nullptr) {
      static_cast<ListLinks<T>&>(*l.next_).prev_ = l.prev_;
    } else {
      tail_ = l.prev_;
    }
    l.prev_ = l.next_ = nullptr;
    --size_;
    return std::unique_ptr<T>(&item);
  }

  // Destroys every element, first to last.
  void clear() {
    while (head_ != nullptr) take(*head_);
  }

 private:
  T* head_ = nullptr;
  T* tail_ = nullptr;
  size_t size_ = 0;
};

}  // namespace strait::common
