#include "engine/tcp/socket_io.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>

namespace kvferry {
namespace tcp {

const char* IoResultText(IoResult r) {
  switch (r) {
    case IoResult::kOk:
      return "ok";
    case IoResult::kClosed:
      return "the peer closed the connection";
    case IoResult::kTimeout:
      return "the peer stalled past the I/O timeout";
    case IoResult::kError:
      return "the connection failed";
  }
  return "unknown";
}

bool ParseHostPort(const std::string& address, std::string* host, uint16_t* port) {
  std::string h;
  std::string p;
  if (!address.empty() && address[0] == '[') {
    size_t close = address.find(']');
    if (close == std::string::npos || close + 1 >= address.size() || address[close + 1] != ':') return false;
    h = address.substr(1, close - 1);
    p = address.substr(close + 2);
  } else {
    size_t colon = address.rfind(':');
    if (colon == std::string::npos) return false;
    h = address.substr(0, colon);
    p = address.substr(colon + 1);
    if (h.find(':') != std::string::npos) return false;  // bare IPv6 needs brackets
  }
  if (h.empty() || p.empty() || p.size() > 5) return false;
  uint32_t value = 0;
  for (char ch : p) {
    if (ch < '0' || ch > '9') return false;
    value = value * 10 + static_cast<uint32_t>(ch - '0');
  }
  if (value == 0 || value > 65535) return false;
  *host = h;
  *port = static_cast<uint16_t>(value);
  return true;
}

void SetStreamOptions(int fd, int buffer_bytes) {
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  if (buffer_bytes > 0) {
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &buffer_bytes, sizeof(buffer_bytes));
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &buffer_bytes, sizeof(buffer_bytes));
  }
}

Status ListenTcp(const std::string& host, uint16_t port, int* fd_out, uint16_t* bound_port) {
  struct addrinfo hints;
  std::memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  struct addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &res);
  if (rc != 0) {
    return Status(Code::kInvalidArgument, "cannot resolve listen host '" + host + "': " + gai_strerror(rc));
  }
  std::string last_error = "no usable address";
  int fd = -1;
  for (struct addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      last_error = std::strerror(errno);
      continue;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    // The kernel's largest backlog: a burst of connects that outruns the accept loop (a
    // busy machine) waits in the queue instead of having its SYNs dropped and retried a
    // second later, by when its place among the pending handshakes is long gone.
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, SOMAXCONN) == 0) break;
    last_error = std::strerror(errno);
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd < 0) {
    return Status(Code::kUnavailable,
                  "cannot listen on " + (host.empty() ? std::string("*") : host) + ":" + service + ": " + last_error);
  }
  struct sockaddr_storage addr;
  socklen_t len = sizeof(addr);
  if (getsockname(fd, reinterpret_cast<struct sockaddr*>(&addr), &len) != 0) {
    Status failed(Code::kInternal, std::string("getsockname: ") + std::strerror(errno));
    close(fd);
    return failed;
  }
  if (addr.ss_family == AF_INET6) {
    *bound_port = ntohs(reinterpret_cast<struct sockaddr_in6*>(&addr)->sin6_port);
  } else {
    *bound_port = ntohs(reinterpret_cast<struct sockaddr_in*>(&addr)->sin_port);
  }
  *fd_out = fd;
  return Status::Ok();
}

}  // namespace tcp
}  // namespace kvferry
