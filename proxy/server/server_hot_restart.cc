// The Server's side of hot restart (see hot_restart.h): which sockets it hands to the next process,
// which it takes from the previous one, and the parent's drain.

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "proxy/common/log.h"
#include "proxy/server/admin.h"
#include "proxy/server/hot_restart.h"
#include "proxy/server/server.h"
#include "proxy/server/status_server.h"
#include "proxy/server/xds_applier.h"

namespace strait::server {

namespace {
bool isListening(int fd) {
  int on = 0;
  socklen_t len = sizeof(on);
  return ::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &on, &len) == 0 && on != 0;
}
}  // namespace

void Server::setHotRestart(std::unique_ptr<HotRestart> hot_restart) { hot_restart_ = std::move(hot_restart); }

std::vector<int> Server::inheritListenerSockets(const config::Listener& l) {
  if (!hot_restart_) return {};
  auto fds = hot_restart_->takeParentSockets(hot_restart::SocketKind::Listener, l.address, l.name);
  if (fds.empty()) return fds;
  // Only listening sockets on the listener's address (the parent's port when it is 0) are used.
  const network::Address first = network::boundAddress(fds[0]);
  bool ok = l.address.port() == 0 || first == l.address;
  for (int fd : fds) ok = ok && isListening(fd) && network::boundAddress(fd) == first;
  if (!ok) {
    LOG_ERROR("hot restart: the parent's sockets for listener '%s' are not listening on %s: binding anew",
              l.name.c_str(), l.address.asString().c_str());
    for (int fd : fds) ::close(fd);
    return {};
  }
  LOG_INFO("hot restart: listener '%s' on %s: %zu socket(s) from the parent", l.name.c_str(), first.asString().c_str(),
           fds.size());
  return fds;
}

int Server::inheritLocalSocket(const network::Address& configured) {
  auto fds = hot_restart_->takeParentSockets(hot_restart::SocketKind::Local, configured, "");
  if (fds.empty()) return -1;
  for (size_t i = 1; i < fds.size(); ++i) ::close(fds[i]);
  if (!isListening(fds[0]) || (configured.port() != 0 && !(network::boundAddress(fds[0]) == configured))) {
    LOG_ERROR("hot restart: the parent's socket for %s is not listening there: binding anew",
              configured.asString().c_str());
    ::close(fds[0]);
    return -1;
  }
  LOG_INFO("hot restart: %s taken over from the parent", network::boundAddress(fds[0]).asString().c_str());
  return fds[0];
}

std::vector<int> Server::socketsForChild(hot_restart::SocketKind kind, const network::Address& configured,
                                         const std::string& name) {
  if (state_ == State::Draining) return {};  // stopping: its sockets are going
  if (kind == hot_restart::SocketKind::Local) {
    return collectFdsOn(*dispatcher_, [this, configured] { return releaseLocalSocket(configured); },
                        std::chrono::seconds(2));
  }
  std::string listener;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (const auto& b : bound_) {
      const auto& l = *b.listener;
      if (l.bind_to_port && l.address == configured && (configured.port() != 0 || l.name == name)) {
        listener = l.name;
        break;
      }
    }
  }
  std::vector<int> out;
  if (listener.empty()) return out;
  for (auto& w : workers_) {
    auto fds = w->duplicateListenFds(listener);
    out.insert(out.end(), fds.begin(), fds.end());
  }
  return out;
}

std::vector<int> Server::releaseLocalSocket(const network::Address& configured) {
  if (state_ == State::Draining) return {};
  LocalHttpServer* http = nullptr;
  network::Address bound;
  auto snap = snapshot();
  if (admin_ && snap->admin_address && *snap->admin_address == configured) {
    http = &admin_->http();
    bound = admin_->address();
  } else if (status_) {
    for (const auto& a : status_->http().addresses()) {
      if (a == configured) {
        http = &status_->http();
        bound = a;
      }
    }
  }
  if (http == nullptr) return {};
  const int held = http->release(bound);
  if (held < 0) return {};
  const int copy = ::fcntl(held, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) {
    http->resume(bound, held);
    return {};
  }
  // This process stops accepting there now (the next one serves the admin from its start); the
  // duplicate kept here lets it resume if the next process goes away before it is ready.
  held_local_.push_back(HeldSocket{http, bound, held});
  LOG_INFO("hot restart: %s handed to the next process", bound.asString().c_str());
  return {copy};
}

void Server::startHotRestart() {
  // The parent's counters first, so /stats carries on from where they were.
  if (hot_restart_->hasParent()) hot_restart_->syncParentStats(*store_);
  HotRestart::ParentCallbacks cb;
  cb.sockets = [this](hot_restart::SocketKind kind, const network::Address& configured, const std::string& name) {
    return socketsForChild(kind, configured, name);
  };
  cb.drain = [this] { dispatcher_->post([this] { startHotRestartDrain(); }); };
  cb.child_gone = [this] {
    dispatcher_->post([this] {
      if (state_ == State::Draining) return;
      for (auto& h : held_local_) {
        LOG_INFO("hot restart: accepting on %s again", h.bound.asString().c_str());
        h.http->resume(h.bound, h.fd);
      }
      held_local_.clear();
    });
  };
  hot_restart_->startServing(std::move(cb), *store_);
  // (A parent lost since run() held the workers' accepting: they still start once initialised.)
  if (!hot_restart_->hasParent() && !accept_held_) return;
  // The parent drains only once this process is initialised, as Envoy's child drains its parent only
  // when its init manager is done: with xDS, the first CDS and LDS applied and the clusters and
  // listeners they brought warmed (EDS, RDS), or initial_fetch_timeout passed; certificates there.
  // Until then the workers hold their sockets without accepting (run()), so nothing is served on a
  // config still missing endpoints or routes, and the parent accepts on the shared sockets; a start
  // that fails, or a control plane that does not answer, leaves the parent serving. Then the workers
  // accept and the parent is told (in either order: a connection queued on a socket both hold waits
  // there for whichever process accepts next).
  hot_restart_ready_timer_ = dispatcher_->createTimer([this] {
    std::string body;
    if (state_ == State::Draining) return;
    if (!initialised(&body)) {
      hot_restart_ready_timer_->enable(100);
      return;
    }
    if (accept_held_) {
      accept_held_ = false;
      for (auto& w : workers_) w->startAccepting();
      LOG_INFO("hot restart: initialised; accepting");
    }
    hot_restart_->startParentDrain([this](std::function<void()> f) { dispatcher_->post(std::move(f)); }, *store_);
  });
  hot_restart_ready_timer_->enable(50);
}

void Server::startHotRestartDrain() {
  if (state_ == State::Draining) return;
  if (xds_) xds_->stop();
  LOG_INFO("hot restart: the next process is ready: stopped accepting; draining, exiting within %u s",
           options_.parent_shutdown_time_s);
  state_ = State::Draining;
  stats::set(*store_, live_, 0);
  stats::set(*store_, draining_, 1);
  // The next process accepts on the very same sockets, so nothing queued is lost when this one stops:
  // every listener (OUTBOUND ones too) stops at once and every connection is told (GOAWAY,
  // Connection: close), spread over --drain-time-s as --drain-strategy says.
  outbound_told_ = true;
  for (auto& w : workers_) w->stopListening();
  if (admin_) admin_->stop();
  if (status_) status_->stop();
  for (auto& h : held_local_) ::close(h.fd);
  held_local_.clear();
  const auto now = std::chrono::steady_clock::now();
  drain_deadline_ = now + std::chrono::seconds(options_.parent_shutdown_time_s);
  drain_min_until_ = now;
  drain_timer_ = dispatcher_->createTimer([this] { onDrainTick(); });
  drain_timer_->enable(50);
}

}  // namespace strait::server
