// Helpers shared by the engine tests: engines on loopback, completion collection, byte
// patterns, raw sockets that speak (or abuse) the wire format, and a silent fake peer.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/engine.h"
#include "engine/tcp/wire.h"

namespace kvferry {
namespace test {

constexpr char kToken[] = "cluster-secret";

/** An engine on 127.0.0.1, port 0, token kToken, after `tweak` edits the options. */
std::unique_ptr<Engine> MakeEngine(uint64_t pool_size, const std::function<void(EngineOptions&)>& tweak = {});
std::string PeerOf(const Engine& engine);

/** Collects an engine's completions through its notifier, as the binding does. */
class Collector {
 public:
  explicit Collector(Engine* engine);
  ~Collector();

  /** Waits until at least `n` kOp completions arrived in total. */
  bool WaitOps(size_t n, std::chrono::milliseconds timeout);
  bool WaitReleased(uint64_t handle, std::chrono::milliseconds timeout);
  /** kOp completions by op id; duplicates are counted in duplicates(). */
  std::map<uint64_t, Completion> ops();
  size_t op_count();
  size_t duplicates();
  size_t released_count(uint64_t handle);
  /** Registers a callback run (on the notifier thread) for each kOp right after it is drained. */
  void OnOp(std::function<void(const Completion&)> fn);

 private:
  void Pull();

  Engine* engine_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, Completion> ops_;
  size_t op_total_ = 0;
  size_t duplicates_ = 0;
  std::map<uint64_t, size_t> released_;
  std::function<void(const Completion&)> on_op_;
};

void FillPattern(uint8_t* p, uint64_t n, uint64_t seed);

/**
 * A real transfer both ways: `client` writes `size` patterned bytes (`seed`) from its pool's
 * [0, size) into a fresh extent of `server`'s pool (op 1), then reads them back into its
 * [size, 2 size) (op 2); both ops must succeed and the bytes match (gtest failures
 * otherwise). `*dst` and `*read_handle`: the server's extent and a handle to read it.
 */
void RoundTrip(Engine* server, Engine* client, Collector* cc, uint64_t size, uint64_t seed, uint64_t* dst = nullptr,
               uint64_t* read_handle = nullptr);

TransferOp MakeOp(uint64_t id, OpKind kind, const std::string& peer, uint64_t local, uint64_t handle,
                  uint64_t remote_offset, uint64_t length);

/** An extent of `n` bytes of `e`'s pool (a gtest failure when none fits). */
uint64_t Alloc(Engine* e, uint64_t n);
/** A handle over [offset, +length) of `e`'s pool (a gtest failure when refused). */
uint64_t Expose(Engine* e, uint64_t offset, uint64_t length, Access access);
/** Submits `op` on `e` and waits for its completion (through `collector`, which watches `e`). */
Completion RunOne(Engine* e, Collector* collector, const TransferOp& op);

/** "Threads:" of /proc/self/status (0 when unreadable). */
size_t ThreadCount();
/** Entries of /proc/self/fd: the open files of this process. */
size_t OpenFiles();

// ---- raw sockets ----------------------------------------------------------------------

/** A blocking client socket to 127.0.0.1:port with a receive timeout; -1 on failure. */
int RawConnect(uint16_t port, int recv_timeout_ms = 5000);
bool RawSend(int fd, const void* data, size_t n);
bool RawSendHeader(int fd, const tcp::FrameHeader& h);
/** Receives one header; false on EOF, error or timeout. */
bool RawRecvHeader(int fd, tcp::FrameHeader* h);
bool RawRecv(int fd, void* data, size_t n);
/**
 * Runs the client's side of the handshake proving `token` (sent whatever the server
 * proved) and returns the verdict's frame type (or 0 when none came).
 */
int RawHello(int fd, const std::string& token);
/** Runs the server's side of the handshake on a blocking socket; true once accepted. */
bool RawServeHandshake(int fd, const std::string& token, uint64_t slice_bytes);
/** True when the server closes the connection within `timeout_ms` (bytes are skipped). */
bool WaitClosed(int fd, int timeout_ms);

/**
 * A fake peer on 127.0.0.1 (port 0) that runs `script` on each connection it accepts,
 * in a thread of its own (`index`: 0 for the first connection, 1 for the next, ...).
 * `receive_buffer` > 0 sets the accepted sockets' SO_RCVBUF (a small one makes a
 * client's sends block early). The destructor shuts every connection down and joins.
 */
class ScriptedPeer {
 public:
  using Script = std::function<void(int fd, int index)>;
  explicit ScriptedPeer(Script script, int receive_buffer = 0);
  ~ScriptedPeer();
  ScriptedPeer(const ScriptedPeer&) = delete;
  ScriptedPeer& operator=(const ScriptedPeer&) = delete;
  uint16_t port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  int accepted() const { return accepted_.load(); }

 private:
  const Script script_;
  int listen_fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<int> accepted_{0};
  std::mutex mu_;
  std::vector<int> fds_;
  std::vector<std::thread> threads_;
  std::thread acceptor_;
};

/**
 * A peer that completes the handshake and then swallows every byte without ever
 * replying: ops to it stay in flight until cancelled, timed out or shut down.
 */
class SilentPeer : public ScriptedPeer {
 public:
  SilentPeer();
};

}  // namespace test
}  // namespace kvferry
