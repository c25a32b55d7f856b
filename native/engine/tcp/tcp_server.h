// TcpServer: the serving half of the TCP transport — peers write into and read from
// this engine's pool through handles.
//
// Threads: none of its own. The server runs on the transport's I/O loops (LoopGroup,
// loop_group.h, io_threads of them, shared with the submitting half), each loop serving
// its share of the connections. No connection has a thread of its own, authenticated or
// not: 1,000 idle peers cost 1,000 fds and a few hundred bytes each. Loop 0 also owns
// the listener and every pending handshake (so the pending bounds below are exact, with
// no lock); a connection that authenticates is handed to the loops round-robin, loop 0
// included.
// At most kMaxConnections authenticated connections are served at a time; one more is
// closed once authenticated, counted in connections_shed.
//
// Handshakes (wire.h, version 2): accepted sockets are non-blocking, each pending
// connection is a small state machine (ServerHandshake, handshake.h) driven by its
// socket's events, and must finish its handshake within handshake_timeout_ms of its
// accept (a hard deadline, however the bytes trickle), else it is closed. Pending
// connections are bounded per source address (max_pending_per_address) and in total
// (max_pending): a new connection over either bound makes room by closing the OLDEST
// pending one (of its address, or overall), counted in connections_shed. So a flood of
// idle connections costs no thread, bounded memory and fds, and cannot lock out a real
// peer, whose handshake takes one round trip while an idle one waits out its deadline
// (to push it out, a flood would have to open max_pending_per_address connections from
// its address within that round trip). A newly accepted connection's HELLO is read at
// once, so a real peer's CHALLENGE leaves in the same loop turn.
// Authenticated connections are never counted against these bounds. A wrong proof gets
// HELLO_REFUSED; that, a malformed frame, a deadline passed, or a peer that leaves
// mid-handshake counts in handshakes_refused (one that leaves before its first byte, a
// port probe, does not).
//
// Per authenticated connection (server_connection.h has the whole contract): requests
// are served in order and replies leave in request order; each access holds the handle
// (HandleTable::Acquire) only while its payload moves, and payloads move between the
// socket and the pool directly (readv/sendmsg over the handle's pieces). WRITE_ACKs are
// held back while more requests are immediately readable. A peer idle between frames is
// kept forever; once the first byte of a frame's header arrives, the whole frame (its
// payload, its reply, held-back ACKs sent meanwhile) must be done within io_timeout_ms
// (a hard deadline, a loop timer), otherwise the connection is closed, which ends the
// handle access, so a crashed, hung or slowloris peer cannot pin a handle. Refused
// accesses are answered with their status and the connection stays usable; malformed
// frames drop it (frames_refused).
//
// Stop() (idempotent; also the destructor) closes the listener and every connection,
// pending or served, on their loops' threads, and waits for that; when it returns no
// access is in flight. The loops must still be running (or never have run).
#pragma once

#include <atomic>
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
#include "engine/tcp/event_loop.h"
#include "engine/tcp/handshake.h"
#include "engine/tcp/loop_group.h"
#include "engine/tcp/server_connection.h"
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
  static constexpr size_t kMaxConnections = 4096;

  /** `loops`: the transport's I/O loops; they outlive the server. */
  TcpServer(const TransportContext& context, TcpServerOptions options, LoopGroup* loops);
  ~TcpServer();

  TcpServer(const TcpServer&) = delete;
  TcpServer& operator=(const TcpServer&) = delete;

  [[nodiscard]] Status Start();
  uint16_t port() const { return port_; }
  void Stop();

 private:
  using Clock = std::chrono::steady_clock;
  struct Shard;

  /** The listening socket's handler (loop 0). */
  struct Listener final : EventLoop::Handler {
    explicit Listener(TcpServer* s) : server(s) {}
    void OnEvents(uint32_t) override { server->AcceptReady(Clock::now()); }
    TcpServer* server;
  };

  /** A connection in its handshake; loop 0's alone. */
  struct Pending final : EventLoop::Handler {
    Pending(TcpServer* s, int socket, std::string from, Clock::time_point by, const HandshakeKey& key,
            uint64_t slice_bytes, const Nonce& nonce)
        : server(s), fd(socket), address(std::move(from)), deadline(by), handshake(key, slice_bytes, nonce) {}
    void OnEvents(uint32_t) override { server->Settle(self, server->AdvanceHandshake(this)); }
    TcpServer* server;
    int fd;
    std::string address;  // source address (no port), the per-address bound's key
    Clock::time_point deadline;
    ServerHandshake handshake;
    size_t sent = 0;  // bytes of handshake.outbox() already sent
    EventLoop::Key key = 0;
    std::list<Pending>::iterator self;
  };
  enum class Advance { kKeep, kAccepted, kRefused, kGone };

  /** An authenticated connection and its place in its shard's loop. */
  struct Served final : EventLoop::Handler {
    Served(TcpServer* s, Shard* home, int fd, const TransportContext& context, const ServingLimits& limits);
    void OnEvents(uint32_t) override { server->Drive(this); }
    TcpServer* server;
    Shard* shard;
    ServerConnection conn;
    EventLoop::Key key = 0;
    EventLoop::TimerId timer = 0;  // 0: none armed
  };

  /** The server's part of one I/O loop: the connections it serves there. */
  struct Shard {
    EventLoop* loop = nullptr;
    std::vector<uint8_t> scratch;  // shared sink for refused WRITE payloads
    std::unordered_map<Served*, std::unique_ptr<Served>> served;  // the loop thread's alone
  };

  /** On shard `index`'s loop, at Stop: closes its connections (and, loop 0, the listener). */
  void CloseShard(size_t index);
  /** Accepts what the listener has queued, making room under the pending bounds. */
  void AcceptReady(Clock::time_point now);
  /** Moves one pending handshake on as far as its socket allows. */
  Advance AdvanceHandshake(Pending* p);
  /** Acts on AdvanceHandshake's outcome: keeps, hands over or drops the connection. */
  void Settle(std::list<Pending>::iterator it, Advance outcome);
  /** Closes a pending connection and erases it; `refused` counts it. */
  void DropPending(std::list<Pending>::iterator it, bool refused);
  /** Closes the pending connections past their deadline and arms the timer for the next. */
  void ExpirePending();
  void ArmPendingTimer();
  /** Hands an authenticated socket to the next loop (or closes it when full). */
  void HandOver(int fd);
  /** On `shard`'s loop: starts serving `fd`. */
  void Adopt(Shard* shard, int fd);
  /** Advances a served connection and schedules what it needs next. */
  void Drive(Served* s);
  void Retire(Served* s);

  const TransportContext context_;
  const TcpServerOptions options_;
  const HandshakeKey key_;
  LoopGroup* const loops_;
  std::vector<std::unique_ptr<Shard>> shards_;
  size_t next_shard_ = 0;  // loop 0 only
  std::atomic<size_t> served_count_{0};
  std::atomic<bool> stopping_{false};

  // Loop 0 only: the listener and the pending handshakes in accept order (so also
  // deadline order).
  int listen_fd_ = -1;
  uint16_t port_ = 0;
  Listener listener_{this};
  EventLoop::Key listen_key_ = 0;
  bool listening_ = false;  // registered with loop 0 (accept errors pause it briefly)
  std::list<Pending> pending_;
  std::unordered_map<std::string, size_t> pending_by_address_;
  EventLoop::TimerId pending_timer_ = 0;  // 0: none armed
  EventLoop::TimerId accept_timer_ = 0;  // the accept back-off's; 0: none armed

  std::mutex stop_mu_;  // serialises Stop()
  bool stopped_ = false;
};

}  // namespace tcp
}  // namespace kvferry
