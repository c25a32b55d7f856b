// TcpClient's op bookkeeping: submission, slicing state, failure, completion, and the
// control calls. The connection state machine is in tcp_client_connection.cc.
#include "engine/tcp/tcp_client.h"

#include <algorithm>
#include <unordered_set>
#include <utility>

#include "engine/tcp/socket_io.h"

namespace kvferry {
namespace tcp {

TcpClient::TcpClient(const TransportContext& context, TcpClientOptions options, LoopGroup* loops)
    : context_(context), options_(std::move(options)), key_(DeriveDataPlaneKey(options_.token)), loops_(loops) {}

TcpClient::~TcpClient() { Shutdown(); }

// ---- submission ---------------------------------------------------------------------

Status TcpClient::Submit(std::vector<TransferOp> ops) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return Status(Code::kUnavailable, "the transport is shut down");
    // All-or-nothing: judge the whole batch before touching any state.
    std::unordered_set<uint64_t> ids;
    ids.reserve(ops.size());
    const std::string* parsed = nullptr;  // the peer of the ops before, already parsed
    for (const TransferOp& op : ops) {
      if (ops_.count(op.id) != 0 || !ids.insert(op.id).second) {
        return Status(Code::kInvalidArgument, "op id " + std::to_string(op.id) + " is already in flight");
      }
      if (parsed != nullptr && op.peer == *parsed) continue;
      std::string host;
      uint16_t port = 0;
      if (!ParseHostPort(op.peer, &host, &port)) {
        return Status(Code::kInvalidArgument, "peer '" + op.peer + "' is not host:port");
      }
      parsed = &op.peer;
    }
    const auto now = std::chrono::steady_clock::now();
    std::vector<std::shared_ptr<Peer>> touched;
    std::shared_ptr<Peer> last;  // ops of a batch mostly share a peer: looked up once per run
    for (TransferOp& spec : ops) {
      auto op = std::make_unique<Op>();
      op->local = LocalPieces(&spec);
      if (last == nullptr || last->key != spec.peer) {
        last = PeerLocked(spec.peer);
        if (std::find(touched.begin(), touched.end(), last) == touched.end()) touched.push_back(last);
      }
      op->peer = last;
      op->spec = std::move(spec);
      op->start = now;
      op->pending = true;
      op->pending_it = op->peer->pending.insert(op->peer->pending.end(), op.get());
      const uint64_t id = op->spec.id;
      ops_.emplace(id, std::move(op));
    }
    for (const auto& peer : touched) {
      EnsureConnectionsLocked(peer);
      for (Conn* c : peer->conns) WakeLocked(c);
    }
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
    EventLoop* loop = &loops_->loop(next_loop_);
    next_loop_ = (next_loop_ + 1) % loops_->size();
    auto c = std::make_shared<Conn>(this, peer, loop);
    c->max_payload = options_.slice_bytes;
    peer->conns.push_back(c.get());
    conns_.emplace(c.get(), c);
    // Its first turn (Phase::kStart) resolves the peer and starts connecting.
    WakeLocked(c.get());
  }
}

void TcpClient::WakeLocked(Conn* c) {
  if (c->wake_posted || c->dying) return;
  c->wake_posted = true;
  std::shared_ptr<Conn> keep = c->shared_from_this();
  c->loop->Post([this, keep] {
    {
      std::lock_guard<std::mutex> lock(mu_);
      keep->wake_posted = false;
    }
    Drive(keep.get());
  });
}

void TcpClient::AppendLocal(const Op& op, uint64_t at, uint64_t length, std::vector<struct iovec>* out) const {
  op.local.ForRange(at, length, [&](uint64_t offset, uint64_t n) {
    out->push_back({context_.pool_base + offset, static_cast<size_t>(n)});
  });
}

void TcpClient::Deliver(std::vector<Completion>* batch) {
  if (!batch->empty()) context_.complete_ops(batch);
  batch->clear();
}

// ---- failure and completion (mu_ held) ------------------------------------------------

void TcpClient::KillLocked(Conn* c, Status why) {
  if (c->dying) return;
  c->dying = true;
  c->death = std::move(why);
  // Only its loop touches its socket: the teardown happens there (Die reads c->death).
  std::shared_ptr<Conn> keep = c->shared_from_this();
  c->loop->Post([this, keep] { Die(keep.get(), Status::Ok()); });
}

void TcpClient::TeardownLocked(Conn* c) {
  // On the loop thread, socket closed: nothing touches a window slice's memory any more,
  // so its op may now be failed (and completed).
  const Status why = c->death.ok() ? Status(Code::kUnavailable, "connection closed") : c->death;
  Peer* peer = c->peer.get();
  // Closed to cancel an op: the slices of the other ops are innocent bystanders and go
  // back to the front of the queue (in window order) instead of failing.
  const bool requeue = c->killed_by_cancel && !stopping_ && !peer->forgotten;
  bool requeued = false;
  std::vector<Op*> unqueued;
  while (!c->window.empty()) {
    const Slice s = PopWindowLocked(c);
    if (requeue && s.op->error.ok()) {
      RequeueSliceLocked(s, &unqueued);
      requeued = true;
    } else {
      FinishSliceLocked(s, why);
    }
  }
  for (auto it = unqueued.rbegin(); it != unqueued.rend(); ++it) {
    (*it)->pending_it = peer->pending.insert(peer->pending.begin(), *it);
    (*it)->pending = true;
  }
  peer->conns.erase(std::find(peer->conns.begin(), peer->conns.end(), c));
  if (requeued) {
    // Replace the closed connection and wake the live ones: either may carry the redo.
    EnsureConnectionsLocked(c->peer);
    for (Conn* other : peer->conns) WakeLocked(other);
    return;
  }
  if (peer->conns.empty() && peer->pending.empty()) {
    // Nothing left to carry: forget the peer so that peers_ does not grow with every
    // address ever used. The next op to it starts afresh.
    auto it = peers_.find(peer->key);
    if (it != peers_.end() && it->second.get() == peer) peers_.erase(it);
    return;
  }
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

void TcpClient::RequeueSliceLocked(const Slice& s, std::vector<Op*>* unqueued) {
  Op* op = s.op;
  --op->in_flight;
  if (!op->pending && op->redo.empty()) unqueued->push_back(op);
  op->redo.emplace_back(s.op_offset, s.length);
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
  completed_.push_back(std::move(done));
}

// ---- control ------------------------------------------------------------------------

void TcpClient::Cancel(uint64_t op_id) {
  std::vector<Completion> done;
  {
    std::lock_guard<std::mutex> lock(mu_);
    CancelLocked(op_id);
    done.swap(completed_);
  }
  Deliver(&done);
}

void TcpClient::CancelLocked(uint64_t op_id) {
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
  std::vector<Completion> done;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = peers_.find(key);
    if (it == peers_.end()) return;
    std::shared_ptr<Peer> peer = it->second;
    peers_.erase(it);
    peer->forgotten = true;
    const Status why(Code::kUnavailable, "peer " + key + " was disconnected");
    FailPendingLocked(peer.get(), why);
    for (Conn* c : peer->conns) KillLocked(c, why);
    done.swap(completed_);
  }
  Deliver(&done);
}

void TcpClient::Shutdown() {
  std::lock_guard<std::mutex> serial(shutdown_mu_);
  if (shut_down_) return;
  shut_down_ = true;
  std::vector<Completion> done;
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
    for (auto& entry : conns_) KillLocked(entry.first, why);
    done.swap(completed_);
  }
  Deliver(&done);
  // Each connection's teardown was posted to its loop above (its start, if not run yet,
  // is ahead of it); a task posted after them on every loop returns once all have run.
  for (size_t i = 0; i < loops_->size(); ++i) loops_->RunOn(i, [] {});
  {
    std::lock_guard<std::mutex> lock(mu_);
    peers_.clear();
    // Every connection is torn down, so nothing can touch an op's memory: settle any
    // leftovers (there should be none).
    std::vector<Op*> left;
    for (auto& entry : ops_) left.push_back(entry.second.get());
    for (Op* op : left) {
      op->in_flight = 0;
      MaybeCompleteLocked(op);
    }
    done.swap(completed_);
  }
  Deliver(&done);
}

uint64_t TcpClient::connected_peers() const {
  std::lock_guard<std::mutex> lock(mu_);
  uint64_t n = 0;
  for (const auto& entry : peers_) {
    for (const Conn* c : entry.second->conns) {
      if (c->established && !c->dying) {
        ++n;
        break;
      }
    }
  }
  return n;
}

}  // namespace tcp
}  // namespace kvferry
