#pragma once

#include <atomic>
#include <string_view>

namespace strait::common {

// Levels in Envoy's order and spelling, so `--log-level` and `/logging?level=` take the same words.
enum class LogLevel : int { Trace = 0, Debug, Info, Warning, Error, Critical, Off };

// The process-wide threshold; changed at run time by the admin's /logging.
extern std::atomic<int> g_log_level;

bool parseLogLevel(std::string_view name, LogLevel& out);
const char* logLevelName(LogLevel level);
inline LogLevel currentLogLevel() { return static_cast<LogLevel>(g_log_level.load(std::memory_order_relaxed)); }
void setLogLevel(LogLevel level);

// Formats one line and writes it to stderr with a single write(2), so lines from threads never interleave.
void logWrite(LogLevel level, const char* file, int line, const char* fmt, ...)
    __attribute__((format(printf, 4, 5)));

}  // namespace strait::common

#define STRAIT_LOG(level, ...)                                                                       \
  do {                                                                                               \
    if (static_cast<int>(level) >= ::strait::common::g_log_level.load(std::memory_order_relaxed)) \
      ::strait::common::logWrite(level, __FILE__, __LINE__, __VA_ARGS__);                            \
  } while (0)
#define LOG_TRACE(...) STRAIT_LOG(::strait::common::LogLevel::Trace, __VA_ARGS__)
#define LOG_DEBUG(...) STRAIT_LOG(::strait::common::LogLevel::Debug, __VA_ARGS__)
#define LOG_INFO(...) STRAIT_LOG(::strait::common::LogLevel::Info, __VA_ARGS__)
#define LOG_WARN(...) STRAIT_LOG(::strait::common::LogLevel::Warning, __VA_ARGS__)
#define LOG_ERROR(...) STRAIT_LOG(::strait::common::LogLevel::Error, __VA_ARGS__)
#define LOG_CRITICAL(...) STRAIT_LOG(::strait::common::LogLevel::Critical, __VA_ARGS__)

// Invariants: ASSERT is checked in debug builds, RELEASE_ASSERT always (continuing would corrupt state).
#define RELEASE_ASSERT(cond, msg)                                                      \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      ::strait::common::logWrite(::strait::common::LogLevel::Critical, __FILE__, __LINE__, \
                                 "assert failure: %s: %s", #cond, msg);                \
      ::abort();                                                                       \
    }                                                                                  \
  } while (0)
#ifndef NDEBUG
#define ASSERT(cond) RELEASE_ASSERT(cond, "")
#else
#define ASSERT(cond) \
  do {               \
  } while (false && (cond))
#endif
