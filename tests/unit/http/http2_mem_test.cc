#include "proxy/http/http2/mem.h"

#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <exception>
#include <string>
#include <thread>

using strait::http::http2::pooledBlocksForTest;
using strait::http::http2::sessionAllocator;

namespace {

void allocatorChecks() {
  nghttp2_mem* m = sessionAllocator();
  const size_t pooled_before = pooledBlocksForTest();

  // Every size class and the direct path (over 4 KiB) give writable, 16-aligned memory.
  for (size_t size : {1u, 63u, 64u, 65u, 500u, 4096u, 4097u, 70000u}) {
    auto* p = static_cast<unsigned char*>(m->malloc(size, m->mem_user_data));
    REQUIRE(p != nullptr);
    REQUIRE(reinterpret_cast<uintptr_t>(p) % 16 == 0);
    std::memset(p, 0xab, size);
    m->free(p, m->mem_user_data);
  }
  // The class-sized blocks went back to this thread's lists, not to free().
  REQUIRE(pooledBlocksForTest() > pooled_before);

  // A freed block of a class is what the next allocation of that class gets.
  void* a = m->malloc(100, m->mem_user_data);
  m->free(a, m->mem_user_data);
  void* b = m->malloc(120, m->mem_user_data);
  REQUIRE(b == a);

  // realloc within the class keeps the block; beyond it, moves the bytes (also into a direct block).
  std::memcpy(b, "hello", 5);
  REQUIRE(m->realloc(b, 128, m->mem_user_data) == b);
  void* grown = m->realloc(b, 3000, m->mem_user_data);
  REQUIRE(std::memcmp(grown, "hello", 5) == 0);
  std::string big(10000, 'q');
  std::memcpy(grown, big.data(), 3000);
  void* huge = m->realloc(grown, 10000, m->mem_user_data);
  REQUIRE(std::memcmp(huge, big.data(), 3000) == 0);
  void* shrunk = m->realloc(huge, 10, m->mem_user_data);  // direct -> class: copies only what fits
  REQUIRE(std::memcmp(shrunk, big.data(), 10) == 0);
  m->free(shrunk, m->mem_user_data);

  // calloc zeroes, even a recycled block that held bytes.
  auto* z = static_cast<unsigned char*>(m->calloc(10, 30, m->mem_user_data));
  for (int i = 0; i < 300; ++i) REQUIRE(z[i] == 0);
  m->free(z, m->mem_user_data);
  m->free(nullptr, m->mem_user_data);  // like free(NULL)
}

}  // namespace

TEST_CASE("nghttp2 allocator: blocks are usable, aligned, recycled, and realloc keeps their bytes") {
  // On a thread of its own: the block lists are per thread and capped, and earlier tests in this
  // process may have filled this thread's.
  std::exception_ptr failure;
  std::thread t([&] {
    try {
      allocatorChecks();
    } catch (...) {
      failure = std::current_exception();
    }
  });
  t.join();
  if (failure) std::rethrow_exception(failure);
}
