// TcpClient: the submitting half of the TCP transport — moves ops' bytes between this
// engine's pool and peers' handles.
//
// Shape
// - Per peer ("host:port"): up to connections_per_peer connections, opened lazily when
//   ops arrive (and again after they drop). A connection is a non-blocking state machine
//   (connect → handshake → established) on one of the transport's I/O loops (LoopGroup,
//   loop_group.h; new connections are spread over the loops round-robin): it owns no
//   thread, so the client costs no thread however many peers and connections it has.
//   Its socket is registered once, edge-triggered, for both directions; the loop drives
//   it (reads until EAGAIN, sends until EAGAIN or nothing is left) on every event, on a
//   wake-up posted by Submit or by a requeue, and on its deadline timer.
// - An op is cut into slices of at most min(slice_bytes, the server's limit). Slices
//   wait in the peer's FIFO of pending ops; a connection with window room takes the next
//   ones whenever its last requests are fully in the socket, so consecutive slices fan
//   out over the peer's connections (round-robin by availability) and small ops batch
//   into one sendmsg (up to kBatchBytes of payload).
// - Per connection at most kWindow slices, at most kReadWindow of them READs, and
//   (checked before adding one) fewer than kWindowPayloads × the connection's largest
//   payload bytes are in flight (requests sent, reply not yet read), so a connection
//   pins a bounded number of slices: 16 full-size slices, or up to 32 small WRITEs,
//   whose wake-ups (loop, server ACK flush, completion notifier) are then shared by more
//   ops. READ replies each carry a payload, so for them a deeper window only adds bytes
//   in flight; it measured slower, as did 64 small WRITEs with 4 connections (colder
//   caches). The server answers in request order, so replies match the front of the
//   window (one recv takes as many reply headers as can arrive before the next
//   READ_DATA payload).
// - Payloads move between the pool and the socket directly (sendmsg from the local
//   extents for WRITE, resumed where the socket stopped taking bytes; readv into them for
//   READ_DATA). An op may gather many extents (TransferOp::gather): its slices are cut
//   from the concatenation, so a batch of small entries travels as a few full-size frames.
// - Deadlines: connecting, the handshake, and an established connection with slices in
//   its window (or requests half sent) must make progress — some byte sent or received —
//   at least every io_timeout_ms; otherwise the connection fails (kUnavailable). An idle
//   connection has no deadline.
//
// Memory-safety invariant (what makes a completion a promise)
// - An op completes only when none of its slices is in any window. A slice leaves a
//   window when its reply has been fully received, or when its connection is torn down;
//   both happen on the connection's loop thread, the only thread that does its I/O, and
//   teardown closes the socket first. So once an op is completed, nothing reads or
//   writes the op's local extent.
//
// Threads and locking: Submit, Cancel, Disconnect, Shutdown and connected_peers are
// called from any thread; the op table, the peers' FIFOs and the windows are guarded by
// mu_. A connection's I/O state is its loop thread's alone, and so are pushes to and pops
// from its window (made under mu_, so the loop thread reads its own window without it).
// Other threads never touch a connection's socket: to close one they mark it dying
// under mu_ and post its teardown to its loop.
//
// Completions are collected under mu_ (completed_) and handed to the engine in batches
// by whichever thread collected them, right after it lets go of mu_: one completion
// queue push, and at most one owner wake-up, per batch of replies.
//
// Failure
// - A slice error reported by the peer (unknown handle, out of range, wrong direction)
//   fails its op; the connection stays. A connection error fails every op with a slice
//   in its window (kUnavailable; kPermissionDenied for a refused handshake or a server
//   that cannot prove the token, to which nothing but the HELLO's nonce was sent;
//   kNotSupported for another wire version; kCancelled at Shutdown). If every connection
//   of a peer fails before delivering anything, the peer's pending ops fail with that
//   error; otherwise pending ops wait for (re)connected carriers.
// - Cancel(op): the op stops being sliced; if slices are in flight, the connections
//   carrying them are closed. Their window's slices of ops that were not cancelled are
//   not failed: at teardown they go back to the front of the peer's queue as redo ranges
//   of their ops, and are sent again on another or a fresh connection — a WRITE re-sends
//   and a READ re-reads the same byte range, both idempotent. Only a connection killed
//   by a cancel does this (and not once the peer is Disconnect()ed or the client is
//   shutting down).
// - Shutdown(): every op completes (kCancelled unless already done) and every
//   connection is torn down on its loop before it returns; from then on no loop touches
//   any op memory. The loops must still be running (or never have run).
#pragma once

#include <netdb.h>
#include <sys/uio.h>

#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "engine/engine.h"
#include "engine/local_pieces.h"
#include "engine/status.h"
#include "engine/tcp/event_loop.h"
#include "engine/tcp/handshake.h"
#include "engine/tcp/iov_queue.h"
#include "engine/tcp/loop_group.h"
#include "engine/tcp/wire.h"
#include "engine/transport.h"

namespace kvferry {
namespace tcp {

struct TcpClientOptions {
  std::string token;
  uint64_t slice_bytes = 0;
  int connections_per_peer = 4;
  int io_timeout_ms = 10000;
};

class TcpClient {
 public:
  /** Slices in flight per connection, at most. */
  static constexpr size_t kWindow = 32;
  /** READ slices in flight per connection, at most. */
  static constexpr size_t kReadWindow = 16;
  /** Bytes in flight per connection: fewer than this many full-size slices. */
  static constexpr uint64_t kWindowPayloads = 16;
  /**
   * A connection stops adding slices to one sendmsg at this many payload bytes, so the
   * slices of one large op spread over several connections instead of queueing on one.
   */
  static constexpr uint64_t kBatchBytes = 1 << 20;
  /** Bytes one connection moves per turn of its loop before it lets the others run. */
  static constexpr uint64_t kBytesPerTurn = 8 << 20;

  /** `loops`: the transport's I/O loops; they outlive the client. */
  TcpClient(const TransportContext& context, TcpClientOptions options, LoopGroup* loops);
  ~TcpClient();

  TcpClient(const TcpClient&) = delete;
  TcpClient& operator=(const TcpClient&) = delete;

  [[nodiscard]] Status Submit(std::vector<TransferOp> ops);
  void Cancel(uint64_t op_id);
  void Disconnect(const std::string& peer);
  void Shutdown();
  uint64_t connected_peers() const;

 private:
  using Clock = std::chrono::steady_clock;
  struct Op;
  struct Peer;
  struct Conn;

  struct Slice {
    Op* op = nullptr;
    uint64_t request_id = 0;
    uint64_t op_offset = 0;
    uint64_t length = 0;
  };

  struct Op {
    TransferOp spec;
    LocalPieces local;
    std::shared_ptr<Peer> peer;
    Clock::time_point start;
    uint64_t dispatched = 0;  // bytes cut into slices so far
    uint64_t acked = 0;       // bytes whose slice succeeded
    uint32_t in_flight = 0;   // slices in some window
    bool fully_dispatched = false;
    // Ranges (op offset, length) of slices taken back from a connection closed to cancel
    // another op: sent again before the bytes from `dispatched` on.
    std::deque<std::pair<uint64_t, uint64_t>> redo;
    bool pending = false;     // in peer->pending (bytes not yet cut, or redo not empty)
    std::list<Op*>::iterator pending_it;
    Status error;             // first failure; the op's outcome once set
  };

  struct Peer {
    std::string key;
    std::string host;
    uint16_t port = 0;
    std::list<Op*> pending;   // ops with bytes not yet cut into slices, FIFO
    std::vector<Conn*> conns; // not yet torn down (some may be dying)
    bool forgotten = false;   // Disconnect()ed: no new connections
  };

  /** Where a connection is; the handshake steps follow wire.h. */
  enum class Phase { kStart, kConnecting, kSendHello, kChallenge, kSendProof, kVerdict, kEstablished };

  struct Conn final : EventLoop::Handler, std::enable_shared_from_this<Conn> {
    Conn(TcpClient* owner, std::shared_ptr<Peer> to, EventLoop* home) : client(owner), peer(std::move(to)), loop(home) {}
    void OnEvents(uint32_t events) override { client->OnConnEvents(this, events); }

    TcpClient* const client;
    const std::shared_ptr<Peer> peer;
    EventLoop* const loop;

    // Guarded by mu_ (pushes and pops of the window happen on the loop thread only).
    bool established = false;
    bool dying = false;             // marked to close; the loop tears it down
    bool killed_by_cancel = false;
    bool delivered = false;         // at least one reply was received
    bool wake_posted = false;       // a Drive is posted and has not started yet
    Status death;
    uint64_t max_payload = 0;
    uint64_t next_request_id = 1;
    std::deque<Slice> window;       // in flight, in request order
    uint64_t window_bytes = 0;      // sum of the window's slice lengths
    size_t window_reads = 0;        // READ slices in the window

    // The loop thread's alone.
    Phase phase = Phase::kStart;
    bool torn_down = false;
    int fd = -1;
    EventLoop::Key key = 0;
    EventLoop::TimerId timer = 0;   // the progress deadline's; 0: none armed
    Clock::time_point progress;     // the last time a byte moved (or the connect began)
    bool readable = false;          // no EAGAIN seen since the last EPOLLIN edge
    bool writable = false;          // likewise for EPOLLOUT
    struct addrinfo* addresses = nullptr;
    struct addrinfo* next_address = nullptr;
    std::string connect_error;      // the last address's failure
    std::unique_ptr<ClientHandshake> handshake;
    std::vector<uint8_t> hs_out;    // the handshake frame being sent
    size_t hs_sent = 0;
    uint8_t hs_in[kHeaderSize + ClientHandshake::kChallengeBytes];
    size_t hs_have = 0;
    // Requests being sent: headers, and the iovecs (headers and WRITE payloads) not yet
    // taken by the socket.
    std::vector<std::array<uint8_t, kHeaderSize>> tx_headers;
    IovQueue tx;
    uint64_t tx_payload = 0;
    // Replies being received: whole headers and a partial one, or a READ_DATA payload
    // landing in the op's local pieces. `answered` holds the outcomes of the window's
    // first answered.size() slices, retired in one go under mu_.
    uint8_t rx[kHeaderSize * kWindow];
    size_t rx_have = 0;
    IovQueue rx_payload;
    uint64_t rx_payload_left = 0;
    std::vector<Status> answered;
    std::vector<struct iovec> pieces;  // scratch for AppendLocal
  };

  /** Appends the iovecs that hold the op's bytes [at, at+length) to `out`. */
  void AppendLocal(const Op& op, uint64_t at, uint64_t length, std::vector<struct iovec>* out) const;

  // The connection state machine, on the connection's loop (tcp_client_connection.cc).
  void OnConnEvents(Conn* c, uint32_t events);
  /** Moves the connection on as far as its socket allows; tears it down on failure. */
  void Drive(Conn* c);
  /** Resolves the peer and starts connecting. */
  Status Begin(Conn* c);
  /** Starts a non-blocking connect to the next address; an error when none is left. */
  Status ConnectNext(Conn* c);
  Status AdvanceConnect(Conn* c);
  Status AdvanceHandshake(Conn* c);
  Status AdvanceTransfer(Conn* c);
  /** Reads replies until the socket would block (or the turn's bytes are used up). */
  Status ReceiveReplies(Conn* c, bool* progressed, uint64_t* moved);
  /** A whole reply header for the window's next unanswered slice. */
  Status OnReplyHeader(Conn* c, const uint8_t* header);
  Status SendRequests(Conn* c, bool* progressed, uint64_t* moved);
  void BuildRequests(Conn* c, const std::vector<Slice>& batch);
  /** Whether the connection has work that the progress deadline watches. */
  static bool Busy(const Conn& c);
  void ArmDeadline(Conn* c);
  void OnDeadline(Conn* c);
  /** Closes the socket and settles the window (TeardownLocked); idempotent. */
  void Die(Conn* c, Status why);

  // Everything below runs with mu_ held.
  std::shared_ptr<Peer> PeerLocked(const std::string& key);
  void EnsureConnectionsLocked(const std::shared_ptr<Peer>& peer);
  size_t LiveConnsLocked(const Peer& peer) const;
  /** Posts a Drive of `c` to its loop unless one is already on its way. */
  void WakeLocked(Conn* c);
  void TakeSlicesLocked(Conn* c, std::vector<Slice>* batch);
  /** Whether the window may take a slice of `next` (see the window limits above). */
  static bool WindowHasRoomLocked(const Conn& c, const Op& next) {
    return c.window.size() < kWindow && c.window_bytes < kWindowPayloads * c.max_payload &&
           (next.spec.kind != OpKind::kRead || c.window_reads < kReadWindow);
  }
  static void PushWindowLocked(Conn* c, const Slice& s) {
    c->window.push_back(s);
    c->window_bytes += s.length;
    if (s.op->spec.kind == OpKind::kRead) ++c->window_reads;
  }
  /** Takes the window's oldest slice out (its reply arrived, or the connection is gone). */
  static Slice PopWindowLocked(Conn* c) {
    const Slice s = c->window.front();
    c->window.pop_front();
    c->window_bytes -= s.length;
    if (s.op->spec.kind == OpKind::kRead) --c->window_reads;
    return s;
  }
  /** Marks `c` dying and posts its teardown to its loop. */
  void KillLocked(Conn* c, Status why);
  void TeardownLocked(Conn* c);
  /**
   * Puts a slice taken out of a dead connection's window back as a redo range of its
   * op; an op that was not pending is appended to `unqueued` for the caller to queue.
   */
  static void RequeueSliceLocked(const Slice& s, std::vector<Op*>* unqueued);
  void FinishSliceLocked(const Slice& s, const Status& status);
  void FailOpLocked(Op* op, const Status& why);
  void FailPendingLocked(Peer* peer, const Status& why);
  void CancelLocked(uint64_t op_id);
  void MaybeCompleteLocked(Op* op);
  /** Hands `*batch` (taken from completed_) to the engine; call without mu_ held. */
  void Deliver(std::vector<Completion>* batch);

  const TransportContext context_;
  const TcpClientOptions options_;
  const HandshakeKey key_;  // derived from options_.token (see handshake.h)
  LoopGroup* const loops_;

  std::mutex shutdown_mu_;  // serialises Shutdown()
  bool shut_down_ = false;  // guarded by shutdown_mu_
  mutable std::mutex mu_;
  bool stopping_ = false;
  size_t next_loop_ = 0;  // where the next connection goes
  std::unordered_map<std::string, std::shared_ptr<Peer>> peers_;
  std::unordered_map<uint64_t, std::unique_ptr<Op>> ops_;
  // Every connection not yet torn down, by address (the owning references; posted tasks
  // hold more).
  std::unordered_map<Conn*, std::shared_ptr<Conn>> conns_;
  // Completions made under mu_ and not yet delivered; whoever made them swaps them out
  // before unlocking and delivers them after (Deliver).
  std::vector<Completion> completed_;
};

}  // namespace tcp
}  // namespace kvferry
