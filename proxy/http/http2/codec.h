#pragma once

#include <memory>

#include "proxy/http/codec.h"

namespace strait::http::http2 {

std::unique_ptr<ServerConnection> createServerConnection(CodecTransport& transport, ServerConnectionCallbacks& callbacks,
                                                         const CodecSettings& settings);
std::unique_ptr<ClientConnection> createClientConnection(CodecTransport& transport, ClientConnectionCallbacks& callbacks,
                                                         const CodecSettings& settings);

}  // namespace strait::http::http2
