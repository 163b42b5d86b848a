#include "proxy/config/name_map.h"

#include <catch2/catch.hpp>

#include <map>
#include <random>
#include <string>
#include <vector>

using strait::config::NameMap;

namespace {
// The reference: what a std::map of the same operations holds.
template <class V>
std::vector<std::pair<std::string, V>> items(const NameMap<V>& m) {
  std::vector<std::pair<std::string, V>> out;
  for (const auto& [k, v] : m) out.emplace_back(k, v);
  return out;
}
template <class V>
std::vector<std::pair<std::string, V>> items(const std::map<std::string, V>& m) {
  return {m.begin(), m.end()};
}
}  // namespace

TEST_CASE("NameMap reads, iterates and erases like a std::map through folds", "[name_map]") {
  std::mt19937 rng(7);
  NameMap<int> m;
  std::map<std::string, int> ref;
  std::vector<NameMap<int>> copies;
  std::vector<std::map<std::string, int>> ref_copies;
  for (int step = 0; step < 20000; ++step) {
    const std::string name = "c" + std::to_string(rng() % 600);
    switch (rng() % 10) {
      case 0:
      case 1:
        CHECK(m.erase(name) == (ref.erase(name) == 1));
        break;
      case 2:
        if (rng() % 50 == 0) {
          m.clear();
          ref.clear();
        }
        break;
      default:
        m.set(name, step);
        ref[name] = step;
    }
    REQUIRE(m.size() == ref.size());
    const std::string probe = "c" + std::to_string(rng() % 600);
    const int* got = m.get(probe);
    auto want = ref.find(probe);
    REQUIRE((got != nullptr) == (want != ref.end()));
    if (got != nullptr) REQUIRE(*got == want->second);
    // find() goes on in name order from the entry it found.
    auto it = m.find(probe);
    REQUIRE((it == m.end()) == (want == ref.end()));
    if (it != m.end()) {
      ++it;
      ++want;
      REQUIRE((it == m.end()) == (want == ref.end()));
      if (want != ref.end()) REQUIRE(it->first == want->first);
    }
    if (step % 997 == 0) {
      REQUIRE(items(m) == items(ref));
      copies.push_back(m);
      ref_copies.push_back(ref);
    }
  }
  REQUIRE(items(m) == items(ref));
  // A copy is a value: later writes to the original do not show in it.
  for (size_t i = 0; i < copies.size(); ++i) REQUIRE(items(copies[i]) == items(ref_copies[i]));
}

TEST_CASE("NameMap copies share the base and copy only the overlay", "[name_map]") {
  NameMap<int> loaded;
  for (int i = 0; i < 10000; ++i) loaded.set("c" + std::to_string(i), i);
  // A bulk load stays in the overlay until copied; the copy folds it into a base of its own.
  CHECK(loaded.overlaySize() == 10000);
  NameMap<int> m = loaded;
  CHECK(m.overlaySize() == 0);
  CHECK(loaded.overlaySize() == 10000);  // the original is never changed by a copy
  NameMap<int> next = m;
  next.set("c5", -5);
  next.erase("c6");
  CHECK(next.size() == 9999);
  CHECK(*next.get("c5") == -5);
  CHECK(next.get("c6") == nullptr);
  CHECK(*m.get("c5") == 5);
  CHECK(*m.get("c6") == 6);
  // A few changes are copied as they are; past 2*sqrt(n) the copy folds.
  NameMap<int> small = next;
  CHECK(small.overlaySize() == 2);
  for (int i = 0; i < 300; ++i) small.set("c" + std::to_string(i), -i);
  NameMap<int> folded = small;
  CHECK(folded.overlaySize() == 0);
  CHECK(*folded.get("c299") == -299);
  CHECK(folded.size() == small.size());
  CHECK(next.eraseIf([](const std::string&, int v) { return v % 2 == 0; }) == 4999);  // the evens, less c6
  CHECK(next.size() == 5000);
}

TEST_CASE("NameMap find in an overlay that shadows the whole base goes on in order", "[name_map]") {
  // What the xDS applier holds after a state-of-the-world push: every name set again over a base that
  // has them all (find must not walk the shadowed base: it did, and each lookup was O(n)).
  NameMap<int> m;
  for (int i = 0; i < 2000; ++i) m.set("c" + std::to_string(1000 + i), i);
  NameMap<int> held = m;  // folded: a base of 2000
  for (int i = 0; i < 2000; ++i) held.set("c" + std::to_string(1000 + i), -i);
  REQUIRE(held.overlaySize() == 2000);
  auto it = held.find("c1500");
  REQUIRE(it != held.end());
  CHECK(it->second == -500);
  ++it;
  REQUIRE(it != held.end());
  CHECK(it->first == "c1501");
  CHECK(it == held.find("c1501"));
  auto last = held.find("c2999");
  REQUIRE(last != held.end());
  ++last;
  CHECK(last == held.end());
}
