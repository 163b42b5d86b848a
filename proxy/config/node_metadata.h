#pragma once

#include <string>

namespace strait::config {

// Node metadata from the process's environment (STRAIT_META_* / ISTIO_META_*, read by
// server/pod_env.cc) as a JSON object, merged into node.metadata of every bootstrap parsed after this
// call, its keys replacing the file's. Set once at start-up, before the bootstrap is loaded.
void setEnvironmentNodeMetadata(std::string json);

}  // namespace strait::config
