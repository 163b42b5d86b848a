#include "proxy/http/http2/mem.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace strait::http::http2 {

namespace {

// Every block carries a 16-byte header (which keeps the user pointer 16-aligned, as malloc's is) with
// its size class; kDirect marks a block too large for any class, which goes straight back to free().
constexpr uint32_t kClasses = 7;  // 64 B .. 4 KiB
constexpr uint32_t kDirect = 0xff;
constexpr size_t kHeader = 16;
// What one thread keeps per class: 64 KiB (1024 blocks of 64 B, 16 of 4 KiB), under 0.5 MiB in all.
constexpr size_t kMaxBytesPerClass = 64 * 1024;

size_t classSize(uint32_t c) { return size_t{64} << c; }
size_t maxPerClass(uint32_t c) { return kMaxBytesPerClass / classSize(c); }

uint32_t classFor(size_t size) {
  for (uint32_t c = 0; c < kClasses; ++c) {
    if (size <= classSize(c)) return c;
  }
  return kDirect;
}

struct FreeBlock {
  FreeBlock* next;
};

struct Cache {
  FreeBlock* head[kClasses] = {};
  size_t count[kClasses] = {};
  ~Cache() {
    for (uint32_t c = 0; c < kClasses; ++c) {
      while (head[c] != nullptr) {
        FreeBlock* b = head[c];
        head[c] = b->next;
        std::free(b);
      }
    }
  }
};
thread_local Cache t_cache;

uint32_t& classOf(void* user) { return *reinterpret_cast<uint32_t*>(static_cast<char*>(user) - kHeader); }
// For a direct block, the size it was asked for (realloc must know how much to copy).
size_t& directSize(void* user) { return *reinterpret_cast<size_t*>(static_cast<char*>(user) - 8); }

void* allocate(size_t size, void*) {
  const uint32_t c = classFor(size);
  char* raw;
  if (c == kDirect) {
    raw = static_cast<char*>(std::malloc(kHeader + size));
    if (raw == nullptr) return nullptr;
    void* user = raw + kHeader;
    classOf(user) = kDirect;
    directSize(user) = size;
    return user;
  }
  Cache& cache = t_cache;
  if (cache.head[c] != nullptr) {
    FreeBlock* b = cache.head[c];
    cache.head[c] = b->next;
    --cache.count[c];
    raw = reinterpret_cast<char*>(b);
  } else {
    raw = static_cast<char*>(std::malloc(kHeader + classSize(c)));
    if (raw == nullptr) return nullptr;
  }
  void* user = raw + kHeader;
  classOf(user) = c;
  return user;
}

void release(void* ptr, void*) {
  if (ptr == nullptr) return;
  const uint32_t c = classOf(ptr);
  char* raw = static_cast<char*>(ptr) - kHeader;
  if (c == kDirect) {
    std::free(raw);
    return;
  }
  Cache& cache = t_cache;
  if (cache.count[c] >= maxPerClass(c)) {
    std::free(raw);
    return;
  }
  auto* b = reinterpret_cast<FreeBlock*>(raw);
  b->next = cache.head[c];
  cache.head[c] = b;
  ++cache.count[c];
}

void* allocateZeroed(size_t n, size_t size, void* ud) {
  if (size != 0 && n > SIZE_MAX / size) return nullptr;
  void* p = allocate(n * size, ud);
  if (p != nullptr) std::memset(p, 0, n * size);
  return p;
}

void* reallocate(void* ptr, size_t size, void* ud) {
  if (ptr == nullptr) return allocate(size, ud);
  const uint32_t c = classOf(ptr);
  const size_t have = c == kDirect ? directSize(ptr) : classSize(c);
  if (c != kDirect && size <= have) return ptr;  // still fits its class
  void* p = allocate(size, ud);
  if (p == nullptr) return nullptr;  // realloc semantics: the old block stays valid
  std::memcpy(p, ptr, have < size ? have : size);
  release(ptr, ud);
  return p;
}

nghttp2_mem g_mem = {nullptr, allocate, release, allocateZeroed, reallocate};

}  // namespace

nghttp2_mem* sessionAllocator() { return &g_mem; }

size_t pooledBlocksForTest() {
  size_t n = 0;
  for (uint32_t c = 0; c < kClasses; ++c) n += t_cache.count[c];
  return n;
}

}  // namespace strait::http::http2
