// The two threads of an outgoing connection (see tcp_client.h): the sender connects,
// shakes hands and then pulls slices from its peer's queue into the connection's window;
// the receiver retires the window's slices in order as their replies arrive. Teardown
// and op bookkeeping live in tcp_client.cc.
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <utility>

#include "engine/crypto/random.h"
#include "engine/tcp/handshake.h"
#include "engine/tcp/socket_io.h"
#include "engine/tcp/tcp_client.h"
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

  // The handshake (wire.h): our proof leaves only after the server has proven the token.
  const std::string& peer = c->peer->key;
  auto failed = [&peer](IoResult r) {
    return Status(Code::kUnavailable, "handshake with peer " + peer + ": " + IoResultText(r));
  };
  auto from_peer = [&peer](const Status& s) { return Status(s.code(), "peer " + peer + " " + s.message()); };
  Nonce nonce;
  Status random = crypto::RandomBytes(nonce.data(), nonce.size());
  if (!random.ok()) return random;
  ClientHandshake handshake(key_, options_.slice_bytes, nonce);
  std::vector<uint8_t> out = handshake.Hello();
  struct iovec iov = {out.data(), out.size()};
  IoResult r = SendFull(fd, &iov, 1);
  if (r != IoResult::kOk) return failed(r);
  uint8_t in[kHeaderSize + ClientHandshake::kChallengeBytes];
  size_t got = 0;
  r = RecvFull(fd, in, kHeaderSize, &got);
  if (r != IoResult::kOk) return failed(r);
  s = handshake.OnChallengeHeader(in);
  if (!s.ok()) return from_peer(s);
  r = RecvFull(fd, in + kHeaderSize, ClientHandshake::kChallengeBytes, &got);
  if (r != IoResult::kOk) return failed(r);
  s = handshake.OnChallenge(in + kHeaderSize, &out);
  if (!s.ok()) return from_peer(s);
  iov = {out.data(), out.size()};
  r = SendFull(fd, &iov, 1);
  if (r != IoResult::kOk) return failed(r);
  r = RecvFull(fd, in, kHeaderSize, &got);
  if (r != IoResult::kOk) return failed(r);
  uint64_t server_slice = 0;
  s = handshake.OnVerdict(in, &server_slice);
  if (!s.ok()) return from_peer(s);
  std::lock_guard<std::mutex> lock(mu_);
  c->max_payload = std::min(options_.slice_bytes, server_slice);
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
      c->send_cv.wait(lock, [&] {
        return c->dying || (!c->peer->pending.empty() && WindowHasRoomLocked(*c, *c->peer->pending.front()));
      });
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
        AppendLocal(*s.op, s.op_offset, s.length, &iov);
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
  std::vector<Slice> expected;
  std::vector<Status> outcomes;
  std::vector<Completion> done;  // swapped with completed_: its buffer is reused
  std::vector<struct iovec> pieces;  // where a READ_DATA payload lands
  expected.reserve(kWindow);
  outcomes.reserve(kWindow);
  uint8_t buf[kHeaderSize * kWindow];
  for (;;) {
    expected.clear();
    outcomes.clear();
    {
      std::unique_lock<std::mutex> lock(mu_);
      c->recv_cv.wait(lock, [&] { return c->dying || !c->window.empty(); });
      if (c->dying) return;
      // The replies that may be read in one recv: every header up to and including the
      // first READ's, since a READ_DATA payload must land in its extent, not in `buf`.
      for (const Slice& s : c->window) {
        expected.push_back(s);
        if (s.op->spec.kind == OpKind::kRead) break;
      }
    }
    // Whole headers only, at least one, never past the last expected header.
    const size_t most = expected.size() * kHeaderSize;
    size_t got = 0;
    IoResult r = IoResult::kOk;
    while (r == IoResult::kOk && (got == 0 || got % kHeaderSize != 0)) {
      size_t n = 0;
      r = RecvSome(fd, buf + got, most - got, &n);
      got += n;
    }
    Status death;
    if (r != IoResult::kOk) {
      death = Status(Code::kUnavailable, "receiving from peer " + peer + ": " + IoResultText(r));
    }
    for (size_t i = 0; death.ok() && i < got / kHeaderSize; ++i) {
      const Slice& s = expected[i];
      const FrameHeader h = DecodeHeader(buf + i * kHeaderSize);
      const bool write = s.op->spec.kind == OpKind::kWrite;
      const bool ok = h.status == 0;
      const bool valid = IsWellFormed(h) && h.type == (write ? FrameType::kWriteAck : FrameType::kReadData) &&
                         h.request_id == s.request_id && h.status <= static_cast<uint32_t>(Code::kInternal) &&
                         h.length == (ok && !write ? s.length : 0);
      if (!valid) {
        death = Status(Code::kUnavailable, "peer " + peer + " sent a malformed reply");
        break;
      }
      if (!ok) {
        const Code code = static_cast<Code>(h.status);
        outcomes.emplace_back(code, std::string("peer ") + peer + " refused the " + (write ? "write" : "read") +
                                        ": " + CodeName(code));
        continue;
      }
      if (!write && s.length > 0) {
        // READ_DATA payload lands straight in the op's local extents.
        pieces.clear();
        AppendLocal(*s.op, s.op_offset, s.length, &pieces);
        r = RecvFullV(fd, pieces.data(), static_cast<int>(pieces.size()));
        if (r != IoResult::kOk) {
          death = Status(Code::kUnavailable, "receiving from peer " + peer + ": " + IoResultText(r));
          break;
        }
        context_.counters->bytes_received.fetch_add(s.length, std::memory_order_relaxed);
      }
      outcomes.emplace_back();
    }
    // Retire what was answered, in order; a failure after that takes the connection down
    // and the teardown settles the rest of the window.
    const bool dead = !death.ok();
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t i = 0; i < outcomes.size(); ++i) {
        PopWindowLocked(c);
        FinishSliceLocked(expected[i], outcomes[i]);
      }
      if (!outcomes.empty()) {
        c->delivered = true;
        c->send_cv.notify_one();
      }
      if (dead) KillLocked(c, std::move(death));
      done.swap(completed_);
    }
    Deliver(&done);
    if (dead) return;
  }
}

}  // namespace tcp
}  // namespace kvferry
