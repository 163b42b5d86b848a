#pragma once

#include <nghttp2/nghttp2.h>

#include <cstddef>

namespace strait::http::http2 {

// The allocator our nghttp2 sessions use: small blocks (up to 4 KiB) in power-of-two size classes, recycled
// through per-thread free lists of at most 64 KiB per class. nghttp2 allocates for every stream, every received header that is
// not in HPACK's static table and every queued frame; with many streams in flight those same-size blocks
// overflow glibc's 7-entry per-thread cache and went through the arena's bins and consolidation.
nghttp2_mem* sessionAllocator();

// Blocks waiting in this thread's free lists (for tests).
size_t pooledBlocksForTest();

}  // namespace strait::http::http2
