#include "engine/tcp/tcp_server.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <utility>

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
    : context_(context), options_(std::move(options)) {}

TcpServer::~TcpServer() { Stop(); }

Status TcpServer::Start() {
  Status s = ListenTcp(options_.host, options_.port, &listen_fd_, &port_);
  if (!s.ok()) return s;
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
  for (;;) {
    struct pollfd fds[2];
    fds[0] = {listen_fd_, POLLIN, 0};
    fds[1] = {wake_fd_, POLLIN, 0};
    int rc = poll(fds, 2, -1);
    if (rc < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents != 0) return;  // Stop()
    if ((fds[0].revents & POLLIN) == 0) continue;
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      // EMFILE and friends: back off briefly instead of spinning.
      if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      continue;
    }
    std::vector<std::unique_ptr<Connection>> finished;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ReapLocked(&finished);
      if (stopping_ || connections_.size() >= kMaxConnections) {
        close(fd);
      } else {
        SetIoTimeouts(fd, options_.io_timeout_ms);
        SetStreamOptions(fd, kServerSocketBuffer);
        auto conn = std::make_unique<Connection>();
        Connection* raw = conn.get();
        raw->fd = fd;
        raw->thread = std::thread([this, raw, fd] { Serve(raw, fd); });
        connections_.push_back(std::move(conn));
      }
    }
    for (auto& c : finished) c->thread.join();
  }
}

TcpServer::HandshakeResult TcpServer::Handshake(int fd) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::milliseconds(options_.io_timeout_ms);
  size_t total = 0;
  // The HELLO must be complete by the deadline, however slowly its bytes trickle in.
  auto recv_by_deadline = [&](uint8_t* dst, size_t n) {
    size_t done = 0;
    while (done < n) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      if (left <= 0) return false;
      struct pollfd pfd = {fd, POLLIN, 0};
      int rc = poll(&pfd, 1, static_cast<int>(left));
      if (rc < 0 && errno == EINTR) continue;
      if (rc <= 0) return false;
      ssize_t r = recv(fd, dst + done, n - done, MSG_DONTWAIT);
      if (r > 0) {
        done += static_cast<size_t>(r);
        total += static_cast<size_t>(r);
        continue;
      }
      if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) continue;
      return false;  // EOF, reset, or shut down by Stop()
    }
    return true;
  };
  uint8_t buf[kHeaderSize];
  if (!recv_by_deadline(buf, kHeaderSize)) {
    // A peer that connects and leaves without a byte (a port probe, a client shutting
    // down mid-connect) was not refused anything.
    return total == 0 ? HandshakeResult::kGone : HandshakeResult::kRefused;
  }
  FrameHeader h = DecodeHeader(buf);
  if (!IsWellFormed(h) || h.type != FrameType::kHello || h.length > kMaxTokenBytes) {
    return HandshakeResult::kRefused;
  }
  std::string token(h.length, '\0');
  if (h.length > 0 && !recv_by_deadline(reinterpret_cast<uint8_t*>(&token[0]), h.length)) {
    return HandshakeResult::kRefused;
  }

  FrameHeader reply;
  const bool accepted = ConstantTimeEquals(options_.token, token);
  if (accepted) {
    reply.type = FrameType::kHelloOk;
    reply.offset = options_.slice_bytes;
  } else {
    reply.type = FrameType::kHelloRefused;
    reply.status = static_cast<uint32_t>(Code::kPermissionDenied);
  }
  uint8_t out[kHeaderSize];
  EncodeHeader(reply, out);
  struct iovec iov = {out, kHeaderSize};
  IoResult sent = SendFull(fd, &iov, 1);
  if (!accepted) return HandshakeResult::kRefused;
  return sent == IoResult::kOk ? HandshakeResult::kAccepted : HandshakeResult::kGone;
}

void TcpServer::Serve(Connection* conn, int fd) {
  HandshakeResult hello = Handshake(fd);
  if (hello == HandshakeResult::kRefused) {
    context_.counters->handshakes_refused.fetch_add(1, std::memory_order_relaxed);
  } else if (hello == HandshakeResult::kAccepted) {
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
      const bool request = h.type == FrameType::kWrite || h.type == FrameType::kRead;
      if (!IsWellFormed(h) || !request || h.status != 0 || h.length > options_.slice_bytes) {
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

Status TcpServer::AcquireAccess(const FrameHeader& h, Access mode, uint64_t* pool_offset) {
  Status access = context_.handles->Acquire(h.handle, mode, h.offset, h.length, pool_offset);
  if (access.ok() && (*pool_offset > context_.pool_size || h.length > context_.pool_size - *pool_offset)) {
    // Cannot happen (Expose checks ranges against the pool); refuse rather than trust it.
    context_.handles->ReleaseAccess(h.handle);
    return Status(Code::kInternal, "handle range outside the pool");
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
  uint64_t pool_offset = 0;
  Status access = AcquireAccess(h, Access::kWrite, &pool_offset);
  size_t got = 0;
  if (access.ok()) {
    // The payload goes straight into the pool; the access pins the handle meanwhile.
    // Whatever of the next header has already arrived comes along in the same recvmsg.
    IoResult r = RecvFullAndPeek(session->fd, context_.pool_base + pool_offset, h.length, session->next,
                                 kHeaderSize, &session->next_have, &session->deadline);
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
  uint64_t pool_offset = 0;
  Status access = AcquireAccess(h, Access::kRead, &pool_offset);
  FrameHeader reply;
  reply.type = FrameType::kReadData;
  reply.status = static_cast<uint32_t>(access.code());
  reply.request_id = h.request_id;
  reply.length = access.ok() ? h.length : 0;
  uint8_t out[kHeaderSize];
  EncodeHeader(reply, out);
  // Held-back ACKs (they answer earlier requests), header and payload leave in one
  // sendmsg, the payload straight from the pool.
  struct iovec iov[3];
  iov[0] = {session->acks.data(), session->acks.size()};
  iov[1] = {out, kHeaderSize};
  iov[2] = {access.ok() ? context_.pool_base + pool_offset : nullptr, static_cast<size_t>(reply.length)};
  IoResult r = SendFull(session->fd, iov, 3, &session->deadline);
  session->acks.clear();
  if (access.ok()) {
    context_.handles->ReleaseAccess(h.handle);
    if (r == IoResult::kOk) context_.counters->bytes_sent.fetch_add(h.length, std::memory_order_relaxed);
  }
  return r == IoResult::kOk;
}

}  // namespace tcp
}  // namespace kvferry
