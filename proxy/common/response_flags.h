#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace strait::common {

// Envoy's response flags: why a request (or a TCP session) ended the way it did, as the access log's
// %RESPONSE_FLAGS% prints them ("UH", "UF,URX", "-" for none). One bit each, in Envoy's order, so a
// line lists them in the order Envoy does and existing log pipelines read them unchanged. The
// connection manager, the router, the fault filter and tcp_proxy set them where the thing happens.
enum ResponseFlag : uint32_t {
  kFailedLocalHealthCheck = 1u << 0,           // LH
  kNoHealthyUpstream = 1u << 1,                // UH
  kUpstreamRequestTimeout = 1u << 2,           // UT
  kLocalReset = 1u << 3,                       // LR
  kUpstreamRemoteReset = 1u << 4,              // UR
  kUpstreamConnectionFailure = 1u << 5,        // UF
  kUpstreamConnectionTermination = 1u << 6,    // UC
  kUpstreamOverflow = 1u << 7,                 // UO
  kNoRouteFound = 1u << 8,                     // NR
  kDelayInjected = 1u << 9,                    // DI
  kFaultInjected = 1u << 10,                   // FI
  kRateLimited = 1u << 11,                     // RL
  kUnauthorizedExternalService = 1u << 12,     // UAEX
  kRateLimitServiceError = 1u << 13,           // RLSE
  kDownstreamConnectionTermination = 1u << 14, // DC
  kUpstreamRetryLimitExceeded = 1u << 15,      // URX
  kStreamIdleTimeout = 1u << 16,               // SI
  kInvalidEnvoyRequestHeaders = 1u << 17,      // IH
  kDownstreamProtocolError = 1u << 18,         // DPE
  kUpstreamMaxStreamDurationReached = 1u << 19,// UMSDR
  kResponseFromCacheFilter = 1u << 20,         // RFCF
  kNoFilterConfigFound = 1u << 21,             // NFCF
  kDurationTimeout = 1u << 22,                 // DT
  kUpstreamProtocolError = 1u << 23,           // UPE
  kNoClusterFound = 1u << 24,                  // NC
  kOverloadManager = 1u << 25,                 // OM
  kDnsResolutionFailed = 1u << 26,             // DF
  kDropOverload = 1u << 27,                    // DO
  kDownstreamRemoteReset = 1u << 28,           // DR
};
inline constexpr int kResponseFlagCount = 29;

struct ResponseFlagName {
  std::string_view short_name;
  std::string_view long_name;
};
// Indexed by bit position.
inline constexpr ResponseFlagName kResponseFlagNames[kResponseFlagCount] = {
    {"LH", "FailedLocalHealthCheck"},
    {"UH", "NoHealthyUpstream"},
    {"UT", "UpstreamRequestTimeout"},
    {"LR", "LocalReset"},
    {"UR", "UpstreamRemoteReset"},
    {"UF", "UpstreamConnectionFailure"},
    {"UC", "UpstreamConnectionTermination"},
    {"UO", "UpstreamOverflow"},
    {"NR", "NoRouteFound"},
    {"DI", "DelayInjected"},
    {"FI", "FaultInjected"},
    {"RL", "RateLimited"},
    {"UAEX", "UnauthorizedExternalService"},
    {"RLSE", "RateLimitServiceError"},
    {"DC", "DownstreamConnectionTermination"},
    {"URX", "UpstreamRetryLimitExceeded"},
    {"SI", "StreamIdleTimeout"},
    {"IH", "InvalidEnvoyRequestHeaders"},
    {"DPE", "DownstreamProtocolError"},
    {"UMSDR", "UpstreamMaxStreamDurationReached"},
    {"RFCF", "ResponseFromCacheFilter"},
    {"NFCF", "NoFilterConfigFound"},
    {"DT", "DurationTimeout"},
    {"UPE", "UpstreamProtocolError"},
    {"NC", "NoClusterFound"},
    {"OM", "OverloadManager"},
    {"DF", "DnsResolutionFailed"},
    {"DO", "DropOverload"},
    {"DR", "DownstreamRemoteReset"},
};

// Appends the flags as Envoy prints them: short names joined with ',' ("-" when none); long: the
// long names joined with ',' ("-" when none).
inline void appendResponseFlags(std::string& out, uint32_t flags, bool long_names = false) {
  if (flags == 0) {
    out.push_back('-');
    return;
  }
  bool first = true;
  for (int i = 0; i < kResponseFlagCount; ++i) {
    if ((flags & (1u << i)) == 0) continue;
    if (!first) out.push_back(',');
    first = false;
    out.append(long_names ? kResponseFlagNames[i].long_name : kResponseFlagNames[i].short_name);
  }
}

// The bit of a short name ("UH"), 0 if there is none.
inline uint32_t responseFlagByName(std::string_view name) {
  for (int i = 0; i < kResponseFlagCount; ++i) {
    if (kResponseFlagNames[i].short_name == name) return 1u << i;
  }
  return 0;
}

}  // namespace strait::common
