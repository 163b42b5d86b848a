#pragma once

#include <initializer_list>
#include <string>

#include "absl/status/statusor.h"
#include "filters/common/rbac/engine.h"

namespace envoy::config::rbac::v3 {
class RBAC;
}
namespace google::protobuf {
class Message;
}

namespace strait::filters::rbac {

struct TranslateOptions {
  // The network filter sees no request: header rules are refused there, as Envoy does.
  bool http = true;
};

// Translates envoy.config.rbac.v3.RBAC. Errors name the field, e.g.
// "<path>.policies[\"p\"].permissions[0].url_path.path.safe_regex.regex: invalid regex: ...". Rules Strait
// cannot evaluate (metadata, filter_state, conditions, custom matchers: fields our proto subset does not
// have and that arrive as unknown fields) are refused rather than ignored, since ignoring one would
// change what a policy matches.
absl::StatusOr<EngineConstSharedPtr> translateEngine(const envoy::config::rbac::v3::RBAC& proto,
                                                     const std::string& path, const TranslateOptions& options);

// An error naming the unknown fields of `msg` (fields of Envoy's API our subset does not have), unless
// all of them are in `tolerated` (field numbers whose absence changes no decision). OK when there are none.
absl::Status refuseUnknownFields(const google::protobuf::Message& msg, const std::string& path,
                                 std::initializer_list<int> tolerated = {});

}  // namespace strait::filters::rbac
