#include "engine/tcp/tcp_transport.h"

#include <utility>

namespace kvferry {
namespace tcp {

namespace {

TcpServerOptions ServerOptions(const TcpTransportOptions& o) {
  TcpServerOptions s;
  s.token = o.token;
  s.host = o.listen_host;
  s.port = o.listen_port;
  s.slice_bytes = o.slice_bytes;
  s.io_timeout_ms = o.io_timeout_ms;
  s.handshake_timeout_ms = o.handshake_timeout_ms;
  return s;
}

TcpClientOptions ClientOptions(const TcpTransportOptions& o) {
  TcpClientOptions c;
  c.token = o.token;
  c.slice_bytes = o.slice_bytes;
  c.connections_per_peer = o.connections_per_peer;
  c.io_timeout_ms = o.io_timeout_ms;
  return c;
}

}  // namespace

TcpTransport::TcpTransport(const TransportContext& context, const TcpTransportOptions& options)
    : slice_bytes_(options.slice_bytes),
      server_(context, ServerOptions(options)),
      client_(context, ClientOptions(options)) {}

TcpTransport::~TcpTransport() { Shutdown(); }

TransportCapabilities TcpTransport::capabilities() const {
  TransportCapabilities caps;
  caps.name = "tcp";
  caps.supports_write = true;
  caps.supports_read = true;
  caps.zero_copy = true;  // no user-space copies; the kernel copies once per side
  caps.same_host_only = false;
  caps.max_slice_bytes = slice_bytes_;
  return caps;
}

Status TcpTransport::Start() { return server_.Start(); }

Status TcpTransport::Submit(std::vector<TransferOp> ops) { return client_.Submit(std::move(ops)); }

void TcpTransport::Cancel(uint64_t op_id) { client_.Cancel(op_id); }

void TcpTransport::Disconnect(const std::string& peer) { client_.Disconnect(peer); }

void TcpTransport::Shutdown() {
  // Outgoing first (their ops complete kCancelled), then stop serving peers.
  client_.Shutdown();
  server_.Stop();
}

uint64_t TcpTransport::connected_peers() const { return client_.connected_peers(); }

}  // namespace tcp
}  // namespace kvferry
