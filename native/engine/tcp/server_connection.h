// ServerConnection: one authenticated data-plane connection (wire.h, after HELLO_OK),
// served as a non-blocking state machine. It owns no thread: its owner (TcpServer's I/O
// loop, or a test) calls Advance whenever the socket may have moved — readable,
// writable, an error, a timer, a kick — and Advance moves the connection on as far as
// the socket allows without blocking. It reads until the socket would block (EAGAIN),
// so it suits an edge-triggered registration for EPOLLIN | EPOLLOUT | EPOLLRDHUP.
//
// Serving (unchanged from the threaded server it replaces):
// - Requests are served one at a time, in order; replies leave in request order. While
//   a reply is waiting for the socket to take it, no further request is read (the peer's
//   pipelining is bounded by the kernel buffers, never by memory here).
// - A WRITE's payload is received straight into the pool and a READ_DATA payload is
//   sent straight from the pool: the payload's place is a list of iovecs, the pieces of
//   the handle's range the frame covers (one unless the frame crosses the extents of a
//   scatter handle; at most 64 go into one system call). A WRITE's payload is read
//   together with whatever of the next header has already arrived (one readv).
// - Each access holds its handle (HandleTable::Acquire) from the request's header until
//   its payload has moved (a WRITE's last byte received, a READ_DATA's last byte sent),
//   and the connection closing mid-frame — for whatever reason, the destructor included
//   — ends it (ReleaseAccess) at once.
// - WRITE_ACKs are held back while more requests are immediately readable and sent when
//   the socket would block (or when kMaxHeldAcks have piled up, or in front of a
//   READ_DATA), so a pipelining client gets them in bursts.
// - A refused access (HandleTable's status) is answered with that status and the
//   connection stays usable; a refused WRITE's payload is read and discarded (through
//   `scratch`, which the connections of one thread may share).
// - A malformed request (wire.h's IsAcceptableRequest) closes the connection and counts
//   in frames_refused; a peer closing or resetting the connection closes it uncounted.
// Deadlines: a connection idle between frames has none and is kept forever. From the
// first byte of a frame's header, the whole frame — the rest of the header, the WRITE's
// payload (refused or not) or the READ_DATA reply with its payload, held-back ACKs sent
// meanwhile — must be done by io_timeout after that byte, plus the frame's payload at
// kMinFrameBytesPerSecond (a hard deadline, however the bytes trickle, that a large slice
// on a slow but moving link still meets); an ACK flush outside any frame runs against
// its own io_timeout.
// deadline() says when the running one passes; an Advance at or after it closes the
// connection. The owner arranges to call Advance then (a timer).
//
// Not thread-safe: one thread drives a connection at a time.
#pragma once

#include <sys/uio.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "engine/status.h"
#include "engine/tcp/iov_queue.h"
#include "engine/tcp/wire.h"
#include "engine/transport.h"

namespace kvferry {
namespace tcp {

struct ServingLimits {
  /** The largest payload a request may carry (the server's slice size). */
  uint64_t slice_bytes = 0;
  std::chrono::milliseconds io_timeout{10000};
};

class ServerConnection {
 public:
  using Clock = std::chrono::steady_clock;
  enum class Outcome {
    /** Blocked on the socket; call Advance again on its next event (or the deadline). */
    kWaiting,
    /** Stopped after its share of work with bytes still waiting; call Advance again soon. */
    kYield,
    /** Closed (the socket is shut down; the destructor closes the fd). */
    kClosed,
  };

  /** At most this many WRITE_ACKs are held back before they are sent. */
  static constexpr size_t kMaxHeldAcks = 32;
  /** A frame's deadline grows by its payload at this rate (1 MiB/s: +4 s for a 4 MiB slice). */
  static constexpr uint64_t kMinFrameBytesPerSecond = 1 << 20;
  /**
   * One Advance starts at most this many frames and moves about kBytesPerTurn payload
   * bytes at most, then yields (kYield) so the other connections of its thread get a turn.
   */
  static constexpr size_t kFramesPerTurn = 48;
  static constexpr uint64_t kBytesPerTurn = 8 << 20;

  /** Takes `fd`, a connected non-blocking socket whose handshake is done. */
  ServerConnection(int fd, const TransportContext& context, const ServingLimits& limits,
                   std::vector<uint8_t>* scratch);
  /** Ends any access in flight and closes the fd. */
  ~ServerConnection();

  ServerConnection(const ServerConnection&) = delete;
  ServerConnection& operator=(const ServerConnection&) = delete;

  /** `now`: the time to judge and start deadlines by (Clock::now() outside tests). */
  Outcome Advance(Clock::time_point now);
  /** When the running frame (or ACK flush) must be done; Clock::time_point::max() while idle. */
  Clock::time_point deadline() const { return deadline_; }
  bool closed() const { return closed_; }
  int fd() const { return fd_; }

 private:
  enum class Phase {
    kHeader,   // collecting a request header (or idle: none of it yet)
    kPayload,  // receiving a WRITE's payload, into the pool or into scratch (refused)
  };

  Outcome Close();
  /** A complete header in header_: validates it and starts its WRITE or READ. */
  bool OnHeader(Clock::time_point now);
  /** HandleTable::Acquire for `h`, as the pieces of the pool its range covers. */
  Status AcquireAccess(const FrameHeader& h, Access access);
  void EndAccess();
  void FinishWrite(Clock::time_point now);
  /** Moves the held-back ACKs (and `reply`, if any) into the output. */
  void QueueOutput(Clock::time_point now, const FrameHeader* reply);
  void FinishOutput();

  int fd_;
  const TransportContext context_;
  const ServingLimits limits_;
  std::vector<uint8_t>* const scratch_;
  bool closed_ = false;
  Clock::time_point deadline_ = Clock::time_point::max();

  Phase phase_ = Phase::kHeader;
  uint8_t header_[kHeaderSize];
  size_t have_ = 0;  // bytes of header_ received
  FrameHeader frame_;
  bool access_held_ = false;  // for frame_.handle
  Code write_status_ = Code::kOk;
  uint64_t left_ = 0;  // payload bytes of the WRITE still to receive
  IovQueue payload_;  // where they go (empty while a refused payload is drained)
  std::vector<PoolExtent> extents_;  // the access's range in the pool (HandleTable::Acquire)
  std::vector<struct iovec> pieces_;  // the same as buffers

  std::vector<uint8_t> acks_;  // encoded WRITE_ACKs held back, in request order
  std::vector<uint8_t> out_bytes_;  // the ACKs and the reply header being sent
  IovQueue out_;
  bool reply_pending_ = false;  // out_ ends with a READ_DATA: its frame (and access) ends with it
  uint64_t out_payload_ = 0;  // that reply's payload bytes
};

}  // namespace tcp
}  // namespace kvferry
