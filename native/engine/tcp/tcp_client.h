// TcpClient: the submitting half of the TCP transport — moves ops' bytes between this
// engine's pool and peers' handles.
//
// Shape
// - Per peer ("host:port"): up to connections_per_peer connections, opened lazily when
//   ops arrive (and again after they drop), each with a sender and a receiver thread.
// - An op is cut into slices of at most min(slice_bytes, the server's limit). Slices
//   wait in the peer's FIFO of pending ops; a sender with window room takes the next
//   ones, so consecutive slices fan out over the peer's connections (round-robin by
//   availability) and small ops batch into one sendmsg.
// - Per connection at most kWindow slices, at most kReadWindow of them READs, and
//   (checked before adding one) fewer than kWindowPayloads × the connection's largest
//   payload bytes are in flight (requests sent, reply not yet read), so a connection
//   pins a bounded number of slices: 16 full-size slices, or up to 32 small WRITEs,
//   whose wake-ups (sender, receiver, server ACK flush, completion notifier) are then
//   shared by more ops. READ replies each carry a payload and are read one by one, so
//   for them a deeper window only adds bytes in flight; it measured slower, as did 64
//   small WRITEs with 4 connections (colder caches). The server answers in
//   request order, so the receiver matches replies to the front of the window (reading
//   as many reply headers per recv as can arrive before the next READ_DATA payload).
// - Payloads move between the pool and the socket directly (sendmsg from the local
//   extents for WRITE; recv into them for READ_DATA). An op may gather many extents
//   (TransferOp::gather): its slices are cut from the concatenation, so a batch of small
//   entries travels as a few full-size frames.
//
// Memory-safety invariant (what makes a completion a promise)
// - An op completes only when none of its slices is in any window. A slice leaves a
//   window when its reply has been fully received, or when its connection is torn down,
//   which happens only after both of that connection's threads have left their I/O loops
//   (the last thread out cleans up). So once an op is completed, nothing reads or writes
//   the op's local extent.
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
//   kNotSupported for another wire version; kCancelled at Shutdown). If every connection of a peer fails before delivering anything, the
//   peer's pending ops fail with that error; otherwise pending ops wait for
//   (re)connected carriers.
// - Cancel(op): the op stops being sliced; if slices are in flight, the connections
//   carrying them are shut down. Their window's slices of ops that were not cancelled
//   are not failed: at teardown (both threads out of their I/O loops, as for settling)
//   they go back to the front of the peer's queue as redo ranges of their ops, and are
//   sent again on another or a fresh connection — a WRITE re-sends and a READ re-reads
//   the same byte range, both idempotent. Only a connection killed by a cancel does this
//   (and not once the peer is Disconnect()ed or the client is shutting down).
#pragma once

#include <sys/uio.h>

#include <condition_variable>
#include <chrono>
#include <cstdint>
#include <deque>
#include <utility>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "engine/engine.h"
#include "engine/status.h"
#include "engine/tcp/handshake.h"
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

  TcpClient(const TransportContext& context, TcpClientOptions options);
  ~TcpClient();

  TcpClient(const TcpClient&) = delete;
  TcpClient& operator=(const TcpClient&) = delete;

  [[nodiscard]] Status Submit(std::vector<TransferOp> ops);
  void Cancel(uint64_t op_id);
  void Disconnect(const std::string& peer);
  void Shutdown();
  uint64_t connected_peers() const;

 private:
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
    // The op's local bytes in order: pool pieces (one unless the op gathers), adjacent
    // ones merged, and the op offset where each ends.
    std::vector<PoolExtent> local;
    std::vector<uint64_t> local_ends;
    std::shared_ptr<Peer> peer;
    std::chrono::steady_clock::time_point start;
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

  enum class ConnState { kConnecting, kEstablished };

  struct Conn {
    std::shared_ptr<Peer> peer;
    int fd = -1;                    // shut down by others, closed only by teardown
    ConnState state = ConnState::kConnecting;
    bool dying = false;
    bool killed_by_cancel = false;
    bool delivered = false;         // at least one reply was received
    Status death;
    uint64_t max_payload = 0;
    uint64_t next_request_id = 1;
    std::deque<Slice> window;       // in flight, in request order
    uint64_t window_bytes = 0;      // sum of the window's slice lengths
    size_t window_reads = 0;        // READ slices in the window
    int live_threads = 2;
    bool finished = false;          // torn down; threads are exiting
    std::condition_variable send_cv;
    std::condition_variable recv_cv;
    std::thread sender;
    std::thread receiver;
  };

  /** Appends the iovecs that hold the op's bytes [at, at+length) to `out`. */
  void AppendLocal(const Op& op, uint64_t at, uint64_t length, std::vector<struct iovec>* out) const;

  // Thread bodies.
  void SenderMain(Conn* c);
  void ReceiverMain(Conn* c);
  Status Establish(Conn* c);
  Status ConnectSocket(Conn* c);
  void SendLoop(Conn* c);
  void ReceiveLoop(Conn* c, int fd);
  void ThreadExit(Conn* c);

  // Everything below runs with mu_ held.
  std::shared_ptr<Peer> PeerLocked(const std::string& key);
  void EnsureConnectionsLocked(const std::shared_ptr<Peer>& peer);
  size_t LiveConnsLocked(const Peer& peer) const;
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
  void ReapLocked(std::vector<std::shared_ptr<Conn>>* finished);
  /** Hands `*batch` (taken from completed_) to the engine; call without mu_ held. */
  void Deliver(std::vector<Completion>* batch);

  const TransportContext context_;
  const TcpClientOptions options_;
  const HandshakeKey key_;  // derived from options_.token (see handshake.h)

  std::mutex shutdown_mu_;  // serialises Shutdown()
  mutable std::mutex mu_;
  bool stopping_ = false;
  std::unordered_map<std::string, std::shared_ptr<Peer>> peers_;
  std::unordered_map<uint64_t, std::unique_ptr<Op>> ops_;
  std::list<std::shared_ptr<Conn>> conns_;  // every connection whose threads are not joined
  // Completions made under mu_ and not yet delivered; whoever made them swaps them out
  // before unlocking and delivers them after (Deliver).
  std::vector<Completion> completed_;
};

}  // namespace tcp
}  // namespace kvferry
