#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

typedef struct uv_loop_s uv_loop_t;
typedef struct uv_timer_s uv_timer_t;
typedef struct uv_async_s uv_async_t;
typedef struct uv_check_s uv_check_t;
typedef struct uv_prepare_s uv_prepare_t;

namespace strait::event {

// Objects whose destruction must wait until the current callback stack has unwound.
class DeferredDeletable {
 public:
  virtual ~DeferredDeletable() = default;
};
using DeferredDeletablePtr = std::unique_ptr<DeferredDeletable>;

class Dispatcher;

// Something that writes once per loop iteration, whatever number of write() calls it got in between
// (a connection gathering a response's headers and body into one writev).
class DeferredFlush {
 public:
  virtual ~DeferredFlush() = default;
  virtual void runDeferredFlush() = 0;
};

// A one-shot timer on a dispatcher's loop. Destroying it cancels it; the libuv handle is freed in its
// close callback, so a Timer may be destroyed from inside its own callback.
//
// Re-arming is lazy: timers on the request path (idle, headers, pool idle) are disabled and enabled again
// on every request, and a libuv timer restart is a heap removal plus insertion. enable() only records the
// deadline when the libuv timer is already set to fire no later than it; disable() only forgets the
// deadline. When the libuv timer fires early it re-arms for the remaining time, and with no deadline it
// does nothing: at most one spare wake-up per timeout period.
class Timer {
 public:
  Timer(Dispatcher& dispatcher, std::function<void()> cb);
  ~Timer();
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;
  void enable(uint64_t ms);
  void disable();
  bool enabled() const;

 private:
  static void onTimer(uv_timer_t* handle);
  void arm(uint64_t now, uint64_t deadline);
  Dispatcher& dispatcher_;
  uv_timer_t* handle_;
  std::function<void()> cb_;
  uint64_t deadline_ = 0;   // loop time (ms) the callback is due at, when enabled_
  uint64_t armed_for_ = 0;  // loop time the libuv timer fires at, when it is active
  bool enabled_ = false;
};
using TimerPtr = std::unique_ptr<Timer>;

// One event loop (one uv_loop_t) driven by one thread. post() is the only call that may come from another
// thread; everything else belongs to the loop's own thread.
class Dispatcher {
 public:
  explicit Dispatcher(std::string name);
  ~Dispatcher();
  Dispatcher(const Dispatcher&) = delete;
  Dispatcher& operator=(const Dispatcher&) = delete;

  const std::string& name() const { return name_; }
  uv_loop_t* loop() { return loop_; }

  // Thread-safe: queue `cb` to run on this dispatcher's thread.
  void post(std::function<void()> cb);
  TimerPtr createTimer(std::function<void()> cb) { return std::make_unique<Timer>(*this, std::move(cb)); }
  // Destroys `obj` once the current callback stack unwinds (at the end of this loop iteration).
  void deferredDelete(DeferredDeletablePtr obj);
  // Runs `f->runDeferredFlush()` before the loop next waits for I/O (once, however often queued; the
  // caller tracks that). cancelFlush() takes it back (an object being destroyed).
  void queueFlush(DeferredFlush* f);
  void cancelFlush(DeferredFlush* f);
  // Runs every queued flush now (the loop does this before it waits; codec tests drive it by hand).
  void runDeferredFlushes() { runFlushes(); }
  // libuv timer handles are recycled: a Timer per request (the router's timeout) would otherwise cost an
  // allocation, an init and a close (a trip through the loop's closing list) every time.
  uv_timer_t* acquireTimerHandle();
  void releaseTimerHandle(uv_timer_t* handle);
  // Called at the end of every loop iteration (before the loop waits again) with the time it spent
  // working in that iteration (its wall time minus the time blocked in poll), in microseconds: what
  // one long callback costs everything else on this loop. Set before run().
  void setLoopObserver(std::function<void(uint64_t busy_us)> observer) { loop_observer_ = std::move(observer); }
  // Runs the loop until exit() is called.
  void run();
  // Stops run(); safe from the loop's own thread (use post() to stop from elsewhere).
  void exit();
  // True on the thread running this dispatcher.
  bool isThreadSafe() const { return run_thread_ == std::this_thread::get_id(); }
  // Loop time in milliseconds (cached per iteration, monotonic).
  uint64_t nowMs() const;
  void updateTime();

 private:
  static void onAsync(uv_async_t* handle);
  static void onCheck(uv_check_t* handle);
  static void onPrepare(uv_prepare_t* handle);
  void runFlushes();
  void runPosted();
  void clearDeferredDeleteList();

  std::string name_;
  uv_loop_t* loop_;
  uv_async_t* async_;
  uv_check_t* check_;
  uv_prepare_t* prepare_;
  std::vector<DeferredFlush*> flush_queue_;
  std::vector<DeferredFlush*> flush_batch_;
  std::mutex post_lock_;
  std::vector<std::function<void()>> posted_;
  std::vector<DeferredDeletablePtr> to_delete_;
  std::vector<DeferredDeletablePtr> delete_batch_;
  std::vector<uv_timer_t*> free_timers_;
  std::thread::id run_thread_;
  bool exited_ = false;
  std::function<void(uint64_t)> loop_observer_;
  uint64_t last_prepare_ns_ = 0;
  uint64_t last_idle_ns_ = 0;
};

}  // namespace strait::event
