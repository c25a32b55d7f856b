// Transport: one way of moving bytes between this engine's pool and a peer's.
//
// Each transport lives in its own folder (tcp/, later shm/, rdma/) and implements this
// interface; the engine owns the pool, the handle table and the completion queue and
// hands a transport what it may use through TransportContext. A transport never
// includes another transport's headers, and only transport_factory.cc includes theirs:
// adding one is a folder and a factory entry.
//
// Lifecycle: construct → Start → Submit/Cancel/Disconnect (any thread, concurrently)
// → Shutdown (idempotent; the destructor calls it) → destroy.
//
// Op contract
// - Submit is all-or-nothing: on an error status no op of the batch was accepted and
//   none will complete; on OK every op gets exactly one completion through
//   TransportContext::complete_ops, from a transport thread or from within
//   Cancel/Disconnect/Shutdown.
// - Ops reach Submit already validated by the engine (kind, local range inside the pool,
//   peer syntax, no offset overflow).
// - Memory safety: the transport may read (kWrite) or write (kRead) an op's local extent
//   only until it hands the op's completion to complete_ops; the call is the
//   transport's promise that no thread of it will touch that extent again.
// - Cancellation is best effort: Cancel(op_id) guarantees a terminal completion soon
//   (kCancelled, or whatever outcome won the race), never that bytes were not moved. A
//   transport that cannot stop an op in the middle stops its carrier (for TCP: closes
//   the connections that carry the op's slices); the other ops on that carrier are not
//   failed but carried again (their unfinished parts re-sent / re-read, once the
//   carrier's threads are done with them). Callers keep polling until the terminal
//   completion arrives.
// - Disconnect(peer) ends every op to that peer (kUnavailable) and forgets the peer;
//   later ops reconnect. Shutdown ends every op (kCancelled) and stops accepting.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "engine/engine.h"
#include "engine/handle_table.h"
#include "engine/status.h"

namespace kvferry {

struct TransportCapabilities {
  const char* name = "";
  bool supports_write = false;
  bool supports_read = false;
  /** Payload bytes move between the pool and the wire without intermediate copies. */
  bool zero_copy = false;
  /** Only reaches peers on the same host (shm). */
  bool same_host_only = false;
  /** Largest single transfer unit; ops are cut into slices of at most this. */
  uint64_t max_slice_bytes = 0;
};

/** Counters a transport bumps; the engine reports them in EngineStats. */
struct TransportCounters {
  std::atomic<uint64_t> bytes_sent{0};
  std::atomic<uint64_t> bytes_received{0};
  std::atomic<uint64_t> handshakes_refused{0};
  std::atomic<uint64_t> frames_refused{0};
  /** Unauthenticated connections closed because too many were pending (see tcp_server.h). */
  std::atomic<uint64_t> connections_shed{0};
};

/** What a transport may use of its engine; everything here outlives the transport. */
struct TransportContext {
  uint8_t* pool_base = nullptr;
  uint64_t pool_size = 0;
  HandleTable* handles = nullptr;
  TransportCounters* counters = nullptr;
  /**
   * Takes (moves out of `*batch`, leaving it empty) kOp completions; over all calls,
   * exactly one per accepted op. Batched so that a burst of ops costs the owner one
   * wake-up; call it without holding transport locks. Must not block for long.
   */
  std::function<void(std::vector<Completion>* batch)> complete_ops;
};

class Transport {
 public:
  virtual ~Transport() = default;
  Transport(const Transport&) = delete;
  Transport& operator=(const Transport&) = delete;

  virtual TransportCapabilities capabilities() const = 0;
  /** Binds and starts serving incoming requests. */
  [[nodiscard]] virtual Status Start() = 0;
  [[nodiscard]] virtual Status Submit(std::vector<TransferOp> ops) = 0;
  virtual void Cancel(uint64_t op_id) = 0;
  virtual void Disconnect(const std::string& peer) = 0;
  virtual void Shutdown() = 0;
  /** Peers with at least one established outgoing connection (or mapping). */
  virtual uint64_t connected_peers() const = 0;
  /** Why `peer` is not an address this transport reaches ("" when it is one). */
  virtual std::string CheckPeer(const std::string& peer) const = 0;
  /** The port peers connect to, for transports that listen on one (valid after Start; else 0). */
  virtual uint16_t listen_port() const { return 0; }
  /**
   * What a peer's ops name as their peer to reach this engine, for transports whose peers
   * are not "host:port" of listen_port (valid after Start; "" for TCP). The daemon hands it
   * to peers in its Hello and node record (transports[].params).
   */
  virtual std::string connection_info() const { return ""; }

 protected:
  Transport() = default;
};

}  // namespace kvferry
