#include "engine/local/local_socket.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

namespace kvferry {
namespace {

/** The longest line either side sends. */
constexpr size_t kMaxLine = 4096;
/** A client that does not take its line within this is dropped. */
constexpr int kSendTimeoutMs = 1000;
/** How long the accept thread waits before trying again when the process is out of fds. */
constexpr int kAcceptBackoffMs = 100;

std::string Errno(const std::string& what) { return what + ": " + std::strerror(errno); }

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) continue;
    out += c;
  }
  return out + "\"";
}

Status AddressOf(const std::string& path, sockaddr_un* addr) {
  if (path.empty() || path.size() >= sizeof(addr->sun_path)) {
    return Status(Code::kInvalidArgument, "local socket path must be 1 to " + std::to_string(sizeof(addr->sun_path) - 1) + " bytes: " + path);
  }
  std::memset(addr, 0, sizeof(*addr));
  addr->sun_family = AF_UNIX;
  std::memcpy(addr->sun_path, path.data(), path.size());
  return Status::Ok();
}

/** Sends `line` (and `fd` when >= 0) in one message. */
bool SendLine(int sock, const std::string& line, int fd) {
  iovec iov{const_cast<char*>(line.data()), line.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  if (fd >= 0) {
    std::memset(control, 0, sizeof(control));
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof(int));
  }
  ssize_t n;
  do n = sendmsg(sock, &msg, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  return n == static_cast<ssize_t>(line.size());
}

}  // namespace

bool LocalSocketServer::Admits(const LocalSocketOptions& o, uid_t uid, gid_t gid, std::string* reason) {
  if (uid == geteuid()) return true;
  if (std::find(o.allowed_uids.begin(), o.allowed_uids.end(), uid) != o.allowed_uids.end()) return true;
  if (std::find(o.allowed_gids.begin(), o.allowed_gids.end(), gid) != o.allowed_gids.end()) return true;
  *reason = "uid " + std::to_string(uid) + " (gid " + std::to_string(gid) + ") is not the daemon's uid " +
            std::to_string(geteuid()) + " and not in local_allowed_uids or local_allowed_gids";
  return false;
}

Status LocalSocketServer::Start(LocalSocketOptions options, std::unique_ptr<LocalSocketServer>* out) {
  if (options.fd < 0) return Status(Code::kNotSupported, "the pool has no memfd to share (memfd_create was unavailable)");
  sockaddr_un addr;
  Status st = AddressOf(options.path, &addr);
  if (!st.ok()) return st;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Status(Code::kInternal, Errno("socket(AF_UNIX)"));
  // A socket file left by a daemon that died is replaced; a live one still answers connects.
  struct stat existing;
  if (lstat(options.path.c_str(), &existing) == 0) {
    if (!S_ISSOCK(existing.st_mode)) {
      close(fd);
      return Status(Code::kInvalidArgument, options.path + " exists and is not a socket");
    }
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    bool live = probe >= 0 && connect(probe, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    if (probe >= 0) close(probe);
    if (live) {
      close(fd);
      return Status(Code::kUnavailable, options.path + " is served by another process (another daemon on this node?)");
    }
    unlink(options.path.c_str());
  }
  // Created with the final mode (umask), never briefly open to others.
  mode_t old = umask(0777 & ~options.mode);
  int bound = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  int bind_errno = errno;
  umask(old);
  if (bound != 0) {
    close(fd);
    errno = bind_errno;
    return Status(Code::kUnavailable, Errno("cannot bind the local socket " + options.path));
  }
  chmod(options.path.c_str(), options.mode);
  if (listen(fd, 64) != 0) {
    close(fd);
    unlink(options.path.c_str());
    return Status(Code::kInternal, Errno("listen(" + options.path + ")"));
  }
  int wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake < 0) {
    close(fd);
    unlink(options.path.c_str());
    return Status(Code::kInternal, Errno("eventfd"));
  }
  out->reset(new LocalSocketServer(std::move(options), fd, wake));
  return Status::Ok();
}

LocalSocketServer::LocalSocketServer(LocalSocketOptions options, int listen_fd, int wake_fd)
    : options_(std::move(options)), listen_fd_(listen_fd), wake_fd_(wake_fd) {
  thread_ = std::thread([this] { Run(); });
}

LocalSocketServer::~LocalSocketServer() {
  uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof(one));
  if (thread_.joinable()) thread_.join();
  close(listen_fd_);
  close(wake_fd_);
  unlink(options_.path.c_str());
}

LocalSocketStats LocalSocketServer::stats() const {
  return LocalSocketStats{admitted_.load(), refused_.load()};
}

void LocalSocketServer::Run() {
  pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
  for (;;) {
    int n = poll(fds, 2, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents != 0) return;
    if ((fds[0].revents & POLLIN) == 0) continue;
    int client = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (client < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // Out of fds or memory: the connection stays in the backlog and the listening socket
        // stays readable; back off instead of spinning (a stop still wakes this at once).
        pollfd wake{wake_fd_, POLLIN, 0};
        (void)poll(&wake, 1, kAcceptBackoffMs);
      }
      continue;
    }
    Serve(client);
    close(client);
  }
}

void LocalSocketServer::Serve(int client) {
  timeval tv{kSendTimeoutMs / 1000, (kSendTimeoutMs % 1000) * 1000};
  setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  ucred cred{};
  socklen_t len = sizeof(cred);
  std::string reason;
  if (getsockopt(client, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    reason = Errno("cannot read the client's credentials (SO_PEERCRED)");
  } else if (Admits(options_, cred.uid, cred.gid, &reason)) {
    std::string line = "{\"ok\":true";
    if (!options_.header.empty()) line += "," + options_.header;
    line += "}\n";
    if (SendLine(client, line, options_.fd)) admitted_++;
    return;
  }
  refused_++;
  (void)SendLine(client, "{\"ok\":false,\"reason\":" + JsonString(reason) + "}\n", -1);
}

Status ReceiveLocalPool(const std::string& path, int timeout_ms, std::string* header, int* fd) {
  *fd = -1;
  sockaddr_un addr;
  Status st = AddressOf(path, &addr);
  if (!st.ok()) return st;
  int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (sock < 0) return Status(Code::kInternal, Errno("socket(AF_UNIX)"));
  timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  setsockopt(sock, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (connect(sock, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    Status failed(Code::kUnavailable, Errno("cannot connect to the local socket " + path));
    close(sock);
    return failed;
  }
  std::string line;
  char buf[kMaxLine];
  while (line.find('\n') == std::string::npos && line.size() < kMaxLine) {
    iovec iov{buf, sizeof(buf)};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    ssize_t n;
    do n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
      Status failed(Code::kUnavailable, Errno("no answer on the local socket " + path));
      close(sock);
      if (*fd >= 0) close(*fd);
      *fd = -1;
      return failed;
    }
    if (n == 0) break;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && *fd < 0) std::memcpy(fd, CMSG_DATA(c), sizeof(int));
    }
    line.append(buf, static_cast<size_t>(n));
  }
  close(sock);
  size_t end = line.find('\n');
  if (end == std::string::npos) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
    return Status(Code::kUnavailable, "the local socket " + path + " closed without a complete answer");
  }
  *header = line.substr(0, end);
  return Status::Ok();
}

}  // namespace kvferry
