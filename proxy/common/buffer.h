#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace strait::common {

// A fixed-size block of memory with a readable window [start, end). Blocks come from a per-thread pool,
// so steady-state traffic does not touch the allocator.
struct Slice {
  static constexpr uint32_t kBlockSize = 16 * 1024;
  char* base = nullptr;
  uint32_t start = 0;
  uint32_t end = 0;

  uint32_t length() const { return end - start; }
  uint32_t tailroom() const { return kBlockSize - end; }
  const char* data() const { return base + start; }
};

// Returns blocks to (and takes them from) a small per-thread free list.
char* allocateBlock();
void releaseBlock(char* block);
// Frees this thread's idle blocks beyond `keep`. For threads whose buffers come in bursts (the main
// thread's admin responses: /stats of 10,000 clusters fills the whole pool, 1 MiB kept for good);
// workers keep their pool for the next requests.
void trimBlockPool(size_t keep);
size_t pooledBlocksForTest();

// The slices of one Buffer, oldest first: a ring that holds up to kInline slices in place (the common case:
// a request's headers, a small body) and moves to the heap only for longer chains. Unlike std::deque it
// allocates nothing to be constructed, so a Buffer costs no malloc until it holds more than kInline slices.
class SliceRing {
 public:
  static constexpr uint32_t kInline = 4;
  SliceRing() = default;
  ~SliceRing() {
    if (items_ != inline_) delete[] items_;
  }
  SliceRing(const SliceRing&) = delete;
  SliceRing& operator=(const SliceRing&) = delete;
  SliceRing(SliceRing&& other) noexcept { takeFrom(other); }

  bool empty() const { return size_ == 0; }
  uint32_t size() const { return size_; }
  Slice& front() { return items_[head_]; }
  Slice& back() { return items_[(head_ + size_ - 1) & (cap_ - 1)]; }
  const Slice& back() const { return items_[(head_ + size_ - 1) & (cap_ - 1)]; }
  Slice& operator[](uint32_t i) { return items_[(head_ + i) & (cap_ - 1)]; }
  const Slice& operator[](uint32_t i) const { return items_[(head_ + i) & (cap_ - 1)]; }
  void push_back(const Slice& s) {
    if (size_ == cap_) grow();
    items_[(head_ + size_) & (cap_ - 1)] = s;
    ++size_;
  }
  void pop_front() {
    head_ = (head_ + 1) & (cap_ - 1);
    --size_;
  }
  // Forgets every slice (their blocks are the caller's to release); keeps the storage.
  void clear() {
    head_ = 0;
    size_ = 0;
  }

 private:
  void grow();
  void takeFrom(SliceRing& other);

  Slice inline_[kInline];
  Slice* items_ = inline_;
  uint32_t cap_ = kInline;  // a power of two
  uint32_t head_ = 0;
  uint32_t size_ = 0;
};

// A byte queue made of chained slices. Moving data between buffers moves slices, not bytes.
class Buffer {
 public:
  Buffer() = default;
  ~Buffer() { clear(); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  Buffer(Buffer&& other) noexcept : slices_(std::move(other.slices_)), length_(other.length_) { other.length_ = 0; }

  size_t length() const { return length_; }
  bool empty() const { return length_ == 0; }

  // Copies bytes in at the end. The common case (it fits the tail block) is inline.
  void add(const void* data, size_t size) {
    if (!slices_.empty()) {
      Slice& tail = slices_.back();
      if (tail.tailroom() >= size) {
        if (size != 0) std::memcpy(tail.base + tail.end, data, size);
        tail.end += static_cast<uint32_t>(size);
        length_ += size;
        return;
      }
    }
    addSlow(data, size);
  }
  void add(std::string_view s) { add(s.data(), s.size()); }
  // Appends a copy of every byte of `other` (which is left as it is).
  void copyFrom(const Buffer& other);
  // Moves every byte of `other` to the end of this buffer; `other` is left empty.
  void move(Buffer& other);
  // Moves the first `size` bytes of `other` (at most its length).
  void move(Buffer& other, size_t size);
  // Drops the first `size` bytes (at most the length).
  void drain(size_t size);
  void clear();

  // Space for a read: a pointer to at least `min` bytes (at most one block) of free tail room.
  // `commit(n)` then makes n of them readable.
  char* reserve(size_t* available);
  void commit(size_t size);

  // Fills up to `max` iovecs with the readable bytes; returns how many were filled.
  size_t fillIovecs(iovec* iov, size_t max) const;
  void copyOut(size_t offset, size_t size, void* out) const;
  std::string toString() const;
  // Position of the first occurrence of `needle` at or after `from`, or npos.
  size_t search(std::string_view needle, size_t from = 0) const;
  static constexpr size_t npos = static_cast<size_t>(-1);
  size_t sliceCount() const { return slices_.size(); }

 private:
  void addSlow(const void* data, size_t size);

  SliceRing slices_;
  size_t length_ = 0;
};

}  // namespace strait::common
