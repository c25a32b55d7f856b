#include "engine/transport_factory.h"

#include <string>

#include "engine/tcp/tcp_transport.h"
#ifdef KVFERRY_HAVE_UCX
#include <dlfcn.h>

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

#ifdef KVFERRY_HAVE_UCX
/**
 * The UCX transport's entry points. Linked in (KVFERRY_UCX_LINKED: the native tests), or
 * from kvferry_ucx.node beside this binary, loaded on first use: a process that never asks
 * for "rdma" never loads UCX (whose libraries install signal handlers and memory hooks).
 */
struct UcxPlugin {
  decltype(&kvferry_ucx_check) check = nullptr;
  decltype(&kvferry_ucx_create) create = nullptr;
  std::string error;
};

const UcxPlugin& Ucx() {
  static const UcxPlugin plugin = [] {
    UcxPlugin p;
#ifdef KVFERRY_UCX_LINKED
    p.check = &kvferry_ucx_check;
    p.create = &kvferry_ucx_create;
#else
    Dl_info self;
    if (dladdr(reinterpret_cast<void*>(&NoSuchProtocol), &self) == 0 || self.dli_fname == nullptr) {
      p.error = "cannot tell where the engine is loaded from";
      return p;
    }
    std::string path(self.dli_fname);
    path = path.substr(0, path.find_last_of('/') + 1) + "kvferry_ucx.node";
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      const char* why = dlerror();
      p.error = "cannot load the UCX transport " + path + ": " + (why != nullptr ? why : "?");
      return p;
    }
    p.check = reinterpret_cast<decltype(p.check)>(dlsym(handle, "kvferry_ucx_check"));
    p.create = reinterpret_cast<decltype(p.create)>(dlsym(handle, "kvferry_ucx_create"));
    if (p.check == nullptr || p.create == nullptr) p.error = path + " is not the UCX transport";
#endif
    return p;
  }();
  return plugin;
}

Status FromPlugin(int code, const char* message) {
  return code == 0 ? Status::Ok() : Status(static_cast<Code>(code), message);
}
#endif

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
    const UcxPlugin& ucx = Ucx();
    if (!ucx.error.empty()) return Status(Code::kNotSupported, "protocol \"rdma\": " + ucx.error);
    char message[512] = "";
    return FromPlugin(ucx.check(&options, message, sizeof(message)), message);
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
    Status s = CheckTransportOptions(options);
    if (!s.ok()) return s;
    char message[512] = "";
    Transport* made = nullptr;
    s = FromPlugin(Ucx().create(&options, &context, &made, message, sizeof(message)), message);
    if (s.ok()) out->reset(made);
    return s;
  }
#endif
  return NoSuchProtocol(options);
}

}  // namespace kvferry
