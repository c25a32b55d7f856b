#include "engine/transport_factory.h"

#include <string>

#include "engine/tcp/tcp_transport.h"

namespace kvferry {

namespace {

Status NoSuchProtocol(const EngineOptions& options) {
  if (options.protocol == "rdma") {
    return Status(Code::kNotSupported, "protocol \"rdma\" needs the UCX transport, which this build does not have");
  }
  return Status(Code::kInvalidArgument, "protocol must be \"tcp\" or \"rdma\", got \"" + options.protocol + "\"");
}

}  // namespace

Status CheckTransportOptions(const EngineOptions& options) {
  if (options.protocol == "tcp") {
    tcp::TcpTransportOptions unused;
    return tcp::TcpOptionsFrom(options, &unused);
  }
  return NoSuchProtocol(options);
}

Status CreateTransport(const EngineOptions& options, const TransportContext& context,
                       std::unique_ptr<Transport>* out) {
  if (options.protocol == "tcp") {
    tcp::TcpTransportOptions tcp_options;
    Status s = tcp::TcpOptionsFrom(options, &tcp_options);
    if (!s.ok()) return s;
    *out = std::make_unique<tcp::TcpTransport>(context, tcp_options);
    return Status::Ok();
  }
  return NoSuchProtocol(options);
}

}  // namespace kvferry
