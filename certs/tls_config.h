#pragma once

#include <string>

#include "absl/status/status.h"

namespace google::protobuf {
class Message;
}

namespace strait::certs {

// Registers the transport sockets with the config layer: TLS (UpstreamTlsContext on clusters,
// DownstreamTlsContext on filter chains) and raw_buffer (plaintext).
void registerTransportSockets();

// Publishes the bootstrap's static_resources.secrets (envoy Secret protos) as named secrets, so that an
// SdsSecretConfig without sds_config finds them. Errors name the field.
absl::Status loadStaticSecret(const google::protobuf::Message& secret, const std::string& path);

// An SDS Secret resource as it arrived from the control plane: validated and published under its name.
absl::Status applySdsSecret(const google::protobuf::Message& secret, const std::string& path);
// Validates an SDS Secret without publishing it.
absl::Status checkSdsSecret(const google::protobuf::Message& secret, const std::string& path);

}  // namespace strait::certs
