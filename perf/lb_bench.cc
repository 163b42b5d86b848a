// Load balancer micro-benchmark: the cost of one choice for each policy at 10, 100 and 10,000 hosts,
// and of a rebuild (a health-generation bump followed by one choice). Single-threaded, as a worker
// uses its balancer. Each measurement is bounded: at most 2 million choices (200 rebuilds) or the time
// budget (2 s by default, `strait_lb_bench SECONDS` to change it), whichever comes first. The
// "allocs" column counts heap allocations made during the choices (the balancer should make none).
//
//   ninja -C build strait_lb_bench && build/tests/strait_lb_bench
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <string>
#include <vector>

#include "proxy/upstream/load_balancer.h"

using namespace strait::upstream;
using Clock = std::chrono::steady_clock;

// Every allocation of the process goes through here, so the choice loops can be checked for none.
static uint64_t g_allocations = 0;
void* operator new(std::size_t size) {
  ++g_allocations;
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace {

struct Case {
  const char* name;
  LbConfig::Policy policy;
  bool weighted;  // hosts get weights 1..4 (otherwise all 1)
  bool keyed;     // every choice carries a hash key
};

std::vector<HostSharedPtr> makeHosts(uint32_t n, bool weighted) {
  std::vector<HostSharedPtr> hosts;
  hosts.reserve(n);
  const uint64_t now = static_cast<uint64_t>(Clock::now().time_since_epoch().count());
  for (uint32_t i = 0; i < n; ++i) {
    auto h = std::make_shared<Host>();
    h->address = *strait::network::Address::parse(
        "10." + std::to_string(i >> 16) + "." + std::to_string((i >> 8) & 255) + "." + std::to_string(i & 255), 80);
    h->locality = std::make_shared<Locality>();
    h->weight = weighted ? 1 + i % 4 : 1;
    // Some load and latency history, so least request and peak EWMA compare real numbers.
    h->active_requests = (i * 7) % 5;
    h->passive().ewma_latency_ns = 1'000'000 + (i * 7919) % 5'000'000;
    h->passive().ewma_stamp_ns = now;
    hosts.push_back(std::move(h));
  }
  return hosts;
}

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// ns per choice; `allocations` gets the heap allocations made meanwhile.
double timeChoices(LoadBalancer& lb, bool keyed, double budget_s, uint64_t& sink, uint64_t& allocations) {
  constexpr uint64_t kMaxChoices = 2'000'000;
  constexpr uint64_t kBatch = 4096;
  LbContext ctx;
  uint64_t done = 0;
  const auto start = Clock::now();
  auto elapsed = Clock::duration::zero();
  const uint64_t allocations_before = g_allocations;
  while (done < kMaxChoices) {
    for (uint64_t i = 0; i < kBatch; ++i) {
      if (keyed) ctx.hash_key = (done + i) * 0x9E3779B97F4A7C15ULL;
      sink += reinterpret_cast<uintptr_t>(lb.chooseHost(ctx));
    }
    done += kBatch;
    elapsed = Clock::now() - start;
    if (seconds(elapsed) >= budget_s) break;
  }
  allocations = g_allocations - allocations_before;
  return seconds(elapsed) * 1e9 / static_cast<double>(done);
}

// us per rebuild (generation bump + the choice that notices it).
double timeRebuilds(LoadBalancer& lb, std::atomic<uint64_t>& generation, double budget_s, uint64_t& sink) {
  constexpr int kMaxRebuilds = 200;
  int done = 0;
  const auto start = Clock::now();
  auto elapsed = Clock::duration::zero();
  while (done < kMaxRebuilds) {
    generation.fetch_add(1, std::memory_order_relaxed);
    sink += reinterpret_cast<uintptr_t>(lb.chooseHost({}));
    ++done;
    elapsed = Clock::now() - start;
    if (seconds(elapsed) >= budget_s) break;
  }
  return seconds(elapsed) * 1e6 / done;
}

}  // namespace

int main(int argc, char** argv) {
  const double budget_s = argc > 1 ? std::atof(argv[1]) : 2.0;
  if (!(budget_s > 0)) {
    std::fprintf(stderr, "usage: %s [seconds per measurement, default 2]\n", argv[0]);
    return 2;
  }
  const Case cases[] = {
      {"round_robin", LbConfig::Policy::RoundRobin, false, false},
      {"round_robin weighted", LbConfig::Policy::RoundRobin, true, false},
      {"least_request", LbConfig::Policy::LeastRequest, false, false},
      {"least_request weighted", LbConfig::Policy::LeastRequest, true, false},
      {"random", LbConfig::Policy::Random, false, false},
      {"ring_hash (key)", LbConfig::Policy::RingHash, false, true},
      {"ring_hash weighted (key)", LbConfig::Policy::RingHash, true, true},
      {"maglev (key)", LbConfig::Policy::Maglev, false, true},
      {"maglev weighted (key)", LbConfig::Policy::Maglev, true, true},
      {"peak_ewma", LbConfig::Policy::PeakEwma, false, false},
  };
  const uint32_t sizes[] = {10, 100, 10000};
  uint64_t sink = 0;
  std::printf("%-26s %7s %12s %8s %14s\n", "policy", "hosts", "ns/choice", "allocs", "rebuild us");
  for (const Case& c : cases) {
    for (uint32_t n : sizes) {
      LbConfig config;
      config.policy = c.policy;
      std::atomic<uint64_t> generation{0};
      auto lb = createLoadBalancer(config, makeHosts(n, c.weighted), &generation, 1);
      uint64_t allocations = 0;
      const double ns = timeChoices(*lb, c.keyed, budget_s, sink, allocations);
      const double us = timeRebuilds(*lb, generation, budget_s, sink);
      std::printf("%-26s %7u %12.1f %8llu %14.1f\n", c.name, n, ns, static_cast<unsigned long long>(allocations), us);
      std::fflush(stdout);
    }
  }
  // Keeps the choices from being optimized away.
  if (sink == 42) std::printf("\n");
  return 0;
}
