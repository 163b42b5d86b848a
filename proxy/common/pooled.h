#pragma once

#include <cstddef>
#include <new>

namespace strait::common {

// Per-thread recycling of one class's allocations, for objects made and destroyed once per request
// (streams, header maps, the router). glibc keeps only seven chunks of a size in its per-thread cache; an
// HTTP/2 connection with many streams in flight overflows it and every further malloc/free of that size
// goes through the arena's bins and consolidation. A class opts in by deriving from Pooled<itself>; freed
// objects wait in a list on the freeing thread (at most 256 KiB of them per class) for the next
// allocation of the same size.
template <typename T>
class Pooled {
 public:
  static void* operator new(size_t size) {
    static_assert(sizeof(T) >= sizeof(void*), "a pooled object must hold a free-list link");
    FreeList& fl = freeList();
    if (size == sizeof(T) && fl.head != nullptr) {
      Node* n = fl.head;
      fl.head = n->next;
      --fl.count;
      return n;
    }
    return ::operator new(size);
  }

  // Sized: a virtual destructor passes the size of the object's own class, so a subclass of a pooled
  // class (a different size) simply bypasses the list.
  static void operator delete(void* p, size_t size) {
    if (p == nullptr) return;
    FreeList& fl = freeList();
    if (size == sizeof(T) && fl.count < kMaxPooled / sizeof(T) + 1) {
      Node* n = static_cast<Node*>(p);
      n->next = fl.head;
      fl.head = n;
      ++fl.count;
      return;
    }
    ::operator delete(p);
  }

 private:
  // Bytes one thread keeps per class (so a burst of streams does not leave megabytes behind).
  static constexpr size_t kMaxPooled = 256 * 1024;
  struct Node {
    Node* next;
  };
  struct FreeList {
    Node* head = nullptr;
    size_t count = 0;
    ~FreeList() {
      while (head != nullptr) {
        Node* n = head;
        head = n->next;
        ::operator delete(n);
      }
    }
  };
  static FreeList& freeList() {
    static thread_local FreeList list;
    return list;
  }
};

}  // namespace strait::common
