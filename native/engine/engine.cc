// EngineImpl: wires the pool, the handle table, the completion queue and the transports
// together, and validates everything that comes in through the public API before a
// transport sees it.
#include "engine/engine.h"

#include <atomic>
#include <mutex>
#include <utility>

#include "engine/completion_queue.h"
#include "engine/handle_table.h"
#include "engine/memory_pool.h"
#include "engine/transport.h"
#include "engine/transport_factory.h"

namespace kvferry {

namespace {

// The engine's own options, then its transport's (checked by the transport's factory entry).
Status ValidateOptions(const EngineOptions& o) {
  if (o.pool_size == 0) return Status(Code::kInvalidArgument, "pool_size must be positive");
  if (o.max_queued_ops == 0) return Status(Code::kInvalidArgument, "max_queued_ops must be positive");
  return CheckTransportOptions(o);
}

class EngineImpl final : public Engine {
 public:
  explicit EngineImpl(const EngineOptions& options, std::unique_ptr<MemoryPool> pool)
      : options_(options),
        pool_(std::move(pool)),
        handles_([this](uint64_t handle) { OnHandleReleased(handle); }) {}

  ~EngineImpl() override {
    Shutdown();
    transport_.reset();  // joins its threads before the queue and the pool go
  }

  Status Init() {
    TransportContext context;
    context.pool_base = pool_->base();
    context.pool_size = pool_->size();
    context.handles = &handles_;
    context.counters = &counters_;
    context.complete_ops = [this](std::vector<Completion>* batch) { OnOpsCompleted(batch); };
    Status s = CreateTransport(options_, context, &transport_);
    if (!s.ok()) return s;
    return transport_->Start();
  }

  // ---- memory pool ------------------------------------------------------------------
  uint8_t* pool_base() override { return pool_->base(); }
  uint64_t pool_size() const override { return pool_->size(); }
  int pool_fd() const override { return pool_->fd(); }
  Status Allocate(uint64_t size, uint64_t* offset) override { return pool_->Allocate(size, offset); }
  Status AllocateScattered(uint64_t size, size_t max_extents, std::vector<PoolExtent>* out) override {
    std::vector<ExtentAllocator::Extent> extents;
    Status s = pool_->AllocateScattered(size, max_extents, &extents);
    for (const auto& e : extents) out->push_back({e.offset, e.size});
    return s;
  }
  Status Free(uint64_t offset) override { return pool_->Free(offset); }
  PoolStats pool_stats() const override {
    ExtentAllocator::Stats s = pool_->stats();
    PoolStats p;
    p.capacity = s.capacity;
    p.used = s.used;
    p.free_extents = s.free_extents;
    p.largest_free = s.largest_free;
    p.allocations = s.allocations;
    return p;
  }

  // ---- handles ----------------------------------------------------------------------
  Status Expose(uint64_t offset, uint64_t length, Access access, uint64_t* handle) override {
    if (access != Access::kRead && access != Access::kWrite) {
      return Status(Code::kInvalidArgument, "access must be read (1) or write (2), got " +
                                                std::to_string(static_cast<int>(access)));
    }
    if (!pool_->Contains(offset, length)) return OutsidePool("range", offset, length);
    return handles_.Expose(offset, length, access, handle);
  }
  Status ExposeExtents(std::vector<PoolExtent> extents, Access access, uint64_t* handle) override {
    for (const PoolExtent& e : extents) {
      if (!pool_->Contains(e.offset, e.size)) return OutsidePool("extent", e.offset, e.size);
    }
    return handles_.Expose(std::move(extents), access, handle);
  }
  Status Revoke(uint64_t handle) override { return handles_.Revoke(handle); }

  // ---- transfers --------------------------------------------------------------------
  uint16_t data_port() const override { return transport_->listen_port(); }
  std::string connection_info() const override { return transport_->connection_info(); }

  // Submit is all-or-nothing (see transport.h). max_queued_ops bounds ops accepted and
  // not yet completed; a slot frees when the op's completion is queued.
  Status Submit(std::vector<TransferOp> ops) override {
    if (shut_down_.load()) return Status(Code::kUnavailable, "the engine is shut down");
    if (ops.empty()) return Status::Ok();
    // A batch is usually to one peer (the daemon sends one per peer): it is judged once.
    const std::string* judged_peer = nullptr;
    for (const TransferOp& op : ops) {
      Status s = ValidateOp(op, judged_peer == nullptr || op.peer != *judged_peer);
      if (!s.ok()) return s;
      judged_peer = &op.peer;
    }
    // Reserve room for the whole batch or refuse it whole.
    const uint64_t n = ops.size();
    uint64_t current = outstanding_.load();
    do {
      if (n > options_.max_queued_ops || current > options_.max_queued_ops - n) {
        return Status(Code::kResourceExhausted, std::to_string(current) + " ops are outstanding; " +
                                                    std::to_string(n) + " more would pass max_queued_ops (" +
                                                    std::to_string(options_.max_queued_ops) + ")");
      }
    } while (!outstanding_.compare_exchange_weak(current, current + n));
    Status s = transport_->Submit(std::move(ops));
    if (!s.ok()) outstanding_.fetch_sub(n);
    return s;
  }

  void Cancel(uint64_t op_id) override { transport_->Cancel(op_id); }
  void Disconnect(const std::string& peer) override { transport_->Disconnect(peer); }

  // ---- completions ------------------------------------------------------------------
  void SetNotifier(std::function<void()> notify) override { completions_.SetNotifier(std::move(notify)); }
  size_t DrainCompletions(std::vector<Completion>* out) override { return completions_.Drain(out); }

  // bytes_sent / bytes_received count payload bytes that left / landed in this pool
  // through any connection (outgoing ops and incoming requests alike); refused payloads
  // are not counted on the serving side. peers_connected counts peers with at least one
  // established outgoing connection.
  EngineStats stats() const override {
    EngineStats s;
    s.pool = pool_stats();
    s.bytes_sent = counters_.bytes_sent.load(std::memory_order_relaxed);
    s.bytes_received = counters_.bytes_received.load(std::memory_order_relaxed);
    s.ops_completed = ops_completed_.load(std::memory_order_relaxed);
    s.ops_failed = ops_failed_.load(std::memory_order_relaxed);
    s.handshakes_refused = counters_.handshakes_refused.load(std::memory_order_relaxed);
    s.frames_refused = counters_.frames_refused.load(std::memory_order_relaxed);
    s.connections_shed = counters_.connections_shed.load(std::memory_order_relaxed);
    s.peers_connected = transport_->connected_peers();
    return s;
  }

  void Shutdown() override {
    std::lock_guard<std::mutex> lock(shutdown_mu_);
    shut_down_.store(true);
    if (transport_) transport_->Shutdown();
  }

 private:
  Status ValidateOp(const TransferOp& op, bool check_peer) const {
    const std::string which = "op " + std::to_string(op.id) + ": ";
    if (op.kind != OpKind::kWrite && op.kind != OpKind::kRead) {
      return Status(Code::kInvalidArgument, which + "unknown kind " + std::to_string(static_cast<int>(op.kind)));
    }
    if (op.gather.empty()) {
      if (!pool_->Contains(op.local_offset, op.length)) return OutsidePool(which + "local range", op.local_offset, op.length);
    } else {
      if (op.gather.size() > HandleTable::kMaxExtents) {
        return Status(Code::kInvalidArgument, which + "gathers " + std::to_string(op.gather.size()) +
                                                  " extents; at most " + std::to_string(HandleTable::kMaxExtents));
      }
      uint64_t sum = 0;
      for (const PoolExtent& e : op.gather) {
        if (!pool_->Contains(e.offset, e.size)) return OutsidePool(which + "local extent", e.offset, e.size);
        if (e.size > UINT64_MAX - sum) return Status(Code::kOutOfRange, which + "gather extents' sizes overflow");
        sum += e.size;
      }
      if (sum != op.length) {
        return Status(Code::kInvalidArgument, which + "gather extents hold " + std::to_string(sum) +
                                                  " bytes, the op moves " + std::to_string(op.length));
      }
    }
    if (op.remote_offset > UINT64_MAX - op.length) {
      return Status(Code::kOutOfRange, which + "remote_offset + length overflows");
    }
    if (check_peer) {
      const std::string bad_peer = transport_->CheckPeer(op.peer);
      if (!bad_peer.empty()) return Status(Code::kInvalidArgument, which + bad_peer);
    }
    return Status::Ok();
  }

  Status OutsidePool(const std::string& what, uint64_t offset, uint64_t length) const {
    return Status(Code::kOutOfRange, what + " [" + std::to_string(offset) + ", +" + std::to_string(length) +
                                         ") is outside the " + std::to_string(pool_->size()) + "-byte pool");
  }

  // Called by transport threads (or Cancel/Disconnect/Shutdown callers) exactly once per
  // accepted op. The slot is returned before the completion becomes visible, so an owner
  // reacting to it can submit again at once.
  void OnOpsCompleted(std::vector<Completion>* batch) {
    uint64_t failed = 0;
    for (const Completion& c : *batch) failed += c.code == Code::kOk ? 0 : 1;
    const uint64_t n = batch->size();
    outstanding_.fetch_sub(n);
    if (n > failed) ops_completed_.fetch_add(n - failed, std::memory_order_relaxed);
    if (failed > 0) ops_failed_.fetch_add(failed, std::memory_order_relaxed);
    completions_.PushAll(batch);
  }

  void OnHandleReleased(uint64_t handle) {
    Completion c;
    c.kind = CompletionKind::kHandleReleased;
    c.id = handle;
    completions_.Push(std::move(c));
  }

  const EngineOptions options_;
  const std::unique_ptr<MemoryPool> pool_;
  CompletionQueue completions_;
  TransportCounters counters_;
  std::atomic<uint64_t> ops_completed_{0};
  std::atomic<uint64_t> ops_failed_{0};
  std::atomic<uint64_t> outstanding_{0};
  HandleTable handles_;
  std::mutex shutdown_mu_;
  std::atomic<bool> shut_down_{false};
  // Declared last so that it is destroyed first; the destructor also resets it explicitly.
  std::unique_ptr<Transport> transport_;
};

}  // namespace

Status Engine::Create(const EngineOptions& options, std::unique_ptr<Engine>* out) {
  Status s = ValidateOptions(options);
  if (!s.ok()) return s;
  std::unique_ptr<MemoryPool> pool;
  s = MemoryPool::Create(options.pool_size, &pool);
  if (!s.ok()) return s;
  auto engine = std::make_unique<EngineImpl>(options, std::move(pool));
  s = engine->Init();
  if (!s.ok()) return s;
  *out = std::move(engine);
  return Status::Ok();
}

}  // namespace kvferry
