#include "proxy/common/log.h"

#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace strait::common {

std::atomic<int> g_log_level{static_cast<int>(LogLevel::Info)};

namespace {
constexpr const char* kNames[] = {"trace", "debug", "info", "warning", "error", "critical", "off"};
}

bool parseLogLevel(std::string_view name, LogLevel& out) {
  for (int i = 0; i <= static_cast<int>(LogLevel::Off); ++i) {
    if (name == kNames[i]) {
      out = static_cast<LogLevel>(i);
      return true;
    }
  }
  if (name == "warn") {  // Envoy's spdlog also accepts the short form.
    out = LogLevel::Warning;
    return true;
  }
  return false;
}

const char* logLevelName(LogLevel level) { return kNames[static_cast<int>(level)]; }

void setLogLevel(LogLevel level) { g_log_level.store(static_cast<int>(level), std::memory_order_relaxed); }

void logWrite(LogLevel level, const char* file, int line, const char* fmt, ...) {
  char buf[2048];
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  tm t;
  gmtime_r(&ts.tv_sec, &t);
  const char* base = std::strrchr(file, '/');
  base = base ? base + 1 : file;
  int n = std::snprintf(buf, sizeof(buf), "[%04d-%02d-%02d %02d:%02d:%02d.%03ld][%ld][%s][%s:%d] ",
                        t.tm_year + 1900, t.tm_mon + 1, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec,
                        ts.tv_nsec / 1000000, static_cast<long>(syscall(SYS_gettid)),
                        kNames[static_cast<int>(level)], base, line);
  if (n < 0) return;
  va_list ap;
  va_start(ap, fmt);
  int m = std::vsnprintf(buf + n, sizeof(buf) - n - 1, fmt, ap);
  va_end(ap);
  size_t len = static_cast<size_t>(n) + (m < 0 ? 0 : static_cast<size_t>(m));
  if (len > sizeof(buf) - 2) len = sizeof(buf) - 2;
  buf[len++] = '\n';
  ssize_t rc = ::write(STDERR_FILENO, buf, len);
  (void)rc;
}

}  // namespace strait::common
