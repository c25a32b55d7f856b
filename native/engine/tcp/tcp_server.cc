#include "engine/tcp/tcp_server.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <iterator>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <utility>

#include "engine/crypto/random.h"
#include "engine/tcp/socket_io.h"

namespace kvferry {
namespace tcp {

namespace {

// Kernel socket buffers of accepted connections, as large as the client's: the serving
// side streams READ_DATA payloads as fast as the client streams WRITEs.
constexpr int kServerSocketBuffer = 4 << 20;
// Refused WRITE payloads are drained through a buffer of at most this size.
constexpr size_t kScratchBytes = 64 * 1024;
// At most this many WRITE_ACKs wait for one send while requests keep arriving (as many
// as a client's window holds small slices).
constexpr size_t kMaxHeldAcks = 32;

}  // namespace

TcpServer::TcpServer(const TransportContext& context, TcpServerOptions options)
    : context_(context), options_(std::move(options)), key_(DeriveDataPlaneKey(options_.token)) {}

TcpServer::~TcpServer() { Stop(); }

Status TcpServer::Start() {
  Status s = ListenTcp(options_.host, options_.port, &listen_fd_, &port_);
  if (!s.ok()) return s;
  // The acceptor drains the queue until EAGAIN and never blocks in accept.
  fcntl(listen_fd_, F_SETFL, fcntl(listen_fd_, F_GETFL) | O_NONBLOCK);
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) {
    close(listen_fd_);
    listen_fd_ = -1;
    return Status(Code::kInternal, std::string("eventfd: ") + std::strerror(errno));
  }
  listener_ = std::thread([this] { AcceptLoop(); });
  return Status::Ok();
}

void TcpServer::Stop() {
  std::lock_guard<std::mutex> stop_lock(stop_mu_);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  if (wake_fd_ >= 0) {
    uint64_t one = 1;
    ssize_t ignored = write(wake_fd_, &one, sizeof(one));
    (void)ignored;
  }
  if (listener_.joinable()) listener_.join();
  // The listener is gone, so the list only shrinks now. Shut every connection down: a
  // thread blocked in recv/send returns at once and releases its handle access.
  std::list<std::unique_ptr<Connection>> all;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& c : connections_) {
      if (c->fd >= 0) shutdown(c->fd, SHUT_RDWR);
    }
    all.swap(connections_);
  }
  for (auto& c : all) c->thread.join();
  if (listen_fd_ >= 0) close(listen_fd_);
  if (wake_fd_ >= 0) close(wake_fd_);
  listen_fd_ = -1;
  wake_fd_ = -1;
}

void TcpServer::ReapLocked(std::vector<std::unique_ptr<Connection>>* finished) {
  for (auto it = connections_.begin(); it != connections_.end();) {
    if ((*it)->done) {
      finished->push_back(std::move(*it));
      it = connections_.erase(it);
    } else {
      ++it;
    }
  }
}

void TcpServer::AcceptLoop() {
  using Clock = std::chrono::steady_clock;
  std::vector<struct pollfd> fds;
  for (;;) {
    fds.clear();
    fds.push_back({listen_fd_, POLLIN, 0});
    fds.push_back({wake_fd_, POLLIN, 0});
    for (const Pending& p : pending_) {
      fds.push_back({p.fd, static_cast<short>(p.handshake.has_output() ? POLLOUT : POLLIN), 0});
    }
    int timeout = -1;
    if (!pending_.empty()) {
      // The oldest pending connection has the earliest deadline (rounded up, so the
      // wake-up is never early).
      const auto left = pending_.front().deadline - Clock::now();
      timeout = static_cast<int>(std::max<int64_t>(
          0, std::chrono::duration_cast<std::chrono::milliseconds>(left + std::chrono::microseconds(999)).count()));
    }
    int rc = poll(fds.data(), fds.size(), timeout);
    if (rc < 0 && errno != EINTR) break;
    if (rc > 0 && fds[1].revents != 0) break;  // Stop()
    // Handshakes with events, in the order they were polled (accepts come after, so the
    // list and the poll array still line up here).
    size_t i = 2;
    for (auto it = pending_.begin(); rc > 0 && i < fds.size(); ++i) {
      auto cur = it++;
      if (fds[i].revents == 0) continue;
      Settle(cur, AdvanceHandshake(&*cur));
    }
    const auto now = Clock::now();
    while (!pending_.empty() && pending_.front().deadline <= now) DropPending(pending_.begin(), true);
    if (rc > 0 && (fds[0].revents & POLLIN) != 0) AcceptReady(now);
  }
  while (!pending_.empty()) DropPending(pending_.begin(), false);
}

void TcpServer::AcceptReady(std::chrono::steady_clock::time_point now) {
  // A bounded batch per wake-up, so pending handshakes are served between batches.
  for (int n = 0; n < 64; ++n) {
    struct sockaddr_storage from;
    socklen_t from_len = sizeof(from);
    int fd = accept4(listen_fd_, reinterpret_cast<struct sockaddr*>(&from), &from_len, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      // EMFILE and friends: back off briefly instead of spinning.
      if (errno != EINTR && errno != EAGAIN && errno != EWOULDBLOCK && errno != ECONNABORTED) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      return;
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
    pending_.emplace_back(fd, std::move(address), now + std::chrono::milliseconds(options_.handshake_timeout_ms), key_,
                          options_.slice_bytes, nonce);
    // A real peer sent its HELLO right after connecting: answer it now, not a poll later.
    const auto added = std::prev(pending_.end());
    Settle(added, AdvanceHandshake(&*added));
  }
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
    StartServing(fd);
    return;
  }
  DropPending(it, outcome == Advance::kRefused);
}

void TcpServer::DropPending(std::list<Pending>::iterator it, bool refused) {
  if (refused) context_.counters->handshakes_refused.fetch_add(1, std::memory_order_relaxed);
  if (it->fd >= 0) close(it->fd);
  auto count = pending_by_address_.find(it->address);
  if (count != pending_by_address_.end() && --count->second == 0) pending_by_address_.erase(count);
  pending_.erase(it);
}

void TcpServer::StartServing(int fd) {
  // From here on the connection is served with blocking I/O and the I/O timeouts.
  const int flags = fcntl(fd, F_GETFL);
  fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  SetIoTimeouts(fd, options_.io_timeout_ms);
  SetStreamOptions(fd, kServerSocketBuffer);
  std::vector<std::unique_ptr<Connection>> finished;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ReapLocked(&finished);
    if (stopping_ || connections_.size() >= kMaxConnections) {
      close(fd);
      context_.counters->connections_shed.fetch_add(1, std::memory_order_relaxed);
    } else {
      auto conn = std::make_unique<Connection>();
      Connection* raw = conn.get();
      raw->fd = fd;
      raw->thread = std::thread([this, raw, fd] { Serve(raw, fd); });
      connections_.push_back(std::move(conn));
    }
  }
  for (auto& c : finished) c->thread.join();
}

void TcpServer::Serve(Connection* conn, int fd) {
  {
    Session session(fd, options_.io_timeout_ms);
    for (;;) {
      // Wait for the next header. A timeout before its first byte is an idle peer, which
      // may stay; from its first byte on, the frame runs against its deadline.
      uint8_t buf[kHeaderSize];
      size_t have = session.next_have;
      if (have > 0) {
        std::memcpy(buf, session.next, have);
        session.deadline.Start();
      }
      session.next_have = 0;
      IoResult r = IoResult::kOk;
      if (!session.acks.empty() && have < kHeaderSize) {
        // WRITE_ACKs wait while requests keep streaming in (one send for many), and go
        // out before this thread would block: the client never waits on a held-back ACK.
        const size_t had = have;
        ssize_t n = recv(fd, buf + have, kHeaderSize - have, MSG_DONTWAIT);
        if (n > 0) have += static_cast<size_t>(n);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) break;
        // The flush runs against the frame's deadline, or its own when no frame started.
        if (had == 0) session.deadline.Start();
        if (have < kHeaderSize && !FlushAcks(&session)) break;
      }
      while (have < kHeaderSize) {
        size_t got = 0;
        if (have == 0) {
          // Idle: no deadline, just the I/O timeout to look for Stop() now and then.
          session.deadline.Relax();
          r = RecvSome(fd, buf, kHeaderSize, &got);
          if (r == IoResult::kTimeout) {
            std::lock_guard<std::mutex> lock(mu_);
            if (stopping_) break;
            continue;
          }
          if (r != IoResult::kOk) break;
          have = got;
          session.deadline.Start();
          continue;
        }
        r = RecvFull(fd, buf + have, kHeaderSize - have, &got, &session.deadline);
        have += got;
        if (r != IoResult::kOk) break;
      }
      if (r != IoResult::kOk) break;
      FrameHeader h = DecodeHeader(buf);
      if (!IsAcceptableRequest(h, options_.slice_bytes)) {
        context_.counters->frames_refused.fetch_add(1, std::memory_order_relaxed);
        break;
      }
      const bool keep = h.type == FrameType::kWrite ? ServeWrite(&session, h) : ServeRead(&session, h);
      if (!keep) break;
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  close(fd);
  conn->fd = -1;
  conn->done = true;
}

Status TcpServer::AcquireAccess(const FrameHeader& h, Access mode, Session* session) {
  Status access = context_.handles->Acquire(h.handle, mode, h.offset, h.length, &session->pieces);
  if (!access.ok()) return access;
  const size_t before = session->iov.size();
  for (const PoolExtent& p : session->pieces) {
    if (p.offset > context_.pool_size || p.size > context_.pool_size - p.offset) {
      // Cannot happen (Expose checks ranges against the pool); refuse rather than trust it.
      session->iov.resize(before);
      context_.handles->ReleaseAccess(h.handle);
      return Status(Code::kInternal, "handle range outside the pool");
    }
    session->iov.push_back({context_.pool_base + p.offset, static_cast<size_t>(p.size)});
  }
  return access;
}

bool TcpServer::FlushAcks(Session* session) {
  if (session->acks.empty()) return true;
  struct iovec iov = {session->acks.data(), session->acks.size()};
  const bool sent = SendFull(session->fd, &iov, 1, &session->deadline) == IoResult::kOk;
  session->acks.clear();
  return sent;
}

bool TcpServer::ServeWrite(Session* session, const FrameHeader& h) {
  session->iov.clear();
  Status access = AcquireAccess(h, Access::kWrite, session);
  size_t got = 0;
  if (access.ok()) {
    // The payload goes straight into the pool; the access pins the handle meanwhile.
    // Whatever of the next header has already arrived comes along with its last piece.
    const struct iovec last = session->iov.back();
    IoResult r = RecvFullV(session->fd, session->iov.data(), static_cast<int>(session->iov.size()) - 1,
                           &session->deadline);
    if (r == IoResult::kOk) {
      r = RecvFullAndPeek(session->fd, last.iov_base, last.iov_len, session->next, kHeaderSize,
                          &session->next_have, &session->deadline);
    }
    context_.handles->ReleaseAccess(h.handle);
    if (r != IoResult::kOk) return false;
    context_.counters->bytes_received.fetch_add(h.length, std::memory_order_relaxed);
  } else {
    // Refused: swallow the payload so the stream stays in step, then say why.
    if (session->scratch.empty()) session->scratch.resize(kScratchBytes);
    uint64_t left = h.length;
    while (left > 0) {
      const size_t chunk = static_cast<size_t>(std::min<uint64_t>(left, session->scratch.size()));
      if (RecvFull(session->fd, session->scratch.data(), chunk, &got, &session->deadline) != IoResult::kOk) {
        return false;
      }
      left -= chunk;
    }
  }
  FrameHeader ack;
  ack.type = FrameType::kWriteAck;
  ack.status = static_cast<uint32_t>(access.code());
  ack.request_id = h.request_id;
  const size_t at = session->acks.size();
  session->acks.resize(at + kHeaderSize);
  EncodeHeader(ack, session->acks.data() + at);
  return session->acks.size() < kMaxHeldAcks * kHeaderSize || FlushAcks(session);
}

bool TcpServer::ServeRead(Session* session, const FrameHeader& h) {
  // Held-back ACKs (they answer earlier requests), header and payload leave in one
  // sendmsg, the payload straight from the pool.
  uint8_t out[kHeaderSize];
  session->iov.clear();
  session->iov.push_back({session->acks.data(), session->acks.size()});
  session->iov.push_back({out, kHeaderSize});
  Status access = AcquireAccess(h, Access::kRead, session);
  FrameHeader reply;
  reply.type = FrameType::kReadData;
  reply.status = static_cast<uint32_t>(access.code());
  reply.request_id = h.request_id;
  reply.length = access.ok() ? h.length : 0;
  EncodeHeader(reply, out);
  IoResult r = SendFull(session->fd, session->iov.data(), static_cast<int>(session->iov.size()), &session->deadline);
  session->acks.clear();
  if (access.ok()) {
    context_.handles->ReleaseAccess(h.handle);
    if (r == IoResult::kOk) context_.counters->bytes_sent.fetch_add(h.length, std::memory_order_relaxed);
  }
  return r == IoResult::kOk;
}

}  // namespace tcp
}  // namespace kvferry
