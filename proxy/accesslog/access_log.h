#pragma once

// Access logs (Envoy's access_log on the HTTP connection manager and tcp_proxy).
//
//   config time: AccessLog protos -> translateAccessLogs() -> AccessLog objects (filter tree,
//                formatter pieces, the shared LogFile of their path), held by the HCM / tcp_proxy config
//   stream end:  the HCM / tcp_proxy fills a LogContext (pointers into what the stream already has)
//                -> logAll(): filters, then the formatter appends the line straight into this thread's
//                buffer for that file (log_file.h); nothing is parsed, looked up by name or locked here
//   loop end:    the thread's buffers go to the writer thread in one hand-off (log_file.h)

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "proxy/http/header_map.h"

namespace google::protobuf {
class Struct;
template <typename T>
class RepeatedPtrField;
}  // namespace google::protobuf
namespace envoy::config::accesslog::v3 {
class AccessLog;
}
namespace strait::network {
class Address;
class Connection;
}  // namespace strait::network
namespace strait::event {
class Dispatcher;
}
namespace strait::stats {
class Store;
}
namespace strait::http {
struct HeaderMatch;
}

namespace strait::accesslog {

// What a finished HTTP stream or TCP session looked like. Pointers and views into what the stream
// holds at its end; absent values are null / empty / unset time points and print as "-".
struct LogContext {
  std::chrono::system_clock::time_point start_time;  // wall clock, for %START_TIME%
  std::chrono::steady_clock::time_point start;
  std::chrono::steady_clock::time_point end;
  std::chrono::steady_clock::time_point request_end;     // last request byte received (unset: epoch)
  std::chrono::steady_clock::time_point response_start;  // response headers sent (unset: epoch)
  uint32_t response_code = 0;
  uint32_t response_flags = 0;  // common::ResponseFlag bits
  uint64_t bytes_received = 0;
  uint64_t bytes_sent = 0;
  const char* protocol = nullptr;  // "HTTP/1.1"; null for TCP
  const http::RequestHeaders* request = nullptr;
  const http::ResponseHeaders* response = nullptr;
  const http::TrailerMap* response_trailers = nullptr;
  const network::Connection* downstream = nullptr;
  const network::Address* upstream_host = nullptr;
  const network::Address* upstream_local = nullptr;
  std::string_view upstream_cluster;
  std::string_view route_name;
  std::string_view response_code_details;
  std::string_view termination_details;
  std::string_view upstream_transport_failure;
};

// A format string parsed once into pieces (text, or a JSON object of them). format() appends one line.
class Formatter {
 public:
  struct Piece;
  struct JsonNode;
  ~Formatter();
  // `path` names the field for errors ("...log_format.text_format").
  static absl::StatusOr<std::unique_ptr<Formatter>> text(std::string_view format, bool omit_empty,
                                                         const std::string& path);
  static absl::StatusOr<std::unique_ptr<Formatter>> json(const google::protobuf::Struct& format, bool omit_empty,
                                                         const std::string& path);
  // Envoy's default line (when a logger names no format).
  static std::unique_ptr<Formatter> envoyDefault();
  void format(const LogContext& ctx, std::string& out) const;

 private:
  Formatter();
  std::vector<Piece> pieces_;         // text
  std::unique_ptr<JsonNode> json_;    // json (a line of one object, then '\n')
  bool omit_empty_ = false;
};

// AccessLogFilter, as a tree evaluated before anything is formatted.
struct LogFilter {
  enum class Kind { StatusCode, Duration, NotHealthCheck, Runtime, And, Or, Header, ResponseFlag };
  enum class Op { Eq, Ge, Le };
  Kind kind = Kind::StatusCode;
  Op op = Op::Eq;
  uint64_t value = 0;
  uint32_t per_million = 0;  // Runtime
  uint32_t flag_mask = 0;    // ResponseFlag (all bits: any flag)
  std::shared_ptr<const http::HeaderMatch> header;
  std::vector<LogFilter> children;
  bool evaluate(const LogContext& ctx) const;
};

// One configured access log: its filter (optional), formatter and file.
struct AccessLog {
  std::unique_ptr<LogFilter> filter;
  std::unique_ptr<Formatter> formatter;
  uint32_t file_id = 0;  // LogFiles id
};
using AccessLogList = std::vector<std::shared_ptr<const AccessLog>>;

// Writes a line to every log whose filter passes, into the calling thread's buffers; `dispatcher` is
// the calling worker's (its loop hands the buffers to the writer thread when the iteration ends).
void logAll(const AccessLogList& logs, const LogContext& ctx, event::Dispatcher& dispatcher);

// `path` is the repeated field's ("...access_log"); errors name the element and field at fault.
absl::StatusOr<AccessLogList> translateAccessLogs(
    const google::protobuf::RepeatedPtrField<envoy::config::accesslog::v3::AccessLog>& logs, const std::string& path,
    stats::Store& store);

}  // namespace strait::accesslog
