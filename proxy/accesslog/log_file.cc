#include "proxy/accesslog/log_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "proxy/common/log.h"
#include "proxy/event/dispatcher.h"
#include "proxy/stats/stats.h"

namespace strait::accesslog {

namespace {

struct File {
  std::string path;
  int fd = -1;
  bool reopenable = true;  // not the process's stdout/stderr
};

struct Chunk {
  uint32_t file;
  std::string bytes;
};

// Everything the workers and the writer thread share; every field under `mu` unless said otherwise.
struct State {
  std::mutex mu;
  std::condition_variable wake;      // the writer: work queued, reopen asked, stop
  std::condition_variable reopened;  // reopenAll(): the writer finished a reopen
  std::vector<std::unique_ptr<File>> files;  // by id; the File objects never move
  std::map<std::string, uint32_t> by_path;
  std::vector<Chunk> queue;
  std::vector<std::string> spare;  // emptied buffers, given back to workers (their capacity is kept)
  size_t queued_bytes = 0;
  uint64_t reopen_asked = 0;
  uint64_t reopen_done = 0;
  bool stop = false;
  std::thread writer;
  bool stats_made = false;
  stats::Store* store = nullptr;
  stats::Counter write_buffered, write_completed, write_failed, reopen_failed, dropped;
  stats::Gauge write_total_buffered;
};

State& state() {
  static auto* s = new State;
  return *s;
}

int openPath(const std::string& path) {
  return ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
}

bool writeAll(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    ssize_t n = ::write(fd, s.data() + off, s.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

void writerLoop() {
  State& s = state();
  if (s.store != nullptr && stats::threadShard() == nullptr) {
    stats::setThreadShard(&s.store->shard(s.store->shardCount() - 1));
  }
  std::unique_lock lk(s.mu);
  std::vector<Chunk> batch;
  std::vector<File*> files;  // the writer's copy of s.files (taken under the lock)
  for (;;) {
    s.wake.wait(lk, [&] { return !s.queue.empty() || s.reopen_asked != s.reopen_done || s.stop; });
    batch.swap(s.queue);
    const uint64_t reopen = s.reopen_asked;
    const bool stop = s.stop;
    if (files.size() != s.files.size()) {
      files.clear();
      for (auto& f : s.files) files.push_back(f.get());
    }
    lk.unlock();
    size_t written = 0;
    for (auto& c : batch) {
      // Lines handed off before a reopen go to the file they were logged for, the old one.
      File& f = *files[c.file];
      if (writeAll(f.fd, c.bytes)) {
        stats::inc(s.write_completed);
      } else {
        stats::inc(s.write_failed);
      }
      written += c.bytes.size();
    }
    if (reopen != s.reopen_done) {
      for (File* fp : files) {
        File& f = *fp;
        if (!f.reopenable) continue;
        int fd = openPath(f.path);
        if (fd < 0) {
          stats::inc(s.reopen_failed);
          LOG_ERROR("access log: cannot reopen %s: %s", f.path.c_str(), std::strerror(errno));
          continue;
        }
        ::close(f.fd);
        f.fd = fd;
      }
    }
    if (written > 0) stats::add(s.write_total_buffered, -static_cast<int64_t>(written));
    lk.lock();
    s.queued_bytes -= written;
    for (auto& c : batch) {
      if (s.spare.size() < 64 && c.bytes.capacity() <= 4 * kHandOffBytes) {
        c.bytes.clear();
        s.spare.push_back(std::move(c.bytes));
      }
    }
    batch.clear();
    if (reopen != s.reopen_done) {
      s.reopen_done = reopen;
      s.reopened.notify_all();
    }
    if (stop && s.queue.empty()) return;
  }
}

// One thread's buffers, by file id. Only its thread touches it; the hand-off takes the shared lock.
class ThreadBuffers : public event::DeferredFlush {
 public:
  ~ThreadBuffers() override {
    // The thread is ending (a worker after its loop stopped): its last lines go to the writer. Its
    // dispatcher is gone by now, so no flush is cancelled there.
    handOff();
  }

  std::string& buffer(uint32_t id, event::Dispatcher& d) {
    if (id >= bufs_.size()) {
      bufs_.resize(id + 1);
      lines_.resize(id + 1, 0);
    }
    if (&d != dispatcher_) {
      dispatcher_ = &d;
      queued_ = false;  // a flush queued on another (older) dispatcher never ran
    }
    return bufs_[id];
  }

  void commit(uint32_t id) {
    if (lines_[id]++ == 0) dirty_.push_back(id);
    if (bufs_[id].size() >= kHandOffBytes) {
      handOff();
      return;
    }
    if (!queued_ && dispatcher_ != nullptr) {
      queued_ = true;
      dispatcher_->queueFlush(this);
    }
  }

  void runDeferredFlush() override {
    queued_ = false;
    handOff();
  }

 private:
  void handOff() {
    if (dirty_.empty()) return;
    State& s = state();
    uint64_t buffered = 0, dropped = 0;
    int64_t bytes = 0;
    {
      std::lock_guard lk(s.mu);
      for (uint32_t id : dirty_) {
        std::string& b = bufs_[id];
        if (s.queued_bytes + b.size() > kMaxQueuedBytes || s.stop) {
          dropped += lines_[id];
          b.clear();
        } else {
          s.queued_bytes += b.size();
          bytes += static_cast<int64_t>(b.size());
          s.queue.push_back(Chunk{id, std::move(b)});
          if (!s.spare.empty()) {
            b = std::move(s.spare.back());
            s.spare.pop_back();
          } else {
            b = std::string();
          }
          ++buffered;
        }
        lines_[id] = 0;
      }
      s.wake.notify_one();
    }
    dirty_.clear();
    if (s.stats_made) {
      if (buffered) stats::inc(s.write_buffered, static_cast<int64_t>(buffered));
      if (dropped) stats::inc(s.dropped, static_cast<int64_t>(dropped));
      if (bytes) stats::add(s.write_total_buffered, bytes);
    }
  }

  std::vector<std::string> bufs_;
  std::vector<uint32_t> lines_;
  std::vector<uint32_t> dirty_;
  event::Dispatcher* dispatcher_ = nullptr;
  bool queued_ = false;
};

ThreadBuffers& threadBuffers() {
  thread_local ThreadBuffers t;
  return t;
}

}  // namespace

LogFiles& LogFiles::get() {
  static auto* f = new LogFiles;
  return *f;
}

absl::StatusOr<uint32_t> LogFiles::open(const std::string& path, stats::Store& store) {
  State& s = state();
  std::lock_guard lk(s.mu);
  if (!s.stats_made) {
    s.store = &store;
    s.write_buffered = store.counter("filesystem.write_buffered");
    s.write_completed = store.counter("filesystem.write_completed");
    s.write_failed = store.counter("filesystem.write_failed");
    s.reopen_failed = store.counter("filesystem.reopen_failed");
    s.write_total_buffered = store.gauge("filesystem.write_total_buffered");
    s.dropped = store.counter("access_log.dropped");
    s.stats_made = true;
  }
  auto it = s.by_path.find(path);
  if (it != s.by_path.end()) return it->second;
  if (s.stop) return absl::FailedPreconditionError("access logs are shut down");
  auto f = std::make_unique<File>();
  f->path = path;
  if (path == "/dev/stdout" || path == "/dev/stderr") {
    f->fd = path == "/dev/stdout" ? STDOUT_FILENO : STDERR_FILENO;
    f->reopenable = false;
  } else {
    f->fd = openPath(path);
    if (f->fd < 0) return absl::InvalidArgumentError(absl::StrCat("cannot open '", path, "': ", std::strerror(errno)));
  }
  const auto id = static_cast<uint32_t>(s.files.size());
  s.files.push_back(std::move(f));
  s.by_path.emplace(path, id);
  if (!s.writer.joinable()) s.writer = std::thread(writerLoop);
  return id;
}

std::string& LogFiles::buffer(uint32_t id, event::Dispatcher& dispatcher) {
  return threadBuffers().buffer(id, dispatcher);
}

void LogFiles::commit(uint32_t id) { threadBuffers().commit(id); }

void LogFiles::reopenAll() {
  State& s = state();
  std::unique_lock lk(s.mu);
  if (!s.writer.joinable()) return;
  const uint64_t want = ++s.reopen_asked;
  s.wake.notify_one();
  s.reopened.wait_for(lk, std::chrono::seconds(2), [&] { return s.reopen_done >= want; });
}

void LogFiles::shutdown() {
  State& s = state();
  std::thread t;
  {
    std::lock_guard lk(s.mu);
    if (!s.writer.joinable()) return;
    s.stop = true;
    s.wake.notify_one();
    t = std::move(s.writer);
  }
  t.join();
}

}  // namespace strait::accesslog
