#include "proxy/server/hot_restart.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "proxy/common/log.h"

namespace strait::server {

namespace hr = hot_restart;

namespace {

constexpr int kReplyTimeoutMs = 5000;

void closeAll(std::vector<int>& fds) {
  for (int fd : fds) ::close(fd);
  fds.clear();
}

sockaddr_un abstractAddress(const std::string& name, socklen_t* len) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  // Abstract namespace: a leading NUL, no file; gone with the last socket, never left behind.
  const size_t n = std::min(name.size(), sizeof(a.sun_path) - 1);
  std::memcpy(a.sun_path + 1, name.data(), n);
  *len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + n);
  return a;
}

// One frame, with `fds` attached (SCM_RIGHTS) when there are any.
absl::Status sendFrame(int fd, const hr::Message& m, const std::vector<int>& fds) {
  auto frame = hr::encode(m);
  if (!frame.ok()) return frame.status();
  iovec iov{frame->data(), frame->size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  std::vector<char> control;
  if (!fds.empty()) {
    control.assign(CMSG_SPACE(sizeof(int) * fds.size()), 0);
    msg.msg_control = control.data();
    msg.msg_controllen = control.size();
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
  }
  ssize_t n;
  do {
    n = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return absl::UnavailableError(absl::StrCat("send: ", std::strerror(errno)));
  if (static_cast<size_t>(n) != frame->size()) return absl::UnavailableError("send: short write");
  return absl::OkStatus();
}

// Receives one frame (waiting up to `timeout_ms`, -1: forever). NotFound: the peer closed the socket.
absl::StatusOr<hr::Message> recvFrame(int fd, int timeout_ms, std::vector<int>& fds) {
  pollfd p{fd, POLLIN, 0};
  int rc;
  do {
    rc = ::poll(&p, 1, timeout_ms);
  } while (rc < 0 && errno == EINTR);
  if (rc == 0) return absl::DeadlineExceededError("no reply in time");
  if (rc < 0) return absl::UnavailableError(absl::StrCat("poll: ", std::strerror(errno)));
  std::string buf(hr::kMaxFrame + 1, '\0');
  iovec iov{buf.data(), buf.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * hr::kMaxFdsPerMessage)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  do {
    n = ::recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return absl::UnavailableError(absl::StrCat("recv: ", std::strerror(errno)));
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS || c->cmsg_len < CMSG_LEN(0)) continue;
    const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; ++i) {
      int received;
      std::memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      fds.push_back(received);
    }
  }
  if (n == 0 && fds.empty()) return absl::NotFoundError("closed");
  if ((msg.msg_flags & MSG_CTRUNC) != 0) {
    closeAll(fds);
    return absl::InvalidArgumentError("too many descriptors attached");
  }
  if ((msg.msg_flags & MSG_TRUNC) != 0 || static_cast<size_t>(n) > hr::kMaxFrame) {
    closeAll(fds);
    return absl::InvalidArgumentError("message larger than a frame may be");
  }
  auto m = hr::decode(std::string_view(buf.data(), static_cast<size_t>(n)));
  if (!m.ok()) {
    closeAll(fds);
    return m.status();
  }
  const size_t expected = m->type == hr::Type::Sockets ? m->count : 0;
  if (fds.size() != expected) {
    const size_t got = fds.size();
    closeAll(fds);
    return absl::InvalidArgumentError(absl::StrCat("message says ", expected, " descriptors, ", got, " came"));
  }
  return m;
}

}  // namespace

std::vector<int> collectFdsOn(event::Dispatcher& dispatcher, std::function<std::vector<int>()> fn,
                              std::chrono::milliseconds timeout) {
  struct Result {
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    bool abandoned = false;
    std::vector<int> fds;
  };
  auto r = std::make_shared<Result>();
  dispatcher.post([r, fn = std::move(fn)] {
    std::vector<int> fds = fn();
    std::lock_guard<std::mutex> lock(r->mu);
    if (r->abandoned) {
      closeAll(fds);
      return;
    }
    r->fds = std::move(fds);
    r->done = true;
    r->cv.notify_all();
  });
  std::unique_lock<std::mutex> lock(r->mu);
  if (!r->cv.wait_for(lock, timeout, [&] { return r->done; })) {
    r->abandoned = true;
    return {};
  }
  return std::move(r->fds);
}

std::string HotRestart::socketName(uint32_t base_id, uint32_t epoch) {
  return absl::StrCat("strait_hot_restart_", base_id, "_", epoch);
}

absl::StatusOr<std::unique_ptr<HotRestart>> HotRestart::create(uint32_t base_id, uint32_t epoch) {
  std::unique_ptr<HotRestart> h(new HotRestart(epoch));  // the base id only names the sockets
  const std::string own = socketName(base_id, epoch);
  h->listen_fd_ = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (h->listen_fd_ < 0) return absl::UnavailableError(absl::StrCat("hot restart socket: ", std::strerror(errno)));
  socklen_t len = 0;
  sockaddr_un a = abstractAddress(own, &len);
  if (::bind(h->listen_fd_, reinterpret_cast<sockaddr*>(&a), len) != 0 || ::listen(h->listen_fd_, 4) != 0) {
    return absl::UnavailableError(absl::StrCat("--base-id ", base_id, " --restart-epoch ", epoch, ": cannot listen on @",
                                               own, ": ", std::strerror(errno),
                                               errno == EADDRINUSE ? " (another Strait runs with this base id and epoch)" : ""));
  }
  h->wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (h->wake_fd_ < 0) return absl::UnavailableError(absl::StrCat("eventfd: ", std::strerror(errno)));
  if (epoch == 0) return h;

  const std::string parent = socketName(base_id, epoch - 1);
  int fd = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sockaddr_un pa = abstractAddress(parent, &len);
  if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&pa), len) != 0) {
    LOG_WARN("hot restart: no parent on @%s (%s): starting without one, binding every socket anew", parent.c_str(),
             std::strerror(errno));
    if (fd >= 0) ::close(fd);
    return h;
  }
  h->parent_fd_ = fd;
  hr::Message hello;
  hello.type = hr::Type::Hello;
  hello.epoch = epoch;
  uint32_t parent_pid = 0;
  if (h->exchange(hello, hr::Type::HelloReply, [&](hr::Message& m, std::vector<int>&) { parent_pid = m.pid; })) {
    LOG_INFO("hot restart: epoch %u connected to its parent (epoch %u, pid %u)", epoch, epoch - 1, parent_pid);
  }
  return h;
}

HotRestart::~HotRestart() {
  {
    std::lock_guard<std::mutex> lock(follow_mu_);
    follow_stop_ = true;
  }
  follow_cv_.notify_all();
  if (follow_thread_.joinable()) follow_thread_.join();
  {
    std::lock_guard<std::mutex> lock(final_mu_);
    stopping_ = true;
  }
  if (wake_fd_ >= 0) {
    uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wake_fd_, &one, sizeof(one));
  }
  if (serve_thread_.joinable()) serve_thread_.join();
  if (child_fd_ >= 0) ::close(child_fd_);
  if (listen_fd_ >= 0) ::close(listen_fd_);
  if (wake_fd_ >= 0) ::close(wake_fd_);
  std::lock_guard<std::mutex> lock(parent_mu_);
  if (parent_fd_ >= 0) ::close(parent_fd_);
}

// ------------------------------------------------------------------------------------------------
// Serving the next epoch

void HotRestart::startServing(ParentCallbacks callbacks, stats::Store& store) {
  callbacks_ = std::move(callbacks);
  store_ = &store;
  serve_thread_ = std::thread([this] { serveLoop(); });
}

void HotRestart::serveLoop() {
  for (;;) {
    pollfd p[3] = {{wake_fd_, POLLIN, 0}, {listen_fd_, POLLIN, 0}, {child_fd_, POLLIN, 0}};
    const nfds_t n = child_fd_ >= 0 ? 3 : 2;
    if (::poll(p, n, -1) < 0) {
      if (errno == EINTR) continue;
      LOG_ERROR("hot restart: poll: %s", std::strerror(errno));
      return;
    }
    {
      std::lock_guard<std::mutex> lock(final_mu_);
      if (stopping_) return;
    }
    if (p[1].revents & POLLIN) {
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd >= 0 && child_fd_ >= 0) {
        LOG_WARN("hot restart: a second process connected while epoch %u's child is still here: refused", epoch_ + 1);
        ::close(fd);
      } else if (fd >= 0) {
        child_fd_ = fd;
        child_drained_ = false;
        std::lock_guard<std::mutex> lock(final_mu_);
        child_connected_ = true;
      }
    }
    if (n == 3 && (p[2].revents & (POLLIN | POLLHUP | POLLERR))) {
      std::vector<int> fds;
      auto m = recvFrame(child_fd_, 0, fds);
      if (!m.ok()) {
        if (absl::IsNotFound(m.status())) {
          closeChild("closed the connection");
        } else {
          LOG_ERROR("hot restart: bad message from the child: %s", std::string(m.status().message()).c_str());
          closeChild("sent a bad message");
        }
        continue;
      }
      handleChildMessage(*m, fds);
    }
  }
}

bool HotRestart::sendToChild(const hr::Message& m, const std::vector<int>& fds) {
  auto st = sendFrame(child_fd_, m, fds);
  if (!st.ok()) {
    LOG_ERROR("hot restart: to the child: %s", std::string(st.message()).c_str());
    closeChild("could not be written to");
    return false;
  }
  return true;
}

void HotRestart::handleChildMessage(const hr::Message& m, std::vector<int>& fds) {
  closeAll(fds);  // a child never sends descriptors (recvFrame allows them on Sockets only)
  switch (m.type) {
    case hr::Type::Hello: {
      if (m.epoch != epoch_ + 1) {
        LOG_ERROR("hot restart: a process of epoch %u connected to epoch %u", m.epoch, epoch_);
        closeChild("has the wrong epoch");
        return;
      }
      LOG_INFO("hot restart: epoch %u connected", m.epoch);
      hr::Message r;
      r.type = hr::Type::HelloReply;
      r.epoch = epoch_;
      r.pid = static_cast<uint32_t>(::getpid());
      sendToChild(r);
      return;
    }
    case hr::Type::GetSockets: {
      std::vector<int> mine;
      auto addr = network::Address::parseHostPort(m.address);
      if (addr) {
        mine = callbacks_.sockets(m.kind, *addr, m.name);
      } else {
        LOG_WARN("hot restart: the child asked for sockets of '%s', not an address", m.address.c_str());
      }
      LOG_INFO("hot restart: handing %zu socket(s) of %s%s%s to epoch %u", mine.size(), m.address.c_str(),
               m.name.empty() ? "" : " listener ", m.name.c_str(), epoch_ + 1);
      size_t sent = 0;
      do {
        const size_t take = std::min<size_t>(hr::kMaxFdsPerMessage, mine.size() - sent);
        hr::Message r;
        r.type = hr::Type::Sockets;
        r.count = static_cast<uint32_t>(take);
        r.flags = sent + take < mine.size() ? hr::kMore : 0;
        std::vector<int> part(mine.begin() + static_cast<ptrdiff_t>(sent),
                              mine.begin() + static_cast<ptrdiff_t>(sent + take));
        if (!sendToChild(r, part)) break;
        sent += take;
      } while (sent < mine.size());
      closeAll(mine);  // the child has its own copies now (the kernel duplicated them)
      return;
    }
    case hr::Type::GetStats: {
      bool final_flag;
      {
        std::lock_guard<std::mutex> lock(final_mu_);
        final_flag = final_ready_;
      }
      std::vector<std::pair<std::string, uint64_t>> counters;
      for (auto& v : store_->snapshot()) {
        // Zeros are the child's own starting point: only what has counted travels.
        if (v.type == stats::StatType::Counter && v.value > 0) counters.emplace_back(std::move(v.name), v.value);
      }
      for (const auto& r : hr::statsMessages(counters, final_flag)) {
        if (!sendToChild(r)) return;
      }
      if (final_flag) {
        std::lock_guard<std::mutex> lock(final_mu_);
        final_taken_ = true;
        final_cv_.notify_all();
      }
      return;
    }
    case hr::Type::Drain: {
      if (!child_drained_) {
        child_drained_ = true;
        {
          std::lock_guard<std::mutex> lock(final_mu_);
          drain_requested_ = true;
        }
        callbacks_.drain();
      }
      hr::Message r;
      r.type = hr::Type::DrainReply;
      sendToChild(r);
      return;
    }
    case hr::Type::HelloReply:
    case hr::Type::Sockets:
    case hr::Type::Stats:
    case hr::Type::DrainReply:
      break;
  }
  LOG_ERROR("hot restart: the child sent a reply-only message (type %u)", static_cast<unsigned>(m.type));
  closeChild("sent an unexpected message");
}

void HotRestart::closeChild(const char* why) {
  if (child_fd_ < 0) return;
  ::close(child_fd_);
  child_fd_ = -1;
  LOG_INFO("hot restart: epoch %u %s%s", epoch_ + 1, why, child_drained_ ? "" : " before it was ready: serving on");
  if (!child_drained_) callbacks_.child_gone();
  std::lock_guard<std::mutex> lock(final_mu_);
  child_connected_ = false;
  final_taken_ = true;  // nobody left to take them
  final_cv_.notify_all();
}

void HotRestart::handOverFinalStats() {
  std::unique_lock<std::mutex> lock(final_mu_);
  if (!drain_requested_ || !child_connected_ || !serve_thread_.joinable()) return;
  final_ready_ = true;
  final_taken_ = false;
  if (!final_cv_.wait_for(lock, std::chrono::seconds(2), [this] { return final_taken_; })) {
    LOG_WARN("hot restart: the child did not fetch the final counters within 2 s");
  }
}

// ------------------------------------------------------------------------------------------------
// As the child

bool HotRestart::hasParent() const {
  std::lock_guard<std::mutex> lock(parent_mu_);
  return parent_fd_ >= 0;
}

void HotRestart::closeParentLocked(bool parent_exited, const std::string& why) {
  if (parent_fd_ < 0) return;
  ::close(parent_fd_);
  parent_fd_ = -1;
  if (parent_exited) {
    LOG_INFO("hot restart: the parent (epoch %u) has exited", epoch_ - 1);
  } else {
    LOG_ERROR("hot restart: parent (epoch %u): %s; going on without it", epoch_ - 1, why.c_str());
  }
}

bool HotRestart::exchange(const hr::Message& request, hr::Type reply,
                          const std::function<void(hr::Message&, std::vector<int>&)>& on_reply) {
  std::lock_guard<std::mutex> lock(parent_mu_);
  if (parent_fd_ < 0) return false;
  auto st = sendFrame(parent_fd_, request, {});
  if (!st.ok()) {
    closeParentLocked(false, std::string(st.message()));
    return false;
  }
  for (;;) {
    std::vector<int> fds;
    auto m = recvFrame(parent_fd_, kReplyTimeoutMs, fds);
    if (!m.ok()) {
      closeParentLocked(absl::IsNotFound(m.status()), std::string(m.status().message()));
      return false;
    }
    if (m->type != reply) {
      closeAll(fds);
      closeParentLocked(false, absl::StrCat("unexpected reply type ", static_cast<unsigned>(m->type)));
      return false;
    }
    const bool more = (m->type == hr::Type::Sockets || m->type == hr::Type::Stats) && (m->flags & hr::kMore) != 0;
    on_reply(*m, fds);
    if (!more) return true;
  }
}

std::vector<int> HotRestart::takeParentSockets(SocketKind kind, const network::Address& configured,
                                               const std::string& name) {
  std::vector<int> out;
  hr::Message req;
  req.type = hr::Type::GetSockets;
  req.kind = kind;
  req.address = configured.asString();
  req.name = name;
  if (!exchange(req, hr::Type::Sockets, [&](hr::Message&, std::vector<int>& fds) {
        out.insert(out.end(), fds.begin(), fds.end());
        fds.clear();
      })) {
    closeAll(out);  // a reply cut short: bind anew rather than use part of a set
  }
  return out;
}

bool HotRestart::fetchParentCounters(std::vector<std::pair<std::string, uint64_t>>& out, bool* final_flag) {
  hr::Message req;
  req.type = hr::Type::GetStats;
  *final_flag = false;
  return exchange(req, hr::Type::Stats, [&](hr::Message& m, std::vector<int>&) {
    if (m.flags & hr::kFinal) *final_flag = true;
    for (auto& c : m.counters) out.push_back(std::move(c));
  });
}

void HotRestart::CounterMerge::apply(stats::Store& store,
                                     const std::vector<std::pair<std::string, uint64_t>>& counters,
                                     bool final_counts) {
  if (!scope) scope = std::make_unique<stats::StatScope>(store);
  bool unresolved = false;
  for (const auto& c : counters) {
    auto it = seen.find(c.first);
    if (it == seen.end() || !it->second.resolved) unresolved = true;
  }
  // Names not matched yet: list this process's counters again, at most every 2 s (a counter an xDS
  // update brings later gets the parent's whole count then).
  const auto now = std::chrono::steady_clock::now();
  if (unresolved && (names.empty() || final_counts || now - names_at >= std::chrono::seconds(2))) {
    names.clear();
    for (auto& v : store.snapshot()) {
      if (v.type == stats::StatType::Counter) names.insert(std::move(v.name));
    }
    names_at = now;
  }
  for (const auto& [name, value] : counters) {
    Seen& s = seen[name];
    if (!s.resolved) {
      if (!names.count(name)) continue;
      s.counter = scope->counter(name);
      s.resolved = true;
    }
    if (value <= s.applied) continue;
    stats::inc(s.counter, static_cast<int64_t>(value - s.applied));
    s.applied = value;
  }
}

void HotRestart::syncParentStats(stats::Store& store) {
  std::vector<std::pair<std::string, uint64_t>> counters;
  bool final_flag = false;
  if (!fetchParentCounters(counters, &final_flag)) return;
  merge_->apply(store, counters);
  LOG_INFO("hot restart: started from %zu counters of the parent", counters.size());
}

void HotRestart::startParentDrain(std::function<void(std::function<void()>)> post, stats::Store& store) {
  hr::Message req;
  req.type = hr::Type::Drain;
  if (!exchange(req, hr::Type::DrainReply, [](hr::Message&, std::vector<int>&) {})) return;
  LOG_INFO("hot restart: ready; the parent (epoch %u) drains", epoch_ - 1);
  // Follow the parent's counters while it drains, so /stats stays continuous; its last reply (kFinal)
  // comes after its workers stopped.
  follow_thread_ = std::thread([this, post = std::move(post), &store] {
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(follow_mu_);
        if (follow_cv_.wait_for(lock, std::chrono::milliseconds(200), [this] { return follow_stop_; })) return;
      }
      std::vector<std::pair<std::string, uint64_t>> counters;
      bool final_flag = false;
      const bool ok = fetchParentCounters(counters, &final_flag);
      if (ok) {
        post([merge = merge_, &store, counters = std::move(counters), final_flag] {
          merge->apply(store, counters, final_flag);
        });
      }
      if (!ok || final_flag) {
        {
          std::lock_guard<std::mutex> lock(parent_mu_);
          closeParentLocked(true, "");
        }
        // The parent is gone: what was kept to merge its counts goes too (on the main thread, after
        // the last addition).
        post([merge = merge_] {
          merge->seen.clear();
          merge->names.clear();
          merge->scope.reset();
        });
        return;
      }
    }
  });
}

}  // namespace strait::server
