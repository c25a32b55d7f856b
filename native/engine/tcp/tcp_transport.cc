#include "engine/tcp/tcp_transport.h"

#include <utility>

#include "engine/tcp/socket_io.h"
#include "engine/tcp/wire.h"

namespace kvferry {
namespace tcp {

namespace {

constexpr int kMaxConnectionsPerPeer = 64;
constexpr uint64_t kMinSliceBytes = 1024;
constexpr uint64_t kMaxSliceBytes = 1ull << 30;
constexpr int kMaxHandshakeTimeoutMs = 60000;
constexpr int kMaxIoThreads = 64;

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

Status TcpOptionsFrom(const EngineOptions& o, TcpTransportOptions* out) {
  auto invalid = [](const std::string& what) { return Status(Code::kInvalidArgument, what); };
  if (o.token.size() > kMaxTokenBytes) {
    return invalid("token is longer than " + std::to_string(kMaxTokenBytes) + " bytes");
  }
  if (o.connections_per_peer < 1 || o.connections_per_peer > kMaxConnectionsPerPeer) {
    return invalid("connections_per_peer must be in [1, " + std::to_string(kMaxConnectionsPerPeer) + "], got " +
                   std::to_string(o.connections_per_peer));
  }
  if (o.slice_bytes < kMinSliceBytes || o.slice_bytes > kMaxSliceBytes) {
    return invalid("slice_bytes must be in [" + std::to_string(kMinSliceBytes) + ", " +
                   std::to_string(kMaxSliceBytes) + "], got " + std::to_string(o.slice_bytes));
  }
  if (o.io_timeout_ms <= 0) return invalid("io_timeout_ms must be positive, got " + std::to_string(o.io_timeout_ms));
  if (o.handshake_timeout_ms <= 0 || o.handshake_timeout_ms > kMaxHandshakeTimeoutMs) {
    return invalid("handshake_timeout_ms must be in [1, " + std::to_string(kMaxHandshakeTimeoutMs) + "], got " +
                   std::to_string(o.handshake_timeout_ms));
  }
  if (o.io_threads < 0 || o.io_threads > kMaxIoThreads) {
    return invalid("io_threads must be 0 (the default) or in [1, " + std::to_string(kMaxIoThreads) + "], got " +
                   std::to_string(o.io_threads));
  }
  out->token = o.token;
  out->listen_host = o.listen_host;
  out->listen_port = o.listen_port;
  out->connections_per_peer = o.connections_per_peer;
  out->slice_bytes = o.slice_bytes;
  out->io_timeout_ms = o.io_timeout_ms;
  out->handshake_timeout_ms = o.handshake_timeout_ms;
  out->io_threads = o.io_threads;
  return Status::Ok();
}

TcpTransport::TcpTransport(const TransportContext& context, const TcpTransportOptions& options)
    : slice_bytes_(options.slice_bytes),
      loops_(options.io_threads),
      server_(context, ServerOptions(options), &loops_),
      client_(context, ClientOptions(options), &loops_) {}

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

Status TcpTransport::Start() {
  Status s = loops_.Start();
  return s.ok() ? server_.Start() : s;
}

Status TcpTransport::Submit(std::vector<TransferOp> ops) { return client_.Submit(std::move(ops)); }

void TcpTransport::Cancel(uint64_t op_id) { client_.Cancel(op_id); }

void TcpTransport::Disconnect(const std::string& peer) { client_.Disconnect(peer); }

void TcpTransport::Shutdown() {
  // Outgoing first (their ops complete kCancelled), then stop serving peers.
  client_.Shutdown();
  server_.Stop();
  loops_.Stop();
}

uint64_t TcpTransport::connected_peers() const { return client_.connected_peers(); }

std::string TcpTransport::CheckPeer(const std::string& peer) const {
  std::string host;
  uint16_t port = 0;
  return ParseHostPort(peer, &host, &port) ? "" : "peer '" + peer + "' is not host:port";
}

}  // namespace tcp
}  // namespace kvferry
