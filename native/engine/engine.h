// The kvferry native engine: one memory pool, the handles that expose parts of it to
// peers, and the transports that move bytes between pools. Knows nothing of Node.js:
// native/binding/ is the only code that includes napi.h.
//
// Threading contract
// - Every public method is safe to call from any thread.
// - Completions are queued by engine threads; the notifier (SetNotifier) is called,
//   from an engine thread, when the queue goes from empty to non-empty. The owner then
//   drains the whole queue with DrainCompletions: one wake-up per batch, not per op.
//
// Memory-safety contract (what makes freeing pool memory safe)
// - An op's local extent may be read (kWrite) or written (kRead) by the engine until its
//   terminal completion is drained. Cancel is best effort: it closes the op's connection;
//   the op ends with a terminal completion (kCancelled, or whatever outcome won the race)
//   and the other ops on that connection are sent again on another one (their bytes may
//   be moved twice; the same bytes to the same place). Never free an op's local extent
//   before its completion.
// - A handle may be used by incoming requests until Revoke's terminal event: Revoke
//   refuses new accesses at once and queues a kHandleReleased completion (with the
//   handle id) once no incoming access is in flight. Free the extent only then.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "status.h"

namespace kvferry {

struct EngineOptions {
  uint64_t pool_size = 0;
  /** Which transport moves the bytes (transport_factory.h): "tcp", or "rdma" (UCX) when built with it. */
  std::string protocol = "tcp";
  /** "rdma": the devices to use as rails, comma-separated ("mlx5_0,mlx5_1"); "": UCX's choice. */
  std::string devices;
  /**
   * Shared cluster token; a peer that cannot prove it (challenge-response, see
   * tcp/wire.h) is refused at the handshake. The token itself never crosses the wire.
   */
  std::string token;
  /** Data port; host "" or port 0 are allowed (port 0 picks a free one). */
  std::string listen_host = "127.0.0.1";
  uint16_t listen_port = 0;
  /** TCP connections opened to each peer; large ops are sliced across them. */
  int connections_per_peer = 4;
  /** Ops are cut into slices of at most this many bytes (also the largest frame payload). */
  uint64_t slice_bytes = 4 << 20;
  /** Bound on ops queued and not yet completed; Submit beyond it is kResourceExhausted. */
  uint64_t max_queued_ops = 1 << 16;
  /**
   * An incoming frame must be done within this long of its first byte, plus its payload
   * at 1 MiB/s (a hard deadline: a trickling peer is closed however it paces its bytes);
   * an outgoing connection that connects, shakes hands or waits for replies with no byte
   * moving this long fails its ops (kUnavailable).
   */
  int io_timeout_ms = 10000;
  /** An incoming connection must finish its handshake within this long of its accept. */
  int handshake_timeout_ms = 1000;
  /**
   * The TCP transport's I/O threads, each an epoll loop shared by incoming and outgoing
   * connections (no thread per connection).
   * 0: the default, twice hardware_concurrency clamped to [2, 8]; else 1..64.
   */
  int io_threads = 0;
};

/** One extent of the pool: where it starts and its size. */
struct PoolExtent {
  uint64_t offset = 0;
  uint64_t size = 0;
};

struct PoolStats {
  uint64_t capacity = 0;
  uint64_t used = 0;
  uint64_t free_extents = 0;
  uint64_t largest_free = 0;
  uint64_t allocations = 0;
};

enum class OpKind : uint8_t {
  /** Local extent → remote handle. */
  kWrite = 1,
  /** Remote handle → local extent. */
  kRead = 2,
};

/** What a peer may do through a handle: read its bytes (kRead) or write them (kWrite). */
enum class Access : uint8_t {
  /** Peers may READ the range (the daemon lends a sealed entry); WRITEs are refused. */
  kRead = 1,
  /** Peers may WRITE the range (the daemon receives an entry); READs are refused. */
  kWrite = 2,
};

struct TransferOp {
  /** Caller-chosen, unique among ops in flight; echoed in the completion. */
  uint64_t id = 0;
  OpKind kind = OpKind::kWrite;
  /** The peer's data address, "host:port". */
  std::string peer;
  /** The local range: [local_offset, +length), unless `gather` is given. */
  uint64_t local_offset = 0;
  /**
   * When not empty, the local side is these extents in order (gather for kWrite,
   * scatter for kRead) and their sizes add up to `length`; `local_offset` is unused.
   * One op then moves many entries' bytes to (or from) one remote range.
   */
  std::vector<PoolExtent> gather;
  uint64_t remote_handle = 0;
  uint64_t remote_offset = 0;
  uint64_t length = 0;
};

enum class CompletionKind : uint8_t {
  /** A TransferOp finished (status says how). */
  kOp = 1,
  /** A revoked handle has no access in flight any more: its extent may be freed. */
  kHandleReleased = 2,
};

struct Completion {
  CompletionKind kind = CompletionKind::kOp;
  /** TransferOp::id, or the handle id for kHandleReleased. */
  uint64_t id = 0;
  Code code = Code::kOk;
  std::string message;
  uint64_t bytes = 0;
  uint64_t micros = 0;
};

struct EngineStats {
  PoolStats pool;
  uint64_t bytes_sent = 0;
  uint64_t bytes_received = 0;
  uint64_t ops_completed = 0;
  uint64_t ops_failed = 0;
  uint64_t handshakes_refused = 0;
  uint64_t frames_refused = 0;
  /** Connections closed before their handshake because too many were pending. */
  uint64_t connections_shed = 0;
  uint64_t peers_connected = 0;
};

class Engine {
 public:
  /** Allocates the pool (memfd-backed), starts the data listener. */
  static Status Create(const EngineOptions& options, std::unique_ptr<Engine>* out);
  virtual ~Engine() = default;
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // ---- memory pool -----------------------------------------------------------------
  virtual uint8_t* pool_base() = 0;
  virtual uint64_t pool_size() const = 0;
  /** The memfd behind the pool (a later issue maps it into local connectors). */
  virtual int pool_fd() const = 0;
  /** An extent of `size` bytes (aligned to 64), or kResourceExhausted when none fits. */
  virtual Status Allocate(uint64_t size, uint64_t* offset) = 0;
  /**
   * `size` bytes as one or more extents (offset, rounded size) appended to `*out`, when
   * no single extent holds them: see ExtentAllocator::AllocateScattered. Each extent is
   * freed on its own.
   */
  virtual Status AllocateScattered(uint64_t size, size_t max_extents, std::vector<PoolExtent>* out) = 0;
  /** Returns an extent; `offset` must be the start of a live allocation. */
  virtual Status Free(uint64_t offset) = 0;
  virtual PoolStats pool_stats() const = 0;

  // ---- handles: what peers may touch -------------------------------------------------
  /**
   * Exposes [offset, offset+length) of the pool under a fresh unguessable id, for peers
   * to access in one direction only: `access` kRead lets them READ it, kWrite lets them
   * WRITE it; a request in the other direction is refused with kPermissionDenied (the
   * connection stays usable). kInvalidArgument for any other `access` value.
   */
  virtual Status Expose(uint64_t offset, uint64_t length, Access access, uint64_t* handle) = 0;
  /**
   * The same for several extents seen by peers as one range, their concatenation in
   * order (a scatter handle: e.g. every entry of a batch behind one id). 1 to
   * HandleTable::kMaxExtents extents, each inside the pool.
   */
  virtual Status ExposeExtents(std::vector<PoolExtent> extents, Access access, uint64_t* handle) = 0;
  /** Refuses new accesses at once; kHandleReleased follows when none is in flight. */
  virtual Status Revoke(uint64_t handle) = 0;

  // ---- transfers ---------------------------------------------------------------------
  virtual uint16_t data_port() const = 0;
  /** What peers name to reach this engine when it is not host:data_port ("" for TCP; see Transport). */
  virtual std::string connection_info() const = 0;
  /** Queues ops; each gets exactly one kOp completion. Validates local ranges first. */
  virtual Status Submit(std::vector<TransferOp> ops) = 0;
  /** Best effort; see the memory-safety contract above. */
  virtual void Cancel(uint64_t op_id) = 0;
  /** Forgets a peer: closes its connections (their ops complete kUnavailable). */
  virtual void Disconnect(const std::string& peer) = 0;

  // ---- completions -------------------------------------------------------------------
  virtual void SetNotifier(std::function<void()> notify) = 0;
  /** Moves every queued completion into `out`; returns how many. */
  virtual size_t DrainCompletions(std::vector<Completion>* out) = 0;

  virtual EngineStats stats() const = 0;
  /** Stops the listener and every connection; in-flight ops complete kCancelled. Idempotent. */
  virtual void Shutdown() = 0;

 protected:
  Engine() = default;
};

}  // namespace kvferry
