// An outgoing connection's state machine (see tcp_client.h), run by its loop: connect
// (non-blocking, each resolved address in turn), the handshake (ClientHandshake driven
// by the socket's readiness), then requests out and replies in, as far as the socket
// allows each time. Op bookkeeping and teardown live in tcp_client.cc.
#include <netdb.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <utility>

#include "engine/crypto/random.h"
#include "engine/tcp/socket_io.h"
#include "engine/tcp/tcp_client.h"

namespace kvferry {
namespace tcp {

namespace {

// Kernel socket buffers for outgoing connections: large enough to keep a window of
// slices moving on a fast link.
constexpr int kClientSocketBuffer = 4 << 20;
// Registered once, edge-triggered, for both directions: the state machine reads and
// writes until EAGAIN, so its interest never has to change.
constexpr uint32_t kSocketEvents = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
// iovecs per sendmsg/readv; the rest go in the next call.
constexpr size_t kMaxIov = IOV_MAX;

/** What one non-blocking recv/readv/send/sendmsg did. */
enum class Step { kMoved, kInterrupted, kBlocked, kFailed };

/** Judges a call's result `n` (errno when negative); kBlocked also clears `*ready`. */
Step Judge(ssize_t n, bool* ready) {
  if (n > 0) return Step::kMoved;
  if (n < 0 && errno == EINTR) return Step::kInterrupted;
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
    *ready = false;
    return Step::kBlocked;
  }
  return Step::kFailed;
}

/** What a failed receive means, as socket_io.h's words (0: the peer closed). */
IoResult Failure(ssize_t n) { return n == 0 ? IoResult::kClosed : IoResult::kError; }

}  // namespace

void TcpClient::OnConnEvents(Conn* c, uint32_t events) {
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) c->readable = true;
  if (events & (EPOLLOUT | EPOLLHUP | EPOLLERR)) c->writable = true;
  Drive(c);
}

void TcpClient::Drive(Conn* c) {
  if (c->torn_down) return;
  // Die may drop the last owning reference; the connection lives until this turn ends.
  const std::shared_ptr<Conn> keep = c->shared_from_this();
  Status s;
  for (;;) {
    const Phase at = c->phase;
    switch (at) {
      case Phase::kStart:
        s = Begin(c);
        break;
      case Phase::kConnecting:
        s = AdvanceConnect(c);
        break;
      case Phase::kSendHello:
      case Phase::kChallenge:
      case Phase::kSendProof:
      case Phase::kVerdict:
        s = AdvanceHandshake(c);
        break;
      case Phase::kEstablished:
        s = AdvanceTransfer(c);
        break;
    }
    // A phase that ended (connected, shook hands) goes straight on to the next.
    if (!s.ok() || c->phase == at || c->torn_down) break;
  }
  if (!s.ok()) {
    Die(c, std::move(s));
    return;
  }
  if (c->torn_down) return;
  ArmDeadline(c);
}

// ---- connecting ----------------------------------------------------------------------

Status TcpClient::Begin(Conn* c) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (c->dying) return c->death;
  }
  const Peer& peer = *c->peer;
  c->progress = Clock::now();
  struct addrinfo hints;
  std::memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  const std::string service = std::to_string(peer.port);
  // The daemon resolves names before an op reaches the engine (peers.ts): this is a
  // numeric parse. A name given here would be looked up on the loop, blocking it.
  int rc = getaddrinfo(peer.host.c_str(), service.c_str(), &hints, &c->addresses);
  if (rc != 0) {
    c->addresses = nullptr;
    return Status(Code::kUnavailable, "cannot resolve peer " + peer.key + ": " + gai_strerror(rc));
  }
  c->next_address = c->addresses;
  c->connect_error = "no address";
  return ConnectNext(c);
}

Status TcpClient::ConnectNext(Conn* c) {
  if (c->fd >= 0) {
    c->loop->Remove(c->key);
    c->key = 0;
    close(c->fd);
    c->fd = -1;
  }
  while (c->next_address != nullptr) {
    struct addrinfo* ai = c->next_address;
    c->next_address = ai->ai_next;
    const int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    if (fd < 0) {
      c->connect_error = std::strerror(errno);
      continue;
    }
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
      c->connect_error = std::strerror(errno);
      close(fd);
      continue;
    }
    c->fd = fd;
    c->readable = c->writable = false;
    c->phase = Phase::kConnecting;
    Status s = c->loop->Add(fd, kSocketEvents, c, &c->key);
    if (!s.ok()) return s;
    // Connected at once (loopback may) or not: EPOLLOUT says when, and with what result.
    return Status::Ok();
  }
  return Status(Code::kUnavailable, "cannot connect to peer " + c->peer->key + ": " + c->connect_error);
}

Status TcpClient::AdvanceConnect(Conn* c) {
  if (!c->writable) return Status::Ok();
  int err = 0;
  socklen_t len = sizeof(err);
  if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
  if (err != 0) {
    c->connect_error = std::strerror(err);
    return ConnectNext(c);
  }
  freeaddrinfo(c->addresses);
  c->addresses = c->next_address = nullptr;
  SetStreamOptions(c->fd, kClientSocketBuffer);
  c->progress = Clock::now();
  // The handshake (wire.h): our proof leaves only after the server has proven the token.
  Nonce nonce;
  Status random = crypto::RandomBytes(nonce.data(), nonce.size());
  if (!random.ok()) return random;
  c->handshake = std::make_unique<ClientHandshake>(key_, options_.slice_bytes, nonce);
  c->hs_out = c->handshake->Hello();
  c->hs_sent = 0;
  c->phase = Phase::kSendHello;
  return Status::Ok();
}

// ---- the handshake -------------------------------------------------------------------

Status TcpClient::AdvanceHandshake(Conn* c) {
  const std::string& peer = c->peer->key;
  auto failed = [&peer](IoResult r) {
    return Status(Code::kUnavailable, "handshake with peer " + peer + ": " + IoResultText(r));
  };
  auto from_peer = [&peer](const Status& s) { return Status(s.code(), "peer " + peer + " " + s.message()); };
  for (;;) {
    if (c->phase == Phase::kSendHello || c->phase == Phase::kSendProof) {
      while (c->hs_sent < c->hs_out.size()) {
        if (!c->writable) return Status::Ok();
        const ssize_t n = send(c->fd, c->hs_out.data() + c->hs_sent, c->hs_out.size() - c->hs_sent,
                               MSG_NOSIGNAL | MSG_DONTWAIT);
        const Step step = Judge(n, &c->writable);
        if (step == Step::kFailed) return failed(IoResult::kError);
        if (step != Step::kMoved) continue;  // blocked: the loop's check returns
        c->hs_sent += static_cast<size_t>(n);
        c->progress = Clock::now();
      }
      c->hs_have = 0;
      c->phase = c->phase == Phase::kSendHello ? Phase::kChallenge : Phase::kVerdict;
      continue;
    }
    // kChallenge (header, then its payload) or kVerdict (a header): exactly the bytes the
    // step needs, nothing past the handshake.
    const size_t want = c->phase == Phase::kChallenge && c->hs_have >= kHeaderSize
                            ? kHeaderSize + ClientHandshake::kChallengeBytes
                            : kHeaderSize;
    if (c->hs_have < want) {
      if (!c->readable) return Status::Ok();
      const ssize_t n = recv(c->fd, c->hs_in + c->hs_have, want - c->hs_have, MSG_DONTWAIT);
      const Step step = Judge(n, &c->readable);
      if (step == Step::kFailed) return failed(Failure(n));
      if (step != Step::kMoved) continue;  // blocked: the check above returns
      c->hs_have += static_cast<size_t>(n);
      c->progress = Clock::now();
      if (c->hs_have < want) continue;
    }
    if (c->phase == Phase::kChallenge && want == kHeaderSize) {
      Status s = c->handshake->OnChallengeHeader(c->hs_in);
      if (!s.ok()) return from_peer(s);
      continue;
    }
    if (c->phase == Phase::kChallenge) {
      Status s = c->handshake->OnChallenge(c->hs_in + kHeaderSize, &c->hs_out);
      if (!s.ok()) return from_peer(s);
      c->hs_sent = 0;
      c->phase = Phase::kSendProof;
      continue;
    }
    uint64_t server_slice = 0;
    Status s = c->handshake->OnVerdict(c->hs_in, &server_slice);
    if (!s.ok()) return from_peer(s);
    c->handshake.reset();
    c->hs_out = std::vector<uint8_t>();
    std::lock_guard<std::mutex> lock(mu_);
    if (c->dying) return c->death;
    c->max_payload = std::min(options_.slice_bytes, server_slice);
    c->established = true;
    c->phase = Phase::kEstablished;
    return Status::Ok();
  }
}

// ---- requests and replies ------------------------------------------------------------

Status TcpClient::AdvanceTransfer(Conn* c) {
  uint64_t moved = 0;
  std::vector<Slice> batch;
  std::vector<Completion> done;
  for (;;) {
    bool progressed = false;
    if (c->readable) {
      Status s = ReceiveReplies(c, &progressed, &moved);
      if (!s.ok()) return s;
    }
    // One lock: retire what was answered, notice a kill, take the next slices.
    const bool take = c->writable && c->tx.empty();
    batch.clear();
    bool dying = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const Status& outcome : c->answered) FinishSliceLocked(PopWindowLocked(c), outcome);
      if (!c->answered.empty()) c->delivered = true;
      dying = c->dying;
      if (take && !dying) TakeSlicesLocked(c, &batch);
      done.swap(completed_);
    }
    c->answered.clear();
    Deliver(&done);
    if (dying) return Status::Ok();  // its teardown is posted
    if (!batch.empty()) {
      // An idle connection's deadline starts with its first request.
      if (c->window.size() == batch.size()) c->progress = Clock::now();
      BuildRequests(c, batch);
    }
    if (c->writable && !c->tx.empty()) {
      Status s = SendRequests(c, &progressed, &moved);
      if (!s.ok()) return s;
    }
    if (!progressed) return Status::Ok();
    c->progress = Clock::now();
    if (moved >= kBytesPerTurn) {
      // Let the loop's other connections run; this one continues after them.
      c->loop->Kick(c->key);
      return Status::Ok();
    }
  }
}

void TcpClient::TakeSlicesLocked(Conn* c, std::vector<Slice>* batch) {
  Peer& peer = *c->peer;
  uint64_t bytes = 0;
  while (!peer.pending.empty() && WindowHasRoomLocked(*c, *peer.pending.front()) &&
         (batch->empty() || bytes < kBatchBytes)) {
    Op* op = peer.pending.front();
    Slice s;
    s.op = op;
    s.request_id = c->next_request_id++;
    if (!op->redo.empty()) {
      // A slice taken back from a connection closed by a cancel: the same bytes again.
      auto& range = op->redo.front();
      s.op_offset = range.first;
      s.length = std::min(c->max_payload, range.second);
      range.first += s.length;
      range.second -= s.length;
      if (range.second == 0) op->redo.pop_front();
    } else {
      s.op_offset = op->dispatched;
      s.length = std::min(c->max_payload, op->spec.length - op->dispatched);
      op->dispatched += s.length;
      // A zero-length op still sends one (empty) slice, so the peer checks its handle.
      if (op->dispatched == op->spec.length) op->fully_dispatched = true;
    }
    ++op->in_flight;
    if (op->fully_dispatched && op->redo.empty()) {
      op->pending = false;
      peer.pending.pop_front();
    }
    PushWindowLocked(c, s);
    batch->push_back(s);
    bytes += s.length;
  }
}

void TcpClient::BuildRequests(Conn* c, const std::vector<Slice>& batch) {
  // The slices are in the window, so their ops (and local extents) stay alive until a
  // reply or the teardown retires them; spec and local never change.
  c->tx_headers.resize(batch.size());
  c->tx.Clear();
  c->tx_payload = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const Slice& s = batch[i];
    const bool write = s.op->spec.kind == OpKind::kWrite;
    FrameHeader h;
    h.type = write ? FrameType::kWrite : FrameType::kRead;
    h.request_id = s.request_id;
    h.handle = s.op->spec.remote_handle;
    h.offset = s.op->spec.remote_offset + s.op_offset;
    h.length = s.length;
    EncodeHeader(h, c->tx_headers[i].data());
    c->tx.Push(c->tx_headers[i].data(), kHeaderSize);
    if (write && s.length > 0) {
      c->pieces.clear();
      AppendLocal(*s.op, s.op_offset, s.length, &c->pieces);
      for (const struct iovec& piece : c->pieces) c->tx.Push(piece.iov_base, piece.iov_len);
      c->tx_payload += s.length;
    }
  }
}

Status TcpClient::SendRequests(Conn* c, bool* progressed, uint64_t* moved) {
  while (!c->tx.empty()) {
    struct msghdr msg = {};
    int count = 0;
    msg.msg_iov = c->tx.front(kMaxIov, &count);
    msg.msg_iovlen = static_cast<size_t>(count);
    const ssize_t n = sendmsg(c->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    const Step step = Judge(n, &c->writable);
    // Blocked: the rest goes when EPOLLOUT says the socket has room again.
    if (step == Step::kBlocked) return Status::Ok();
    if (step == Step::kFailed) {
      return Status(Code::kUnavailable, "sending to peer " + c->peer->key + ": " + IoResultText(IoResult::kError));
    }
    if (step == Step::kMoved) {
      c->tx.Consume(static_cast<size_t>(n));
      *progressed = true;
      *moved += static_cast<uint64_t>(n);
    }
  }
  context_.counters->bytes_sent.fetch_add(c->tx_payload, std::memory_order_relaxed);
  c->tx_payload = 0;
  return Status::Ok();
}

Status TcpClient::ReceiveReplies(Conn* c, bool* progressed, uint64_t* moved) {
  const std::string& peer = c->peer->key;
  auto failed = [&peer](IoResult r) {
    return Status(Code::kUnavailable, "receiving from peer " + peer + ": " + IoResultText(r));
  };
  while (*moved < kBytesPerTurn) {
    if (!c->rx_payload.empty()) {
      // A READ_DATA payload lands straight in the op's local pieces.
      int count = 0;
      struct iovec* iov = c->rx_payload.front(kMaxIov, &count);
      const ssize_t n = readv(c->fd, iov, count);
      const Step step = Judge(n, &c->readable);
      if (step == Step::kBlocked) return Status::Ok();
      if (step == Step::kFailed) return failed(Failure(n));
      if (step == Step::kInterrupted) continue;
      c->rx_payload.Consume(static_cast<size_t>(n));
      c->rx_payload_left -= static_cast<uint64_t>(n);
      *progressed = true;
      *moved += static_cast<uint64_t>(n);
      if (c->rx_payload_left == 0) {
        context_.counters->bytes_received.fetch_add(c->window[c->answered.size()].length, std::memory_order_relaxed);
        c->answered.emplace_back();
      }
      continue;
    }
    // The replies that may be read in one recv: every header up to and including the
    // next READ's, since a READ_DATA payload must land in its extent, not in rx. With
    // nothing in flight one header's room still reads: EOF is a closed connection, and a
    // byte a malformed reply.
    size_t expected = 0;
    for (size_t i = c->answered.size(); i < c->window.size(); ++i) {
      ++expected;
      if (c->window[i].op->spec.kind == OpKind::kRead) break;
    }
    const size_t most = std::max<size_t>(expected, 1) * kHeaderSize;
    const ssize_t n = recv(c->fd, c->rx + c->rx_have, most - c->rx_have, MSG_DONTWAIT);
    const Step step = Judge(n, &c->readable);
    if (step == Step::kBlocked) return Status::Ok();
    if (step == Step::kFailed) return failed(Failure(n));
    if (step == Step::kInterrupted) continue;
    c->rx_have += static_cast<size_t>(n);
    *progressed = true;
    const size_t whole = c->rx_have / kHeaderSize;
    for (size_t i = 0; i < whole; ++i) {
      Status s = OnReplyHeader(c, c->rx + i * kHeaderSize);
      if (!s.ok()) return s;
    }
    // Only a partial header can be left over: a READ's header is the last one read.
    c->rx_have -= whole * kHeaderSize;
    if (whole > 0 && c->rx_have > 0) std::memmove(c->rx, c->rx + whole * kHeaderSize, c->rx_have);
  }
  // The turn's bytes are used up; AdvanceTransfer kicks the connection for more.
  return Status::Ok();
}

Status TcpClient::OnReplyHeader(Conn* c, const uint8_t* header) {
  const std::string& peer = c->peer->key;
  if (c->answered.size() >= c->window.size()) {
    return Status(Code::kUnavailable, "peer " + peer + " sent a reply to no request");
  }
  const Slice& s = c->window[c->answered.size()];
  const FrameHeader h = DecodeHeader(header);
  const bool write = s.op->spec.kind == OpKind::kWrite;
  const bool ok = h.status == 0;
  const bool valid = IsWellFormed(h) && h.type == (write ? FrameType::kWriteAck : FrameType::kReadData) &&
                     h.request_id == s.request_id && h.status <= static_cast<uint32_t>(Code::kInternal) &&
                     h.length == (ok && !write ? s.length : 0);
  if (!valid) return Status(Code::kUnavailable, "peer " + peer + " sent a malformed reply");
  if (!ok) {
    const Code code = static_cast<Code>(h.status);
    c->answered.emplace_back(code, std::string("peer ") + peer + " refused the " + (write ? "write" : "read") + ": " +
                                       CodeName(code));
    return Status::Ok();
  }
  if (!write && s.length > 0) {
    c->pieces.clear();
    AppendLocal(*s.op, s.op_offset, s.length, &c->pieces);
    c->rx_payload.Clear();
    for (const struct iovec& piece : c->pieces) c->rx_payload.Push(piece.iov_base, piece.iov_len);
    c->rx_payload_left = s.length;
    return Status::Ok();
  }
  c->answered.emplace_back();
  return Status::Ok();
}

// ---- deadline and teardown -----------------------------------------------------------

bool TcpClient::Busy(const Conn& c) {
  return c.phase != Phase::kEstablished || !c.window.empty() || !c.tx.empty();
}

void TcpClient::ArmDeadline(Conn* c) {
  // One timer at most, armed lazily: progress only moves the deadline later, so a timer
  // armed for an earlier one fires first and re-arms for the current one.
  if (c->timer != 0 || !Busy(*c)) return;
  const auto at = c->progress + std::chrono::milliseconds(options_.io_timeout_ms);
  std::shared_ptr<Conn> keep = c->shared_from_this();
  c->timer = c->loop->AddTimer(at, [this, keep] {
    keep->timer = 0;
    OnDeadline(keep.get());
  });
}

void TcpClient::OnDeadline(Conn* c) {
  if (c->torn_down) return;
  if (Busy(*c) && Clock::now() - c->progress >= std::chrono::milliseconds(options_.io_timeout_ms)) {
    const std::string& peer = c->peer->key;
    const std::string stalled = IoResultText(IoResult::kTimeout);
    switch (c->phase) {
      case Phase::kStart:
      case Phase::kConnecting:
        Die(c, Status(Code::kUnavailable, "cannot connect to peer " + peer + ": " + std::strerror(ETIMEDOUT)));
        return;
      case Phase::kEstablished:
        Die(c, Status(Code::kUnavailable, "peer " + peer + ": " + stalled));
        return;
      default:
        Die(c, Status(Code::kUnavailable, "handshake with peer " + peer + ": " + stalled));
        return;
    }
  }
  ArmDeadline(c);
}

void TcpClient::Die(Conn* c, Status why) {
  if (c->torn_down) return;
  c->torn_down = true;
  // The socket first: from here on nothing reads into or sends from a window slice.
  if (c->key != 0) c->loop->Remove(c->key);
  if (c->timer != 0) c->loop->CancelTimer(c->timer);
  if (c->fd >= 0) close(c->fd);
  if (c->addresses != nullptr) freeaddrinfo(c->addresses);
  c->key = c->timer = 0;
  c->fd = -1;
  c->addresses = c->next_address = nullptr;
  std::shared_ptr<Conn> keep;  // the last reference may be conns_'s
  std::vector<Completion> done;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!c->dying) {
      c->dying = true;
      c->death = std::move(why);
    }
    // Replies read but not yet retired still count: their slices succeeded.
    for (const Status& outcome : c->answered) FinishSliceLocked(PopWindowLocked(c), outcome);
    if (!c->answered.empty()) c->delivered = true;
    c->answered.clear();
    TeardownLocked(c);
    auto it = conns_.find(c);
    keep = std::move(it->second);
    conns_.erase(it);
    done.swap(completed_);
  }
  Deliver(&done);
}

}  // namespace tcp
}  // namespace kvferry
