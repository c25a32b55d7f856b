// UcxTransport: protocol "rdma" — bytes move through UCX (UCP active messages with
// rendezvous: on an RDMA NIC UCX moves a rendezvous payload with one-sided RDMA between
// the registered pools, over TCP or shared memory it emulates it). wire.h has the
// messages and why no remote key is handed out.
//
// Rails: `devices` ("mlx5_0,mlx5_1"; empty: UCX's own choice) each get a UCP context
// limited to that device and one worker. The pool is not registered as a whole: a
// rendezvous hands the peer a key to the registration it moves from or into, and the
// pool's would reach every entry; UCX registers (and caches) what it moves instead.
// This engine's connection info lists the rails' worker addresses; an op's slices are
// striped over every established rail to its peer, and a rail that fails hands its
// unfinished slices to the others (the op fails only when no rail is left).
//
// Threads: one progress thread owns every UCX object (workers in single-thread mode);
// Submit/Cancel/Disconnect/Shutdown post commands to it. It sleeps on the workers'
// wake-up fds when idle.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/transport.h"

namespace kvferry {
namespace ucx {

struct UcxTransportOptions {
  std::string token;
  /** One rail per device; empty: one rail on whatever UCX selects (UCX_NET_DEVICES, UCX_TLS apply). */
  std::vector<std::string> devices;
  uint64_t slice_bytes = 4 << 20;
  /** A rail with requests in flight and none finishing this long is failed (its slices move to the others). */
  int io_timeout_ms = 10000;
  /** A connection's handshake must be over within this long (both ends). */
  int handshake_timeout_ms = 1000;
};

/** The UCX options from the engine's; a bad device list names it. */
Status UcxOptionsFrom(const EngineOptions& engine, UcxTransportOptions* out);

class UcxTransport final : public Transport {
 public:
  UcxTransport(const TransportContext& context, const UcxTransportOptions& options);
  ~UcxTransport() override;

  TransportCapabilities capabilities() const override;
  [[nodiscard]] Status Start() override;
  [[nodiscard]] Status Submit(std::vector<TransferOp> ops) override;
  void Cancel(uint64_t op_id) override;
  void Disconnect(const std::string& peer) override;
  void Shutdown() override;
  uint64_t connected_peers() const override;
  std::string CheckPeer(const std::string& peer) const override;
  /** "ucx:" and the rails' worker addresses (base64url), comma-separated: what a peer's op names as its peer. */
  std::string connection_info() const override;

  class Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace ucx
}  // namespace kvferry

// The plugin's entry points: the addon does not link UCX (loading UCX's libraries installs
// its signal handlers and memory hooks in the process), it dlopens kvferry_ucx.node, built
// from this folder, when protocol "rdma" is asked for (transport_factory.cc). Each returns
// a kvferry::Code as int; on failure `message` (of `size` bytes) says why.
extern "C" {
int kvferry_ucx_check(const kvferry::EngineOptions* options, char* message, size_t size);
int kvferry_ucx_create(const kvferry::EngineOptions* options, const kvferry::TransportContext* context,
                       kvferry::Transport** out, char* message, size_t size);
}
