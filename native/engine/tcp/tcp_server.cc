#include "engine/tcp/tcp_server.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <iterator>
#include <utility>

#include "engine/crypto/random.h"
#include "engine/tcp/socket_io.h"

namespace kvferry {
namespace tcp {

namespace {

// Kernel socket buffers of accepted connections, as large as the client's: the serving
// side streams READ_DATA payloads as fast as the client streams WRITEs.
constexpr int kServerSocketBuffer = 4 << 20;
// Connections accepted per listener event, so pending handshakes are served between batches.
constexpr int kAcceptBatch = 64;
// After an accept error other than "nothing queued" (EMFILE and friends), the listener
// rests this long instead of spinning on a queue it cannot drain.
constexpr std::chrono::milliseconds kAcceptBackoff{10};
// Every socket is registered once, edge-triggered, for both directions: its state
// machine reads and writes until EAGAIN, so interest never has to change.
constexpr uint32_t kSocketEvents = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;

}  // namespace

TcpServer::Served::Served(TcpServer* s, Shard* home, int fd, const TransportContext& context,
                          const ServingLimits& limits)
    : server(s), shard(home), conn(fd, context, limits, &home->scratch) {}

TcpServer::TcpServer(const TransportContext& context, TcpServerOptions options, LoopGroup* loops)
    : context_(context), options_(std::move(options)), key_(DeriveDataPlaneKey(options_.token)), loops_(loops) {}

TcpServer::~TcpServer() { Stop(); }

Status TcpServer::Start() {
  Status s = ListenTcp(options_.host, options_.port, &listen_fd_, &port_);
  if (!s.ok()) return s;
  // The listener is drained in batches until EAGAIN and never blocks in accept.
  fcntl(listen_fd_, F_SETFL, fcntl(listen_fd_, F_GETFL) | O_NONBLOCK);
  for (size_t i = 0; i < loops_->size(); ++i) {
    shards_.push_back(std::make_unique<Shard>());
    shards_.back()->loop = &loops_->loop(i);
  }
  // Level-triggered: a batch may leave connections queued, and the next turn takes them.
  loops_->RunOn(0, [this, &s] { s = shards_[0]->loop->Add(listen_fd_, EPOLLIN, &listener_, &listen_key_); });
  if (!s.ok()) {
    shards_.clear();
    close(listen_fd_);
    listen_fd_ = -1;
    return s;
  }
  listening_ = true;
  return Status::Ok();
}

void TcpServer::Stop() {
  std::lock_guard<std::mutex> stop_lock(stop_mu_);
  if (stopped_) return;
  stopped_ = true;
  stopping_.store(true, std::memory_order_release);
  // Loop 0 first: once its listener and pending handshakes are gone, no connection is
  // handed over any more, so hand-overs already posted to the other loops run (and
  // close their sockets, seeing stopping_) before those loops' CloseShard.
  for (size_t i = 0; i < shards_.size(); ++i) loops_->RunOn(i, [this, i] { CloseShard(i); });
  shards_.clear();
  if (listen_fd_ >= 0) close(listen_fd_);
  listen_fd_ = -1;
}

void TcpServer::CloseShard(size_t index) {
  Shard* shard = shards_[index].get();
  if (index == 0) {
    if (listening_) shard->loop->Remove(listen_key_);
    listening_ = false;
    if (pending_timer_ != 0) shard->loop->CancelTimer(pending_timer_);
    if (accept_timer_ != 0) shard->loop->CancelTimer(accept_timer_);
    pending_timer_ = accept_timer_ = 0;
    while (!pending_.empty()) DropPending(pending_.begin(), false);
  }
  // Every connection of this loop closes here, on its own thread: accesses in flight end.
  while (!shard->served.empty()) Retire(shard->served.begin()->first);
}

void TcpServer::AcceptReady(Clock::time_point now) {
  EventLoop& loop = *shards_[0]->loop;
  for (int n = 0; n < kAcceptBatch; ++n) {
    struct sockaddr_storage from;
    socklen_t from_len = sizeof(from);
    int fd = accept4(listen_fd_, reinterpret_cast<struct sockaddr*>(&from), &from_len, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK && errno != ECONNABORTED) {
        // EMFILE and friends: rest instead of spinning on a queue we cannot drain.
        loop.Remove(listen_key_);
        listening_ = false;
        accept_timer_ = loop.AddTimer(now + kAcceptBackoff, [this] {
          accept_timer_ = 0;
          if (!listening_) listening_ = shards_[0]->loop->Add(listen_fd_, EPOLLIN, &listener_, &listen_key_).ok();
        });
      }
      break;
    }
    std::string address;
    if (from.ss_family == AF_INET) {
      const auto* v4 = reinterpret_cast<const struct sockaddr_in*>(&from);
      address.assign(reinterpret_cast<const char*>(&v4->sin_addr), sizeof(v4->sin_addr));
    } else if (from.ss_family == AF_INET6) {
      const auto* v6 = reinterpret_cast<const struct sockaddr_in6*>(&from);
      address.assign(reinterpret_cast<const char*>(&v6->sin6_addr), sizeof(v6->sin6_addr));
    }
    Nonce nonce;
    if (!crypto::RandomBytes(nonce.data(), nonce.size()).ok()) {
      close(fd);
      continue;
    }
    // Make room: the oldest pending connection of this address, else the oldest of all.
    auto known = pending_by_address_.find(address);
    const size_t from_here = known == pending_by_address_.end() ? 0 : known->second;
    if (from_here >= options_.max_pending_per_address) {
      for (auto it = pending_.begin(); it != pending_.end(); ++it) {
        if (it->address == address) {
          context_.counters->connections_shed.fetch_add(1, std::memory_order_relaxed);
          DropPending(it, false);
          break;
        }
      }
    } else if (pending_.size() >= options_.max_pending) {
      context_.counters->connections_shed.fetch_add(1, std::memory_order_relaxed);
      DropPending(pending_.begin(), false);
    }
    pending_by_address_[address] += 1;
    pending_.emplace_back(this, fd, std::move(address), now + std::chrono::milliseconds(options_.handshake_timeout_ms),
                          key_, options_.slice_bytes, nonce);
    const auto added = std::prev(pending_.end());
    added->self = added;
    if (!loop.Add(fd, kSocketEvents, &*added, &added->key).ok()) {
      DropPending(added, false);
      continue;
    }
    // A real peer sent its HELLO right after connecting: answer it now, not a turn later.
    Settle(added, AdvanceHandshake(&*added));
  }
  ArmPendingTimer();
}

TcpServer::Advance TcpServer::AdvanceHandshake(Pending* p) {
  ServerHandshake& hs = p->handshake;
  for (;;) {
    std::vector<uint8_t>& out = hs.outbox();
    while (p->sent < out.size()) {
      ssize_t n = send(p->fd, out.data() + p->sent, out.size() - p->sent, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        p->sent += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return Advance::kKeep;
      return Advance::kRefused;  // it left mid-handshake
    }
    out.clear();
    p->sent = 0;
    if (hs.state() == ServerHandshake::State::kAccepted) return Advance::kAccepted;
    if (hs.state() == ServerHandshake::State::kRefused) return Advance::kRefused;
    // Exactly what the handshake needs next: bytes after it stay in the socket.
    uint8_t buf[kHeaderSize + kNonceBytes];
    ssize_t n = recv(p->fd, buf, std::min(hs.want(), sizeof(buf)), MSG_DONTWAIT);
    if (n > 0) {
      hs.Feed(buf, static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return Advance::kKeep;
    // EOF or reset: a peer that leaves before its first byte (a port probe) was not
    // refused anything.
    return hs.received_any() ? Advance::kRefused : Advance::kGone;
  }
}

void TcpServer::Settle(std::list<Pending>::iterator it, Advance outcome) {
  if (outcome == Advance::kKeep) return;
  if (outcome == Advance::kAccepted) {
    const int fd = it->fd;
    it->fd = -1;
    DropPending(it, false);
    HandOver(fd);
    return;
  }
  DropPending(it, outcome == Advance::kRefused);
}

void TcpServer::DropPending(std::list<Pending>::iterator it, bool refused) {
  if (refused) context_.counters->handshakes_refused.fetch_add(1, std::memory_order_relaxed);
  if (it->key != 0) shards_[0]->loop->Remove(it->key);
  if (it->fd >= 0) close(it->fd);
  auto count = pending_by_address_.find(it->address);
  if (count != pending_by_address_.end() && --count->second == 0) pending_by_address_.erase(count);
  pending_.erase(it);
}

void TcpServer::ExpirePending() {
  pending_timer_ = 0;
  const auto now = Clock::now();
  while (!pending_.empty() && pending_.front().deadline <= now) DropPending(pending_.begin(), true);
  ArmPendingTimer();
}

void TcpServer::ArmPendingTimer() {
  // Deadlines only grow along the list, so a timer armed for an earlier front is never
  // late for the current one: when it fires, it re-arms for whatever is first then.
  if (pending_timer_ != 0 || pending_.empty()) return;
  pending_timer_ = shards_[0]->loop->AddTimer(pending_.front().deadline, [this] { ExpirePending(); });
}

void TcpServer::HandOver(int fd) {
  if (served_count_.fetch_add(1, std::memory_order_acq_rel) >= kMaxConnections) {
    served_count_.fetch_sub(1, std::memory_order_acq_rel);
    close(fd);
    context_.counters->connections_shed.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  SetStreamOptions(fd, kServerSocketBuffer);
  Shard* shard = shards_[next_shard_].get();
  next_shard_ = (next_shard_ + 1) % shards_.size();
  if (shard == shards_[0].get()) {
    Adopt(shard, fd);
  } else {
    shard->loop->Post([this, shard, fd] { Adopt(shard, fd); });
  }
}

void TcpServer::Adopt(Shard* shard, int fd) {
  if (stopping_.load(std::memory_order_acquire)) {
    close(fd);
    served_count_.fetch_sub(1, std::memory_order_acq_rel);
    return;
  }
  ServingLimits limits;
  limits.slice_bytes = options_.slice_bytes;
  limits.io_timeout = std::chrono::milliseconds(options_.io_timeout_ms);
  auto owned = std::make_unique<Served>(this, shard, fd, context_, limits);
  Served* s = owned.get();
  shard->served.emplace(s, std::move(owned));
  if (!shard->loop->Add(fd, kSocketEvents, s, &s->key).ok()) {
    Retire(s);
    return;
  }
  // Requests sent right after the PROOF are already waiting: serve them now.
  Drive(s);
}

void TcpServer::Drive(Served* s) {
  const ServerConnection::Outcome outcome = s->conn.Advance(Clock::now());
  if (outcome == ServerConnection::Outcome::kClosed) {
    Retire(s);
    return;
  }
  if (outcome == ServerConnection::Outcome::kYield) s->shard->loop->Kick(s->key);
  // One timer per connection at most, armed lazily: a frame's deadline only moves later,
  // so a timer armed for an earlier one fires first and re-arms for the current one.
  const auto deadline = s->conn.deadline();
  if (s->timer == 0 && deadline != Clock::time_point::max()) {
    s->timer = s->shard->loop->AddTimer(deadline, [s] {
      s->timer = 0;
      s->server->Drive(s);
    });
  }
}

void TcpServer::Retire(Served* s) {
  Shard* shard = s->shard;
  if (s->key != 0) shard->loop->Remove(s->key);
  if (s->timer != 0) shard->loop->CancelTimer(s->timer);
  shard->served.erase(s);  // closes the socket; an access in flight ends
  served_count_.fetch_sub(1, std::memory_order_acq_rel);
}

}  // namespace tcp
}  // namespace kvferry
