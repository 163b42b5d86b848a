#include "proxy/http/codec.h"

namespace strait::http {

const char* protocolName(Protocol p) {
  switch (p) {
    case Protocol::Http10: return "HTTP/1.0";
    case Protocol::Http11: return "HTTP/1.1";
    case Protocol::Http2: return "HTTP/2";
  }
  return "?";
}

const char* resetReasonName(StreamResetReason r) {
  switch (r) {
    case StreamResetReason::LocalReset: return "local reset";
    case StreamResetReason::RemoteReset: return "remote reset";
    case StreamResetReason::ConnectionFailure: return "connection failure";
    case StreamResetReason::ConnectionTermination: return "connection termination";
    case StreamResetReason::Overflow: return "overflow";
    case StreamResetReason::RefusedStream: return "refused stream";
    case StreamResetReason::ProtocolError: return "protocol error";
    case StreamResetReason::ResponseComplete: return "response complete";
  }
  return "?";
}

}  // namespace strait::http
