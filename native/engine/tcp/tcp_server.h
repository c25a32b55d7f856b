// TcpServer: the serving half of the TCP transport — peers write into and read from
// this engine's pool through handles.
//
// Threads: one acceptor thread, and one serving thread per AUTHENTICATED connection (at
// most kMaxConnections at a time; more are closed once authenticated, counted in
// connections_shed). No thread is committed to a connection before it has proven the
// cluster token.
//
// Handshakes (wire.h, version 2) run in the acceptor: accepted sockets are non-blocking,
// each pending connection is a small state machine (ServerHandshake, handshake.h) polled
// together with the listener, and must finish its handshake within handshake_timeout_ms
// of its accept (a hard deadline, however the bytes trickle), else it is closed. Pending
// connections are bounded per source address (max_pending_per_address) and in total
// (max_pending): a new connection over either bound makes room by closing the OLDEST
// pending one (of its address, or overall), counted in connections_shed. So a flood of
// idle connections costs no thread, bounded memory and fds, and cannot lock out a real
// peer, whose handshake takes one round trip while an idle one waits out its deadline
// (to push it out, a flood would have to open max_pending_per_address connections from
// its address within that round trip). A newly accepted connection's HELLO is read at
// once, so a real peer's CHALLENGE leaves in the same acceptor turn.
// Authenticated connections are never counted against these bounds. A wrong proof gets
// HELLO_REFUSED; that, a malformed frame, a deadline passed, or a peer that leaves
// mid-handshake counts in handshakes_refused (one that leaves before its first byte, a
// port probe, does not).
//
// Per authenticated connection: requests are served in order. Each access holds the
// handle (HandleTable::Acquire) only while its payload moves, and payloads move between
// the socket and the pool directly.
// A WRITE's payload is received together with whatever of the next header has already
// arrived (two iovecs, one recvmsg), so a stream of small WRITEs costs about one recv
// per frame instead of two.
// WRITE_ACKs are held back while more requests are already waiting (at most 32) and
// always sent before the thread would block, so a pipelining client gets them in bursts.
// Deadlines: a peer idle between frames is kept (SO_RCVTIMEO = io_timeout_ms only wakes
// the thread up). Once the first byte of a frame's header arrives, the whole frame — the
// rest of the header, a WRITE's payload (refused or not), the READ_DATA reply with its
// payload, held-back ACKs sent meanwhile — must be done within io_timeout_ms (an
// absolute IoDeadline, however slowly the bytes trickle); otherwise the connection is
// closed, which ends the handle access, so a crashed, hung or slowloris peer cannot pin
// a thread or a handle. Malformed frames drop the connection (frames_refused).
//
// Stop() (idempotent; also the destructor) closes the listener and every pending
// connection, shuts every served connection down and joins every thread; when it
// returns no access is in flight.
#pragma once

#include <chrono>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "engine/status.h"
#include "engine/tcp/handshake.h"
#include "engine/tcp/socket_io.h"
#include "engine/tcp/wire.h"
#include "engine/transport.h"

namespace kvferry {
namespace tcp {

struct TcpServerOptions {
  std::string token;
  std::string host;
  uint16_t port = 0;
  uint64_t slice_bytes = 0;
  int io_timeout_ms = 10000;
  int handshake_timeout_ms = 1000;
  /** Connections accepted and not yet authenticated, in total and per source address. */
  // Large enough for a legitimate burst from one host (several daemons on a node, each
  // opening connections_per_peer connections at once), small enough to stay cheap.
  size_t max_pending = 256;
  size_t max_pending_per_address = 64;
};

class TcpServer {
 public:
  static constexpr size_t kMaxConnections = 512;

  TcpServer(const TransportContext& context, TcpServerOptions options);
  ~TcpServer();

  TcpServer(const TcpServer&) = delete;
  TcpServer& operator=(const TcpServer&) = delete;

  [[nodiscard]] Status Start();
  uint16_t port() const { return port_; }
  void Stop();

 private:
  struct Connection {
    int fd = -1;  // guarded by mu_; closed by its own thread on exit
    bool done = false;
    std::thread thread;
  };

  /** A connection in its handshake; owned by the acceptor thread alone. */
  struct Pending {
    Pending(int socket, std::string from, std::chrono::steady_clock::time_point by, const HandshakeKey& key,
            uint64_t slice_bytes, const Nonce& nonce)
        : fd(socket), address(std::move(from)), deadline(by), handshake(key, slice_bytes, nonce) {}
    int fd;
    std::string address;  // source address (no port), the per-address bound's key
    std::chrono::steady_clock::time_point deadline;
    ServerHandshake handshake;
    size_t sent = 0;  // bytes of handshake.outbox() already sent
  };
  enum class Advance { kKeep, kAccepted, kRefused, kGone };

  /** What one serving thread keeps between requests. */
  struct Session {
    Session(int socket, int timeout_ms) : fd(socket), deadline(socket, timeout_ms) {}
    int fd = -1;
    IoDeadline deadline;  // the current frame's (see above)
    std::vector<uint8_t> scratch;  // sink for refused WRITE payloads
    std::vector<uint8_t> acks;     // encoded WRITE_ACKs not sent yet, in request order
    std::vector<PoolExtent> pieces;  // the current access's range in the pool
    std::vector<struct iovec> iov;   // the same as buffers (READ: after the ACKs and header)
    // The first bytes of the next header, read together with the previous WRITE's payload.
    uint8_t next[kHeaderSize];
    size_t next_have = 0;
  };

  void AcceptLoop();
  /** Accepts what the listener has queued, making room under the pending bounds. */
  void AcceptReady(std::chrono::steady_clock::time_point now);
  /** Moves one pending handshake on as far as its socket allows. */
  Advance AdvanceHandshake(Pending* p);
  /** Acts on AdvanceHandshake's outcome: keeps, serves or drops the connection. */
  void Settle(std::list<Pending>::iterator it, Advance outcome);
  /** Closes a pending connection and erases it; `refused` counts it. */
  void DropPending(std::list<Pending>::iterator it, bool refused);
  /** Hands an authenticated socket to a serving thread (or closes it when full). */
  void StartServing(int fd);
  void Serve(Connection* conn, int fd);
  /**
   * HandleTable::Acquire (for `access`) plus a check that the result lies inside the
   * pool; on success `session->iov` holds the frame's payload buffers in the pool.
   */
  Status AcquireAccess(const FrameHeader& h, Access access, Session* session);
  /** Serves one request whose header is `h`; false when the connection must close. */
  bool ServeWrite(Session* session, const FrameHeader& h);
  bool ServeRead(Session* session, const FrameHeader& h);
  bool FlushAcks(Session* session);
  void ReapLocked(std::vector<std::unique_ptr<Connection>>* finished);

  const TransportContext context_;
  const TcpServerOptions options_;
  const HandshakeKey key_;
  // Acceptor thread only: pending handshakes in accept order (so also deadline order).
  std::list<Pending> pending_;
  std::unordered_map<std::string, size_t> pending_by_address_;
  int listen_fd_ = -1;
  int wake_fd_ = -1;
  uint16_t port_ = 0;
  std::thread listener_;

  std::mutex stop_mu_;  // serialises Stop()
  std::mutex mu_;
  bool stopping_ = false;
  std::list<std::unique_ptr<Connection>> connections_;
};

}  // namespace tcp
}  // namespace kvferry
