#include "engine/transport_factory.h"

#include <string>

#include "engine/tcp/tcp_transport.h"
#ifdef KVFERRY_HAVE_UCX
#include "engine/ucx/ucx_transport.h"
#endif

namespace kvferry {

namespace {

Status NoSuchProtocol(const EngineOptions& options) {
  if (options.protocol == "rdma") {
    return Status(Code::kNotSupported,
                  "protocol \"rdma\" needs the UCX transport, which this build does not have (install UCX, e.g. "
                  "Debian's libucx-dev, and rebuild: npm run build)");
  }
  return Status(Code::kInvalidArgument, "protocol must be \"tcp\" or \"rdma\", got \"" + options.protocol + "\"");
}

}  // namespace

bool TransportBuilt(const std::string& protocol) {
#ifdef KVFERRY_HAVE_UCX
  if (protocol == "rdma") return true;
#endif
  return protocol == "tcp";
}

Status CheckTransportOptions(const EngineOptions& options) {
  if (options.protocol == "tcp") {
    tcp::TcpTransportOptions unused;
    return tcp::TcpOptionsFrom(options, &unused);
  }
#ifdef KVFERRY_HAVE_UCX
  if (options.protocol == "rdma") {
    ucx::UcxTransportOptions unused;
    return ucx::UcxOptionsFrom(options, &unused);
  }
#endif
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
#ifdef KVFERRY_HAVE_UCX
  if (options.protocol == "rdma") {
    ucx::UcxTransportOptions ucx_options;
    Status s = ucx::UcxOptionsFrom(options, &ucx_options);
    if (!s.ok()) return s;
    *out = std::make_unique<ucx::UcxTransport>(context, ucx_options);
    return Status::Ok();
  }
#endif
  return NoSuchProtocol(options);
}

}  // namespace kvferry
