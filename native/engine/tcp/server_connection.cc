#include "engine/tcp/server_connection.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

namespace kvferry {
namespace tcp {

namespace {

// Refused WRITE payloads are drained through a buffer of this size.
constexpr size_t kScratchBytes = 64 * 1024;
// At most this many iovecs go into one readv/sendmsg (a scatter range has more pieces
// only when it is very fragmented; the rest follow in the next call).
constexpr size_t kMaxIov = 64;

bool WouldBlock(int e) { return e == EAGAIN || e == EWOULDBLOCK; }

}  // namespace

ServerConnection::ServerConnection(int fd, const TransportContext& context, const ServingLimits& limits,
                                   std::vector<uint8_t>* scratch)
    : fd_(fd), context_(context), limits_(limits), scratch_(scratch) {}

ServerConnection::~ServerConnection() {
  EndAccess();
  if (fd_ >= 0) close(fd_);
}

ServerConnection::Outcome ServerConnection::Close() {
  if (!closed_) {
    EndAccess();
    shutdown(fd_, SHUT_RDWR);
    closed_ = true;
    deadline_ = Clock::time_point::max();
  }
  return Outcome::kClosed;
}

void ServerConnection::EndAccess() {
  if (!access_held_) return;
  access_held_ = false;
  context_.handles->ReleaseAccess(frame_.handle);
}

Status ServerConnection::AcquireAccess(const FrameHeader& h, Access mode) {
  Status s = context_.handles->Acquire(h.handle, mode, h.offset, h.length, &extents_);
  if (!s.ok()) return s;
  pieces_.clear();
  for (const PoolExtent& p : extents_) {
    if (p.offset > context_.pool_size || p.size > context_.pool_size - p.offset) {
      // Cannot happen (Expose checks ranges against the pool); refuse rather than trust it.
      context_.handles->ReleaseAccess(h.handle);
      return Status(Code::kInternal, "handle range outside the pool");
    }
    pieces_.push_back({context_.pool_base + p.offset, static_cast<size_t>(p.size)});
  }
  access_held_ = true;
  return s;
}

ServerConnection::Outcome ServerConnection::Advance(Clock::time_point now) {
  if (closed_) return Outcome::kClosed;
  if (now >= deadline_) return Close();
  size_t frames = 0;
  uint64_t moved = 0;
  bool read_blocked = false;
  for (;;) {
    // Replies first: nothing more is read while one is waiting for the socket.
    if (!out_.empty()) {
      struct msghdr msg = {};
      int count = 0;
      msg.msg_iov = out_.front(kMaxIov, &count);
      msg.msg_iovlen = static_cast<size_t>(count);
      const ssize_t n = sendmsg(fd_, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        out_.Consume(static_cast<size_t>(n));
        if (out_.empty()) FinishOutput();
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && WouldBlock(errno)) return Outcome::kWaiting;
      return Close();
    }
    // The socket had nothing more: a new edge (or the deadline) brings us back.
    if (read_blocked) return Outcome::kWaiting;
    if (phase_ == Phase::kHeader && have_ == kHeaderSize) {
      ++frames;
      if (!OnHeader(now)) return Close();
      continue;
    }
    // The frame budget is checked between frames, the byte budget anywhere.
    const bool between = phase_ == Phase::kHeader && have_ == 0;
    if ((between && frames >= kFramesPerTurn) || moved >= kBytesPerTurn) return Outcome::kYield;

    struct iovec iov[kMaxIov + 1];
    int count = 0;
    uint64_t payload_room = 0;  // bytes of iov that belong to the payload
    if (phase_ == Phase::kHeader) {
      iov[count++] = {header_ + have_, kHeaderSize - have_};
    } else {
      bool whole = false;  // iov covers the rest of the payload
      if (payload_.empty()) {
        // Refused: drain into scratch (left_ > 0 here; a finished payload leaves kPayload).
        if (scratch_->empty()) scratch_->resize(kScratchBytes);
        payload_room = std::min<uint64_t>(left_, scratch_->size());
        iov[count++] = {scratch_->data(), static_cast<size_t>(payload_room)};
        whole = payload_room == left_;
      } else {
        int n = 0;
        struct iovec* pieces = payload_.front(kMaxIov, &n);
        for (int i = 0; i < n; ++i) {
          iov[count++] = pieces[i];
          payload_room += pieces[i].iov_len;
        }
        whole = payload_room == left_;
      }
      // Whatever of the next header has already arrived comes along (have_ is 0 here).
      if (whole) iov[count++] = {header_, kHeaderSize};
    }
    const ssize_t n = readv(fd_, iov, count);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && WouldBlock(errno)) {
      // Nothing more to read now: the held-back ACKs go out before we wait.
      read_blocked = true;
      if (!acks_.empty()) QueueOutput(now, nullptr);
      continue;
    }
    if (n <= 0) return Close();  // EOF, reset or another error; mid-frame or idle alike
    const uint64_t got = static_cast<uint64_t>(n);
    if (phase_ == Phase::kHeader) {
      if (have_ == 0) deadline_ = now + limits_.io_timeout;  // a frame starts
      have_ += static_cast<size_t>(got);
      continue;
    }
    const uint64_t payload = std::min(got, payload_room);
    if (!payload_.empty()) payload_.Consume(static_cast<size_t>(payload));
    left_ -= payload;
    moved += payload;
    have_ = static_cast<size_t>(got - payload);
    if (left_ == 0) FinishWrite(now);
  }
}

bool ServerConnection::OnHeader(Clock::time_point now) {
  frame_ = DecodeHeader(header_);
  have_ = 0;
  if (!IsAcceptableRequest(frame_, limits_.slice_bytes)) {
    context_.counters->frames_refused.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  // The frame's payload may take its time at the slowest rate we tolerate (see the header).
  if (deadline_ != Clock::time_point::max()) {
    deadline_ += std::chrono::microseconds(frame_.length * 1000000 / kMinFrameBytesPerSecond);
  }
  if (frame_.type == FrameType::kWrite) {
    // The payload goes straight into the pool; the access pins the handle meanwhile.
    const Status access = AcquireAccess(frame_, Access::kWrite);
    write_status_ = access.code();
    payload_.Clear();
    if (access.ok()) {
      for (const struct iovec& piece : pieces_) payload_.Push(piece.iov_base, piece.iov_len);
    }
    left_ = frame_.length;
    phase_ = Phase::kPayload;
    if (left_ == 0) FinishWrite(now);
    return true;
  }
  const Status access = AcquireAccess(frame_, Access::kRead);
  FrameHeader reply;
  reply.type = FrameType::kReadData;
  reply.status = static_cast<uint32_t>(access.code());
  reply.request_id = frame_.request_id;
  reply.length = access.ok() ? frame_.length : 0;
  QueueOutput(now, &reply);
  return true;
}

void ServerConnection::FinishWrite(Clock::time_point now) {
  if (access_held_) {
    EndAccess();
    context_.counters->bytes_received.fetch_add(frame_.length, std::memory_order_relaxed);
  }
  FrameHeader ack;
  ack.type = FrameType::kWriteAck;
  ack.status = static_cast<uint32_t>(write_status_);
  ack.request_id = frame_.request_id;
  const size_t at = acks_.size();
  acks_.resize(at + kHeaderSize);
  EncodeHeader(ack, acks_.data() + at);
  phase_ = Phase::kHeader;
  payload_.Clear();
  // The next header's first bytes came with the payload: that frame starts now.
  deadline_ = have_ > 0 ? now + limits_.io_timeout : Clock::time_point::max();
  if (acks_.size() >= kMaxHeldAcks * kHeaderSize) QueueOutput(now, nullptr);
}

void ServerConnection::QueueOutput(Clock::time_point now, const FrameHeader* reply) {
  // Held-back ACKs (they answer earlier requests), the reply header and its payload
  // leave together, the payload straight from the pool.
  out_bytes_.swap(acks_);
  acks_.clear();
  reply_pending_ = reply != nullptr;
  out_payload_ = 0;
  if (reply != nullptr) {
    const size_t at = out_bytes_.size();
    out_bytes_.resize(at + kHeaderSize);
    EncodeHeader(*reply, out_bytes_.data() + at);
  }
  out_.Clear();
  out_.Push(out_bytes_.data(), out_bytes_.size());
  if (reply != nullptr && access_held_) {
    for (const struct iovec& piece : pieces_) out_.Push(piece.iov_base, piece.iov_len);
    out_payload_ = reply->length;
  }
  // An ACK flush outside any frame runs against its own deadline.
  if (deadline_ == Clock::time_point::max()) deadline_ = now + limits_.io_timeout;
}

void ServerConnection::FinishOutput() {
  out_bytes_.clear();
  if (reply_pending_) {
    reply_pending_ = false;
    if (access_held_) {
      EndAccess();
      context_.counters->bytes_sent.fetch_add(out_payload_, std::memory_order_relaxed);
    }
  }
  if (phase_ == Phase::kHeader && have_ == 0) deadline_ = Clock::time_point::max();
}

}  // namespace tcp
}  // namespace kvferry
