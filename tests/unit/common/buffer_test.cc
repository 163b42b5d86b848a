#include <catch2/catch.hpp>
#include <cstring>
#include <string>

#include "proxy/common/buffer.h"

using strait::common::Buffer;
using strait::common::Slice;

TEST_CASE("Buffer: add and toString keep bytes in order across slices") {
  Buffer b;
  std::string big(Slice::kBlockSize * 3 + 17, 'x');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>('a' + i % 26);
  b.add(big);
  REQUIRE(b.length() == big.size());
  REQUIRE(b.sliceCount() == 4);
  REQUIRE(b.toString() == big);
}

TEST_CASE("Buffer: drain drops exactly the front bytes") {
  Buffer b;
  b.add("hello ");
  b.add("world");
  b.drain(3);
  REQUIRE(b.toString() == "lo world");
  b.drain(100);
  REQUIRE(b.empty());
}

TEST_CASE("Buffer: move transfers all bytes and empties the source") {
  Buffer a, b;
  a.add("abc");
  std::string big(Slice::kBlockSize + 5, 'z');
  b.add(big);
  a.move(b);
  REQUIRE(b.empty());
  REQUIRE(b.length() == 0);
  REQUIRE(a.toString() == "abc" + big);
}

TEST_CASE("Buffer: partial move splits a slice") {
  Buffer a, b;
  b.add("0123456789");
  a.move(b, 4);
  REQUIRE(a.toString() == "0123");
  REQUIRE(b.toString() == "456789");
}

TEST_CASE("Buffer: reserve and commit make read space readable") {
  Buffer b;
  size_t avail = 0;
  char* p = b.reserve(&avail);
  REQUIRE(avail >= 512);
  std::memcpy(p, "data", 4);
  b.commit(4);
  REQUIRE(b.toString() == "data");
  REQUIRE(b.length() == 4);
}

TEST_CASE("Buffer: iovecs cover every readable byte") {
  Buffer b;
  std::string big(Slice::kBlockSize * 2 + 1, 'q');
  b.add(big);
  iovec iov[8];
  size_t n = b.fillIovecs(iov, 8);
  size_t total = 0;
  for (size_t i = 0; i < n; ++i) total += iov[i].iov_len;
  REQUIRE(n == 3);
  REQUIRE(total == big.size());
}

TEST_CASE("Buffer: search finds a needle across a slice boundary") {
  Buffer b;
  std::string pad(Slice::kBlockSize - 2, '.');
  b.add(pad);
  b.add("\r\n\r\nbody");
  REQUIRE(b.search("\r\n\r\n") == pad.size());
  REQUIRE(b.search("nope") == Buffer::npos);
}

TEST_CASE("Buffer: blocks return to the per-thread pool") {
  size_t before = strait::common::pooledBlocksForTest();
  {
    // Takes every pooled block and two fresh ones; all of them come back.
    Buffer b;
    b.add(std::string(Slice::kBlockSize * (before + 2), 'p'));
    REQUIRE(strait::common::pooledBlocksForTest() == 0);
  }
  REQUIRE(strait::common::pooledBlocksForTest() == before + 2);
}

TEST_CASE("Buffer: a thread's pool can be trimmed after a burst") {
  {
    Buffer b;
    b.add(std::string(Slice::kBlockSize * 20, 't'));
  }
  REQUIRE(strait::common::pooledBlocksForTest() >= 20);
  strait::common::trimBlockPool(8);
  REQUIRE(strait::common::pooledBlocksForTest() == 8);
  strait::common::trimBlockPool(8);  // already there: nothing more goes
  REQUIRE(strait::common::pooledBlocksForTest() == 8);
}

TEST_CASE("Buffer: long chains wrap and grow the slice ring without losing order") {
  // Queue-like use: bytes go in at the tail while the front drains, so the ring's head walks around its
  // storage, then a burst makes the chain longer than the in-place capacity and the ring moves to the heap.
  Buffer b;
  std::string expect;
  auto chunk = [](size_t n, char c) { return std::string(n, c); };
  for (int round = 0; round < 12; ++round) {
    std::string part = chunk(Slice::kBlockSize, static_cast<char>('a' + round));
    b.add(part);
    expect += part;
    if (round % 2 == 1) {
      b.drain(Slice::kBlockSize / 2 * 3);
      expect.erase(0, Slice::kBlockSize / 2 * 3);
    }
    REQUIRE(b.length() == expect.size());
  }
  std::string burst = chunk(Slice::kBlockSize * 9 + 3, 'Z');
  b.add(burst);
  expect += burst;
  REQUIRE(b.sliceCount() > strait::common::SliceRing::kInline);
  REQUIRE(b.toString() == expect);
  // Moving the whole buffer keeps every byte, whether the ring is in place or on the heap.
  Buffer moved(std::move(b));
  REQUIRE(b.empty());
  REQUIRE(moved.toString() == expect);
  Buffer small;
  small.add("tiny");
  Buffer small_moved(std::move(small));
  REQUIRE(small_moved.toString() == "tiny");
  small.add("reuse");
  REQUIRE(small.toString() == "reuse");
  moved.drain(moved.length());
  REQUIRE(moved.empty());
}
