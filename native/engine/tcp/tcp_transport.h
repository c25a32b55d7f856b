// TcpTransport: the engine's own socket path (see wire.h for the frame format).
//
// The serving half (TcpServer) lets peers write into and read from this engine's pool
// through handles; the submitting half (TcpClient) carries this engine's ops to peers.
// Both follow the Transport contract in engine/transport.h.
//
// Threads: the transport owns its I/O loops (LoopGroup: io_threads epoll loops, one
// thread each) and both halves run on them, so the transport costs io_threads threads
// whatever its number of peers and connections. Start() starts the loops, then the
// server; Shutdown() ends the client's ops and connections, stops serving, and only then
// stops the loops (each half closes its connections on their loops' threads first).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/tcp/tcp_client.h"
#include "engine/tcp/tcp_server.h"
#include "engine/transport.h"

namespace kvferry {
namespace tcp {

struct TcpTransportOptions {
  std::string token;
  std::string listen_host;
  uint16_t listen_port = 0;
  int connections_per_peer = 4;
  uint64_t slice_bytes = 4 << 20;
  int io_timeout_ms = 10000;
  int handshake_timeout_ms = 1000;
  /** The I/O threads both halves share; 0: the default (loop_group.h). */
  int io_threads = 0;
};

/** The TCP settings of the engine's options, checked: kInvalidArgument naming the first bad one. */
Status TcpOptionsFrom(const EngineOptions& engine, TcpTransportOptions* out);

class TcpTransport final : public Transport {
 public:
  TcpTransport(const TransportContext& context, const TcpTransportOptions& options);
  ~TcpTransport() override;

  TransportCapabilities capabilities() const override;
  [[nodiscard]] Status Start() override;
  [[nodiscard]] Status Submit(std::vector<TransferOp> ops) override;
  void Cancel(uint64_t op_id) override;
  void Disconnect(const std::string& peer) override;
  void Shutdown() override;
  uint64_t connected_peers() const override;
  /** Peers are "host:port". */
  std::string CheckPeer(const std::string& peer) const override;
  /** The data port actually bound (valid after Start). */
  uint16_t listen_port() const override { return server_.port(); }

 private:
  const uint64_t slice_bytes_;
  LoopGroup loops_;  // declared first: outlives both halves
  TcpServer server_;
  TcpClient client_;
};

}  // namespace tcp
}  // namespace kvferry
