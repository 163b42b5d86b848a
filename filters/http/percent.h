#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "envoy/type/v3/percent.pb.h"

namespace strait::filters::http {

// envoy.type.v3.FractionalPercent, translated: numerator / denominator (100, 10,000 or 1,000,000).
struct Fraction {
  uint32_t numerator = 0;
  uint32_t denominator = 100;
  // `random` is uniform: true for numerator/denominator of its values.
  bool hit(uint64_t random) const { return numerator > 0 && random % denominator < numerator; }
};

inline absl::StatusOr<Fraction> translateFraction(const envoy::type::v3::FractionalPercent& p, const std::string& path) {
  Fraction f;
  switch (p.denominator()) {
    case envoy::type::v3::FractionalPercent::HUNDRED: f.denominator = 100; break;
    case envoy::type::v3::FractionalPercent::TEN_THOUSAND: f.denominator = 10000; break;
    case envoy::type::v3::FractionalPercent::MILLION: f.denominator = 1000000; break;
    default: return absl::InvalidArgumentError(absl::StrCat(path, ".denominator: unknown value ", p.denominator()));
  }
  // As in Envoy, a numerator above the denominator means 100%.
  f.numerator = std::min(p.numerator(), f.denominator);
  return f;
}

}  // namespace strait::filters::http
