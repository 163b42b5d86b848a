#pragma once

// Access log files: opened once per path (every logger naming it shares it), written by one writer
// thread, reopened on SIGUSR1 and POST /reopen_logs.
//
// Why writes never block a worker: a worker appends each line to its own per-file buffer (a plain
// std::string only that thread touches: no lock, no syscall). It hands its buffers to the writer
// thread once per loop iteration, when the loop is about to wait for I/O (Dispatcher::queueFlush),
// or at once when a buffer passes 64 KiB: one mutex hand-off per iteration or per 64 KiB, however many
// requests it served. A timer was the alternative; the end-of-iteration hook hands lines off as soon
// as the worker is idle, needs no handle per worker, and a busy worker batches by itself. Only the
// writer thread calls write(2): a slow disk slows it alone. Memory stays bounded: once
// kMaxQueuedBytes wait for the writer, further hand-offs are dropped and their lines counted in
// access_log.dropped.
//
// Stats (Envoy's filesystem.* names): filesystem.write_buffered (hand-offs queued),
// filesystem.write_completed, filesystem.write_failed, filesystem.reopen_failed, gauge
// filesystem.write_total_buffered (bytes waiting); access_log.dropped (lines dropped, Strait's).

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace strait::event {
class Dispatcher;
}
namespace strait::stats {
class Store;
}

namespace strait::accesslog {

inline constexpr size_t kMaxQueuedBytes = 16u << 20;    // waiting for the writer, all files together
inline constexpr size_t kHandOffBytes = 64u << 10;      // a thread buffer this full goes at once

class LogFiles {
 public:
  // The process's one instance (never destroyed: worker threads hand their last lines to it at exit).
  static LogFiles& get();

  // The id of the file at `path`, opened (append, create) on first use; "/dev/stdout" and
  // "/dev/stderr" are the process's own descriptors. Config time; thread-safe.
  absl::StatusOr<uint32_t> open(const std::string& path, stats::Store& store);

  // The calling thread's buffer for file `id`: append one whole line, then call commit().
  std::string& buffer(uint32_t id, event::Dispatcher& dispatcher);
  void commit(uint32_t id);

  // Asks the writer thread to reopen every file (logrotate) and waits (up to 2 s) until it has.
  void reopenAll();
  // Writes everything handed off and stops the writer thread (process exit, after the workers joined).
  void shutdown();
};

}  // namespace strait::accesslog
