#include <catch2/catch.hpp>
#include <memory>
#include <vector>

#include "proxy/common/owned_list.h"

using strait::common::ListLinks;
using strait::common::OwnedList;

namespace {
struct Item : ListLinks<Item> {
  Item(int v, std::vector<int>* dead) : value(v), dead_(dead) {}
  ~Item() { dead_->push_back(value); }
  int value;
  std::vector<int>* dead_;
};

std::vector<int> values(const OwnedList<Item>& l) {
  std::vector<int> out;
  for (Item* i = l.front(); i != nullptr; i = OwnedList<Item>::next(*i)) out.push_back(i->value);
  return out;
}
}  // namespace

TEST_CASE("OwnedList: elements stay in order through removals from the middle and both ends") {
  std::vector<int> dead;
  {
    OwnedList<Item> l;
    std::vector<Item*> items;
    for (int v = 1; v <= 5; ++v) items.push_back(&l.pushBack(std::make_unique<Item>(v, &dead)));
    REQUIRE(l.size() == 5);
    REQUIRE(values(l) == std::vector<int>{1, 2, 3, 4, 5});

    auto middle = l.take(*items[2]);  // handed back, not destroyed
    REQUIRE(dead.empty());
    REQUIRE(middle->value == 3);
    REQUIRE(values(l) == std::vector<int>{1, 2, 4, 5});
    l.take(*items[0]);  // the returned pointer destroys the head right away
    l.take(*items[4]);
    REQUIRE(dead == std::vector<int>{1, 5});
    REQUIRE(values(l) == std::vector<int>{2, 4});

    // A taken element can be added again, at the back.
    l.pushBack(std::move(middle));
    REQUIRE(values(l) == std::vector<int>{2, 4, 3});
    REQUIRE(l.size() == 3);
  }
  // The list's destructor destroys what it still owns, first to last.
  REQUIRE(dead == std::vector<int>{1, 5, 2, 4, 3});
}
