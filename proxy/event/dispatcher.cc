#include "proxy/event/dispatcher.h"

#include <uv.h>

#include <cstdint>

#include "proxy/common/log.h"

namespace strait::event {

namespace {
void freeHandle(uv_handle_t* h) { delete reinterpret_cast<uv_any_handle*>(h); }
// Idle timer handles a dispatcher keeps for reuse; beyond this they are closed and freed.
constexpr size_t kMaxFreeTimers = 1024;
}  // namespace

Timer::Timer(Dispatcher& dispatcher, std::function<void()> cb)
    : dispatcher_(dispatcher), handle_(dispatcher.acquireTimerHandle()), cb_(std::move(cb)) {
  handle_->data = this;
}

Timer::~Timer() {
  // Stopping is enough for a handle that goes back to the pool, even from inside its own callback:
  // libuv does not touch a timer after calling it.
  handle_->data = nullptr;
  uv_timer_stop(handle_);
  dispatcher_.releaseTimerHandle(handle_);
}

uv_timer_t* Dispatcher::acquireTimerHandle() {
  if (!free_timers_.empty()) {
    uv_timer_t* h = free_timers_.back();
    free_timers_.pop_back();
    return h;
  }
  auto* h = reinterpret_cast<uv_timer_t*>(new uv_any_handle);
  uv_timer_init(loop_, h);
  return h;
}

void Dispatcher::releaseTimerHandle(uv_timer_t* handle) {
  if (free_timers_.size() < kMaxFreeTimers) {
    free_timers_.push_back(handle);
  } else {
    uv_close(reinterpret_cast<uv_handle_t*>(handle), freeHandle);
  }
}

void Timer::enable(uint64_t ms) {
  const uint64_t now = uv_now(handle_->loop);
  deadline_ = ms > UINT64_MAX - now ? UINT64_MAX : now + ms;
  enabled_ = true;
  if (uv_is_active(reinterpret_cast<const uv_handle_t*>(handle_)) == 0 || armed_for_ > deadline_) {
    arm(now, deadline_);
  }
}

void Timer::disable() { enabled_ = false; }
bool Timer::enabled() const { return enabled_; }

void Timer::arm(uint64_t now, uint64_t deadline) {
  uv_timer_start(handle_, &Timer::onTimer, deadline > now ? deadline - now : 0, 0);
  armed_for_ = deadline;
}

void Timer::onTimer(uv_timer_t* handle) {
  auto* self = static_cast<Timer*>(handle->data);
  if (self == nullptr || !self->enabled_) return;
  const uint64_t now = uv_now(handle->loop);
  if (self->deadline_ > now) {
    // Fired for an earlier deadline that was since pushed back.
    self->arm(now, self->deadline_);
    return;
  }
  self->enabled_ = false;
  // A copy: the callback may destroy its own Timer (and with it cb_ and the captures it runs on).
  std::function<void()> cb = self->cb_;
  cb();
}

Dispatcher::Dispatcher(std::string name)
    : name_(std::move(name)),
      loop_(new uv_loop_t),
      async_(reinterpret_cast<uv_async_t*>(new uv_any_handle)),
      check_(reinterpret_cast<uv_check_t*>(new uv_any_handle)),
      prepare_(reinterpret_cast<uv_prepare_t*>(new uv_any_handle)) {
  RELEASE_ASSERT(uv_loop_init(loop_) == 0, "uv_loop_init");
  // The loop counts the time it blocks in poll (what setLoopObserver() subtracts).
  uv_loop_configure(loop_, UV_METRICS_IDLE_TIME);
  uv_async_init(loop_, async_, &Dispatcher::onAsync);
  async_->data = this;
  uv_check_init(loop_, check_);
  check_->data = this;
  uv_check_start(check_, &Dispatcher::onCheck);
  uv_unref(reinterpret_cast<uv_handle_t*>(check_));
  // Writes queued by timers and posted work go out before the loop blocks in poll; writes queued by
  // I/O callbacks go out in the check phase right after them.
  uv_prepare_init(loop_, prepare_);
  prepare_->data = this;
  uv_prepare_start(prepare_, &Dispatcher::onPrepare);
  uv_unref(reinterpret_cast<uv_handle_t*>(prepare_));
  run_thread_ = std::this_thread::get_id();
}

Dispatcher::~Dispatcher() {
  clearDeferredDeleteList();
  for (uv_timer_t* h : free_timers_) uv_close(reinterpret_cast<uv_handle_t*>(h), freeHandle);
  free_timers_.clear();
  uv_close(reinterpret_cast<uv_handle_t*>(async_), freeHandle);
  uv_close(reinterpret_cast<uv_handle_t*>(check_), freeHandle);
  uv_close(reinterpret_cast<uv_handle_t*>(prepare_), freeHandle);
  // Let every pending close callback run, then free the loop.
  uv_run(loop_, UV_RUN_NOWAIT);
  for (int i = 0; i < 100 && uv_loop_close(loop_) == UV_EBUSY; ++i) {
    uv_walk(
        loop_,
        [](uv_handle_t* h, void*) {
          if (!uv_is_closing(h)) uv_close(h, nullptr);
        },
        nullptr);
    uv_run(loop_, UV_RUN_NOWAIT);
  }
  delete loop_;
}

void Dispatcher::post(std::function<void()> cb) {
  {
    std::lock_guard<std::mutex> lock(post_lock_);
    posted_.push_back(std::move(cb));
  }
  uv_async_send(async_);
}

void Dispatcher::deferredDelete(DeferredDeletablePtr obj) { to_delete_.push_back(std::move(obj)); }

void Dispatcher::run() {
  run_thread_ = std::this_thread::get_id();
  exited_ = false;
  // The async handle stays referenced, so this returns only through exit().
  uv_run(loop_, UV_RUN_DEFAULT);
  clearDeferredDeleteList();
}

void Dispatcher::exit() {
  exited_ = true;
  uv_stop(loop_);
}

uint64_t Dispatcher::nowMs() const { return uv_now(loop_); }
void Dispatcher::updateTime() { uv_update_time(loop_); }

void Dispatcher::onAsync(uv_async_t* handle) { static_cast<Dispatcher*>(handle->data)->runPosted(); }

void Dispatcher::onCheck(uv_check_t* handle) {
  auto* self = static_cast<Dispatcher*>(handle->data);
  self->runFlushes();
  self->clearDeferredDeleteList();
}

void Dispatcher::onPrepare(uv_prepare_t* handle) {
  auto* self = static_cast<Dispatcher*>(handle->data);
  self->runFlushes();
  if (self->loop_observer_) {
    // From the previous prepare to this one is one whole iteration; the part spent in poll was idle.
    const uint64_t now = uv_hrtime();
    const uint64_t idle = uv_metrics_idle_time(self->loop_);
    if (self->last_prepare_ns_ != 0) {
      const uint64_t wall = now - self->last_prepare_ns_;
      const uint64_t waited = idle - self->last_idle_ns_;
      self->loop_observer_(wall > waited ? (wall - waited) / 1000 : 0);
    }
    self->last_prepare_ns_ = now;
    self->last_idle_ns_ = idle;
  }
}

void Dispatcher::queueFlush(DeferredFlush* f) { flush_queue_.push_back(f); }

void Dispatcher::cancelFlush(DeferredFlush* f) {
  // Also the batch being run: an earlier flush may destroy an object queued later in it.
  for (auto& p : flush_queue_) {
    if (p == f) p = nullptr;
  }
  for (auto& p : flush_batch_) {
    if (p == f) p = nullptr;
  }
}

void Dispatcher::runFlushes() {
  // A flush may queue more (a connection whose write completes another's): run until none are left.
  // Both vectors keep their capacity, so a steady loop allocates nothing here.
  while (!flush_queue_.empty()) {
    flush_batch_.swap(flush_queue_);
    for (auto* f : flush_batch_) {
      if (f != nullptr) f->runDeferredFlush();
    }
    flush_batch_.clear();
  }
}

void Dispatcher::runPosted() {
  std::vector<std::function<void()>> batch;
  {
    std::lock_guard<std::mutex> lock(post_lock_);
    batch.swap(posted_);
  }
  for (auto& cb : batch) cb();
}

void Dispatcher::clearDeferredDeleteList() {
  // Deleting may queue more deletions; loop until the list stays empty.
  while (!to_delete_.empty()) {
    delete_batch_.swap(to_delete_);
    delete_batch_.clear();
  }
}

}  // namespace strait::event
