#include "proxy/upstream/dns_resolver.h"

#include <ares.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "proxy/common/log.h"

namespace strait::upstream {

// One c-ares channel and the sockets it asked us to watch.
struct DnsResolver::Channel {
  DnsResolver* owner = nullptr;
  ares_channel channel = nullptr;
  std::map<int, std::pair<bool, bool>> sockets;  // fd -> (read, write)
  ~Channel() {
    if (channel != nullptr) ares_destroy(channel);  // pending lookups end with ARES_EDESTRUCTION
  }
};

struct DnsResolver::Lookup {
  Callback cb;
};

namespace {

void onSocketState(void* data, ares_socket_t fd, int readable, int writable) {
  auto* ch = static_cast<DnsResolver::Channel*>(data);
  if (!readable && !writable) {
    ch->sockets.erase(fd);
  } else {
    ch->sockets[fd] = {readable != 0, writable != 0};
  }
}

void onAddrInfo(void* arg, int status, int /*timeouts*/, struct ares_addrinfo* res) {
  std::unique_ptr<DnsResolver::Lookup> lookup(static_cast<DnsResolver::Lookup*>(arg));
  if (status == ARES_EDESTRUCTION || status == ARES_ECANCELLED) {
    if (res != nullptr) ares_freeaddrinfo(res);
    return;  // the resolver is stopping: nobody waits for this
  }
  DnsResolver::Result r;
  if (status == ARES_SUCCESS) {
    r.ok = true;
    for (auto* n = res != nullptr ? res->nodes : nullptr; n != nullptr; n = n->ai_next) {
      if (n->ai_addr == nullptr || (n->ai_family != AF_INET && n->ai_family != AF_INET6)) continue;
      DnsAnswer a{network::Address(n->ai_addr), n->ai_ttl > 0 ? static_cast<uint32_t>(n->ai_ttl) : 0u};
      a.address.setPort(0);
      auto& list = n->ai_family == AF_INET ? r.v4 : r.v6;
      if (std::none_of(list.begin(), list.end(), [&](const DnsAnswer& x) { return x.address == a.address; })) {
        list.push_back(a);
      }
    }
  } else if (status == ARES_ENOTFOUND || status == ARES_ENODATA) {
    // The name (or an address of the asked family) does not exist: a completed lookup with no address.
    r.ok = true;
  } else {
    r.error = ares_strerror(status);
  }
  if (res != nullptr) ares_freeaddrinfo(res);
  lookup->cb(std::move(r));
}

}  // namespace

DnsResolver::DnsResolver() {
  static const int init = ares_library_init(ARES_LIB_INIT_ALL);
  (void)init;
  wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
}

DnsResolver::~DnsResolver() {
  stop();
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

void DnsResolver::start(std::function<void()> on_start) {
  on_start_ = std::move(on_start);
  thread_ = std::thread([this] { run(); });
}

void DnsResolver::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  wake();
  if (thread_.joinable()) thread_.join();
}

void DnsResolver::wake() {
  const uint64_t one = 1;
  if (wake_fd_ >= 0) {
    ssize_t n = ::write(wake_fd_, &one, sizeof(one));
    (void)n;  // a full counter still wakes the loop
  }
}

void DnsResolver::post(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    posted_.push_back(std::move(fn));
  }
  wake();
}

uint64_t DnsResolver::nowMs() {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
          .count());
}

uint64_t DnsResolver::schedule(uint64_t delay_ms, std::function<void()> fn) {
  const uint64_t id = next_timer_id_++;
  const uint64_t due = nowMs() + delay_ms;
  timers_.emplace(due, std::make_pair(id, std::move(fn)));
  timer_due_[id] = due;
  return id;
}

void DnsResolver::cancel(uint64_t id) {
  auto it = timer_due_.find(id);
  if (it == timer_due_.end()) return;
  auto range = timers_.equal_range(it->second);
  for (auto t = range.first; t != range.second; ++t) {
    if (t->second.first == id) {
      timers_.erase(t);
      break;
    }
  }
  timer_due_.erase(it);
}

DnsResolver::Channel* DnsResolver::channel(const DnsResolverSettings& settings, std::string* error) {
  const std::string key = settings.key();
  auto it = channels_.find(key);
  if (it != channels_.end()) return it->second.get();
  auto ch = std::make_unique<Channel>();
  ch->owner = this;
  ares_options opts{};
  int mask = ARES_OPT_SOCK_STATE_CB | ARES_OPT_FLAGS;
  opts.sock_state_cb = onSocketState;
  opts.sock_state_cb_data = ch.get();
  opts.flags = settings.use_tcp ? ARES_FLAG_USEVC : 0;
  if (settings.no_search_domain) {
    // No domains given: resolv.conf's search list is not read (Envoy's no_default_search_domain).
    opts.domains = nullptr;
    opts.ndomains = 0;
    mask |= ARES_OPT_DOMAINS;
  }
  int rc = ares_init_options(&ch->channel, &opts, mask);
  if (rc != ARES_SUCCESS) {
    *error = absl::StrCat("cannot create a resolver: ", ares_strerror(rc));
    ch->channel = nullptr;
    return nullptr;
  }
  if (!settings.servers.empty()) {
    std::vector<std::string> servers;
    for (const auto& s : settings.servers) servers.push_back(s.asString());  // "1.2.3.4:53" / "[::1]:53"
    const std::string csv = absl::StrJoin(servers, ",");
    rc = ares_set_servers_ports_csv(ch->channel, csv.c_str());
    if (rc != ARES_SUCCESS) {
      *error = absl::StrCat("cannot use name servers ", csv, ": ", ares_strerror(rc));
      return nullptr;
    }
  }
  LOG_DEBUG("dns: new resolver channel (%s)", key.c_str());
  Channel* raw = ch.get();
  channels_[key] = std::move(ch);
  return raw;
}

void DnsResolver::keepChannels(const std::vector<std::string>& keys) {
  std::set<std::string> keep(keys.begin(), keys.end());
  for (auto it = channels_.begin(); it != channels_.end();) {
    if (keep.count(it->first)) {
      ++it;
    } else {
      LOG_DEBUG("dns: resolver channel (%s) closed", it->first.c_str());
      it = channels_.erase(it);
    }
  }
}

void DnsResolver::resolve(const DnsResolverSettings& settings, const std::string& name, DnsLookupFamily family,
                          Callback cb) {
  std::string error;
  Channel* ch = channel(settings, &error);
  if (ch == nullptr) {
    // Reported like any failed lookup, from the loop (never from inside the caller).
    schedule(0, [cb = std::move(cb), error] {
      Result r;
      r.error = error;
      cb(std::move(r));
    });
    return;
  }
  ares_addrinfo_hints hints{};
  hints.ai_family = family == DnsLookupFamily::V4Only ? AF_INET : family == DnsLookupFamily::V6Only ? AF_INET6 : AF_UNSPEC;
  hints.ai_flags = ARES_AI_NOSORT;  // keep the name server's order (LOGICAL_DNS takes the first)
  auto* lookup = new Lookup{std::move(cb)};
  ares_getaddrinfo(ch->channel, name.c_str(), nullptr, &hints, onAddrInfo, lookup);
}

void DnsResolver::run() {
  if (on_start_) on_start_();
  std::vector<pollfd> fds;
  struct Ready {
    Channel* ch;
    int fd;
    bool r, w;
  };
  std::vector<Ready> ready;
  for (;;) {
    std::vector<std::function<void()>> work;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stopping_) break;
      work.swap(posted_);
    }
    for (auto& fn : work) fn();
    // Due timers (one pass: a timer added now for 0 ms runs on the next turn).
    const uint64_t now = nowMs();
    std::vector<std::function<void()>> due;
    while (!timers_.empty() && timers_.begin()->first <= now) {
      auto node = timers_.extract(timers_.begin());
      timer_due_.erase(node.mapped().first);
      due.push_back(std::move(node.mapped().second));
    }
    for (auto& fn : due) fn();
    if (!due.empty() || !work.empty()) {
      // Callbacks may have posted or scheduled more: look again before sleeping.
      std::lock_guard<std::mutex> lock(mu_);
      if (!posted_.empty()) continue;
    }

    int timeout_ms = -1;
    if (!timers_.empty()) {
      const uint64_t first = timers_.begin()->first, t = nowMs();
      timeout_ms = first <= t ? 0 : static_cast<int>(std::min<uint64_t>(first - t, 60000));
    }
    fds.clear();
    fds.push_back(pollfd{wake_fd_, POLLIN, 0});
    std::vector<Channel*> owners;
    owners.push_back(nullptr);
    for (auto& [key, ch] : channels_) {
      timeval tv{};
      if (ares_timeout(ch->channel, nullptr, &tv) != nullptr) {
        const int ms = static_cast<int>(tv.tv_sec * 1000 + (tv.tv_usec + 999) / 1000);
        timeout_ms = timeout_ms < 0 ? ms : std::min(timeout_ms, ms);
      }
      for (const auto& [fd, rw] : ch->sockets) {
        fds.push_back(pollfd{fd, static_cast<short>((rw.first ? POLLIN : 0) | (rw.second ? POLLOUT : 0)), 0});
        owners.push_back(ch.get());
      }
    }
    const int n = ::poll(fds.data(), fds.size(), timeout_ms);
    if (n < 0 && errno != EINTR) {
      LOG_ERROR("dns: poll failed: %s", std::strerror(errno));
    }
    if (fds[0].revents & POLLIN) {
      uint64_t v;
      ssize_t r = ::read(wake_fd_, &v, sizeof(v));
      (void)r;
    }
    ready.clear();
    for (size_t i = 1; i < fds.size(); ++i) {
      if (fds[i].revents == 0) continue;
      const bool r = (fds[i].revents & (POLLIN | POLLERR | POLLHUP)) != 0;
      const bool w = (fds[i].revents & (POLLOUT | POLLERR | POLLHUP)) != 0;
      ready.push_back(Ready{owners[i], fds[i].fd, r, w});
    }
    // Callbacks run in here (on this thread); they may start lookups but never close channels.
    for (const auto& x : ready) {
      ares_process_fd(x.ch->channel, x.r ? x.fd : ARES_SOCKET_BAD, x.w ? x.fd : ARES_SOCKET_BAD);
    }
    for (auto& [key, ch] : channels_) ares_process_fd(ch->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);  // timeouts
  }
  channels_.clear();
  timers_.clear();
  timer_due_.clear();
}

}  // namespace strait::upstream
