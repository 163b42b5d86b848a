#include "proxy/config/retire.h"

#include <mutex>

namespace strait::config {

namespace {

struct Retired {
  std::mutex mu;
  std::vector<std::shared_ptr<const void>> objects;
};

Retired& retired() {
  static Retired* r = new Retired();  // never destroyed: workers may retire during exit
  return *r;
}

}  // namespace

void retire(std::vector<std::shared_ptr<const void>> objects) {
  if (objects.empty()) return;
  Retired& r = retired();
  std::lock_guard<std::mutex> lock(r.mu);
  if (r.objects.empty()) {
    r.objects = std::move(objects);
  } else {
    r.objects.insert(r.objects.end(), std::make_move_iterator(objects.begin()), std::make_move_iterator(objects.end()));
  }
}

size_t releaseRetired() {
  std::vector<std::shared_ptr<const void>> mine;
  {
    Retired& r = retired();
    std::lock_guard<std::mutex> lock(r.mu);
    mine.swap(r.objects);
  }
  return mine.size();  // released here, outside the lock
}

}  // namespace strait::config
