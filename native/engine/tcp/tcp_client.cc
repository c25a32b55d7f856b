#include "engine/tcp/tcp_client.h"

#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <unordered_set>
#include <utility>

#include "engine/tcp/socket_io.h"
#include "engine/tcp/wire.h"

namespace kvferry {
namespace tcp {

namespace {

// Kernel socket buffers for outgoing connections: large enough to keep a window of
// slices moving on a fast link.
constexpr int kClientSocketBuffer = 4 << 20;
// A sender stops adding slices to one sendmsg at this many payload bytes, so the slices of
// one large op spread over several connections instead of queueing on one.
constexpr uint64_t kBatchBytes = 1 << 20;
// How often a connect in progress looks for a shutdown request.
constexpr int kConnectPollMs = 50;

std::string ErrnoText() { return std::strerror(errno); }

}  // namespace

TcpClient::TcpClient(const TransportContext& context, TcpClientOptions options)
    : context_(context), options_(std::move(options)) {}

TcpClient::~TcpClient() { Shutdown(); }

// ---- submission ---------------------------------------------------------------------

Status TcpClient::Submit(std::vector<TransferOp> ops) {
  std::vector<std::shared_ptr<Conn>> finished;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return Status(Code::kUnavailable, "the transport is shut down");
    // All-or-nothing: judge the whole batch before touching any state.
    std::unordered_set<uint64_t> ids;
    ids.reserve(ops.size());
    for (const TransferOp& op : ops) {
      if (ops_.count(op.id) != 0 || !ids.insert(op.id).second) {
        return Status(Code::kInvalidArgument, "op id " + std::to_string(op.id) + " is already in flight");
      }
      std::string host;
      uint16_t port = 0;
      if (!ParseHostPort(op.peer, &host, &port)) {
        return Status(Code::kInvalidArgument, "peer '" + op.peer + "' is not host:port");
      }
    }
    const auto now = std::chrono::steady_clock::now();
    std::vector<std::shared_ptr<Peer>> touched;
    for (TransferOp& spec : ops) {
      auto op = std::make_unique<Op>();
      op->local = context_.pool_base + spec.local_offset;
      op->peer = PeerLocked(spec.peer);
      op->spec = std::move(spec);
      op->start = now;
      op->pending = true;
      op->pending_it = op->peer->pending.insert(op->peer->pending.end(), op.get());
      if (std::find(touched.begin(), touched.end(), op->peer) == touched.end()) touched.push_back(op->peer);
      const uint64_t id = op->spec.id;
      ops_.emplace(id, std::move(op));
    }
    for (const auto& peer : touched) {
      EnsureConnectionsLocked(peer);
      for (Conn* c : peer->conns) c->send_cv.notify_one();
    }
    ReapLocked(&finished);
  }
  for (auto& c : finished) {
    c->sender.join();
    c->receiver.join();
  }
  return Status::Ok();
}

std::shared_ptr<TcpClient::Peer> TcpClient::PeerLocked(const std::string& key) {
  auto it = peers_.find(key);
  if (it != peers_.end()) return it->second;
  auto peer = std::make_shared<Peer>();
  peer->key = key;
  (void)ParseHostPort(key, &peer->host, &peer->port);  // checked by Submit
  peers_.emplace(key, peer);
  return peer;
}

size_t TcpClient::LiveConnsLocked(const Peer& peer) const {
  size_t n = 0;
  for (const Conn* c : peer.conns) n += c->dying ? 0 : 1;
  return n;
}

void TcpClient::EnsureConnectionsLocked(const std::shared_ptr<Peer>& peer) {
  if (stopping_ || peer->forgotten) return;
  while (LiveConnsLocked(*peer) < static_cast<size_t>(options_.connections_per_peer)) {
    auto c = std::make_shared<Conn>();
    c->peer = peer;
    c->max_payload = options_.slice_bytes;
    Conn* raw = c.get();
    peer->conns.push_back(raw);
    conns_.push_back(c);
    raw->sender = std::thread([this, raw] { SenderMain(raw); });
    raw->receiver = std::thread([this, raw] { ReceiverMain(raw); });
  }
}

void TcpClient::ReapLocked(std::vector<std::shared_ptr<Conn>>* finished) {
  for (auto it = conns_.begin(); it != conns_.end();) {
    if ((*it)->finished) {
      finished->push_back(std::move(*it));
      it = conns_.erase(it);
    } else {
      ++it;
    }
  }
}

// ---- connection establishment --------------------------------------------------------

Status TcpClient::ConnectSocket(Conn* c) {
  const Peer& peer = *c->peer;
  struct addrinfo hints;
  std::memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  struct addrinfo* res = nullptr;
  const std::string service = std::to_string(peer.port);
  int rc = getaddrinfo(peer.host.c_str(), service.c_str(), &hints, &res);
  if (rc != 0) {
    return Status(Code::kUnavailable, "cannot resolve peer " + peer.key + ": " + gai_strerror(rc));
  }
  std::string last_error = "no address";
  Status result(Code::kUnavailable, "");
  for (struct addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    if (fd < 0) {
      last_error = ErrnoText();
      continue;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (c->dying) {
        close(fd);
        freeaddrinfo(res);
        return c->death;
      }
      c->fd = fd;  // from now on KillLocked can shut it down
    }
    bool connected = connect(fd, ai->ai_addr, ai->ai_addrlen) == 0;
    int err = connected ? 0 : errno;
    if (!connected && err == EINPROGRESS) {
      // Wait in short steps so that a shutdown request is noticed promptly.
      int waited = 0;
      err = ETIMEDOUT;
      while (waited < options_.io_timeout_ms) {
        struct pollfd pfd = {fd, POLLOUT, 0};
        int n = poll(&pfd, 1, kConnectPollMs);
        if (n > 0) {
          socklen_t len = sizeof(err);
          if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
          break;
        }
        waited += kConnectPollMs;
        std::lock_guard<std::mutex> lock(mu_);
        if (c->dying) {
          err = ECANCELED;
          break;
        }
      }
      connected = err == 0;
    }
    if (connected) {
      int flags = fcntl(fd, F_GETFL);
      fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
      freeaddrinfo(res);
      return Status::Ok();
    }
    last_error = std::strerror(err);
    std::lock_guard<std::mutex> lock(mu_);
    c->fd = -1;
    close(fd);
    if (c->dying) {
      freeaddrinfo(res);
      return c->death;
    }
  }
  freeaddrinfo(res);
  return Status(Code::kUnavailable, "cannot connect to peer " + peer.key + ": " + last_error);
}

Status TcpClient::Establish(Conn* c) {
  Status s = ConnectSocket(c);
  if (!s.ok()) return s;
  int fd;
  {
    std::lock_guard<std::mutex> lock(mu_);
    fd = c->fd;
  }
  SetIoTimeouts(fd, options_.io_timeout_ms);
  SetStreamOptions(fd, kClientSocketBuffer);

  const std::string& peer = c->peer->key;
  FrameHeader hello;
  hello.type = FrameType::kHello;
  hello.offset = options_.slice_bytes;
  hello.length = options_.token.size();
  uint8_t out[kHeaderSize];
  EncodeHeader(hello, out);
  struct iovec iov[2];
  iov[0] = {out, kHeaderSize};
  iov[1] = {const_cast<char*>(options_.token.data()), options_.token.size()};
  IoResult r = SendFull(fd, iov, 2);
  if (r != IoResult::kOk) {
    return Status(Code::kUnavailable, "handshake with peer " + peer + ": " + IoResultText(r));
  }
  uint8_t in[kHeaderSize];
  size_t got = 0;
  r = RecvFull(fd, in, kHeaderSize, &got);
  if (r != IoResult::kOk) {
    return Status(Code::kUnavailable, "handshake with peer " + peer + ": " + IoResultText(r));
  }
  FrameHeader reply = DecodeHeader(in);
  if (IsWellFormed(reply) && reply.type == FrameType::kHelloRefused) {
    return Status(Code::kPermissionDenied, "peer " + peer + " refused the handshake (token mismatch)");
  }
  if (!IsWellFormed(reply) || reply.type != FrameType::kHelloOk || reply.length != 0 || reply.offset == 0) {
    return Status(Code::kUnavailable, "peer " + peer + " answered the handshake with a malformed frame");
  }
  std::lock_guard<std::mutex> lock(mu_);
  c->max_payload = std::min(options_.slice_bytes, reply.offset);
  return Status::Ok();
}

// ---- the two threads of a connection -------------------------------------------------

void TcpClient::SenderMain(Conn* c) {
  Status s = Establish(c);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!s.ok()) {
      KillLocked(c, s);
    } else if (!c->dying) {
      c->state = ConnState::kEstablished;
    }
    c->recv_cv.notify_all();
  }
  if (s.ok()) SendLoop(c);
  ThreadExit(c);
}

void TcpClient::TakeSlicesLocked(Conn* c, std::vector<Slice>* batch) {
  Peer& peer = *c->peer;
  uint64_t bytes = 0;
  while (c->window.size() < kWindow && !peer.pending.empty() && (batch->empty() || bytes < kBatchBytes)) {
    Op* op = peer.pending.front();
    Slice s;
    s.op = op;
    s.request_id = c->next_request_id++;
    s.op_offset = op->dispatched;
    s.length = std::min(c->max_payload, op->spec.length - op->dispatched);
    op->dispatched += s.length;
    ++op->in_flight;
    if (op->dispatched == op->spec.length) {
      // A zero-length op still sends one (empty) slice, so the peer checks its handle.
      op->fully_dispatched = true;
      op->pending = false;
      peer.pending.pop_front();
    }
    c->window.push_back(s);
    batch->push_back(s);
    bytes += s.length;
  }
}

void TcpClient::SendLoop(Conn* c) {
  int fd;
  {
    std::lock_guard<std::mutex> lock(mu_);
    fd = c->fd;
  }
  std::vector<Slice> batch;
  std::vector<std::array<uint8_t, kHeaderSize>> headers;
  std::vector<struct iovec> iov;
  for (;;) {
    batch.clear();
    {
      std::unique_lock<std::mutex> lock(mu_);
      c->send_cv.wait(lock, [&] { return c->dying || (c->window.size() < kWindow && !c->peer->pending.empty()); });
      if (c->dying) return;
      const bool receiver_idle = c->window.empty();
      TakeSlicesLocked(c, &batch);
      if (receiver_idle) c->recv_cv.notify_one();
    }
    // The slices are in the window, so their ops (and local extents) stay alive until
    // the receiver or the teardown retires them; spec and local never change.
    headers.resize(batch.size());
    iov.clear();
    uint64_t payload = 0;
    for (size_t i = 0; i < batch.size(); ++i) {
      const Slice& s = batch[i];
      const bool write = s.op->spec.kind == OpKind::kWrite;
      FrameHeader h;
      h.type = write ? FrameType::kWrite : FrameType::kRead;
      h.request_id = s.request_id;
      h.handle = s.op->spec.remote_handle;
      h.offset = s.op->spec.remote_offset + s.op_offset;
      h.length = s.length;
      EncodeHeader(h, headers[i].data());
      iov.push_back({headers[i].data(), kHeaderSize});
      if (write && s.length > 0) {
        iov.push_back({s.op->local + s.op_offset, static_cast<size_t>(s.length)});
        payload += s.length;
      }
    }
    IoResult r = SendFull(fd, iov.data(), static_cast<int>(iov.size()));
    if (r != IoResult::kOk) {
      std::lock_guard<std::mutex> lock(mu_);
      KillLocked(c, Status(Code::kUnavailable, "sending to peer " + c->peer->key + ": " + IoResultText(r)));
      return;
    }
    context_.counters->bytes_sent.fetch_add(payload, std::memory_order_relaxed);
  }
}

void TcpClient::ReceiverMain(Conn* c) {
  int fd = -1;
  bool run = false;
  {
    std::unique_lock<std::mutex> lock(mu_);
    c->recv_cv.wait(lock, [&] { return c->dying || c->state == ConnState::kEstablished; });
    run = !c->dying;
    fd = c->fd;
  }
  if (run) ReceiveLoop(c, fd);
  ThreadExit(c);
}

void TcpClient::ReceiveLoop(Conn* c, int fd) {
  const std::string& peer = c->peer->key;
  for (;;) {
    Slice s;
    {
      std::unique_lock<std::mutex> lock(mu_);
      c->recv_cv.wait(lock, [&] { return c->dying || !c->window.empty(); });
      if (c->dying) return;
      s = c->window.front();
    }
    uint8_t buf[kHeaderSize];
    size_t got = 0;
    IoResult r = RecvFull(fd, buf, kHeaderSize, &got);
    if (r != IoResult::kOk) {
      std::lock_guard<std::mutex> lock(mu_);
      KillLocked(c, Status(Code::kUnavailable, "receiving from peer " + peer + ": " + IoResultText(r)));
      return;
    }
    const FrameHeader h = DecodeHeader(buf);
    const bool write = s.op->spec.kind == OpKind::kWrite;
    const bool ok = h.status == 0;
    bool valid = IsWellFormed(h) && h.type == (write ? FrameType::kWriteAck : FrameType::kReadData) &&
                 h.request_id == s.request_id && h.status <= static_cast<uint32_t>(Code::kInternal);
    valid = valid && h.length == (ok && !write ? s.length : 0);
    if (!valid) {
      std::lock_guard<std::mutex> lock(mu_);
      KillLocked(c, Status(Code::kUnavailable, "peer " + peer + " sent a malformed reply"));
      return;
    }
    Status outcome;
    if (!ok) {
      const Code code = static_cast<Code>(h.status);
      outcome = Status(code, std::string("peer ") + peer + " refused the " + (write ? "write" : "read") + ": " +
                                 CodeName(code));
    } else if (!write && s.length > 0) {
      // READ_DATA payload lands straight in the op's local extent.
      r = RecvFull(fd, s.op->local + s.op_offset, s.length, &got);
      if (r != IoResult::kOk) {
        std::lock_guard<std::mutex> lock(mu_);
        KillLocked(c, Status(Code::kUnavailable, "receiving from peer " + peer + ": " + IoResultText(r)));
        return;
      }
      context_.counters->bytes_received.fetch_add(s.length, std::memory_order_relaxed);
    }
    std::lock_guard<std::mutex> lock(mu_);
    c->window.pop_front();
    c->delivered = true;
    FinishSliceLocked(s, outcome);
    c->send_cv.notify_one();
  }
}

void TcpClient::ThreadExit(Conn* c) {
  std::lock_guard<std::mutex> lock(mu_);
  if (--c->live_threads == 0) TeardownLocked(c);
}

// ---- failure and completion (mu_ held) ------------------------------------------------

void TcpClient::KillLocked(Conn* c, Status why) {
  if (c->dying) return;
  c->dying = true;
  c->death = std::move(why);
  if (c->fd >= 0) shutdown(c->fd, SHUT_RDWR);  // wakes a thread blocked in recv/send
  c->send_cv.notify_all();
  c->recv_cv.notify_all();
}

void TcpClient::TeardownLocked(Conn* c) {
  // Both threads are out of their I/O loops: nothing touches a window slice's memory any
  // more, so its op may now be failed (and completed).
  if (c->fd >= 0) {
    close(c->fd);
    c->fd = -1;
  }
  const Status why = c->death.ok() ? Status(Code::kUnavailable, "connection closed") : c->death;
  while (!c->window.empty()) {
    const Slice s = c->window.front();
    c->window.pop_front();
    FinishSliceLocked(s, why);
  }
  Peer* peer = c->peer.get();
  peer->conns.erase(std::find(peer->conns.begin(), peer->conns.end(), c));
  c->finished = true;
  if (stopping_ || peer->forgotten || peer->pending.empty() || LiveConnsLocked(*peer) > 0) return;
  if (c->delivered || c->killed_by_cancel) {
    // The peer worked a moment ago (or we closed this connection ourselves): carry the
    // waiting ops on fresh connections.
    EnsureConnectionsLocked(c->peer);
  } else {
    // Nothing ever got through: the waiting ops would only meet the same fate.
    FailPendingLocked(peer, why);
  }
}

void TcpClient::FinishSliceLocked(const Slice& s, const Status& status) {
  Op* op = s.op;
  --op->in_flight;
  if (status.ok()) {
    op->acked += s.length;
  } else {
    FailOpLocked(op, status);
  }
  MaybeCompleteLocked(op);
}

void TcpClient::FailOpLocked(Op* op, const Status& why) {
  if (op->error.ok()) op->error = why;
  if (op->pending) {
    op->peer->pending.erase(op->pending_it);
    op->pending = false;
  }
}

void TcpClient::FailPendingLocked(Peer* peer, const Status& why) {
  while (!peer->pending.empty()) {
    Op* op = peer->pending.front();
    FailOpLocked(op, why);
    MaybeCompleteLocked(op);
  }
}

void TcpClient::MaybeCompleteLocked(Op* op) {
  if (op->in_flight > 0) return;
  if (op->error.ok() && !(op->fully_dispatched && op->acked == op->spec.length)) return;
  Completion done;
  done.kind = CompletionKind::kOp;
  done.id = op->spec.id;
  done.code = op->error.code();
  done.message = op->error.message();
  done.bytes = op->acked;
  done.micros = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - op->start).count());
  ops_.erase(op->spec.id);  // `op` is gone from here on
  context_.complete_op(std::move(done));
}

// ---- control ------------------------------------------------------------------------

void TcpClient::Cancel(uint64_t op_id) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = ops_.find(op_id);
  if (it == ops_.end()) return;
  Op* op = it->second.get();
  FailOpLocked(op, Status(Code::kCancelled, "op " + std::to_string(op_id) + " was cancelled"));
  if (op->in_flight == 0) {
    MaybeCompleteLocked(op);
    return;
  }
  // Slices are on the wire: the only way to stop them is to close their connections.
  for (Conn* c : op->peer->conns) {
    if (c->dying) continue;
    for (const Slice& s : c->window) {
      if (s.op == op) {
        c->killed_by_cancel = true;
        KillLocked(c, Status(Code::kUnavailable,
                             "connection to " + c->peer->key + " closed to cancel op " + std::to_string(op_id)));
        break;
      }
    }
  }
}

void TcpClient::Disconnect(const std::string& key) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = peers_.find(key);
  if (it == peers_.end()) return;
  std::shared_ptr<Peer> peer = it->second;
  peers_.erase(it);
  peer->forgotten = true;
  const Status why(Code::kUnavailable, "peer " + key + " was disconnected");
  FailPendingLocked(peer.get(), why);
  for (Conn* c : peer->conns) KillLocked(c, why);
}

void TcpClient::Shutdown() {
  std::lock_guard<std::mutex> serial(shutdown_mu_);
  std::list<std::shared_ptr<Conn>> all;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    const Status why(Code::kCancelled, "the engine is shutting down");
    std::vector<Op*> ops;
    ops.reserve(ops_.size());
    for (auto& entry : ops_) ops.push_back(entry.second.get());
    for (Op* op : ops) {
      FailOpLocked(op, why);
      MaybeCompleteLocked(op);
    }
    for (auto& c : conns_) KillLocked(c.get(), why);
    all = conns_;
  }
  for (auto& c : all) {
    if (c->sender.joinable()) c->sender.join();
    if (c->receiver.joinable()) c->receiver.join();
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& c : all) conns_.remove(c);
  peers_.clear();
  // Every thread is joined, so nothing can touch an op's memory: settle any leftovers.
  std::vector<Op*> left;
  for (auto& entry : ops_) left.push_back(entry.second.get());
  for (Op* op : left) {
    op->in_flight = 0;
    MaybeCompleteLocked(op);
  }
}

uint64_t TcpClient::connected_peers() const {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t n = 0;
  for (const auto& entry : peers_) {
    for (const Conn* c : entry.second->conns) {
      if (c->state == ConnState::kEstablished && !c->dying) {
        ++n;
        break;
      }
    }
  }
  return n;
}

}  // namespace tcp
}  // namespace kvferry
