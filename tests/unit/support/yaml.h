#pragma once

// YAML (through the bootstrap's own YAML -> JSON conversion) into any config message, for unit tests
// that write their config the way users do.

#include <catch2/catch.hpp>

#include <string>

#include "google/protobuf/util/json_util.h"
#include "proxy/config/bootstrap.h"

namespace strait::testing {

template <typename T>
T parseYaml(const std::string& yaml) {
  auto json = config::yamlToJson(yaml, "", "test");
  REQUIRE(json.ok());
  T msg;
  auto st = google::protobuf::util::JsonStringToMessage(*json, &msg);
  INFO(st.ToString());
  REQUIRE(st.ok());
  return msg;
}

}  // namespace strait::testing
