#pragma once

// udpa.type.v1.TypedStruct and xds.type.v3.TypedStruct: a typed_config whose real type is named inside
// it (type_url) and whose config is JSON-shaped data (value, a google.protobuf.Struct). Istio wraps its
// own filters in them. One reader for every place that unwraps them (HTTP filters, network filters).

#include <optional>
#include <string>
#include <string_view>

#include "google/protobuf/any.pb.h"
#include "udpa/type/v1/typed_struct.pb.h"

namespace strait::config {

inline constexpr std::string_view kUdpaTypedStructType = "type.googleapis.com/udpa.type.v1.TypedStruct";
inline constexpr std::string_view kXdsTypedStructType = "type.googleapis.com/xds.type.v3.TypedStruct";

struct TypedStructContent {
  std::string wrapper;   // the wrapper's type name ("udpa.type.v1.TypedStruct")
  std::string type_url;  // the wrapped type, as "type.googleapis.com/<full name>"
  google::protobuf::Struct value;
};

inline bool isTypedStruct(const google::protobuf::Any& any) {
  return any.type_url() == kUdpaTypedStructType || any.type_url() == kXdsTypedStructType;
}

// The wrapped type and value of a TypedStruct (both wrappers have the same fields: type_url = 1,
// value = 2); nullopt when `any` is not one or does not decode.
inline std::optional<TypedStructContent> readTypedStruct(const google::protobuf::Any& any) {
  if (!isTypedStruct(any)) return std::nullopt;
  udpa::type::v1::TypedStruct ts;
  if (!ts.ParseFromString(any.value())) return std::nullopt;
  TypedStructContent out;
  out.wrapper = any.type_url().substr(any.type_url().rfind('/') + 1);
  out.type_url = "type.googleapis.com/" + ts.type_url().substr(ts.type_url().rfind('/') + 1);
  out.value = std::move(*ts.mutable_value());
  return out;
}

}  // namespace strait::config
