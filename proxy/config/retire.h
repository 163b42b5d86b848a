#pragma once

#include <memory>
#include <vector>

namespace strait::config {

// Config objects a worker lets go of (a replaced snapshot, clusters removed or replaced) are handed
// here rather than released on the worker: the worker's reference may be the last one, and releasing
// 10,000 removed clusters (their hosts, stats and balancers) would hold the worker's loop for
// milliseconds. The main thread releases them (releaseRetired(), on its periodic tick). One lock per
// call, at config time; never per request.
void retire(std::vector<std::shared_ptr<const void>> objects);

// Main thread: releases what was retired so far. Returns how many references it let go of.
size_t releaseRetired();

}  // namespace strait::config
