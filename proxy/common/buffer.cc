#include "proxy/common/buffer.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

namespace strait::common {

namespace {
// At most this many idle blocks are kept per thread (1 MiB); the rest go back to the allocator.
constexpr size_t kMaxPooledBlocks = 64;

struct BlockPool {
  std::vector<char*> free;
  ~BlockPool() {
    for (char* b : free) std::free(b);
  }
};
thread_local BlockPool t_pool;
}  // namespace

char* allocateBlock() {
  if (!t_pool.free.empty()) {
    char* b = t_pool.free.back();
    t_pool.free.pop_back();
    return b;
  }
  char* b = static_cast<char*>(std::malloc(Slice::kBlockSize));
  if (b == nullptr) std::abort();
  return b;
}

void releaseBlock(char* block) {
  if (t_pool.free.size() < kMaxPooledBlocks) {
    t_pool.free.push_back(block);
  } else {
    std::free(block);
  }
}

void trimBlockPool(size_t keep) {
  while (t_pool.free.size() > keep) {
    std::free(t_pool.free.back());
    t_pool.free.pop_back();
  }
}

size_t pooledBlocksForTest() { return t_pool.free.size(); }

void SliceRing::grow() {
  const uint32_t cap = cap_ * 2;
  Slice* items = new Slice[cap];
  for (uint32_t i = 0; i < size_; ++i) items[i] = (*this)[i];
  if (items_ != inline_) delete[] items_;
  items_ = items;
  cap_ = cap;
  head_ = 0;
}

void SliceRing::takeFrom(SliceRing& other) {
  if (other.items_ == other.inline_) {
    for (uint32_t i = 0; i < other.size_; ++i) inline_[i] = other[i];
    head_ = 0;
  } else {
    items_ = other.items_;
    cap_ = other.cap_;
    head_ = other.head_;
    other.items_ = other.inline_;
    other.cap_ = kInline;
  }
  size_ = other.size_;
  other.head_ = 0;
  other.size_ = 0;
}

void Buffer::addSlow(const void* data, size_t size) {
  const char* src = static_cast<const char*>(data);
  while (size > 0) {
    if (slices_.empty() || slices_.back().tailroom() == 0) {
      slices_.push_back(Slice{allocateBlock(), 0, 0});
    }
    Slice& tail = slices_.back();
    size_t n = std::min<size_t>(size, tail.tailroom());
    std::memcpy(tail.base + tail.end, src, n);
    tail.end += static_cast<uint32_t>(n);
    src += n;
    size -= n;
    length_ += n;
  }
}

void Buffer::copyFrom(const Buffer& other) {
  for (uint32_t i = 0; i < other.slices_.size(); ++i) add(other.slices_[i].data(), other.slices_[i].length());
}

void Buffer::move(Buffer& other) {
  if (other.slices_.empty()) return;
  // Small tails are coalesced into our last block to keep chains short when data trickles in.
  for (uint32_t i = 0; i < other.slices_.size(); ++i) {
    Slice& s = other.slices_[i];
    if (s.length() == 0) {
      releaseBlock(s.base);
      continue;
    }
    if (!slices_.empty() && slices_.back().tailroom() >= s.length() && s.length() <= 1024) {
      Slice& tail = slices_.back();
      std::memcpy(tail.base + tail.end, s.data(), s.length());
      tail.end += s.length();
      releaseBlock(s.base);
    } else {
      slices_.push_back(s);
    }
  }
  length_ += other.length_;
  other.slices_.clear();
  other.length_ = 0;
}

void Buffer::move(Buffer& other, size_t size) {
  if (size >= other.length_) {
    move(other);
    return;
  }
  while (size > 0) {
    Slice& front = other.slices_.front();
    if (front.length() <= size) {
      size -= front.length();
      other.length_ -= front.length();
      length_ += front.length();
      slices_.push_back(front);
      other.slices_.pop_front();
    } else {
      add(front.data(), size);
      front.start += static_cast<uint32_t>(size);
      other.length_ -= size;
      size = 0;
    }
  }
}

void Buffer::drain(size_t size) {
  size = std::min(size, length_);
  length_ -= size;
  while (size > 0) {
    Slice& front = slices_.front();
    if (front.length() <= size) {
      size -= front.length();
      releaseBlock(front.base);
      slices_.pop_front();
    } else {
      front.start += static_cast<uint32_t>(size);
      size = 0;
    }
  }
  // Empty slices left at the front (reserved but never committed) are released too.
  while (!slices_.empty() && slices_.front().length() == 0 && slices_.size() > 1) {
    releaseBlock(slices_.front().base);
    slices_.pop_front();
  }
}

void Buffer::clear() {
  for (uint32_t i = 0; i < slices_.size(); ++i) releaseBlock(slices_[i].base);
  slices_.clear();
  length_ = 0;
}

char* Buffer::reserve(size_t* available) {
  if (slices_.empty() || slices_.back().tailroom() < 512) {
    slices_.push_back(Slice{allocateBlock(), 0, 0});
  }
  Slice& tail = slices_.back();
  *available = tail.tailroom();
  return tail.base + tail.end;
}

void Buffer::commit(size_t size) {
  Slice& tail = slices_.back();
  tail.end += static_cast<uint32_t>(size);
  length_ += size;
}

size_t Buffer::fillIovecs(iovec* iov, size_t max) const {
  size_t n = 0;
  for (uint32_t i = 0; i < slices_.size(); ++i) {
    const Slice& s = slices_[i];
    if (n == max) break;
    if (s.length() == 0) continue;
    iov[n].iov_base = const_cast<char*>(s.data());
    iov[n].iov_len = s.length();
    ++n;
  }
  return n;
}

void Buffer::copyOut(size_t offset, size_t size, void* out) const {
  char* dst = static_cast<char*>(out);
  for (uint32_t i = 0; i < slices_.size(); ++i) {
    const Slice& s = slices_[i];
    if (size == 0) break;
    if (offset >= s.length()) {
      offset -= s.length();
      continue;
    }
    size_t n = std::min<size_t>(s.length() - offset, size);
    std::memcpy(dst, s.data() + offset, n);
    dst += n;
    size -= n;
    offset = 0;
  }
}

std::string Buffer::toString() const {
  std::string out;
  out.reserve(length_);
  for (uint32_t i = 0; i < slices_.size(); ++i) out.append(slices_[i].data(), slices_[i].length());
  return out;
}

size_t Buffer::search(std::string_view needle, size_t from) const {
  if (needle.empty()) return from <= length_ ? from : npos;
  if (length_ < needle.size()) return npos;
  // Simple and correct across slice boundaries; only used on small buffers (headers, admin requests).
  std::string flat = toString();
  size_t pos = flat.find(needle, from);
  return pos == std::string::npos ? npos : pos;
}

}  // namespace strait::common
