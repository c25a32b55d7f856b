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

namespace {

// RecvFullAndPeek reads a payload's last this-many bytes with calls that do not wait for
// the whole request (they may return short); the bytes before, with MSG_WAITALL.
constexpr size_t kPeekTailBytes = 64 * 1024;
// An IoDeadline lets one system call overrun the deadline by at most this much (or a
// tenth of the timeout, if less) rather than touch the socket before every call.
constexpr std::chrono::microseconds kDeadlineSlack{20000};

void SetTimeoutsMicros(int fd, std::chrono::microseconds t) {
  struct timeval tv;
  tv.tv_sec = static_cast<time_t>(t.count() / 1000000);
  tv.tv_usec = static_cast<suseconds_t>(t.count() % 1000000);
  if (tv.tv_sec == 0 && tv.tv_usec == 0) tv.tv_usec = 1;  // zero would mean "wait forever"
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
}

}  // namespace

IoDeadline::IoDeadline(int fd, int timeout_ms)
    : fd_(fd),
      timeout_(std::chrono::milliseconds(timeout_ms)),
      slack_(std::min<std::chrono::microseconds>(kDeadlineSlack, timeout_ / 10)),
      armed_(timeout_),
      at_(std::chrono::steady_clock::now() + timeout_) {}

void IoDeadline::Start() { at_ = std::chrono::steady_clock::now() + timeout_; }

bool IoDeadline::Arm() {
  const auto left = std::chrono::duration_cast<std::chrono::microseconds>(at_ - std::chrono::steady_clock::now());
  if (left.count() <= 0) return false;
  if (armed_ > left + slack_) {
    SetTimeoutsMicros(fd_, left);
    armed_ = left;
  }
  return true;
}

void IoDeadline::Relax() {
  if (armed_ == timeout_) return;
  SetTimeoutsMicros(fd_, timeout_);
  armed_ = timeout_;
}

namespace {

// Every byte of `iov` through the socket in one direction, advancing `iov` in place, as
// few calls as the kernel allows (IOV_MAX buffers per call). Receiving, one waiting call
// fills every buffer: a slice of many small entries is one call, not one wake-up each.
IoResult MoveAll(int fd, struct iovec* iov, int iovcnt, IoDeadline* deadline, bool receive) {
  while (iovcnt > 0) {
    if (iov->iov_len == 0) {
      ++iov;
      --iovcnt;
      continue;
    }
    if (deadline != nullptr && !deadline->Arm()) return IoResult::kTimeout;
    struct msghdr msg;
    std::memset(&msg, 0, sizeof(msg));
    msg.msg_iov = iov;
    msg.msg_iovlen = static_cast<size_t>(std::min(iovcnt, IOV_MAX));
    ssize_t r = receive ? recvmsg(fd, &msg, MSG_WAITALL) : sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (r == 0 && receive) return IoResult::kClosed;
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return IoResult::kTimeout;
      return IoResult::kError;
    }
    size_t moved = static_cast<size_t>(r);
    while (iovcnt > 0 && moved >= iov->iov_len) {
      moved -= iov->iov_len;
      ++iov;
      --iovcnt;
    }
    if (iovcnt > 0) {
      iov->iov_base = static_cast<uint8_t*>(iov->iov_base) + moved;
      iov->iov_len -= moved;
    }
  }
  return IoResult::kOk;
}

}  // namespace

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

IoResult RecvFull(int fd, void* buf, size_t n, size_t* got, IoDeadline* deadline) {
  auto* p = static_cast<uint8_t*>(buf);
  size_t done = 0;
  while (done < n) {
    if (deadline != nullptr && !deadline->Arm()) {
      *got = done;
      return IoResult::kTimeout;
    }
    ssize_t r = recv(fd, p + done, n - done, MSG_WAITALL);
    if (r > 0) {
      done += static_cast<size_t>(r);
      continue;
    }
    *got = done;
    if (r == 0) return IoResult::kClosed;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return IoResult::kTimeout;
    return IoResult::kError;
  }
  *got = done;
  return IoResult::kOk;
}

IoResult RecvFullV(int fd, struct iovec* iov, int iovcnt, IoDeadline* deadline) {
  return MoveAll(fd, iov, iovcnt, deadline, /*receive=*/true);
}

IoResult RecvFullAndPeek(int fd, void* buf, size_t n, void* spill, size_t spill_cap, size_t* spilled,
                         IoDeadline* deadline) {
  auto* p = static_cast<uint8_t*>(buf);
  size_t done = 0;
  *spilled = 0;
  while (done < n) {
    if (n - done > kPeekTailBytes) {
      // A large payload: the bulk in one waiting call (the kernel fills it as bytes
      // arrive), so only its tail is read by the calls that may also take the spill.
      size_t got = 0;
      IoResult r = RecvFull(fd, p + done, n - done - kPeekTailBytes, &got, deadline);
      done += got;
      if (r != IoResult::kOk) return r;
      continue;
    }
    if (deadline != nullptr && !deadline->Arm()) return IoResult::kTimeout;
    struct iovec iov[2];
    iov[0] = {p + done, n - done};
    iov[1] = {spill, spill_cap};
    struct msghdr msg;
    std::memset(&msg, 0, sizeof(msg));
    msg.msg_iov = iov;
    msg.msg_iovlen = spill_cap > 0 ? 2 : 1;
    // No MSG_WAITALL: that would also wait for the spill bytes, which may never come.
    ssize_t r = recvmsg(fd, &msg, 0);
    if (r > 0) {
      const size_t got = static_cast<size_t>(r);
      if (got > n - done) *spilled = got - (n - done);
      done += got - *spilled;
      continue;
    }
    if (r == 0) return IoResult::kClosed;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return IoResult::kTimeout;
    return IoResult::kError;
  }
  return IoResult::kOk;
}

IoResult RecvSome(int fd, void* buf, size_t n, size_t* got) {
  *got = 0;
  for (;;) {
    ssize_t r = recv(fd, buf, n, 0);
    if (r > 0) {
      *got = static_cast<size_t>(r);
      return IoResult::kOk;
    }
    if (r == 0) return IoResult::kClosed;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return IoResult::kTimeout;
    return IoResult::kError;
  }
}

IoResult SendFull(int fd, struct iovec* iov, int iovcnt, IoDeadline* deadline) {
  return MoveAll(fd, iov, iovcnt, deadline, /*receive=*/false);
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

void SetIoTimeouts(int fd, int timeout_ms) {
  struct timeval tv;
  tv.tv_sec = timeout_ms / 1000;
  tv.tv_usec = static_cast<suseconds_t>(timeout_ms % 1000) * 1000;
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
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
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 512) == 0) break;
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

bool ConstantTimeEquals(const std::string& expected, const std::string& actual) {
  // Every byte of `expected` is visited whatever `actual` holds; a length mismatch only
  // flips the accumulator.
  volatile uint8_t diff = expected.size() == actual.size() ? 0 : 1;
  for (size_t i = 0; i < expected.size(); ++i) {
    const uint8_t a = i < actual.size() ? static_cast<uint8_t>(actual[i]) : 0;
    diff = static_cast<uint8_t>(diff | (static_cast<uint8_t>(expected[i]) ^ a));
  }
  return diff == 0;
}

}  // namespace tcp
}  // namespace kvferry
