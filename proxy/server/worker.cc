#include "proxy/server/worker.h"

#include <unistd.h>

#include "proxy/common/log.h"
#include "proxy/network/connection.h"

namespace strait::server {

Worker::Worker(uint32_t index, stats::Shard& shard, config::SnapshotConstSharedPtr snapshot)
    : index_(index),
      shard_(shard),
      snapshot_(std::move(snapshot)),
      dispatcher_(std::make_unique<event::Dispatcher>("worker_" + std::to_string(index))),
      rng_(std::random_device{}() + index) {
  rr_cursor_.assign(snapshot_->clusters.size(), index);  // workers start at different hosts
}

Worker::~Worker() { join(); }

void Worker::start(std::vector<WorkerSocket> sockets) {
  // The loop was made on this thread but is only ever run and touched by the worker thread from here on.
  thread_ = std::thread([this, sockets = std::move(sockets)]() mutable {
    stats::setThreadShard(&shard_);
    for (auto& s : sockets) {
      auto listener = s.listener;
      auto l = std::make_unique<network::TcpListener>(
          *dispatcher_, s.fd, 1024, [this, listener](network::ConnectionPtr c) { onAccept(listener, std::move(c)); });
      if (!l->ok()) {
        LOG_ERROR("worker %u: listener %s: %s", index_, listener->name.c_str(), l->error().c_str());
        continue;
      }
      listeners_.push_back(std::move(l));
    }
    LOG_DEBUG("worker %u started with %zu listeners", index_, listeners_.size());
    dispatcher_->run();
    listeners_.clear();
    // Whatever is still open after the drain is closed now.
    std::vector<config::ActiveSession*> left(sessions_.begin(), sessions_.end());
    for (auto* s : left) s->forceClose();
    dispatcher_.reset();
    LOG_DEBUG("worker %u stopped", index_);
  });
}

void Worker::stopListening() {
  dispatcher_->post([this] { listeners_.clear(); });
}

void Worker::shutdown() {
  dispatcher_->post([this] { dispatcher_->exit(); });
}

void Worker::join() {
  if (thread_.joinable()) thread_.join();
}

void Worker::onAccept(const config::ListenerConstSharedPtr& listener, network::ConnectionPtr conn) {
  stats::inc(listener->stats.downstream_cx_total);
  if (listener->restore_original_dst) conn->restoreOriginalDestination();
  const config::FilterChain* chain = listener->match(conn->localAddress());
  if (chain == nullptr || !chain->terminal) {
    stats::inc(listener->stats.no_filter_chain_match);
    stats::inc(listener->stats.downstream_cx_destroy);
    LOG_DEBUG("[C%lu] listener %s: no filter chain for %s", conn->id(), listener->name.c_str(),
              conn->localAddress().asString().c_str());
    conn->close(network::CloseType::NoFlush);
    dispatcher_->deferredDelete(std::move(conn));
    return;
  }
  stats::inc(listener->stats.downstream_cx_active);
  LOG_TRACE("[C%lu] accepted on %s from %s", conn->id(), listener->name.c_str(), conn->remoteAddress().asString().c_str());
  chain->terminal->onAccept(*this, std::move(conn), listener);
}

std::optional<config::HostChoice> Worker::chooseHost(const config::Cluster& cluster,
                                                    const network::Connection& downstream) {
  if (cluster.type == config::Cluster::Type::OriginalDst) {
    // Without a recovered original destination the "destination" is this listener: connecting there
    // would loop through the proxy forever, so there is no host.
    if (!downstream.localAddressRestored()) return std::nullopt;
    return config::HostChoice{downstream.localAddress(), nullptr};
  }
  if (cluster.hosts.empty()) return std::nullopt;
  uint32_t& cursor = rr_cursor_[cluster.index];
  const config::Host& h = cluster.hosts[cursor % cluster.hosts.size()];
  ++cursor;
  return config::HostChoice{h.address, &h};
}

void Worker::addSession(std::unique_ptr<config::ActiveSession> session) {
  config::ActiveSession* raw = session.release();
  sessions_.push_front(raw);
  raw->list_position = sessions_.begin();
  active_sessions_.fetch_add(1, std::memory_order_relaxed);
}

void Worker::removeSession(config::ActiveSession& session) {
  sessions_.erase(session.list_position);
  active_sessions_.fetch_sub(1, std::memory_order_relaxed);
  stats::dec(session.listener()->stats.downstream_cx_active);
  stats::inc(session.listener()->stats.downstream_cx_destroy);
  dispatcher_->deferredDelete(config::ActiveSessionPtr(&session));
}

}  // namespace strait::server
