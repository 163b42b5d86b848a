#pragma once

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <deque>
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
size_t pooledBlocksForTest();

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

  // Copies bytes in at the end.
  void add(const void* data, size_t size);
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
  std::deque<Slice> slices_;
  size_t length_ = 0;
};

}  // namespace strait::common
