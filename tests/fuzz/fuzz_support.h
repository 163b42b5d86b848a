#pragma once

// What the libFuzzer targets share: an in-memory byte transport for the codecs, the one event loop they
// all run their zero-delay timers and deferred deletes on, a reader that turns the fuzzer's bytes into
// choices, and the start-up every target needs once (quiet logs, a stats shard, the filter registries).
//
// A target never touches the network or a file, and leaves nothing behind between runs: every codec,
// stream and config object it makes is destroyed (and the loop run until the deferred deletes happened)
// before LLVMFuzzerTestOneInput returns.

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "proxy/common/buffer.h"
#include "proxy/common/log.h"
#include "proxy/event/dispatcher.h"
#include "proxy/http/codec.h"
#include "proxy/stats/stats.h"

// A broken promise of the code under test is a finding: abort so that libFuzzer keeps the input.
#define FUZZ_CHECK(cond, what)                                             \
  do {                                                                     \
    if (!(cond)) {                                                         \
      std::fprintf(stderr, "fuzz check failed: %s (%s)\n", what, #cond); \
      std::abort();                                                        \
    }                                                                      \
  } while (0)

namespace google::protobuf {
class Message;
}

namespace strait::fuzz {

// The fuzzer's bytes as a stream of choices, then the rest as payload. Reading past the end gives 0.
class Input {
 public:
  Input(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  uint8_t byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  // The bytes not read yet.
  std::string_view rest() const { return {reinterpret_cast<const char*>(data_) + pos_, size_ - pos_}; }
  // Up to `n` bytes, or up to (not including) `sep` when it comes first (the separator is skipped).
  std::string_view take(size_t n, char sep);

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// Where a byte stream is cut into reads: chunk sizes from a small generator seeded by the fuzzer, so one
// input byte moves every cut (the codecs must parse the same message whatever the reads look like).
class Splitter {
 public:
  explicit Splitter(uint8_t seed) : state_(seed * 2654435761u + 1) {}
  // The size of the next read of a stream with `left` bytes to go (1..left).
  size_t next(size_t left);

 private:
  uint32_t state_;
};

// The process's one loop. Created on first use, never destroyed (libuv handles outlive no run).
event::Dispatcher& dispatcher();
// Runs the loop until nothing is due now: zero-delay timers fire and deferred deletes happen.
void drainLoop();

// A CodecTransport that throws written bytes away and remembers what the codec asked of it.
class FuzzTransport : public http::CodecTransport {
 public:
  void write(common::Buffer& data, bool end_stream) override;
  void closeAfterFlush() override { closed = true; }
  void readDisable(bool disable) override {
    read_disabled += disable ? 1 : -1;
    FUZZ_CHECK(read_disabled >= 0, "the transport was read-enabled more often than disabled");
  }
  event::Dispatcher& dispatcher() override { return fuzz::dispatcher(); }

  bool closed = false;
  bool half_closed = false;
  int read_disabled = 0;
  size_t written = 0;
};

// Once per process: logs off, a stats shard for this thread, every filter and transport socket
// registered (as main.cc does). Returns the store the shard belongs to.
stats::Store& init();

// Whether a config message (or any typed_config inside it) names a file: DataSource.filename, a
// watched_directory or an access log path. Config that reads files is not translated by the targets
// (a fuzzer that found /dev/zero would hang the run); everything else in it is.
bool namesAFile(const google::protobuf::Message& m);

// Feeds `bytes` to an HTTP/1 server connection the way a socket would: in reads the splitter chooses,
// none while the codec has reading disabled (then `answer()` finishes what is pending and the loop's
// timers run; if reading stays off, nothing more would ever be read), a codec error answered as the
// connection manager answers it, then the client's half-close. `answer` is the target's own
// (its streams' pending responses); the loop is drained after each read. Every dispatch must consume
// its read when `check_consumed`.
template <class Codec, class H1, class Answer>
void dribbleHttp1Server(Codec& codec, H1& h1, FuzzTransport& transport, Splitter& split, std::string_view bytes,
                        Answer&& answer, bool check_consumed) {
  while (!bytes.empty() && !transport.closed) {
    if (transport.read_disabled > 0) {
      answer();
      drainLoop();
      if (transport.read_disabled > 0) break;
      continue;
    }
    const size_t n = split.next(bytes.size());
    common::Buffer b;
    b.add(bytes.substr(0, n));
    bytes.remove_prefix(n);
    http::CodecError error;
    if (!codec.dispatch(b, error)) {
      h1.sendErrorResponse(error);
      break;
    }
    if (check_consumed) FUZZ_CHECK(b.empty(), "dispatch left bytes behind");
    answer();
    drainLoop();
  }
  if (!transport.closed) {
    // The client half-closes, then the connection goes (the order the connection manager sees).
    h1.onRemoteHalfClose();
    answer();
    drainLoop();
  }
}

}  // namespace strait::fuzz
