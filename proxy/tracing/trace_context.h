#pragma once

// Trace context on the wire: W3C Trace Context (`traceparent`) and B3 (`b3`, `x-b3-*`), read from a
// request and written for the upstream with this proxy's span as the new parent; and the sampling
// decision of an HTTP connection manager's `tracing` settings (Envoy's rules).
//
// Everything here is plain functions over fixed-size values: no allocation beyond the header values
// the caller asks to format, so they run on every traced request and are tested alone.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace strait::http {
struct RequestHeaders;
}

namespace strait::tracing {

// Where an incoming context came from: it decides which headers go upstream (traceparent always, and
// B3 in the shape it came in, so a B3-only application keeps its trace).
enum class ContextFormat : uint8_t { None, W3c, B3Single, B3Multi };

// The sampled flag a context carries. B3 may leave the decision to the receiver (Deferred).
enum class Sampled : uint8_t { Deferred, No, Yes };

struct SpanContext {
  uint64_t trace_id_high = 0;  // 0 for a 64-bit B3 trace id
  uint64_t trace_id_low = 0;
  uint64_t span_id = 0;        // the sender's span: the parent of ours
  Sampled sampled = Sampled::Deferred;
  bool debug = false;          // B3 `d` / x-b3-flags: 1 (forces sampling)
  ContextFormat format = ContextFormat::None;
  bool valid() const { return (trace_id_high | trace_id_low) != 0 && span_id != 0; }
};

// traceparent: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, lower-case hex (the spec).
// Invalid values (wrong length or separators, upper-case or non-hex digits, an all-zero id, version
// ff) yield nullopt, and the caller treats the header as absent. A version other than 00 is read by
// its first four fields as the spec asks (a longer value must continue with '-').
std::optional<SpanContext> parseTraceparent(std::string_view v);
// b3 single header: `<trace id>-<span id>[-<sampling>[-<parent span id>]]` or a lone sampling state
// (`0`, `1`, `d`), which carries no ids (then nullopt, and *sampling_only says what it said).
// Trace ids are 16 or 32 hex digits, span ids 16; hex may be either case (B3 allows it).
std::optional<SpanContext> parseB3Single(std::string_view v, Sampled* sampling_only = nullptr);
// The x-b3-* multi headers (any may be null): trace id and span id are required for a context.
std::optional<SpanContext> parseB3Multi(const std::string* trace_id, const std::string* span_id,
                                        const std::string* sampled, const std::string* flags);

// The trace headers of a request, found in one pass over it (names compared by length first).
struct TraceHeaders {
  const std::string* traceparent = nullptr;
  const std::string* b3 = nullptr;
  const std::string* b3_trace_id = nullptr;
  const std::string* b3_span_id = nullptr;
  const std::string* b3_parent_span_id = nullptr;
  const std::string* b3_sampled = nullptr;
  const std::string* b3_flags = nullptr;
  const std::string* request_id = nullptr;
  bool force_trace = false;      // x-envoy-force-trace (sanitizing already removed an external one)
  bool client_trace_id = false;  // x-client-trace-id
};
TraceHeaders scanTraceHeaders(const http::RequestHeaders& h);

// Reads the request's context, W3C first, then b3, then x-b3-*. `sampling_only`: a sampling state
// sent without ids (b3: 0, x-b3-sampled alone), which the decision still honours.
std::optional<SpanContext> extract(const TraceHeaders& t, Sampled* sampling_only);

// Formatting into caller buffers (no allocation). Return the bytes written.
inline constexpr size_t kTraceparentLen = 55;
size_t formatTraceparent(uint64_t trace_high, uint64_t trace_low, uint64_t span_id, bool sampled, char* out);
// 16 hex digits of a 64-bit id, or 32 of a 128-bit one when high != 0.
size_t formatHexId(uint64_t high, uint64_t low, bool force128, char* out);

// Sampling settings of an HCM's `tracing`, in hundredths of a percent (0..10000), as Envoy reads
// them (client_sampling, random_sampling, overall_sampling; each default 100%).
struct SamplingConfig {
  uint32_t client = 10000;
  uint32_t random = 10000;
  uint32_t overall = 10000;
};

// Why a request is (or is not) traced: Envoy's reasons, each counted in http.<prefix>.tracing.*.
enum class TraceReason : uint8_t { NotTraceable, Forced, Client, Random };

struct SamplingInput {
  bool force_trace = false;      // x-envoy-force-trace on an internal request
  bool client_trace_id = false;  // x-client-trace-id present
  uint64_t request_id_hash = 0;  // stable hash of x-request-id: every hop of a request decides alike
  uint64_t overall_random = 0;   // a fresh random number (overall_sampling, and client_sampling from its upper digits)
  Sampled incoming = Sampled::Deferred;  // the parent's flag (b3 debug counts as Yes)
};
struct SamplingDecision {
  TraceReason reason = TraceReason::NotTraceable;
  bool sampled = false;
};
// Envoy's order: x-envoy-force-trace, else x-client-trace-id under client_sampling, else
// random_sampling by the x-request-id hash; then overall_sampling may still say no. A parent that
// says sampled or not sampled is followed whatever the local decision (the trace is the caller's),
// except that x-envoy-force-trace wins over a parent's "no".
SamplingDecision decideSampling(const SamplingConfig& c, const SamplingInput& in);

// FNV-1a of the x-request-id text: stable across hops and processes, cheap on 36 bytes.
uint64_t requestIdHash(std::string_view request_id);

}  // namespace strait::tracing
